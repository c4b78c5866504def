import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../../src/config/validate.ts';
import { configWarnings, reloadWarnings, restartOnlyChanges } from '../../src/config/warnings.ts';
import { runValidateCommand } from '../../src/config/validate-command.ts';

function routeWith(plugins: Record<string, unknown>): Record<string, unknown> {
  return { routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy': { provider: 'openai' }, ...plugins } }] };
}

test('cost_expr naming a field no known provider reports validates with a warning, not an error', () => {
  const cfg = validateConfig(routeWith({
    'ai-rate-limiting': { limit: 100, time_window: 60, limit_strategy: 'expression', cost_expr: 'input_tokens + cache_creation_input_tokens + bogus_tokens' },
  }), {});
  assert.deepEqual(configWarnings(cfg).map((w) => [w.path, /"bogus_tokens"/.test(w.message)]), [['routes[0].plugins.ai-rate-limiting.cost_expr', true]]);
  const known = validateConfig(routeWith({
    'ai-rate-limiting': { limit: 100, time_window: 60, limit_strategy: 'expression', cost_expr: 'prompt_tokens - cached_tokens + completion_tokens' },
  }), {});
  assert.deepEqual(configWarnings(known), []);
});

test('per-key rules on a Redis policy without key_hash_secret: a warning naming the rules, never a secret', () => {
  const redisRules = {
    'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', rules: [{ key: '${http_x_user}', count: 10, time_window: 60 }] },
  };
  const w = configWarnings(validateConfig(routeWith(redisRules), {}));
  assert.equal(w.length, 1);
  assert.equal(w[0]!.path, 'key_hash_secret');
  assert.match(w[0]!.message, /routes\[0\]\.plugins\.ai-rate-limiting\.rules/);
  const withSecret = validateConfig({ ...routeWith(redisRules), key_hash_secret: '$ENV://KHS' }, { KHS: 'hunter2-very-secret' });
  assert.equal(withSecret.key_hash_secret, 'hunter2-very-secret');
  assert.deepEqual(configWarnings(withSecret), []);
  assert.deepEqual(configWarnings(validateConfig(routeWith({ 'ai-rate-limiting': { rules: [{ key: '${http_x_user}', count: 10, time_window: 60 }] } }), {})), [], 'local policy: no warning');
});

test('a time_window templated on a client-set variable validates with a warning: each value is a fresh counter', () => {
  const cfg = validateConfig({ routes: [{ uri: '/v1/chat/completions', plugins: {
    'ai-proxy-multi': { instances: [{ name: 'openai', provider: 'openai' }] },
    'ai-rate-limiting': {
      instances: [{ name: 'openai', limit: 100, time_window: '${arg_w ?? 60}' }],
      rules: [
        { key: '${http_x_sub}', count: 30, time_window: '${http_x_w ?? 60}' },
        { key: '${http_x_sub}', count: 30, time_window: '${consumer_name}' },
        { key: '${http_x_sub}', count: '${http_x_c ?? 5}', time_window: 60 },
      ],
    },
  } }] }, {});
  const w = configWarnings(cfg);
  assert.deepEqual(w.map((x) => x.path), ['routes[0].plugins.ai-rate-limiting.instances[0].time_window', 'routes[0].plugins.ai-rate-limiting.rules[0].time_window']);
  assert.match(w[1]!.message, /^comes from \$\{http_x_w\}, which the client sets: each window length it sends is a counter of its own/);
});

test('sluice validate prints warnings on stderr and still says ok', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-warn-'));
  try {
    const file = join(dir, 'c.json');
    writeFileSync(file, JSON.stringify({
      key_hash_secret: 'do-not-print-me-ever',
      ...routeWith({ 'ai-rate-limiting': { limit: 100, time_window: 60, limit_strategy: 'expression', cost_expr: 'weird_field * 2' } }),
    }));
    const out: string[] = [];
    const err: string[] = [];
    const code = runValidateCommand(['--config', file], { out: (l) => out.push(l), err: (l) => err.push(l) }, {});
    assert.equal(code, 0);
    assert.deepEqual(out, ['ok']);
    assert.equal(err.length, 1);
    assert.match(err[0]!, /^warning: routes\[0\]\.plugins\.ai-rate-limiting\.cost_expr: names "weird_field"/);
    assert.ok(!err.join('\n').includes('do-not-print-me-ever'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('key_hash_secret shorter than 16 bytes is an error that does not quote it', () => {
  assert.throws(() => validateConfig({ key_hash_secret: 'short-key' }, {}), (err: Error) => {
    assert.match(err.message, /^key_hash_secret: must be at least 16 bytes/);
    assert.ok(!err.message.includes('short-key'));
    return true;
  });
});

test('a credential that looks like an environment reference Sluice does not substitute is a warning, its value unquoted', () => {
  const proxy = (auth: Record<string, unknown>) => ({ routes: [{ uri: '/v1/messages', plugins: { 'ai-proxy': { provider: 'anthropic', auth } } }] });
  const w = configWarnings(validateConfig(proxy({ header: { 'x-api-key': '${ANTHROPIC_API_KEY}' } }), {}));
  assert.equal(w.length, 1);
  assert.match(w[0]!.path, /auth\.header\.x-api-key$/);
  assert.match(w[0]!.message, /only \$ENV:\/\/NAME is substituted/);
  assert.ok(!w[0]!.message.includes('ANTHROPIC_API_KEY'));
  assert.equal(configWarnings(validateConfig(proxy({ query: { key: '$env://GEMINI_KEY' } }), {})).length, 1);
  assert.deepEqual(configWarnings(validateConfig(proxy({ header: { 'x-api-key': '$ENV://K' } }), { K: 'sk-real' })), []);
});

test('a reload lists the settings it changed that apply only at restart', () => {
  const base = { routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy': { provider: 'openai' } } }] };
  const a = validateConfig(base, {});
  const b = validateConfig({ ...base, workers: 2, listen: { port: 1234 }, limits: { client_idle_timeout_ms: 5000, max_body_bytes: 1000 } }, {});
  assert.deepEqual(restartOnlyChanges(a, b), ['listen.port', 'workers', 'limits.client_idle_timeout_ms']);
  assert.deepEqual(restartOnlyChanges(a, a), []);
  // Read once as well: the token-count pool's budget, the batching of the quota stores a reload keeps.
  const c = validateConfig({ ...base, tokens: { count_budget_ms: 500 }, redis_batching: { flush_interval_ms: 50, max_batch_keys: 10, max_pending_keys: 20, reservation_lease_ms: 5000 } }, {});
  assert.deepEqual(restartOnlyChanges(a, c), [
    'tokens.count_budget_ms', 'redis_batching.flush_interval_ms', 'redis_batching.max_batch_keys', 'redis_batching.max_pending_keys', 'redis_batching.reservation_lease_ms',
  ]);
});

test('a reload changing key_hash_secret warns that per-key counters start afresh, without quoting either secret', () => {
  const base = { routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy': { provider: 'openai' } } }] };
  const none = validateConfig(base, {});
  const one = validateConfig({ ...base, key_hash_secret: 'first-secret-0123456789' }, {});
  const two = validateConfig({ ...base, key_hash_secret: '$ENV://K' }, { K: 'second-secret-0123456789' });
  for (const [prev, next] of [[none, one], [one, two], [two, none]] as const) {
    const w = reloadWarnings(prev, next);
    assert.deepEqual(w.map((i) => i.path), ['key_hash_secret']);
    assert.match(w[0]!.message, /per-key counter .* starts again from zero/);
    assert.doesNotMatch(w[0]!.message, /secret-/);
  }
  assert.deepEqual(reloadWarnings(one, validateConfig({ ...base, key_hash_secret: 'first-secret-0123456789' }, {})), []);
});

test('on a key-auth route, a quota keyed on the credential as written warns (other spellings of one key are other counters)', () => {
  const w = configWarnings(validateConfig(routeWith({
    'key-auth': {},
    'ai-rate-limiting': { rules: [
      { key: '${http_authorization}', count: 10, time_window: 60 }, { key: '${http_apikey}', count: 10, time_window: 60 },
      { key: '${arg_apikey}', count: 10, time_window: 60 }, { key: '${consumer_name}', count: 10, time_window: 60 }, { key: '${http_x_user}', count: 10, time_window: 60 },
    ] },
    'ai-token-ratelimit': { rule_name: 'r', redis: { service_name: '127.0.0.1' }, rule_items: [
      { limit_by_per_param: 'apikey', limit_keys: [{ key: '*', token_per_minute: 5 }] }, { limit_by_per_consumer: '', limit_keys: [{ key: '*', token_per_minute: 5 }] },
    ] },
  }), {}));
  const paths = w.filter((x) => /keys on the API key as the client writes it/.test(x.message)).map((x) => x.path);
  assert.deepEqual(paths, [
    'routes[0].plugins.ai-rate-limiting.rules[0].key', 'routes[0].plugins.ai-rate-limiting.rules[1].key', 'routes[0].plugins.ai-rate-limiting.rules[2].key',
    'routes[0].plugins.ai-token-ratelimit.rule_items[0]',
  ]);
});

test('quotas keyed by the consumer on a route without key-auth, and consumer upstreams no instance quota names: warnings', () => {
  const w = configWarnings(validateConfig(routeWith({
    'ai-rate-limiting': { rules: [{ key: '${consumer_name}', count: 10, time_window: 60 }, { key: '${http_x_user}', count: 10, time_window: 60 }] },
    'ai-token-ratelimit': { rule_name: 'r', rule_items: [{ limit_by_per_consumer: '', limit_keys: [{ key: '*', token_per_minute: 5 }] }] },
  }), {}));
  assert.deepEqual(w.map((x) => x.path), ['routes[0].plugins.ai-rate-limiting.rules[0].key', 'routes[0].plugins.ai-token-ratelimit.rule_items[0]', 'routes[0].plugins.ai-token-ratelimit']);
  assert.match(w[0]!.message, /no key-auth: no request has a consumer, so every request is refused \(400\)/);
  // Higress's plugin without redis (which Higress requires) counts per process: said so.
  assert.match(w[2]!.message, /has no redis: .* each gateway replica grants the whole quota/);
  const authed = routeWith({ 'key-auth': {}, 'ai-rate-limiting': { rules: [{ key: '${consumer_name}', count: 10, time_window: 60 }] } });
  assert.deepEqual(configWarnings(validateConfig({ ...authed, consumers: [{ username: 'a', plugins: { 'key-auth': { key: 'k-a' } } }] }, {})), []);
  // A consumer whose own ai-proxy instances the route's instance quotas do not name is not limited there.
  const multi = (instances: Record<string, unknown>[]) => ({ instances });
  const inst = (name: string) => ({ name, provider: 'openai', weight: 1, auth: { header: { Authorization: 'Bearer x' } } });
  const cfg = {
    routes: [{ uri: '/v1/chat/completions', plugins: { 'key-auth': {}, 'ai-proxy-multi': multi([inst('main')]), 'ai-rate-limiting': { instances: [{ name: 'main', limit: 10, time_window: 60 }] } } }],
    consumers: [
      { username: 'bob', plugins: { 'key-auth': { key: 'k-bob' }, 'ai-proxy-multi': multi([inst('bobs')]) } },
      { username: 'carol', plugins: { 'key-auth': { key: 'k-carol' }, 'ai-proxy-multi': multi([inst('main')]) } },
    ],
  };
  const c = configWarnings(validateConfig(cfg, {}));
  assert.deepEqual(c.map((x) => x.path), ['consumers[0].plugins']);
  assert.match(c[0]!.message, /routes\[0\]\.plugins\.ai-rate-limiting\.instances does not name/);
});

test('a reload that renames a route, or moves one without an id, warns that its counters start afresh or change hands', () => {
  const route = (uri: string, id?: string) => ({ ...(id === undefined ? {} : { id }), uri, plugins: { 'ai-proxy': { provider: 'openai' }, 'ai-rate-limiting': { limit: 10, time_window: 60 } } });
  const cfg = (...routes: Record<string, unknown>[]) => validateConfig({ routes }, {});
  const renamed = reloadWarnings(cfg(route('/a', 'chat')), cfg(route('/a', 'chat2')));
  assert.deepEqual(renamed.map((w) => w.path), ['routes[0].id']);
  assert.match(renamed[0]!.message, /"chat2" is new and "chat" no longer exists: .* start again from zero/);
  const moved = reloadWarnings(cfg(route('/a')), cfg(route('/new'), route('/a')));
  assert.deepEqual(moved.map((w) => w.path), ['routes[0]']);
  assert.match(moved[0]!.message, /keyed "route-0" by position, which served "\/a" before this reload/);
  assert.deepEqual(reloadWarnings(cfg(route('/a', 'x')), cfg(route('/a', 'x'), route('/b', 'y'))), [], 'a route added beside the others: nothing to say');
});

test('with the guard off, a key-auth header or a limit_by_header name uWS cannot take warns; with it on, none', () => {
  const raw = (guard: boolean): Record<string, unknown> => ({
    listen: { host: '127.0.0.1', port: 9080, http1_guard: guard },
    routes: [{ uri: '/v1/chat/completions', plugins: {
      'ai-proxy': { provider: 'openai', forward_headers: ['x-scn', 'x_tenant'] },
      'key-auth': { header: 'x_api_key' },
      'ai-token-ratelimit': { rule_name: 'r', redis: { service_name: 'redis.local', service_port: 6379 }, rule_items: [{ limit_by_per_header: 'x.user', limit_keys: [{ key: '*', token_per_minute: 100 }] }] },
    } }],
  });
  const off = configWarnings(validateConfig(raw(false), {})).filter((w) => /uWS/.test(w.message));
  assert.deepEqual(off.map((w) => w.path), ['routes[0].plugins.key-auth.header', 'routes[0].plugins.ai-token-ratelimit.rule_items[0]', 'routes[0].plugins.ai-proxy-multi.instances[0].forward_headers']);
  assert.match(off[2]!.message, /"x_tenant"/);
  assert.match(off[0]!.message, /"x_api_key"/);
  assert.deepEqual(configWarnings(validateConfig(raw(true), {})).filter((w) => /uWS/.test(w.message)), []);
});

test('a rule key naming no variable is a warning: every caller shares its one counter', () => {
  const w = configWarnings(validateConfig(routeWith({ 'ai-rate-limiting': { rules: [
    { key: 'x_subscription_id', count: 10, time_window: 60 }, { key: '${http_x_user}', count: 10, time_window: 60 },
  ] } }), {}));
  assert.deepEqual(w.map((x) => x.path), ['routes[0].plugins.ai-rate-limiting.rules[0].key']);
  assert.match(w[0]!.message, /every request shares/);
});

test('a Higress per-IP rule reading a header with no trusted_proxies is a warning; with them, none', () => {
  const atr = { 'ai-token-ratelimit': { rule_name: 'r', rule_items: [
    { limit_by_per_ip: 'from-header-x-forwarded-for', limit_keys: [{ key: '0.0.0.0/0', token_per_day: 1000 }] },
    { limit_by_per_ip: 'from-remote-addr', limit_keys: [{ key: '0.0.0.0/0', token_per_day: 1000 }] },
  ] } };
  const w = configWarnings(validateConfig(routeWith(atr), {})).filter((x) => x.path.includes('rule_items'));
  assert.deepEqual(w.map((x) => x.path), ['routes[0].plugins.ai-token-ratelimit.rule_items[0]']);
  assert.match(w[0]!.message, /trusted_proxies is empty/);
  const trusted = configWarnings(validateConfig({ ...routeWith(atr), trusted_proxies: ['127.0.0.1'] }, {}));
  assert.deepEqual(trusted.filter((x) => x.path.includes('rule_items')), []);
});
