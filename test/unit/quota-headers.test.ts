import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AiTokenRatelimitConfig, ConsumerConfig, RouteConfig, RoutePlugins } from '../../src/config/types.ts';
import type { CounterView } from '../../src/quota/types.ts';
import { goDuration, quotaHeaders, type QuotaHeaderEntry } from '../../src/quota/headers.ts';
import { compileRouteQuotas, planRequest, type PlannedQuota } from '../../src/quota/plan.ts';
import type { RequestVars } from '../../src/rules/request-vars.ts';
import { arl } from '../helpers/rule-configs.ts';

function route(plugins: Partial<RoutePlugins>, instances: string[] = ['openai-instance', 'deepseek-instance']): RouteConfig {
  return {
    id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
    plugins: {
      'ai-proxy-multi': {
        instances: instances.map((name) => ({ name, provider: 'openai' as const, weight: 1, priority: 0, auth_header: {}, auth_query: {}, model: undefined, endpoint: undefined })),
        fallback_strategy: ['rate_limiting'],
        single: false,
      },
      'key-auth': undefined, 'ai-rate-limiting': undefined, 'ai-token-ratelimit': undefined,
      ...plugins,
    },
  };
}

function vars(over: Partial<RequestVars> = {}): RequestVars {
  return { headers: {}, query: '', remoteAddr: '198.51.100.1', consumer: undefined, routeId: 'ai-rate-limiting-route', uri: '/anything', ...over };
}

function view(limit: number, consumed: number, reserved: number, resetMs: number): CounterView {
  return { limit, consumed, reserved, resetMs };
}

function render(entries: QuotaHeaderEntry[], rejected = false): Record<string, string> {
  const out: [string, string][] = [];
  quotaHeaders(entries, { rejected }, out);
  const obj: Record<string, string> = {};
  for (const [k, v] of out) {
    assert.equal(obj[k], undefined, `header ${k} emitted twice`);
    obj[k] = v;
  }
  return obj;
}

function quotas(r: RouteConfig, v: RequestVars = vars(), consumers: ConsumerConfig[] = []) {
  const plan = planRequest(compileRouteQuotas(r, consumers, { trustedProxies: [] }), v);
  return { plan, inst: (name: string): PlannedQuota => plan.perInstance(name)[0]! };
}

test('seed: every instance spent → 429 headers with Remaining 0 for each instance', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100, time_window: 60 }) }));
  const h = render([
    { q: inst('openai-instance'), view: view(100, 279, 0, 42_100) },
    { q: inst('deepseek-instance'), view: view(100, 269, 0, 50_000) },
  ], true);
  assert.deepEqual(h, {
    'X-AI-RateLimit-Limit-openai-instance': '100',
    'X-AI-RateLimit-Remaining-openai-instance': '0',
    'X-AI-RateLimit-Reset-openai-instance': '43',
    'X-AI-RateLimit-Limit-deepseek-instance': '100',
    'X-AI-RateLimit-Remaining-deepseek-instance': '0',
    'X-AI-RateLimit-Reset-deepseek-instance': '50',
    'x-ratelimit-limit-tokens': '100',
    'x-ratelimit-remaining-tokens': '0',
    'x-ratelimit-reset-tokens': '43s',
  });
});

test('seed: rule headers X-AI-<n>-RateLimit-*; Remaining is limit minus settled tokens, before this request', () => {
  const { plan } = quotas(route({
    'ai-rate-limiting': arl({ rules: [{ key: '${http_x_subscription_id}', count: '${http_x_custom_count ?? 500}', time_window: 60, header_prefix: undefined }] }),
  }), vars({ headers: { 'x-subscription-id': 'sub-123456789' } }));
  const q = plan.common[0]!;
  assert.deepEqual(render([{ q, view: view(500, 0, 0, 60_000) }]), {
    'X-AI-1-RateLimit-Limit': '500', 'X-AI-1-RateLimit-Remaining': '500', 'X-AI-1-RateLimit-Reset': '60',
    'x-ratelimit-limit-tokens': '500', 'x-ratelimit-remaining-tokens': '500', 'x-ratelimit-reset-tokens': '1m0s',
  });
  const second = render([{ q, view: view(500, 156, 0, 57_989) }]);
  assert.equal(second['X-AI-1-RateLimit-Remaining'], '344');
  assert.equal(second['X-AI-1-RateLimit-Reset'], '58', 'whole seconds, rounded up');
  const inflight = render([{ q, view: view(500, 156, 300, 57_989) }]);
  assert.equal(inflight['X-AI-1-RateLimit-Remaining'], '344', 'reservations of running requests are not subtracted');
  const over = render([{ q, view: view(500, 531, 0, 5_871) }]);
  assert.equal(over['X-AI-1-RateLimit-Remaining'], '0', 'never negative');
});

test('rejection: spent quotas show 0, the others keep their remaining; Reset at least 1s', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100, time_window: 60 }) }));
  const a = inst('openai-instance');
  const b = inst('deepseek-instance');
  const h = render([
    { q: a, view: view(100, 40, 60, 0) }, // spent by reservations
    { q: b, view: view(100, 10, 0, 30_000) },
  ], true);
  assert.equal(h['X-AI-RateLimit-Remaining-openai-instance'], '0');
  assert.equal(h['X-AI-RateLimit-Reset-openai-instance'], '1');
  assert.equal(h['X-AI-RateLimit-Remaining-deepseek-instance'], '90');
  const forced = render([{ q: b, view: view(100, 10, 0, 30_000), spent: true }], true);
  assert.equal(forced['X-AI-RateLimit-Remaining-deepseek-instance'], '0', 'explicit spent flag wins');
  const notRejected = render([{ q: a, view: view(100, 40, 60, 0) }]);
  assert.equal(notRejected['X-AI-RateLimit-Remaining-openai-instance'], '60');
  assert.equal(notRejected['X-AI-RateLimit-Reset-openai-instance'], '0');
});

test('fractional consumption (sliding windows) rounds Remaining down', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100, time_window: 60, window_type: 'sliding' }) }));
  const h = render([{ q: inst('openai-instance'), view: view(100, 33.4, 0, 1_500) }]);
  assert.equal(h['X-AI-RateLimit-Remaining-openai-instance'], '66');
  assert.equal(h['X-AI-RateLimit-Reset-openai-instance'], '2');
});

test('OpenAI-style trio follows the quota with the least remaining; hidden quotas are skipped', () => {
  const shown = quotas(route({ 'ai-rate-limiting': arl({ instances: [{ name: 'openai-instance', limit: 1000, time_window: 60, limit_strategy: 'total_tokens', cost_expr: undefined }], rules: [{ key: '${http_x_u}', count: 200, time_window: 3600, header_prefix: 'user' }] }) }), vars({ headers: { 'x-u': 'u1' } }));
  const hidden = quotas(route({ 'ai-rate-limiting': arl({ limit: 5, time_window: 60, show_limit_quota_header: false }) }));
  const h = render([
    { q: shown.inst('openai-instance'), view: view(1000, 100, 0, 10_000) },
    { q: shown.plan.common[0]!, view: view(200, 150, 0, 3_000_000) },
    { q: hidden.inst('deepseek-instance'), view: view(5, 0, 0, 1_000) },
  ]);
  assert.deepEqual(h, {
    'X-AI-RateLimit-Limit-openai-instance': '1000',
    'X-AI-RateLimit-Remaining-openai-instance': '900',
    'X-AI-RateLimit-Reset-openai-instance': '10',
    'X-AI-user-RateLimit-Limit': '200',
    'X-AI-user-RateLimit-Remaining': '50',
    'X-AI-user-RateLimit-Reset': '3000',
    'x-ratelimit-limit-tokens': '200',
    'x-ratelimit-remaining-tokens': '50',
    'x-ratelimit-reset-tokens': '50m0s',
  });
  assert.deepEqual(render([{ q: hidden.inst('openai-instance'), view: view(5, 0, 0, 1_000) }]), {}, 'nothing shown: no headers');
  assert.deepEqual(render([]), {});
});

test('a route quota and a consumer quota on one instance share the header set; the tighter one shows', () => {
  const consumers: ConsumerConfig[] = [{ username: 'jack', key: 'k', ai_rate_limiting: arl({ instances: [{ name: 'openai-instance', limit: 10, time_window: 60, limit_strategy: 'total_tokens', cost_expr: undefined }] }) }];
  const { plan } = quotas(route({ 'ai-rate-limiting': arl({ limit: 1000, time_window: 60 }) }), vars({ consumer: 'jack' }), consumers);
  const [routeQ, consumerQ] = plan.perInstance('openai-instance');
  const h = render([
    { q: routeQ!, view: view(1000, 500, 0, 10_000) },
    { q: consumerQ!, view: view(10, 4, 0, 20_000) },
  ]);
  assert.equal(h['X-AI-RateLimit-Limit-openai-instance'], '10');
  assert.equal(h['X-AI-RateLimit-Remaining-openai-instance'], '6');
  assert.equal(h['X-AI-RateLimit-Reset-openai-instance'], '20');
});

test('ietf style: RateLimit-Policy and RateLimit structured lists', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100, time_window: 60, header_style: 'ietf' }) }, ['openai-instance', 'odd"name']));
  const h = render([
    { q: inst('openai-instance'), view: view(100, 30, 0, 12_400) },
    { q: inst('odd"name'), view: view(100, 100, 0, 5_000) },
  ], true);
  assert.deepEqual(h, {
    'RateLimit-Policy': '"openai-instance";q=100;w=60, "odd\\"name";q=100;w=60',
    'RateLimit': '"openai-instance";r=70;t=13, "odd\\"name";r=0;t=5',
    'x-ratelimit-limit-tokens': '100',
    'x-ratelimit-remaining-tokens': '0',
    'x-ratelimit-reset-tokens': '5s',
  });
});

test('token-rule and route-wide header names', () => {
  const tokenCfg: AiTokenRatelimitConfig = {
    rule_name: 'default_rule', global_threshold: { tokens: 1000, window_seconds: 60 }, rule_items: [], rule_match: 'all', rejected_code: 429,
    rejected_msg: 'Too many requests', show_limit_quota_header: true, window_type: 'fixed', redis: undefined, allow_degradation: false,
  };
  const t = quotas(route({ 'ai-token-ratelimit': tokenCfg })).plan.common[0]!;
  const plain: RouteConfig = { id: 'plain', uri: '/x', methods: [], plugins: { 'ai-proxy-multi': undefined, 'key-auth': undefined, 'ai-rate-limiting': arl({ limit: 50, time_window: 10 }), 'ai-token-ratelimit': undefined } };
  const r = quotas(plain).plan.common[0]!;
  const h = render([{ q: t, view: view(1000, 46, 0, 59_000) }, { q: r, view: view(50, 0, 0, 10_000) }]);
  assert.deepEqual(h, {
    'X-AI-default_rule-RateLimit-Limit': '1000',
    'X-AI-default_rule-RateLimit-Remaining': '954',
    'X-AI-default_rule-RateLimit-Reset': '59',
    'X-AI-RateLimit-Limit': '50',
    'X-AI-RateLimit-Remaining': '50',
    'X-AI-RateLimit-Reset': '10',
    'x-ratelimit-limit-tokens': '50',
    'x-ratelimit-remaining-tokens': '50',
    'x-ratelimit-reset-tokens': '10s',
  });
});

test('quotaHeaders appends to the caller array', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100, time_window: 60 }) }));
  const out: [string, string][] = [['Retry-After', '5']];
  quotaHeaders([{ q: inst('openai-instance'), view: view(100, 0, 0, 1000) }], { rejected: false }, out);
  assert.equal(out[0]![0], 'Retry-After');
  assert.equal(out.length, 7);
});

test('a rule header_prefix equal to a token rule_name yields one header set, not duplicates', () => {
  const tokenCfg: AiTokenRatelimitConfig = {
    rule_name: 'team', global_threshold: { tokens: 1000, window_seconds: 60 }, rule_items: [], rule_match: 'all', rejected_code: 429,
    rejected_msg: 'Too many requests', show_limit_quota_header: true, window_type: 'fixed', redis: undefined, allow_degradation: false,
  };
  const { plan } = quotas(route({
    'ai-rate-limiting': arl({ rules: [{ key: '${http_x_u}', count: 100, time_window: 60, header_prefix: 'TEAM' }] }),
    'ai-token-ratelimit': tokenCfg,
  }), vars({ headers: { 'x-u': 'u' } }));
  assert.equal(plan.common.length, 2);
  const h = render([{ q: plan.common[0]!, view: view(1000, 10, 0, 1_000) }, { q: plan.common[1]!, view: view(100, 10, 0, 1_000) }]);
  assert.deepEqual(Object.keys(h).filter((k) => k.toLowerCase().startsWith('x-ai-team')), ['X-AI-TEAM-RateLimit-Limit', 'X-AI-TEAM-RateLimit-Remaining', 'X-AI-TEAM-RateLimit-Reset']);
  assert.equal(h['X-AI-TEAM-RateLimit-Remaining'], '90');
});

// ---- APISIX standard_headers ----

test('standard_headers: X-RateLimit-*-Tokens replaces X-AI-RateLimit-*, Reset in whole seconds, no duplicate OpenAI trio', () => {
  const { inst } = quotas(route({ 'ai-rate-limiting': arl({ limit: 100000, time_window: 60, standard_headers: true }) }));
  const h = render([{ q: inst('openai-instance'), view: view(100000, 15, 0, 41_200) }]);
  assert.deepEqual(h, {
    'X-RateLimit-Limit-Tokens': '100000',
    'X-RateLimit-Remaining-Tokens': '99985',
    'X-RateLimit-Reset-Tokens': '42',
  });
  const rejected = render([{ q: inst('openai-instance'), view: view(100000, 100000, 0, 17_500) }], true);
  assert.equal(rejected['X-RateLimit-Remaining-Tokens'], '0');
  assert.equal(rejected['X-RateLimit-Reset-Tokens'], '18');
});

test('standard_headers: the suffix follows limit_strategy (PromptTokens, CompletionTokens); the OpenAI trio stays', () => {
  const prompt = quotas(route({ 'ai-rate-limiting': arl({ limit: 50000, time_window: 60, limit_strategy: 'prompt_tokens', standard_headers: true }) }));
  const h = render([{ q: prompt.inst('openai-instance'), view: view(50000, 10, 0, 55_000) }]);
  assert.equal(h['X-RateLimit-Limit-PromptTokens'], '50000');
  assert.equal(h['X-RateLimit-Remaining-PromptTokens'], '49990');
  assert.equal(h['X-RateLimit-Reset-PromptTokens'], '55');
  assert.equal(h['x-ratelimit-remaining-tokens'], '49990');
  const completion = quotas(route({ 'ai-rate-limiting': arl({ instances: [{ name: 'openai-instance', limit: 10, time_window: 60, limit_strategy: 'completion_tokens', cost_expr: undefined }], standard_headers: true }) }));
  assert.equal(completion.inst('openai-instance').headerNames.limit, 'X-RateLimit-Limit-CompletionTokens');
});

test('standard_headers: two quotas with one standard name show the one with the least remaining', () => {
  const { plan, inst } = quotas(route({
    'ai-rate-limiting': arl({ limit: 1000, time_window: 60, standard_headers: true, rules: [{ key: '${http_x_u}', count: 100, time_window: 60, header_prefix: undefined }] }),
  }), vars({ headers: { 'x-u': 'u' } }));
  const h = render([{ q: plan.common[0]!, view: view(100, 90, 0, 5_000) }, { q: inst('openai-instance'), view: view(1000, 10, 0, 5_000) }]);
  assert.deepEqual(h, { 'X-RateLimit-Limit-Tokens': '100', 'X-RateLimit-Remaining-Tokens': '10', 'X-RateLimit-Reset-Tokens': '5' });
});

// ---- Higress ----

test('Higress: a rejection by ai-token-ratelimit carries X-TokenRateLimit-Reset, even with quota headers off', () => {
  const tokenCfg: AiTokenRatelimitConfig = {
    rule_name: 'r', global_threshold: { tokens: 100, window_seconds: 60 }, rule_items: [], rule_match: 'all', rejected_code: 429,
    rejected_msg: 'Too many requests', show_limit_quota_header: false, window_type: 'fixed', redis: undefined, allow_degradation: false,
  };
  const t = quotas(route({ 'ai-token-ratelimit': tokenCfg })).plan.common[0]!;
  assert.deepEqual(render([{ q: t, view: view(100, 120, 0, 30_500) }], true), { 'X-TokenRateLimit-Reset': '31' });
  assert.deepEqual(render([{ q: t, view: view(100, 10, 0, 30_500) }], false), {}, 'not on success');
});

test('x-ratelimit-reset-tokens is written as OpenAI writes it (Go durations)', () => {
  assert.deepEqual([0, 1, 44, 59, 60, 447, 3599, 3600, 3661, 86400].map(goDuration),
    ['0s', '1s', '44s', '59s', '1m0s', '7m27s', '59m59s', '1h0m0s', '1h1m1s', '24h0m0s']);
});
