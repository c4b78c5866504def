import { test } from 'node:test';
import { createHash } from 'node:crypto';
import assert from 'node:assert/strict';
import type {
  AiProxyConfig,
  AiRateLimitingConfig,
  AiTokenRatelimitConfig,
  ConsumerConfig,
  InstanceQuotaConfig,
  LimitByKind,
  LimitStrategy,
  RouteConfig,
  RoutePlugins,
  RuleConfig,
  TokenRuleItem,
} from '../../src/config/types.ts';
import { compileRouteQuotas, planRequest, type PlannedQuota } from '../../src/quota/plan.ts';
import type { RequestVars } from '../../src/rules/request-vars.ts';
import { arl } from '../helpers/rule-configs.ts';

// ---- config builders (shapes of src/config/types.ts, as the validator would produce them) ----

function inst(name: string, limit: number, time_window: number, limit_strategy: LimitStrategy = 'total_tokens', cost_expr?: string): InstanceQuotaConfig {
  return { name, limit, time_window, limit_strategy, cost_expr };
}

function rule(key: string, count: number | string, time_window: number | string, header_prefix?: string): RuleConfig {
  return { key, count, time_window, header_prefix };
}

function proxy(...names: string[]): AiProxyConfig {
  return {
    instances: names.map((name, i) => ({
      name, provider: 'openai' as const, weight: 1, priority: names.length - i, auth_header: {}, auth_query: {}, model: undefined, endpoint: undefined,
    })),
    fallback_strategy: ['rate_limiting'],
    single: false,
  };
}

function route(id: string, plugins: Partial<RoutePlugins>): RouteConfig {
  return {
    id, uri: '/anything', methods: ['POST'],
    plugins: { 'ai-proxy-multi': undefined, 'key-auth': undefined, 'ai-rate-limiting': undefined, 'ai-token-ratelimit': undefined, ...plugins },
  };
}

function consumer(username: string, ai_rate_limiting?: AiRateLimitingConfig): ConsumerConfig {
  return { username, key: `${username}-key`, ai_rate_limiting };
}

function atr(over: Partial<AiTokenRatelimitConfig>): AiTokenRatelimitConfig {
  return {
    rule_name: 'default_rule', global_threshold: undefined, rule_items: [], rule_match: 'all', rejected_code: 429,
    rejected_msg: 'Too many requests', show_limit_quota_header: true, window_type: 'fixed', redis: undefined,
    allow_degradation: false, ...over,
  };
}

const UNIT = { second: 1, minute: 60, hour: 3600, day: 86400 } as const;

function item(by: LimitByKind, per: boolean, name: string, keys: [string, number, keyof typeof UNIT][]): TokenRuleItem {
  return { by, per, name, limit_keys: keys.map(([key, tokens, unit]) => ({ key, tokens, window_seconds: UNIT[unit] })) };
}

function vars(over: Partial<RequestVars> = {}): RequestVars {
  return { headers: {}, query: '', remoteAddr: '198.51.100.20', consumer: undefined, routeId: 'ai-rate-limiting-route', uri: '/anything', ...over };
}

const NO_PROXIES = { trustedProxies: [] as string[] };
const usage = { prompt_tokens: 23, completion_tokens: 8, total_tokens: 31 };

function only(list: readonly PlannedQuota[]): PlannedQuota {
  assert.equal(list.length, 1, `expected one quota, got ${list.map((q) => q.counter.id).join(', ')}`);
  return list[0]!;
}

// ---- ai-rate-limiting: the seed document's examples ----

test('seed: rate limit one instance', () => {
  const c = compileRouteQuotas(route('ai-rate-limiting-route', {
    'ai-proxy-multi': proxy('deepseek-instance-1', 'deepseek-instance-2'),
    'ai-rate-limiting': arl({ instances: [inst('deepseek-instance-1', 100, 30)] }),
  }), [], NO_PROXIES);
  const plan = planRequest(c, vars());
  assert.deepEqual(plan.common, []);
  const q = only(plan.perInstance('deepseek-instance-1'));
  assert.deepEqual(q.counter, { id: 'r/ai-rate-limiting-route/arl/i/deepseek-instance-1/30', limit: 100, windowMs: 30_000, sliding: false });
  assert.deepEqual(q.header, { kind: 'instance', instance: 'deepseek-instance-1' });
  assert.equal(q.headerNames.remaining, 'X-AI-RateLimit-Remaining-deepseek-instance-1');
  assert.equal(q.cost(usage), 31);
  assert.equal(q.metricRule, 'instance');
  assert.equal(q.consumerScoped, false);
  assert.equal(q.rejectedCode, 429);
  assert.deepEqual(plan.perInstance('deepseek-instance-2'), [], 'the other instance is not limited');
  assert.deepEqual(plan.perInstance('no-such-instance'), []);
});

test('seed: the same quota applies to every instance, each with its own counter', () => {
  const c = compileRouteQuotas(route('ai-rate-limiting-route', {
    'ai-proxy-multi': proxy('openai-instance', 'deepseek-instance'),
    'ai-rate-limiting': arl({ limit: 100, time_window: 60 }),
  }), [], NO_PROXIES);
  const plan = planRequest(c, vars());
  const a = only(plan.perInstance('openai-instance'));
  const b = only(plan.perInstance('deepseek-instance'));
  assert.equal(a.counter.limit, 100);
  assert.equal(b.counter.limit, 100);
  assert.notEqual(a.counter.id, b.counter.id);
  assert.deepEqual(a.header, { kind: 'instance', instance: 'openai-instance' });
  assert.deepEqual(b.header, { kind: 'instance', instance: 'deepseek-instance' });
  assert.equal(a.metricRule, 'route');
  assert.deepEqual(plan.common, []);
});

test('seed: top-level limit covers only the instances not listed', () => {
  const c = compileRouteQuotas(route('r1', {
    'ai-proxy-multi': proxy('openai-instance', 'deepseek-instance'),
    'ai-rate-limiting': arl({ limit: 100, time_window: 60, instances: [inst('openai-instance', 10, 60)] }),
  }), [], NO_PROXIES);
  const plan = planRequest(c, vars());
  assert.equal(only(plan.perInstance('openai-instance')).counter.limit, 10);
  assert.equal(only(plan.perInstance('deepseek-instance')).counter.limit, 100);
});

test('seed: consumers get their own instance quotas, counted apart', () => {
  const consumers = [
    consumer('johndoe', arl({ instances: [inst('openai-instance', 10, 60)] })),
    consumer('janedoe', arl({ instances: [inst('deepseek-instance', 10, 60)] })),
    consumer('nolimit'),
  ];
  const r = route('ai-rate-limiting-route', {
    'ai-proxy-multi': proxy('openai-instance', 'deepseek-instance'),
    'key-auth': { header: 'apikey', query: 'apikey', hide_credentials: true },
  });
  const c = compileRouteQuotas(r, consumers, NO_PROXIES);
  assert.equal(c.active, true);

  const john = planRequest(c, vars({ consumer: 'johndoe' }));
  const jq = only(john.perInstance('openai-instance'));
  assert.equal(jq.counter.id, 'c/johndoe/arl/i/openai-instance/60');
  assert.equal(jq.counter.limit, 10);
  assert.equal(jq.consumerScoped, true);
  assert.equal(jq.metricRule, 'consumer');
  assert.deepEqual(john.perInstance('deepseek-instance'), []);

  const jane = planRequest(c, vars({ consumer: 'janedoe' }));
  assert.equal(only(jane.perInstance('deepseek-instance')).counter.id, 'c/janedoe/arl/i/deepseek-instance/60');
  assert.deepEqual(jane.perInstance('openai-instance'), []);

  for (const who of ['nolimit', undefined, 'unknown']) {
    const p = planRequest(c, vars({ consumer: who }));
    assert.deepEqual([p.common, p.perInstance('openai-instance'), p.perInstance('deepseek-instance')], [[], [], []]);
  }

  // A consumer's quota follows the consumer across routes, as APISIX keys it by the consumer resource.
  const other = compileRouteQuotas({ ...r, id: 'other-route' }, consumers, NO_PROXIES);
  assert.equal(only(planRequest(other, vars({ consumer: 'johndoe' })).perInstance('openai-instance')).counter.id, jq.counter.id);
});

test('consumer top-level limit applies per instance; route and consumer quotas both apply', () => {
  const consumers = [consumer('jack', arl({ limit: 50, time_window: 60, rejected_code: 403 }))];
  const c = compileRouteQuotas(route('r1', {
    'ai-proxy-multi': proxy('a', 'b'),
    'ai-rate-limiting': arl({ instances: [inst('a', 1000, 60)] }),
  }), consumers, NO_PROXIES);
  const p = planRequest(c, vars({ consumer: 'jack' }));
  const onA = p.perInstance('a');
  assert.deepEqual(onA.map((q) => [q.counter.id, q.counter.limit, q.consumerScoped, q.rejectedCode]), [
    ['r/r1/arl/i/a/60', 1000, false, 429],
    ['c/jack/arl/i/a/60', 50, true, 403],
  ]);
  assert.deepEqual(p.perInstance('b').map((q) => q.counter.id), ['c/jack/arl/i/b/60']);
  assert.deepEqual(planRequest(c, vars()).perInstance('b'), [], 'anonymous callers only get the route quotas');
});

test('seed: rules keyed on headers, X-Custom-Count override, a rule skipped when its key is absent', () => {
  const c = compileRouteQuotas(route('ai-rate-limiting-route', {
    'ai-proxy-multi': proxy('openai-instance', 'deepseek-instance'),
    'ai-rate-limiting': arl({
      rules: [
        rule('${http_x_subscription_id}', '${http_x_custom_count ?? 500}', 60),
        rule('${http_x_trial_id}', 50, 60),
      ],
    }),
  }), [], NO_PROXIES);

  const sub = planRequest(c, vars({ headers: { 'x-subscription-id': 'sub-123456789' } }));
  const q1 = only(sub.common);
  assert.equal(q1.counter.limit, 500);
  assert.equal(q1.counter.windowMs, 60_000);
  assert.deepEqual(q1.header, { kind: 'rule', label: '1' });
  assert.equal(q1.headerNames.limit, 'X-AI-1-RateLimit-Limit');
  assert.equal(q1.metricRule, 'rule-1');
  assert.match(q1.counter.id, /^r\/ai-rate-limiting-route\/arl\/rule\/1\/60\/[0-9a-f]{32}$/);
  assert.ok(!q1.counter.id.includes('sub-123456789'), 'the key value is hashed');
  assert.deepEqual(sub.perInstance('openai-instance'), [], 'rules are common, not per instance');

  const custom = only(planRequest(c, vars({ headers: { 'x-subscription-id': 'sub-123456789', 'x-custom-count': '10' } })).common);
  assert.equal(custom.counter.limit, 10);
  assert.equal(custom.counter.id, q1.counter.id, 'the limit is not part of the id');

  const again = only(planRequest(c, vars({ headers: { 'x-subscription-id': 'sub-123456789' } })).common);
  assert.equal(again.counter.limit, 500);
  assert.equal(again.counter.id, q1.counter.id);
  assert.equal(planRequest(c, vars({ headers: { 'x-subscription-id': 'sub-123456789' } })).common[0], again, 'cached per key');

  const otherSub = only(planRequest(c, vars({ headers: { 'x-subscription-id': 'sub-2' } })).common);
  assert.notEqual(otherSub.counter.id, q1.counter.id);

  const trial = only(planRequest(c, vars({ headers: { 'x-trial-id': 'trial-123456789' } })).common);
  assert.equal(trial.counter.limit, 50);
  assert.deepEqual(trial.header, { kind: 'rule', label: '2' });

  const both = planRequest(c, vars({ headers: { 'x-subscription-id': 's', 'x-trial-id': 't' } }));
  assert.deepEqual(both.common.map((q) => q.header), [{ kind: 'rule', label: '1' }, { kind: 'rule', label: '2' }], 'every matching rule applies');

  // APISIX: a request to which no rule applies fails (it must not escape every quota by dropping headers).
  const none = planRequest(c, vars());
  assert.deepEqual(none.common, []);
  assert.equal(none.missing?.status, 400);
  assert.match(none.missing!.message, /no rule applies.*"http_x_subscription_id" is missing.*"http_x_trial_id" is missing/);
  const skipping = compileRouteQuotas(route('skip', {
    'ai-rate-limiting': arl({ on_missing_key: 'skip', missing_key_code: 403, rules: [rule('${http_x_subscription_id}', 5, 60)] }),
  }), [], NO_PROXIES);
  const skipped = planRequest(skipping, vars());
  assert.deepEqual([skipped.common, skipped.missing], [[], undefined], 'on_missing_key: skip serves it without the rule');
});

test('rule header_prefix, templated window, combined keys and invalid counts', () => {
  const c = compileRouteQuotas(route('r2', {
    'ai-rate-limiting': arl({
      rules: [
        rule('${consumer_name}-${remote_addr}', 100, '${http_x_window ?? 60}', 'tenant'),
        rule('${arg_apikey}', '${http_x_count}', 30),
      ],
    }),
  }), [], NO_PROXIES);
  const p = planRequest(c, vars({ consumer: 'jack', headers: { 'x-window': '3600' } }));
  const q = only(p.common);
  assert.deepEqual(q.header, { kind: 'rule', label: 'tenant' });
  assert.equal(q.headerNames.remaining, 'X-AI-tenant-RateLimit-Remaining');
  assert.equal(q.metricRule, 'rule-tenant');
  assert.equal(q.counter.windowMs, 3_600_000);
  assert.match(q.counter.id, /^r\/r2\/arl\/rule\/1\/3600\//);
  const q60 = only(planRequest(c, vars({ consumer: 'jack' })).common);
  assert.match(q60.counter.id, /^r\/r2\/arl\/rule\/1\/60\//, 'another window length is another counter');
  assert.match(planRequest(c, vars()).missing!.message, /"consumer_name" is missing/, 'no consumer: the combined key is absent');

  // A rule whose key is there but whose count is not is refused (APISIX errors the rule), naming the variable.
  const noCount = planRequest(c, vars({ query: 'apikey=k1', consumer: 'jack' }));
  assert.match(noCount.missing!.message, /rules\[1\] count: request variable "http_x_count" is missing/);
  const badCount = planRequest(c, vars({ query: 'apikey=k1', consumer: 'jack', headers: { 'x-count': 'lots' } }));
  assert.match(badCount.missing!.message, /request variable "http_x_count" is not a positive integer/);
  assert.ok(!badCount.missing!.message.includes('lots'), 'values are never echoed');
  assert.equal(planRequest(c, vars({ query: 'apikey=k1', consumer: 'jack', headers: { 'x-count': '7' } })).common[1]!.counter.limit, 7);
  // With a default, an absent variable never misses; a value that is no count does, and is named as well.
  const badWindow = planRequest(c, vars({ consumer: 'jack', query: 'apikey=k1', headers: { 'x-window': 'hourly', 'x-count': '7' } }));
  assert.match(badWindow.missing!.message, /rules\[0\] time_window: request variable "http_x_window" is not an integer from 1 to \d+ \(seconds\)/);
  const defaulted = compileRouteQuotas(route('r2d', { 'ai-rate-limiting': arl({ limit: '${http_x_limit ?? 50}', time_window: 60 }) }), [], NO_PROXIES);
  assert.equal(only(planRequest(defaulted, vars()).common).counter.limit, 50);
  assert.match(planRequest(defaulted, vars({ headers: { 'x-limit': '0' } })).missing!.message, /limit: request variable "http_x_limit" is not a positive integer/);
});

test('rules and instance limits combine on one route', () => {
  const c = compileRouteQuotas(route('r3', {
    'ai-proxy-multi': proxy('openai-instance', 'deepseek-instance'),
    'ai-rate-limiting': arl({ instances: [inst('openai-instance', 10, 60)], rules: [rule('${http_x_user}', 500, 60)] }),
  }), [], NO_PROXIES);
  const p = planRequest(c, vars({ headers: { 'x-user': 'u1' } }));
  assert.equal(only(p.common).counter.limit, 500);
  assert.equal(only(p.perInstance('openai-instance')).counter.limit, 10);
  assert.deepEqual(p.perInstance('deepseek-instance'), []);
});

test('limit strategies, expressions, sliding windows and header options reach the quota', () => {
  const c = compileRouteQuotas(route('r4', {
    'ai-proxy-multi': proxy('a', 'b', 'c'),
    'ai-rate-limiting': arl({
      limit: 1000, time_window: 60, limit_strategy: 'expression', cost_expr: 'prompt_tokens + 4 * completion_tokens',
      instances: [inst('a', 100, 60, 'prompt_tokens'), inst('b', 100, 60, 'completion_tokens')],
      window_type: 'sliding', header_style: 'ietf', show_limit_quota_header: false, rejected_code: 503, rejected_msg: 'slow down',
    }),
  }), [], NO_PROXIES);
  const p = planRequest(c, vars());
  const a = only(p.perInstance('a'));
  assert.equal(a.cost(usage), 23);
  assert.equal(only(p.perInstance('b')).cost(usage), 8);
  const cq = only(p.perInstance('c'));
  assert.equal(cq.cost(usage), 55);
  assert.equal(cq.counter.sliding, true);
  assert.equal(cq.headerStyle, 'ietf');
  assert.equal(cq.showHeader, false);
  assert.equal(cq.rejectedCode, 503);
  assert.equal(cq.rejectedMsg, 'slow down');
});

test('a route without instances gets a route-wide quota for the top-level limit', () => {
  const c = compileRouteQuotas(route('plain', { 'ai-rate-limiting': arl({ limit: 200, time_window: 10 }) }), [], NO_PROXIES);
  const q = only(planRequest(c, vars()).common);
  assert.deepEqual(q.header, { kind: 'route' });
  assert.equal(q.counter.id, 'r/plain/arl/route/10');
  assert.equal(q.headerNames.limit, 'X-AI-RateLimit-Limit');
});

test('counter ids are stable across recompiles, keep through limit edits, and encode names', () => {
  const make = (limit: number, tw: number) => compileRouteQuotas(route('team/a', {
    'ai-proxy-multi': proxy('x/y'),
    'ai-rate-limiting': arl({ instances: [inst('x/y', limit, tw)], rules: [rule('${http_x_k}', limit, tw)] }),
  }), [], NO_PROXIES);
  const v = vars({ headers: { 'x-k': 'secret-api-key' } });
  const p1 = planRequest(make(100, 60), v);
  const p2 = planRequest(make(999, 60), v);
  const p3 = planRequest(make(100, 30), v);
  assert.equal(only(p1.perInstance('x/y')).counter.id, 'r/team%2Fa/arl/i/x%2Fy/60');
  assert.equal(only(p2.perInstance('x/y')).counter.id, only(p1.perInstance('x/y')).counter.id);
  assert.equal(only(p2.common).counter.id, only(p1.common).counter.id);
  assert.notEqual(only(p3.common).counter.id, only(p1.common).counter.id);
  assert.ok(!only(p1.common).counter.id.includes('secret'));
});

test('static plans are reused: no per-request allocation without dynamic rules', () => {
  const c = compileRouteQuotas(route('r5', {
    'ai-proxy-multi': proxy('a', 'b'),
    'ai-rate-limiting': arl({ limit: 10, time_window: 60 }),
  }), [], NO_PROXIES);
  assert.equal(planRequest(c, vars()), planRequest(c, vars({ headers: { 'x-a': '1' } })));
  const none = compileRouteQuotas(route('r6', { 'ai-proxy-multi': proxy('a') }), [], NO_PROXIES);
  assert.equal(none.active, false);
  assert.deepEqual(planRequest(none, vars()).perInstance('a'), []);
});

test('bad plugin config is reported with its path', () => {
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-rate-limiting': arl({ limit: 1, time_window: 1, limit_strategy: 'expression', cost_expr: 'prompt_tokens +' }),
  }), [], NO_PROXIES), /cost_expr "prompt_tokens \+": unexpected end/);
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-rate-limiting': arl({ rules: [rule('${http_x', 1, 1)] }),
  }), [], NO_PROXIES), /routes\[r7\]\.plugins\.ai-rate-limiting\.rules\[0\]\.key: .*unclosed/);
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-rate-limiting': arl({ rules: [rule('${http_x}', '${http_c ?? x}', 1)] }),
  }), [], NO_PROXIES), /rules\[0\]\.count/);
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-token-ratelimit': atr({ rule_items: [item('header', true, 'x-k', [['regexp:(', 1, 'minute']])] }),
  }), [], NO_PROXIES), /rule_items\[0\]\.limit_keys\[0\]\.key: invalid regular expression/);
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-token-ratelimit': atr({ rule_items: [item('ip', true, 'from-remote-addr', [['1.1.1.0/33', 1, 'minute']])] }),
  }), [], NO_PROXIES), /limit_keys\[0\]\.key: "1.1.1.0\/33": prefix length/);
  assert.throws(() => compileRouteQuotas(route('r7', {
    'ai-token-ratelimit': atr({ rule_items: [item('ip', true, 'from-somewhere', [['*', 1, 'minute']])] }),
  }), [], NO_PROXIES), /ip source must be/);
  assert.throws(() => compileRouteQuotas(route('r7', {}), [], { trustedProxies: ['nope'] }), /"nope" is not an IP/);
});

// ---- ai-token-ratelimit: the Higress document's examples ----

test('higress: global_threshold is one quota for the rule group', () => {
  const c = compileRouteQuotas(route('routeA', {
    'ai-token-ratelimit': atr({ rule_name: 'routeA-global-limit-rule', global_threshold: { tokens: 1000, window_seconds: 60 } }),
  }), [], NO_PROXIES);
  const p = planRequest(c, vars());
  const q = only(p.common);
  assert.deepEqual(q.counter, { id: 't/routeA-global-limit-rule/g/60', limit: 1000, windowMs: 60_000, sliding: false });
  assert.deepEqual(q.header, { kind: 'token-rule', label: 'routeA-global-limit-rule' });
  assert.equal(q.headerNames.limit, 'X-AI-routeA-global-limit-rule-RateLimit-Limit');
  assert.equal(q.metricRule, 'routeA-global-limit-rule');
  assert.equal(q.cost(usage), 31, 'counts total tokens');
  assert.equal(planRequest(c, vars()), p, 'static plan reused');
});

const APIKEY_RULE = atr({
  rule_items: [
    item('param', false, 'apikey', [['9a342114-ba8a-11ec-b1bf-00163e1250b5', 10, 'minute'], ['a6a6d7f2-ba8a-11ec-bec2-00163e1250b5', 100, 'hour']]),
    item('param', true, 'apikey', [['regexp:^a.*', 10, 'second'], ['regexp:^b.*', 100, 'minute'], ['*', 1000, 'hour']]),
  ],
});

test('higress rule_match: first (before PR #4011): apikey param, the first matching item and its first matching key win', () => {
  const c = compileRouteQuotas(route('r', { 'ai-token-ratelimit': { ...APIKEY_RULE, rule_match: 'first' } }), [], NO_PROXIES);
  const plan = (q: string) => planRequest(c, vars({ query: q })).common;
  const exact1 = only(plan('apikey=9a342114-ba8a-11ec-b1bf-00163e1250b5'));
  assert.deepEqual([exact1.counter.limit, exact1.counter.windowMs], [10, 60_000]);
  assert.ok(!exact1.counter.id.includes('9a342114'), 'configured keys are hashed too');
  assert.match(exact1.counter.id, /^t\/default_rule\/param\/apikey\/60\/[0-9a-f]{32}$/);
  const exact2 = only(plan('apikey=a6a6d7f2-ba8a-11ec-bec2-00163e1250b5'));
  assert.deepEqual([exact2.counter.limit, exact2.counter.windowMs], [100, 3_600_000], 'first item wins over the ^a regexp');
  assert.equal(only(plan('apikey=9a342114-ba8a-11ec-b1bf-00163e1250b5')), exact1, 'exact key: one shared counter');

  const a1 = only(plan('apikey=abc'));
  const a2 = only(plan('apikey=abd'));
  assert.deepEqual([a1.counter.limit, a1.counter.windowMs], [10, 1000]);
  assert.match(a1.counter.id, /^t\/default_rule\/per-param\/apikey\/1\//);
  assert.notEqual(a1.counter.id, a2.counter.id, 'per key: each value its own counter');
  const b = only(plan('apikey=bcd'));
  assert.deepEqual([b.counter.limit, b.counter.windowMs], [100, 60_000]);
  const star = only(plan('apikey=zzz'));
  assert.deepEqual([star.counter.limit, star.counter.windowMs], [1000, 3_600_000]);
  assert.notEqual(only(plan('apikey=yyy')).counter.id, star.counter.id);
  assert.deepEqual(plan(''), [], 'no apikey: not limited');
  assert.deepEqual(plan('other=1'), []);
});

test('higress (current): every matching rule item applies, each with its first matching key', () => {
  const c = compileRouteQuotas(route('r', { 'ai-token-ratelimit': APIKEY_RULE }), [], NO_PROXIES);
  const limits = (q: string) => planRequest(c, vars({ query: q })).common.map((x) => [x.counter.limit, x.counter.windowMs / 1000]);
  assert.deepEqual(limits('apikey=9a342114-ba8a-11ec-b1bf-00163e1250b5'), [[10, 60], [1000, 3600]], 'exact key and the * of the per item');
  assert.deepEqual(limits('apikey=a6a6d7f2-ba8a-11ec-bec2-00163e1250b5'), [[100, 3600], [10, 1]], 'exact key and ^a (first matching key of the item)');
  assert.deepEqual(limits('apikey=zzz'), [[1000, 3600]]);
  assert.deepEqual(limits(''), []);
});

test('higress: x-ca-key header, exact then per-header', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rule_items: [
        item('header', false, 'x-ca-key', [['102234', 10, 'minute'], ['308239', 10, 'hour']]),
        item('header', true, 'x-ca-key', [['regexp:^a.*', 10, 'second'], ['regexp:^b.*', 100, 'minute'], ['*', 1000, 'hour']]),
      ],
    }),
  }), [], NO_PROXIES);
  const plan = (v: string) => only(planRequest(c, vars({ headers: { 'x-ca-key': v } })).common).counter;
  const all = (v: string) => planRequest(c, vars({ headers: { 'x-ca-key': v } })).common.map((q) => [q.counter.limit, q.counter.windowMs]);
  assert.deepEqual(all('102234'), [[10, 60_000], [1000, 3_600_000]], 'the exact item and the per-header * both apply');
  assert.deepEqual(all('308239'), [[10, 3_600_000], [1000, 3_600_000]]);
  assert.equal(plan('b1').limit, 100);
  assert.equal(plan('zz').limit, 1000);
});

test('higress: per-IP from x-forwarded-for, exact, CIDR and catch-all; header honoured only from trusted proxies', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rule_items: [item('ip', true, 'from-header-x-forwarded-for', [['1.1.1.1', 10, 'day'], ['1.1.1.0/24', 100, 'day'], ['0.0.0.0/0', 1000, 'day']])],
    }),
  }), [], { trustedProxies: ['10.0.0.0/8'] });
  const viaProxy = (xff: string) => only(planRequest(c, vars({ remoteAddr: '10.0.0.1', headers: { 'x-forwarded-for': xff } })).common).counter;
  assert.equal(viaProxy('1.1.1.1').limit, 10);
  assert.equal(viaProxy('1.1.1.2').limit, 100);
  assert.notEqual(viaProxy('1.1.1.2').id, viaProxy('1.1.1.3').id, 'each IP in the range has its own counter');
  assert.equal(viaProxy('8.8.8.8').limit, 1000);
  assert.equal(viaProxy('6.6.6.6, 1.1.1.1, 10.0.0.5').limit, 10, 'rightmost untrusted hop');
  assert.equal(viaProxy('1.1.1.1').windowMs, 86_400_000);

  // An untrusted peer cannot pick its identity with the header: its socket address counts.
  const direct = only(planRequest(c, vars({ remoteAddr: '203.0.113.9', headers: { 'x-forwarded-for': '1.1.1.1' } })).common).counter;
  assert.equal(direct.limit, 1000);
  assert.equal(direct.id, viaProxy('203.0.113.9').id);
  assert.equal(only(planRequest(c, vars({ remoteAddr: '::ffff:1.1.1.1' })).common).counter.limit, 10, 'mapped peer');
  assert.deepEqual(planRequest(c, vars({ remoteAddr: '2001:db8::1' })).common, [], 'IPv6 client, IPv4-only keys');
  assert.deepEqual(planRequest(c, vars({ remoteAddr: 'garbage' })).common, []);
});

test('higress: per-IP from the socket address with IPv6 ranges', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rule_items: [item('ip', true, 'from-remote-addr', [['2001:db8::/32', 50, 'minute'], ['::/0', 500, 'minute'], ['0.0.0.0/0', 5, 'minute']])],
    }),
  }), [], { trustedProxies: ['0.0.0.0/0'] });
  const at = (addr: string, xff?: string) =>
    only(planRequest(c, vars({ remoteAddr: addr, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } })).common).counter;
  assert.equal(at('2001:db8:1::1').limit, 50);
  assert.equal(at('2001:0db8:0001:0000:0000:0000:0000:0001').id, at('2001:db8:1::1').id, 'canonical form keys the counter');
  assert.equal(at('2400::1').limit, 500);
  assert.equal(at('9.9.9.9', '2001:db8::5').limit, 5, 'from-remote-addr ignores forwarding headers');
});

test('higress: consumer items, exact then per-consumer', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rule_items: [
        item('consumer', false, '', [['consumer1', 10, 'second'], ['consumer2', 100, 'hour']]),
        item('consumer', true, '', [['regexp:^a.*', 10, 'second'], ['regexp:^b.*', 100, 'minute'], ['*', 1000, 'hour']]),
      ],
    }),
  }), [], NO_PROXIES);
  const of = (name: string | undefined) => planRequest(c, vars({ consumer: name })).common;
  assert.deepEqual(of('consumer1').map((q) => q.counter.limit), [10, 1000], 'exact item and per-consumer * both apply');
  assert.equal(of('consumer2')[0]!.counter.windowMs, 3_600_000);
  assert.equal(only(of('alice')).counter.limit, 10);
  assert.equal(only(of('bob')).counter.limit, 100);
  assert.notEqual(only(of('carol')).counter.id, only(of('dave')).counter.id);
  assert.deepEqual(of(undefined), []);
});

test('higress: cookie items with a custom rejection', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rejected_code: 200,
      rejected_msg: '{"code":-1,"msg":"Too many requests"}',
      rule_items: [
        item('cookie', false, 'key1', [['value1', 10, 'minute'], ['value2', 100, 'hour']]),
        item('cookie', true, 'key1', [['regexp:^a.*', 10, 'second'], ['*', 1000, 'hour']]),
      ],
    }),
  }), [], NO_PROXIES);
  const q = planRequest(c, vars({ headers: { cookie: 'other=1; key1=value1' } })).common[0]!;
  assert.equal(q.counter.limit, 10);
  assert.equal(q.rejectedCode, 200);
  assert.equal(q.rejectedMsg, '{"code":-1,"msg":"Too many requests"}');
  assert.equal(only(planRequest(c, vars({ headers: { cookie: 'key1=apple' } })).common).counter.windowMs, 1000);
  assert.equal(only(planRequest(c, vars({ headers: { cookie: 'key1=kiwi' } })).common).counter.limit, 1000);
  assert.deepEqual(planRequest(c, vars({ headers: { cookie: 'key2=value1' } })).common, []);
});

test('higress: a present value matching no key falls through to the next item; key order decides', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-token-ratelimit': atr({
      rule_items: [
        item('header', false, 'x-tier', [['gold', 5000, 'minute']]),
        item('header', true, 'x-user', [['*', 100, 'minute'], ['admin', 1, 'minute']]),
      ],
    }),
  }), [], NO_PROXIES);
  const p = (h: Record<string, string>) => planRequest(c, vars({ headers: h })).common;
  assert.deepEqual(p({ 'x-tier': 'gold', 'x-user': 'u' }).map((q) => q.counter.limit), [5000, 100], 'both items match: both apply');
  assert.equal(only(p({ 'x-tier': 'silver', 'x-user': 'u' })).counter.limit, 100, 'no gold: next item');
  assert.equal(only(p({ 'x-user': 'admin' })).counter.limit, 100, '* listed first wins');
  assert.deepEqual(p({ 'x-tier': 'silver' }), []);
});

test('global_threshold and rule items combine; ai-rate-limiting and ai-token-ratelimit combine', () => {
  const c = compileRouteQuotas(route('r', {
    'ai-proxy-multi': proxy('a'),
    'ai-rate-limiting': arl({ rules: [rule('${http_x_user}', 500, 60)], limit: 10, time_window: 60 }),
    'ai-token-ratelimit': atr({ global_threshold: { tokens: 1000, window_seconds: 60 }, rule_items: APIKEY_RULE.rule_items }),
  }), [], NO_PROXIES);
  const p = planRequest(c, vars({ headers: { 'x-user': 'u' }, query: 'apikey=zzz' }));
  assert.deepEqual(p.common.map((q) => q.metricRule), ['default_rule', 'rule-1', 'default_rule']);
  assert.equal(p.common[0]!.counter.id, 't/default_rule/g/60');
  assert.equal(only(p.perInstance('a')).counter.limit, 10);
});

// ---- issue 7 item 11: limit keys are hashed with a secret ----

test('key values are HMAC-SHA256ed with key_hash_secret: same secret same id, another secret another id', () => {
  const r = route('h', { 'ai-rate-limiting': arl({ rules: [rule('${http_authorization}', 10, 60)] }) });
  const v = vars({ headers: { authorization: 'Bearer sk-live-123' } });
  const id = (secret?: string) => only(planRequest(compileRouteQuotas(r, [], { trustedProxies: [], keyHashSecret: secret }), v).common).counter.id;
  assert.equal(id('s1'), id('s1'), 'replicas configured alike agree');
  assert.notEqual(id('s1'), id('s2'));
  assert.equal(id(), id(), 'no secret: one random key for the whole process (reloads keep counters)');
  assert.notEqual(id(), id('s1'));
  // An unkeyed hash of a guessed key cannot confirm it.
  const plain = createHash('sha256').update('${http_authorization}\nBearer sk-live-123').digest('hex').slice(0, 32);
  assert.ok(!id('s1').endsWith(plain));
});

// ---- templated limits (APISIX: limit and time_window may be ${var ?? default}) ----

test('templated top-level and instance limits resolve per request; one counter per resolved window', () => {
  const c = compileRouteQuotas(route('tpl', {
    'ai-proxy-multi': proxy('a', 'b'),
    'ai-rate-limiting': arl({
      limit: '${http_x_count ?? 10}', time_window: '${http_x_window ?? 60}',
      instances: [{ name: 'a', limit: '${http_x_a_limit}', time_window: 60, limit_strategy: 'total_tokens', cost_expr: undefined }],
    }),
  }), [], NO_PROXIES);
  const p = (h: Record<string, string>) => planRequest(c, vars({ headers: h }));
  const b10 = only(p({ 'x-a-limit': '5' }).perInstance('b'));
  assert.deepEqual([b10.counter.limit, b10.counter.windowMs], [10, 60_000]);
  const b77 = only(p({ 'x-a-limit': '5', 'x-count': '77' }).perInstance('b'));
  assert.equal(b77.counter.limit, 77);
  assert.equal(b77.counter.id, b10.counter.id, 'the limit is not part of the id');
  assert.notEqual(only(p({ 'x-a-limit': '5', 'x-window': '30' }).perInstance('b')).counter.id, b10.counter.id);
  assert.equal(only(p({ 'x-a-limit': '5' }).perInstance('a')).counter.limit, 5);
  // The instance limit has no default: a request without it fails closed, naming the variable.
  assert.match(p({}).missing!.message, /instance "a" limit: request variable "http_x_a_limit" is missing/);

  const routeWide = compileRouteQuotas(route('tpl2', { 'ai-rate-limiting': arl({ limit: '${http_x_count ?? 10}', time_window: 60 }) }), [], NO_PROXIES);
  assert.equal(only(planRequest(routeWide, vars({ headers: { 'x-count': '3' } })).common).counter.limit, 3);
  assert.equal(only(planRequest(routeWide, vars()).common).counter.limit, 10);
});
