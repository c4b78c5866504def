import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { loadConfigFile } from '../../src/config/load.ts';
import { ConfigError, validateConfig, type ConfigIssue } from '../../src/config/validate.ts';
import { redisClientKey } from '../../src/config/redis.ts';
// Provider modules register their names and instance checks with validation (as the CLI and the app do).
import '../../src/providers/registry.ts';

const fixtures = new URL('../fixtures/config/', import.meta.url).pathname;
const examples = new URL('../../examples/', import.meta.url).pathname;

/** Issues of a config that must fail; fails the test when it validates. */
function issuesOf(fn: () => unknown): ConfigIssue[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  assert.fail('expected a ConfigError');
}

type Expected = readonly [path: string, message: string | RegExp];

function assertIssues(actual: readonly ConfigIssue[], expected: readonly Expected[]): void {
  assert.equal(actual.length, expected.length, `issue count\n${actual.map((i) => `${i.path}: ${i.message}`).join('\n')}`);
  expected.forEach(([path, message], i) => {
    assert.equal(actual[i]!.path, path, `issue ${i} path`);
    if (typeof message === 'string') assert.equal(actual[i]!.message, message, `issue ${i} at ${path}`);
    else assert.match(actual[i]!.message, message, `issue ${i} at ${path}`);
  });
}

/** A minimal valid route to build on. */
function route(extra: Record<string, unknown> = {}, plugins: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    uri: '/v1/chat/completions',
    plugins: { 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai' }] }, ...plugins },
    ...extra,
  };
}

const R = 'routes[0].plugins';
const PM = `${R}.ai-proxy-multi`;
const RL = `${R}.ai-rate-limiting`;
const TR = 'routes[1].plugins.ai-token-ratelimit';
const PER = 'must be one of: instance_health_and_rate_limiting, rate_limiting, http_429, http_5xx';
const WIN = 'must set exactly one of token_per_second, token_per_minute, token_per_hour, token_per_day';
const LIMIT_BY = 'must set exactly one of limit_by_header, limit_by_param, limit_by_consumer, limit_by_cookie, '
  + 'limit_by_per_header, limit_by_per_param, limit_by_per_consumer, limit_by_per_cookie, limit_by_per_ip';
const URI_MSG = "must start with '/' and may end with '*' (prefix match); no query or whitespace";
const FORBIDDEN_OPTION = "cannot be set by an instance: it is the client's request (Sluice counts the prompt and relays the stream the client asked for)";
const CHASH_ONLY = 'is only used by the chash algorithm, which Sluice does not support';

// One fixture per failure mode, each with the exact list of issues it must produce, in order.
const INVALID: Record<string, readonly Expected[]> = {
  'unknown-top-level-key.yaml': [['listne', 'unknown key (did you mean listen?)']],
  'unknown-plugin.yaml': [
    [`${R}.ai-proxy-mutli`, 'unknown plugin (did you mean ai-proxy-multi?)'],
    [R, 'must contain exactly one of ai-proxy or ai-proxy-multi'],
  ],
  'unknown-instance-key.yaml': [[`${PM}.instances[0].wieght`, 'unknown key (did you mean weight?)']],
  'weight-not-integer.yaml': [
    [`${PM}.instances[0].weight`, 'must be an integer'],
    [`${PM}.instances[1].weight`, 'must not be negative'],
  ],
  'proxy-count.yaml': [
    ['routes[0].plugins', 'must contain exactly one of ai-proxy or ai-proxy-multi'],
    ['routes[1].plugins', 'must contain exactly one of ai-proxy or ai-proxy-multi'],
    ['routes[2].plugins', 'must contain exactly one of ai-proxy or ai-proxy-multi'],
  ],
  'instance-fields.yaml': [
    [`${PM}.fallback_strategy[1]`, PER],
    [`${PM}.instances[0].provider`, /^must be one of: openai, deepseek, openai-compatible, aimlapi, openrouter, azure-openai/],
    [`${PM}.instances[1].name`, 'duplicates instances[0].name'],
    [`${PM}.instances[1].override.endpoint`, 'is required for provider openai-compatible'],
    [`${PM}.instances[2].name`, "must contain only letters, digits, '.', '_' and '-'"],
    [`${PM}.instances[2].override.endpoint`, 'must be an absolute http(s) URL'],
    [`${PM}.instances[3].name`, 'is required'],
    [`${PM}.instances[3].priority`, 'must be an integer'],
    [`${PM}.instances[3].auth.header.Bad Header`, 'is not a valid header name'],
    [`${PM}.instances[3].auth.header.Host`, 'is set by the proxy and cannot be configured'],
    [`${PM}.instances[3].auth.header.X-Ok`, 'must be a string (YAML read a number here: quote it)'],
  ],
  'instances-empty.yaml': [
    [`${PM}.fallback_strategy`, 'must be a string or an array of strings'],
    [`${PM}.instances`, 'must be a non-empty array'],
  ],
  'apisix-unsupported.yaml': [
    [`${PM}.timeout`, 'must be an integer between 1 and 600000'],
    [`${PM}.max_response_bytes`, 'is not supported: buffered upstream answers are capped at 64 MiB and streams end after limits.upstream_idle_timeout_ms of silence'],
    [`${PM}.balancer.algorithm`, 'chash is not supported; Sluice balances by weighted round robin'],
    [`${PM}.balancer.hash_on`, CHASH_ONLY],
    [`${PM}.balancer.key`, CHASH_ONLY],
    [`${PM}.instances[0].checks.active`, 'must be an object'],
    [`${PM}.instances[0].options.max_tokens`, 'must be a positive integer'],
    ['routes[1].plugins.ai-proxy.extra', 'unknown key'],
    ['routes[1].plugins.ai-proxy.keepalive_timeout', 'must be at least 1000'],
    ['routes[1].plugins.ai-proxy.options.stream', FORBIDDEN_OPTION],
  ],
  'route-fields.yaml': [
    ['routes[0].uri', URI_MSG],
    ['routes[0].methods[1]', 'must be one of: GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS'],
    ['routes[0].upstream', 'must be an object'],
    ['routes[1].uri', URI_MSG],
    ['routes[2].id', "must contain only letters, digits, '.', '_' and '-'"],
    ['routes[3].uri', 'is required'],
    ['routes[1].id', 'duplicates routes[0].id'],
  ],
  'rate-limit-limits.yaml': [
    [`${RL}.limit`, 'must be a positive integer'],
    [`${RL}.rejected_code`, 'must be an integer between 200 and 599'],
    [`${RL}.show_limit_quota_header`, 'must be a boolean: write true or false, unquoted'],
    [`${RL}.header_style`, 'must be one of: apisix, ietf'],
    [`${RL}.window_type`, 'must be one of: fixed, sliding'],
    ['routes[1].plugins.ai-rate-limiting.time_window', 'is required when limit is set'],
    ['routes[2].plugins.ai-rate-limiting', 'must set at least one of limit, instances, rules or model_limits'],
    // Past 2^53 − 1 the message gives the bound, not "must be a positive integer" for a positive integer.
    ['routes[3].plugins.ai-rate-limiting.limit', 'must be at most 9007199254740991'],
    // A rejection has an error body: a status without one would leave its bytes to be read as the next answer.
    ['routes[4].plugins.ai-rate-limiting.rejected_code', 'must not be 204: a rejection carries an error body, which a 204 answer cannot'],
  ],
  'rate-limit-instances.yaml': [
    [`${RL}.instances[1].name`, 'duplicates instances[0].name'],
    [`${RL}.instances[2].name`, "does not name an instance of this route's ai-proxy-multi or ai-proxy"],
    [`${RL}.instances[2].time_window`, 'is required'],
    [`${RL}.instances[3].name`, 'is required'],
    [`${RL}.instances[3].limit_strategy`, 'must be one of: total_tokens, prompt_tokens, completion_tokens, cached_prompt_tokens, cache_write_tokens, reasoning_tokens, uncached_prompt_tokens, expression'],
    ['routes[1].plugins.ai-rate-limiting.instances[1].name', "does not name an instance of this route's ai-proxy-multi or ai-proxy"],
    // A name no instance may carry: both places say why, neither says the other does not exist.
    ['routes[2].plugins.ai-proxy-multi.instances[0].name', "must contain only letters, digits, '.', '_' and '-'"],
    ['routes[2].plugins.ai-rate-limiting.instances[0].name', "must contain only letters, digits, '.', '_' and '-'"],
  ],
  'cost-expr.yaml': [
    [`${RL}.cost_expr`, 'is required when limit_strategy is expression'],
    [`${RL}.instances[0].cost_expr`, /^is not a valid expression: .*end of expression/],
    [`${RL}.instances[1].cost_expr`, 'is only used when limit_strategy is expression'],
    ['routes[1].plugins.ai-rate-limiting.cost_expr', 'is only used when limit_strategy is expression'],
    // Any usage field name is accepted (APISIX resolves names against the usage); a bare function name is not.
    ['routes[2].plugins.ai-rate-limiting.cost_expr', /^is not a valid expression: .*function "max" needs arguments/],
    // Expressions that never charge: a slip in the config, not a free quota.
    ['routes[3].plugins.ai-rate-limiting.cost_expr', 'is not a valid expression: cost_expr "prompt_tokens / 0": divides by the constant 0 (a quotient by 0 counts as 0)'],
    ['routes[3].plugins.ai-rate-limiting.instances[0].cost_expr', 'is not a valid expression: cost_expr "0 - prompt_tokens": is 0 or less for every usage, so every charge would be 0'],
  ],
  'rules.yaml': [
    [`${RL}.rules[0].key`, /unclosed/],
    [`${RL}.rules[1].key`, /unknown variable "no_such_var"/],
    [`${RL}.rules[1].count`, /default "many" is not a positive integer/],
    [`${RL}.rules[1].time_window`, 'must be an integer between 1 and 31622400'],
    [`${RL}.rules[2].count`, 'must be a positive integer'],
    [`${RL}.rules[2].time_window`, /time_window "sixty" must be an integer from 1 to 31622400/],
    [`${RL}.rules[2].header_prefix`, "must contain only letters, digits and '-'"],
    [`${RL}.rules[4].header_prefix`, 'duplicates rules[3].header_prefix'],
    [`${RL}.rules[5].window`, 'unknown key'],
    [`${RL}.rules[5].key`, 'is required'],
    [`${RL}.rules[5].count`, 'must be a positive integer or a template such as ${var} or ${var ?? 500}'],
    [`${RL}.rules[5].time_window`, 'is required'],
  ],
  'redis-policies.yaml': [
    [`${RL}.redis_host`, 'is required when policy is redis'],
    [`${RL}.redis_port`, 'must be an integer between 1 and 65535'],
    [`${RL}.redis_timeout`, 'must be a positive integer'],
    ['routes[1].plugins.ai-rate-limiting.redis_cluster_nodes', 'is required when policy is redis-cluster'],
    ['routes[1].plugins.ai-rate-limiting.redis_database', 'must be 0: Redis Cluster has only database 0'],
    ['routes[2].plugins.ai-rate-limiting.redis_cluster_nodes[1]', "must be 'host:port'"],
    ['routes[2].plugins.ai-rate-limiting.redis_cluster_nodes[3]', "must be 'host:port'"],
    ['routes[3].plugins.ai-rate-limiting.redis_role', 'must be one of: master, slave'],
    ['routes[3].plugins.ai-rate-limiting.redis_sentinels', 'is required when policy is redis-sentinel'],
    ['routes[3].plugins.ai-rate-limiting.redis_master_name', 'is required when policy is redis-sentinel'],
    ['routes[4].plugins.ai-rate-limiting.redis_sentinels[1].host', 'must be a host name or IP address'],
    ['routes[4].plugins.ai-rate-limiting.redis_sentinels[2].port', 'must be an integer between 1 and 65535'],
    ['routes[4].plugins.ai-rate-limiting.redis_sentinels[3]', "must be 'host:port' or {host, port}"],
    ['routes[5].plugins.ai-rate-limiting.policy', 'must be one of: local, redis, redis-cluster, redis-sentinel'],
  ],
  'consumers.yaml': [
    [`${R}.key-auth.header`, 'is not a valid header name'],
    [`${R}.key-auth.hide_credentials`, 'must be a boolean'],
    ['consumers[0].username', "must contain only letters, digits, '_' and '-'"],
    ['consumers[1].plugins.ai-token-ratelimit', 'is not supported on consumers (only key-auth, ai-rate-limiting, ai-proxy, ai-proxy-multi)'],
    ['consumers[1].plugins.limit-count', 'unknown plugin'],
    ['consumers[1].plugins.key-auth.key', 'duplicates the key of consumers[0]'],
    ['consumers[2].username', 'duplicates consumers[1].username'],
    ['consumers[2].plugins.key-auth.key', 'is required'],
    ['consumers[2].plugins.ai-rate-limiting.instances[0].name', 'does not name an instance of any route'],
    ['consumers[3].username', 'is required'],
    ['consumers[3].plugins', 'must be an object'],
  ],
  'token-ratelimit.yaml': [
    ['routes[0].plugins.ai-token-ratelimit.rule_name', 'is required'],
    ['routes[0].plugins.ai-token-ratelimit', 'must set global_threshold or rule_items'],
    ['routes[0].plugins.ai-token-ratelimit.rejected_code', 'must be an integer between 200 and 599'],
    [`${TR}.global_threshold`, WIN],
    [`${TR}.rule_items[0]`, LIMIT_BY],
    [`${TR}.rule_items[1].limit_keys[0].key`, 'regexp: and * keys are only allowed with limit_by_per_*'],
    [`${TR}.rule_items[1].limit_keys[1].key`, 'regexp: and * keys are only allowed with limit_by_per_*'],
    [`${TR}.rule_items[1].limit_keys[3].key`, 'duplicates limit_keys[2].key'],
    [`${TR}.rule_items[1].limit_keys[3].token_per_minute`, 'must be a positive integer'],
    [`${TR}.rule_items[1].limit_keys[4]`, WIN],
    [`${TR}.rule_items[2].limit_keys[0].key`, /^is not a valid regular expression: /],
    [`${TR}.rule_items[3].limit_by_per_ip`, 'must be from-remote-addr or from-header-<header name>'],
    [`${TR}.rule_items[3].limit_keys[0].key`, 'must be an IP address or CIDR range'],
    [`${TR}.rule_items[3].limit_keys[1].key`, 'must be an IP address or CIDR range'],
    [`${TR}.rule_items[4].limit_by_cookie`, 'must be a non-empty string'],
    [`${TR}.rule_items[4].limit_keys`, 'must be a non-empty array'],
    [`${TR}.rule_items[5].limit_keys`, 'is required'],
    [`${TR}.redis.service_name`, 'is required'],
    [`${TR}.redis.timeout`, 'must be a positive integer'],
  ],
  'globals.yaml': [
    ['listen.host', 'must be an IP address or host name'],
    ['admin.port', 'must differ from listen.port'],
    ['workers', 'must be "auto" or an integer from 1 to 256'],
    ['limits.max_body_bytes', 'must be a positive integer'],
    ['limits.upstream_idle_timeout_ms', 'must be a positive integer'],
    ['limits.max_client_connections', 'must be an integer between 1 and 10000000'],
    ['limits.listen_backlog', 'must be an integer between 1 and 65535'],
    ['tokens.default_max_tokens', 'must be a positive integer'],
    ['redis_batching.max_pending_keys', 'must be at least redis_batching.max_batch_keys'],
    ['trusted_proxies[1]', 'must be an IP address or CIDR range'],
    ['trusted_proxies[2]', 'must be an IP address or CIDR range'],
    ['trusted_proxies[3]', 'must be an IP address or CIDR range'],
    ['routes', 'must be an array'],
  ],
  'env-missing.yaml': [
    ['admin.port', 'environment variable SLUICE_TEST_UNSET_PORT is not set'],
    [`${PM}.instances[0].auth.header.Authorization`, 'environment variable SLUICE_TEST_UNSET_KEY is not set'],
    [`${PM}.instances[0].override.endpoint`, 'environment variable SLUICE_TEST_UNSET_URL is not set'],
  ],
  'root-not-object.yaml': [['', /root-not-object\.yaml: the config must be a mapping \(with routes\), not a list$/]],
  'syntax-error.yaml': [['', /syntax-error\.yaml:4:3: Flow sequence/]],
  'duplicate-key.json': [['', /duplicate-key\.json:3:3: Map keys must be unique/]],
};

describe('config fixtures: one per failure mode', () => {
  it('every invalid fixture has an expectation', () => {
    assert.deepEqual(readdirSync(join(fixtures, 'invalid')).sort(), Object.keys(INVALID).sort());
  });
  for (const [file, expected] of Object.entries(INVALID)) {
    it(file, () => {
      assertIssues(issuesOf(() => loadConfigFile(join(fixtures, 'invalid', file), {})), expected);
    });
  }

  it('ConfigError.message lists every issue as path: message, one per line', () => {
    const err = (() => {
      try {
        loadConfigFile(join(fixtures, 'invalid', 'weight-not-integer.yaml'), {});
      } catch (e) {
        return e as ConfigError;
      }
      return assert.fail('expected a ConfigError');
    })();
    assert.equal(err.message, [
      'routes[0].plugins.ai-proxy-multi.instances[0].weight: must be an integer',
      'routes[0].plugins.ai-proxy-multi.instances[1].weight: must not be negative',
    ].join('\n'));
  });

  it('lists at most 100 issues, then one line counting the rest (a generated file can repeat a mistake millions of times)', () => {
    const issues = issuesOf(() => validateConfig({ routes: Array.from({ length: 150 }, () => ({ uri: 'x' })) }, {}));
    assert.equal(issues.length, 101);
    assert.deepEqual(issues[100], { path: '', message: '… and 200 more issues' });
    // Wrapped again (the issues cross a thread on reload), the list stays as it is.
    const again = new ConfigError(issues);
    assert.deepEqual(again.issues, issues);
    assert.equal(again.message.split('\n').length, 101);
  });
});

describe('config defaults', () => {
  it('an empty config gets every documented default', () => {
    const c = validateConfig({}, {});
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 9080, http1_guard: true });
    assert.deepEqual(c.admin, { host: '127.0.0.1', port: 9091 });
    assert.equal(c.workers, 1);
    assert.deepEqual(c.limits, {
      max_body_bytes: 8388608, upstream_connect_timeout_ms: 2000, upstream_first_byte_timeout_ms: 60000, upstream_idle_timeout_ms: 60000,
      upstream_body_timeout_ms: 300000, max_quota_keys: 100000,
      max_inflight_body_bytes: 67108864, max_inflight_answer_bytes: 268435456, max_header_fields: 48, max_header_line_bytes: 8192, max_header_bytes: 32768,
      max_drain_bytes: 67108864, client_body_timeout_ms: 60000, client_header_timeout_ms: 10000, client_idle_timeout_ms: 60000, client_send_timeout_ms: 10000,
      max_client_connections: 10000,
      listen_backlog: 4096,
    });
    assert.deepEqual(c.tokens, { default_max_tokens: 256, offload_bytes: 4096, offload_threads: 1, max_reservation: 32768, max_usage: 1047576, models: {}, count_budget_ms: 2000 });
    assert.deepEqual(c.trusted_proxies, []);
    assert.deepEqual(c.redis_batching, { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 100000, reservation_lease_ms: 15000 });
    assert.deepEqual(c.routes, []);
    assert.deepEqual(c.consumers, []);
    assert.equal(c.key_hash_secret, undefined);
    assert.deepEqual(validateConfig(null, {}), c);
  });

  it('top-level x- keys are the writer\'s own (an anchor\'s home): ignored; any other unknown key is still an error', async () => {
    const { parseConfigText } = await import('../../src/config/load.ts');
    const text = [
      'x-instance: &inst { provider: openai-compatible, auth: { header: { Authorization: "Bearer k" } }, override: { endpoint: "http://127.0.0.1:1/v1/chat/completions" } }',
      'routes:',
      '  - id: r',
      '    uri: /v1/chat/completions',
      '    plugins:',
      '      ai-proxy-multi: { instances: [ { <<: *inst, name: a }, { <<: *inst, name: b, weight: 2 } ] }',
    ].join('\n');
    const c = validateConfig(parseConfigText(text, 'x.yaml'), {});
    assert.deepEqual(c.routes[0]!.plugins['ai-proxy-multi']!.instances.map((i) => [i.name, i.weight]), [['a', 1], ['b', 2]]);
    assert.throws(() => validateConfig(parseConfigText(text.replace('x-instance', 'defaults'), 'x.yaml'), {}), /defaults: unknown key/);
    // Nothing in them is read, an unset $ENV:// reference included.
    assert.doesNotThrow(() => validateConfig(parseConfigText(`x-secrets: { k: "$ENV://SLUICE_TEST_UNSET_VARIABLE" }\n${text}`, 'x.yaml'), {}));
  });

  it('a partial section keeps defaults for the fields it omits', () => {
    const c = validateConfig({ listen: { port: 0 }, limits: { max_body_bytes: 1024 }, workers: 2 }, {});
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 0, http1_guard: true });
    assert.equal(c.limits.max_body_bytes, 1024);
    assert.equal(c.limits.upstream_connect_timeout_ms, 2000);
    assert.equal(c.workers, 2);
  });

  it('workers: "auto" is one serving thread per core; tokens.offload_threads sizes each thread\'s tokenizer pool', () => {
    const c = validateConfig({ workers: 'auto', tokens: { offload_threads: 3 } }, {});
    assert.equal(c.workers, Math.min(256, availableParallelism()));
    assert.equal(c.tokens.offload_threads, 3);
    for (const bad of [0, 257, 1.5, 'two', true]) {
      assert.throws(() => validateConfig({ workers: bad }, {}), (e: Error) => e.message.includes('workers: must be "auto" or an integer from 1 to 256'));
    }
    assert.throws(() => validateConfig({ tokens: { offload_threads: 0 } }, {}), (e: Error) => e.message.includes('tokens.offload_threads: must be an integer between 1 and 64'));
  });

  it('route, instance and plugin defaults', () => {
    const c = validateConfig({
      routes: [route({}, { 'key-auth': null, 'ai-rate-limiting': { limit: 100, time_window: 60 } })],
    }, {});
    const r = c.routes[0]!;
    assert.equal(r.id, 'route-0');
    assert.deepEqual(r.methods, []);
    assert.deepEqual(r.plugins['ai-proxy-multi'], {
      instances: [{
        name: 'a', provider: 'openai', weight: 1, priority: 0, auth_header: {}, auth_query: {}, model: undefined, endpoint: undefined,
      }],
      fallback_strategy: ['instance_health', 'rate_limiting'],
      single: false,
    });
    assert.deepEqual(r.plugins['key-auth'], { header: 'apikey', query: 'apikey', hide_credentials: false });
    assert.deepEqual(r.plugins['ai-rate-limiting'], {
      limit: 100, time_window: 60, limit_strategy: 'total_tokens', cost_expr: undefined, instances: [], rules: [],
      rejected_code: 429, rejected_msg: undefined, show_limit_quota_header: true, header_style: 'apisix',
      standard_headers: false, on_missing_key: 'reject', missing_key_code: 400,
      window_type: 'fixed', policy: 'local', redis: undefined, allow_degradation: false,
    });
    assert.equal(r.plugins['ai-token-ratelimit'], undefined);
  });

  it('methods are stored upper-case without duplicates; numeric route ids become strings', () => {
    const c = validateConfig({ routes: [route({ id: 7, methods: ['post', 'POST', 'Get'] })] }, {});
    assert.deepEqual(c.routes[0]!.methods, ['POST', 'GET']);
    assert.equal(c.routes[0]!.id, '7');
  });

  it('overlapping routes are allowed (the first match wins at request time)', () => {
    const c = validateConfig({ routes: [route({ id: 'x', uri: '/v1/*' }), route({ id: 'y', uri: '/v1/chat/completions' })] }, {});
    assert.deepEqual(c.routes.map((r) => r.uri), ['/v1/*', '/v1/chat/completions']);
  });
});

describe('config normalisation', () => {
  it('ai-proxy becomes a single instance named ai-proxy-<provider>, as APISIX names it', () => {
    const proxy = { provider: 'deepseek', auth: { header: { Authorization: 'Bearer k' } }, options: { model: 'deepseek-chat' } };
    const c = validateConfig({
      routes: [
        { id: 'chat', uri: '/chat', plugins: { 'ai-proxy': proxy } },
        { uri: '/other', plugins: { 'ai-proxy': { provider: 'openai-compatible', override: { endpoint: 'http://127.0.0.1:1/v1/chat/completions' } } } },
      ],
    }, {});
    assert.deepEqual(c.routes[0]!.plugins['ai-proxy-multi'], {
      instances: [{
        name: 'ai-proxy-deepseek', provider: 'deepseek', weight: 1, priority: 0, auth_header: { Authorization: 'Bearer k' }, auth_query: {},
        model: 'deepseek-chat', endpoint: undefined,
      }],
      fallback_strategy: [],
      single: true,
    });
    assert.equal(c.routes[1]!.plugins['ai-proxy-multi']!.instances[0]!.name, 'ai-proxy-openai-compatible');
    assert.equal(c.routes[1]!.plugins['ai-proxy-multi']!.instances[0]!.endpoint, 'http://127.0.0.1:1/v1/chat/completions');
  });

  it('fallback_strategy accepts a string or an array and expands instance_health_and_rate_limiting', () => {
    const fb = (v: unknown): unknown => validateConfig({
      routes: [{ uri: '/a', plugins: { 'ai-proxy-multi': { fallback_strategy: v, instances: [{ name: 'a', provider: 'openai' }] } } }],
    }, {}).routes[0]!.plugins['ai-proxy-multi']!.fallback_strategy;
    assert.deepEqual(fb('instance_health_and_rate_limiting'), ['instance_health', 'rate_limiting']);
    assert.deepEqual(fb(['http_429', 'rate_limiting', 'http_5xx', 'rate_limiting']), ['http_429', 'rate_limiting', 'http_5xx']);
    assert.deepEqual(fb('http_5xx'), ['http_5xx']);
  });

  it('balancer roundrobin is accepted; route upstream objects are accepted and unused', () => {
    const c = validateConfig({
      routes: [{
        uri: '/a',
        upstream: { type: 'roundrobin', nodes: { 'httpbin.org:80': 1 } },
        plugins: { 'ai-proxy-multi': { balancer: { algorithm: 'roundrobin' }, instances: [{ name: 'a', provider: 'openai' }] } },
      }],
    }, {});
    assert.equal(c.routes[0]!.plugins['ai-proxy-multi']!.instances.length, 1);
  });

  it('APISIX route name, desc and status, and a plugin\'s _meta.disable: status 0 and disable true take them out', () => {
    const proxy = { 'ai-proxy': { provider: 'openai' } };
    const c = validateConfig({
      routes: [
        { id: 'on', name: 'chat', desc: '', status: 1, uri: '/a', plugins: { ...proxy, 'ai-rate-limiting': { limit: 10, time_window: 60, _meta: { disable: true } } } },
        { id: 'off', name: 'old chat', desc: 'kept for later', status: 0, uri: '/b', plugins: proxy },
        { id: 'quota', uri: '/c', plugins: { ...proxy, 'ai-rate-limiting': { limit: 10, time_window: 60, _meta: { disable: false } } } },
      ],
    }, {});
    assert.deepEqual(c.routes.map((r) => r.id), ['on', 'quota']);
    assert.equal(c.routes[0]!.plugins['ai-rate-limiting'], undefined);
    assert.equal(c.routes[1]!.plugins['ai-rate-limiting']!.limit, 10);
    assertIssues(issuesOf(() => validateConfig({ routes: [{ uri: '/a', status: 2, name: 7, plugins: { ...proxy, 'ai-rate-limiting': { limit: 10, time_window: 60, _meta: { disable: 'yes', priority: 1 } } } }] }, {})), [
      ['routes[0].name', 'must be a string (YAML read a number here: quote it)'],
      ['routes[0].status', 'must be 1 (enabled) or 0 (disabled)'],
      ['routes[0].plugins.ai-rate-limiting._meta.priority', 'not supported: of _meta, Sluice reads only disable'],
      ['routes[0].plugins.ai-rate-limiting._meta.disable', 'must be a boolean'],
    ]);
    // A disabled route is still validated, and still needs an id of its own.
    assertIssues(issuesOf(() => validateConfig({ routes: [{ id: 'x', uri: '/a', plugins: proxy }, { id: 'x', status: 0, uri: '/b', plugins: {} }] }, {})), [
      ['routes[1].plugins', 'must contain exactly one of ai-proxy or ai-proxy-multi'],
      ['routes[1].id', 'duplicates routes[0].id'],
    ]);
  });

  it('instance quotas inherit the plugin-level strategy and expression', () => {
    const c = validateConfig({
      routes: [route({}, {
        'ai-rate-limiting': {
          limit_strategy: 'expression', cost_expr: 'prompt_tokens + 4 * completion_tokens',
          instances: [{ name: 'a', limit: 10, time_window: 60 }],
          rules: [{ key: '${http_x_subscription_id}', count: '${http_x_custom_count ?? 500}', time_window: 60, header_prefix: 'Sub' }],
        },
      })],
    }, {});
    const rl = c.routes[0]!.plugins['ai-rate-limiting']!;
    assert.deepEqual(rl.instances, [
      { name: 'a', limit: 10, time_window: 60, limit_strategy: 'expression', cost_expr: 'prompt_tokens + 4 * completion_tokens' },
    ]);
    assert.deepEqual(rl.rules, [{ key: '${http_x_subscription_id}', count: '${http_x_custom_count ?? 500}', time_window: 60, header_prefix: 'Sub' }]);
    assert.equal(rl.limit, undefined);
  });

  it('ai-token-ratelimit items: windows, lower-cased header sources, string keys', () => {
    const c = loadConfigFile(join(fixtures, 'seeds', 'higress-header-x-ca-key.yaml'), {});
    const t = c.routes[0]!.plugins['ai-token-ratelimit']!;
    assert.deepEqual(t.rule_items[0], {
      by: 'header', per: false, name: 'x-ca-key',
      limit_keys: [{ key: '102234', tokens: 10, window_seconds: 60 }, { key: '308239', tokens: 10, window_seconds: 3600 }],
    });
    assert.deepEqual(t.rule_items[1]!.limit_keys.map((k) => [k.key, k.window_seconds]), [['regexp:^a.*', 1], ['regexp:^b.*', 60], ['*', 3600]]);
    assert.equal(t.rejected_code, 429);
    assert.equal(t.rejected_msg, 'Too many requests');
    assert.equal(t.window_type, 'fixed');
    assert.equal(t.allow_degradation, false);
    assert.equal(t.global_threshold, undefined);

    const ip = validateConfig({
      routes: [route({}, {
        'ai-token-ratelimit': {
          rule_name: 'r', global_threshold: { token_per_day: 5 },
          rule_items: [{ limit_by_per_ip: 'from-header-X-Forwarded-For', limit_keys: [{ key: '2001:db8::/32', token_per_hour: 1 }] }],
        },
      })],
    }, {}).routes[0]!.plugins['ai-token-ratelimit']!;
    assert.deepEqual(ip.global_threshold, { tokens: 5, window_seconds: 86400 });
    assert.deepEqual(ip.rule_items[0], {
      by: 'ip', per: true, name: 'from-header-x-forwarded-for', limit_keys: [{ key: '2001:db8::/32', tokens: 1, window_seconds: 3600 }],
    });
    assert.equal(ip.redis, undefined);
  });

  it('consumers carry their key and their own quota', () => {
    const c = loadConfigFile(join(fixtures, 'seeds', 'apisix-consumers.json'), { OPENAI_API_KEY: 'o', DEEPSEEK_API_KEY: 'd' });
    assert.deepEqual(c.consumers.map((x) => [x.username, x.key, x.ai_rate_limiting?.instances[0]?.name]), [
      ['johndoe', 'john-key', 'openai-instance'],
      ['janedoe', 'jane-key', 'deepseek-instance'],
    ]);
  });
});

describe('config redis targets', () => {
  const redisRoute = (uri: string, fields: Record<string, unknown>): Record<string, unknown> =>
    route({ uri }, { 'ai-rate-limiting': { limit: 10, time_window: 60, ...fields } });

  it('routes naming the same Redis get the same id; the id never holds the password', () => {
    const c = validateConfig({
      routes: [
        redisRoute('/a', { policy: 'redis', redis_host: '127.0.0.1', redis_password: 'pw-secret' }),
        redisRoute('/b', { policy: 'redis', redis_host: '127.0.0.1', redis_port: 6379, redis_password: 'pw-secret' }),
        redisRoute('/c', { policy: 'redis', redis_host: '127.0.0.1', redis_database: 1, redis_password: 'pw-secret' }),
        route({ uri: '/d' }, { 'ai-token-ratelimit': { rule_name: 'r', global_threshold: { token_per_minute: 1 }, redis: { service_name: '127.0.0.1', password: 'pw-secret' } } }),
      ],
    }, {});
    const ids = c.routes.map((r) => (r.plugins['ai-rate-limiting'] ?? r.plugins['ai-token-ratelimit'])!.redis!.id);
    assert.equal(ids[0], 'standalone://127.0.0.1:6379/0');
    assert.equal(ids[1], ids[0]);
    assert.equal(ids[2], 'standalone://127.0.0.1:6379/1');
    assert.equal(ids[3], ids[0]);
    for (const id of ids) assert.ok(!id.includes('pw-secret'));
    assert.deepEqual(c.routes[0]!.plugins['ai-rate-limiting']!.redis, {
      mode: 'standalone', host: '127.0.0.1', port: 6379, username: undefined, password: 'pw-secret', database: 0,
      timeout_ms: 1000, connect_timeout_ms: 1000, cluster_nodes: [], cluster_name: undefined, sentinels: [],
      master_name: undefined, role: undefined, sentinel_username: undefined, sentinel_password: undefined,
      id: 'standalone://127.0.0.1:6379/0',
    });
  });

  it('routes on the same Redis may differ in timeout and password (APISIX: per-route settings); each set gets its own client key', () => {
    const c = validateConfig({
      routes: [
        redisRoute('/a', { policy: 'redis', redis_host: '127.0.0.1', redis_password: 'first-secret' }),
        redisRoute('/b', { policy: 'redis', redis_host: '127.0.0.1', redis_password: 'second-secret', redis_timeout: 500 }),
        redisRoute('/c', { policy: 'redis', redis_host: '127.0.0.1', redis_password: 'first-secret', redis_timeout: 500 }),
        redisRoute('/d', { policy: 'redis', redis_host: '127.0.0.1', redis_password: 'first-secret' }),
        route({ uri: '/e' }, { 'ai-token-ratelimit': { rule_name: 'r', global_threshold: { token_per_minute: 1 }, redis: { service_name: '127.0.0.1', password: 'first-secret' } } }),
      ],
    }, {});
    const targets = c.routes.map((r) => (r.plugins['ai-rate-limiting'] ?? r.plugins['ai-token-ratelimit'])!.redis!);
    assert.equal(new Set(targets.map((t) => t.id)).size, 1);
    const keys = targets.map(redisClientKey);
    assert.equal(keys[3], keys[0], 'the same settings share a client');
    assert.equal(keys[4], keys[0], 'Higress timeout 1000 = APISIX default');
    assert.equal(new Set([keys[0], keys[1], keys[2]]).size, 3);
    for (const k of keys) assert.ok(!k.includes('secret'));
  });

  it('cluster ids ignore node order; sentinel ids include master and role', () => {
    const c = validateConfig({
      routes: [
        redisRoute('/a', { policy: 'redis-cluster', redis_cluster_nodes: ['127.0.0.1:7001', '127.0.0.1:7000'], redis_username: 'u' }),
        redisRoute('/b', { policy: 'redis-cluster', redis_cluster_nodes: ['127.0.0.1:7000', '127.0.0.1:7001'], redis_username: 'u' }),
        redisRoute('/c', {
          policy: 'redis-sentinel', redis_sentinels: ['127.0.0.1:26379', { host: '::1', port: 26380 }, { host: 'localhost' }],
          redis_master_name: 'mymaster',
        }),
      ],
    }, {});
    const [a, b, s] = c.routes.map((r) => r.plugins['ai-rate-limiting']!.redis!);
    assert.equal(a!.id, 'cluster://u@127.0.0.1:7000,127.0.0.1:7001/0');
    assert.equal(b!.id, a!.id);
    assert.deepEqual(a!.cluster_nodes, [{ host: '127.0.0.1', port: 7001 }, { host: '127.0.0.1', port: 7000 }]);
    assert.equal(s!.mode, 'sentinel');
    assert.equal(s!.role, 'master');
    assert.deepEqual(s!.sentinels, [{ host: '127.0.0.1', port: 26379 }, { host: '::1', port: 26380 }, { host: 'localhost', port: 26379 }]);
    assert.equal(s!.id, 'sentinel://127.0.0.1:26379,[::1]:26380,localhost:26379/0?master=mymaster&role=master');
  });
});

describe('config $ENV substitution', () => {
  it('replaces whole and embedded references in any string', () => {
    const c = validateConfig({
      listen: { host: '$ENV://HOST', port: '$ENV://PORT' },
      routes: [{
        uri: '/a',
        plugins: {
          'ai-proxy-multi': {
            instances: [{
              name: 'a', provider: 'openai-compatible',
              auth: { header: { Authorization: 'Bearer $ENV://KEY' } },
              override: { endpoint: '$ENV://URL' },
            }],
          },
          'key-auth': { hide_credentials: '$ENV://HIDE' },
        },
      }],
    }, { HOST: '127.0.0.1', PORT: '8080', KEY: 'sk-abc', URL: 'http://127.0.0.1:9/v1/chat/completions', HIDE: 'true' });
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 8080, http1_guard: true });
    const inst = c.routes[0]!.plugins['ai-proxy-multi']!.instances[0]!;
    assert.equal(inst.auth_header['Authorization'], 'Bearer sk-abc');
    assert.equal(inst.endpoint, 'http://127.0.0.1:9/v1/chat/completions');
    assert.equal(c.routes[0]!.plugins['key-auth']!.hide_credentials, true);
  });

  it('a numeric string is an integer only when it came whole from $ENV', () => {
    assertIssues(issuesOf(() => validateConfig({ listen: { port: '8080' } }, {})), [['listen.port', 'must be an integer between 0 and 65535']]);
  });

  it('secret values never appear in error messages', () => {
    const secret = 'sk-SECRET-VALUE-123';
    const err = issuesOf(() => validateConfig({
      routes: [
        { uri: '/a', plugins: { 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai', override: { endpoint: '$ENV://S' } }] } } },
        redisLike('/b', '$ENV://S'),
        redisLike('/c', 'other'),
      ],
      consumers: [
        { username: 'x', plugins: { 'key-auth': { key: '$ENV://S' } } },
        { username: 'y', plugins: { 'key-auth': { key: '$ENV://S' } } },
      ],
    }, { S: secret }));
    assert.equal(err.length, 2, "endpoint and duplicate key; differing Redis passwords are allowed");
    for (const i of err) assert.ok(!i.message.includes(secret) && !i.path.includes(secret), `${i.path}: ${i.message}`);
  });

  function redisLike(uri: string, password: string): Record<string, unknown> {
    return route({ uri }, { 'ai-rate-limiting': { limit: 1, time_window: 1, policy: 'redis', redis_host: 'localhost', redis_password: password } });
  }
});

describe('config freezing', () => {
  it('the validated config is deep-frozen', () => {
    const c = validateConfig({ routes: [route({}, { 'ai-rate-limiting': { limit: 1, time_window: 1 } })] }, {});
    assert.throws(() => {
      (c as { workers: number }).workers = 3;
    }, TypeError);
    assert.throws(() => {
      (c.routes as unknown[]).push({});
    }, TypeError);
    assert.throws(() => {
      (c.routes[0]!.plugins['ai-proxy-multi']!.instances[0] as { weight: number }).weight = 9;
    }, TypeError);
    assert.throws(() => {
      (c.routes[0]!.plugins['ai-proxy-multi']!.instances[0]!.auth_header as Record<string, string>)['X'] = 'y';
    }, TypeError);
    assert.ok(Object.isFrozen(c.routes[0]!.plugins['ai-rate-limiting']!.instances));
  });

  it('the input object is not modified', () => {
    const raw = { routes: [route({ methods: ['post'] })] };
    const before = JSON.stringify(raw);
    validateConfig(raw, {});
    assert.equal(JSON.stringify(raw), before);
    assert.ok(!Object.isFrozen(raw));
  });
});

describe('config seed examples', () => {
  const env = { OPENAI_API_KEY: 'sk-openai', DEEPSEEK_API_KEY: 'sk-deepseek' };
  const seedFiles = readdirSync(join(fixtures, 'seeds')).filter((f) => /\.(json|ya?ml)$/.test(f)).sort();

  it('covers the eight APISIX examples and the seven Higress examples', () => {
    assert.equal(seedFiles.filter((f) => f.startsWith('apisix-')).length, 8);
    assert.equal(seedFiles.filter((f) => f.startsWith('higress-')).length, 7);
  });

  for (const file of seedFiles) {
    it(`${file} validates`, () => {
      const c = loadConfigFile(join(fixtures, 'seeds', file), env);
      assert.ok(c.routes.length >= 1);
    });
  }

  it('the APISIX redis policies normalise into targets', () => {
    const target = (f: string) => loadConfigFile(join(fixtures, 'seeds', f), env).routes[0]!.plugins['ai-rate-limiting']!.redis!;
    assert.equal(target('apisix-redis.json').id, 'standalone://127.0.0.1:6379/0');
    const cluster = target('apisix-redis-cluster.json');
    assert.equal(cluster.mode, 'cluster');
    assert.equal(cluster.cluster_nodes.length, 6);
    assert.equal(cluster.cluster_name, 'redis-cluster-1');
    const sentinel = target('apisix-redis-sentinel.json');
    assert.equal(sentinel.mode, 'sentinel');
    assert.equal(sentinel.master_name, 'mymaster');
    assert.equal(sentinel.sentinel_username, 'admin');
    assert.equal(sentinel.sentinel_password, 'admin-password');
    assert.equal(sentinel.sentinels.length, 3);
  });
});

describe('examples/embedded.yaml', () => {
  const file = join(examples, 'embedded.yaml');
  const endpoint = 'http://127.0.0.1:41234/v1/chat/completions';

  it('validates with the mock endpoint set and has the two documented routes', () => {
    const c = loadConfigFile(file, { SLUICE_MOCK_ENDPOINT: endpoint, SLUICE_MOCK_ORIGIN: 'http://127.0.0.1:41234' });
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 9080, http1_guard: true });
    assert.deepEqual(c.admin, { host: '127.0.0.1', port: 9091 });
    assert.equal(c.workers, 1);
    assert.deepEqual(c.routes.map((r) => [r.id, r.uri, r.methods]), [
      ['ai-rate-limiting-route', '/anything', ['POST']],
      ['chat', '/v1/chat/completions', []],
      ['anthropic', '/v1/messages*', []],
      ['gemini', '/v1beta/models/*', []],
      ['openai-apis', '/v1/*', []],
    ]);
    assert.deepEqual(c.routes.slice(2).map((r) => r.plugins['ai-proxy-multi']!.instances.map((i) => [i.provider, i.endpoint])), [
      [['anthropic', 'http://127.0.0.1:41234']], [['gemini', 'http://127.0.0.1:41234']], [['openai', 'http://127.0.0.1:41234']],
    ]);
    const [quota, chat] = c.routes;
    const pm = quota!.plugins['ai-proxy-multi']!;
    assert.deepEqual(pm.fallback_strategy, ['rate_limiting']);
    assert.deepEqual(pm.instances.map((i) => [i.name, i.provider, i.priority, i.weight, i.model, i.endpoint]), [
      ['openai-instance', 'openai', 1, 0, 'gpt-4', endpoint],
      ['deepseek-instance', 'deepseek', 0, 0, 'deepseek-chat', endpoint],
    ]);
    const rl = quota!.plugins['ai-rate-limiting']!;
    assert.equal(rl.policy, 'local');
    assert.equal(rl.limit_strategy, 'total_tokens');
    assert.deepEqual(rl.instances, [{ name: 'openai-instance', limit: 100, time_window: 60, limit_strategy: 'total_tokens', cost_expr: undefined }]);
    assert.deepEqual(chat!.plugins['ai-proxy-multi']!.instances.map((i) => [i.name, i.weight, i.endpoint]), [
      ['openai-instance', 1, endpoint],
      ['deepseek-instance', 1, endpoint],
    ]);
    assert.equal(chat!.plugins['ai-rate-limiting'], undefined);
  });

  it('names the missing variable at each endpoint when SLUICE_MOCK_ENDPOINT is unset', () => {
    const msg = 'environment variable SLUICE_MOCK_ENDPOINT is not set (start --embedded sets it for its built-in mock: check such a file with `sluice validate --embedded --config <file>`)';
    assertIssues(issuesOf(() => loadConfigFile(file, { SLUICE_MOCK_ORIGIN: 'http://127.0.0.1:41234' })), [
      ['routes[0].plugins.ai-proxy-multi.instances[0].override.endpoint', msg],
      ['routes[0].plugins.ai-proxy-multi.instances[1].override.endpoint', msg],
      ['routes[1].plugins.ai-proxy-multi.instances[0].override.endpoint', msg],
      ['routes[1].plugins.ai-proxy-multi.instances[1].override.endpoint', msg],
    ]);
  });
});

describe('limits that contradict each other', () => {
  it('max_inflight_body_bytes below max_body_bytes is an error (such a body would get 503 forever)', () => {
    assert.throws(() => validateConfig({ limits: { max_body_bytes: 1_048_576, max_inflight_body_bytes: 4096 } }, {}),
      (err: unknown) => err instanceof ConfigError && err.issues.length === 1
        && err.issues[0]!.path === 'limits.max_inflight_body_bytes' && err.issues[0]!.message === 'must be at least limits.max_body_bytes');
    assert.equal(validateConfig({ limits: { max_body_bytes: 4096, max_inflight_body_bytes: 4096 } }, {}).limits.max_inflight_body_bytes, 4096);
  });

  it('max_inflight_answer_bytes below one buffered answer (64 MiB) is an error', () => {
    assert.throws(() => validateConfig({ limits: { max_inflight_answer_bytes: 1_048_576 } }, {}),
      (err: unknown) => err instanceof ConfigError && err.issues.length === 1
        && err.issues[0]!.path === 'limits.max_inflight_answer_bytes' && err.issues[0]!.message === 'must be at least 67108864 (the largest buffered answer)');
    assert.equal(validateConfig({ limits: { max_inflight_answer_bytes: 67_108_864 } }, {}).limits.max_inflight_answer_bytes, 67_108_864);
  });
});

describe('consumer keys', () => {
  it('a key no client could send (control characters, leading or trailing spaces) is an error naming the path', () => {
    for (const key of ['sk-\u0001', 'sk-\n', ' sk', 'sk\t', 'sk-\u007f']) {
      assert.throws(() => validateConfig({ consumers: [{ username: 'a', plugins: { 'key-auth': { key } } }] }, {}),
        (err: unknown) => err instanceof ConfigError && err.issues.length === 1 && err.issues[0]!.path === 'consumers[0].plugins.key-auth.key'
          && err.issues[0]!.message === 'must not hold control characters or leading/trailing spaces (a client could not send it)', JSON.stringify(key));
    }
    assert.equal(validateConfig({ consumers: [{ username: 'a', plugins: { 'key-auth': { key: 'sk-ok key-é' } } }] }, {}).consumers[0]!.key, 'sk-ok key-é');
  });
});

describe('override.endpoint', () => {
  it('refuses credentials in the URL (never sent) without quoting them, from the file or from $ENV', () => {
    const msg = 'must not hold credentials (user:password@): they are never sent; put them in auth.header (e.g. Authorization)';
    const issues = issuesOf(() => validateConfig({ routes: [route({}, { 'ai-proxy-multi': { instances: [
      { name: 'a', provider: 'openai-compatible', override: { endpoint: 'http://user:pw-secret@127.0.0.1:1/v1/chat/completions' } },
      { name: 'b', provider: 'openai-compatible', override: { endpoint: '$ENV://URL' } },
      { name: 'c', provider: 'openai-compatible', override: { endpoint: 'http://127.0.0.1:1/v1/chat/completions' } },
    ] } })] }, { URL: 'https://token-secret@example.com/v1/chat/completions' }));
    assertIssues(issues, [[`${PM}.instances[0].override.endpoint`, msg], [`${PM}.instances[1].override.endpoint`, msg]]);
    assert.doesNotMatch(new ConfigError(issues).message, /secret/);
  });
});

describe('durations in ms', () => {
  it('every timer field refuses values above 2^31-1 (Node would fire such a timer after 1 ms), naming the path', () => {
    const over = 2_147_483_648;
    const msg = 'must be at most 2147483647 (ms, about 24.8 days: the longest timer Node runs)';
    const redis = { policy: 'redis', redis_host: '127.0.0.1', redis_timeout: over, redis_connect_timeout: over };
    const issues = issuesOf(() => validateConfig({
      limits: Object.fromEntries(['upstream_connect_timeout_ms', 'upstream_first_byte_timeout_ms', 'upstream_idle_timeout_ms', 'client_body_timeout_ms',
        'client_header_timeout_ms', 'client_idle_timeout_ms'].map((k) => [k, over])),
      redis_batching: { flush_interval_ms: over },
      shutdown: { drain_timeout_ms: over },
      routes: [route({}, { 'ai-proxy-multi': { keepalive_timeout: over, instances: [{ name: 'a', provider: 'openai' }] }, 'ai-rate-limiting': { limit: 1, time_window: 60, ...redis } }),
        { uri: '/b', plugins: { 'ai-proxy': { provider: 'openai' }, 'ai-token-ratelimit': { rule_name: 'r', global_threshold: { token_per_minute: 1 }, redis: { service_name: 'r.local', timeout: over } } } }],
    }, {}));
    assertIssues(issues.filter((i) => i.message === msg), [
      ['limits.upstream_connect_timeout_ms', msg], ['limits.upstream_first_byte_timeout_ms', msg], ['limits.upstream_idle_timeout_ms', msg],
      ['limits.client_body_timeout_ms', msg], ['limits.client_header_timeout_ms', msg], ['limits.client_idle_timeout_ms', msg],
      ['redis_batching.flush_interval_ms', msg], ['shutdown.drain_timeout_ms', msg], [`${PM}.keepalive_timeout`, msg],
      [`${RL}.redis_timeout`, msg], [`${RL}.redis_connect_timeout`, msg], ['routes[1].plugins.ai-token-ratelimit.redis.timeout', msg],
    ]);
    // The largest value is accepted; below the minimum, the messages are as before.
    assert.equal(validateConfig({ shutdown: { drain_timeout_ms: over - 1 } }, {}).shutdown.drain_timeout_ms, over - 1);
    assertIssues(issuesOf(() => validateConfig({ shutdown: { drain_timeout_ms: -1 }, limits: { upstream_idle_timeout_ms: 0 } }, {})), [
      ['limits.upstream_idle_timeout_ms', 'must be a positive integer'], ['shutdown.drain_timeout_ms', 'must not be negative'],
    ]);
  });
});

describe('ai-token-ratelimit rule_name', () => {
  it('is restricted like instance names: it reaches header names, metric labels and counter ids', () => {
    const rule = (rule_name: unknown): unknown => ({ routes: [{ uri: '/b', plugins: { 'ai-proxy': { provider: 'openai' }, 'ai-token-ratelimit': { rule_name, global_threshold: { token_per_minute: 1 } } } }] });
    for (const name of ['a\rb', 'a\0', 'a"b', 'a b', 'a/b', '']) {
      const expected = name === '' ? 'must be a non-empty string' : "must contain only letters, digits, '.', '_' and '-'";
      assertIssues(issuesOf(() => validateConfig(rule(name), {})), [['routes[0].plugins.ai-token-ratelimit.rule_name', expected]]);
    }
    assert.equal(validateConfig(rule('routeA-global_limit.rule'), {}).routes[0]!.plugins['ai-token-ratelimit']!.rule_name, 'routeA-global_limit.rule');
  });
});

test('a route uri that request paths can never equal is refused with the form that would match', () => {
  const route = (uri: string) => ({ routes: [{ id: 'r', uri, plugins: { 'ai-proxy': { provider: 'openai-compatible', override: { endpoint: 'http://127.0.0.1:9/v1/chat/completions' } } } }] });
  for (const [uri, form] of [['/x//chat', '/x/chat'], ['/y/./chat', '/y/chat'], ['/z/%7Euser', '/z/~user'], ['/café', '/caf%C3%A9']] as const) {
    assert.throws(() => validateConfig(route(uri)), (err: unknown) => err instanceof ConfigError && err.message.includes('routes[0].uri: never matches') && err.message.includes(`write "${form}"`), uri);
    assert.doesNotThrow(() => validateConfig(route(form)), form);
  }
});

test('admin and listen on one port: refused when the two hosts take the same socket (a wildcard, two loopback names)', () => {
  const cfg = (listen: string, admin: string) => ({ listen: { host: listen, port: 9080 }, admin: { host: admin, port: 9080 }, routes: [] });
  for (const [l, a] of [['localhost', '127.0.0.1'], ['0.0.0.0', '127.0.0.1'], ['127.0.0.1', '::'], ['LOCALHOST', 'localhost'], ['::ffff:127.0.0.1', '127.0.0.1'], ['localhost', '::1']] as const) {
    assert.throws(() => validateConfig(cfg(l, a)), /admin\.port: must differ from listen\.port/, `${l} / ${a}`);
  }
  for (const [l, a] of [['10.0.0.5', '127.0.0.1'], ['127.0.0.1', '::1'], ['::1', '0.0.0.0']] as const) {
    assert.doesNotThrow(() => validateConfig(cfg(l, a)), `${l} and ${a} are two sockets on one port number`);
  }
});

test('two quotas of one route that would write the same X-AI-<label>-RateLimit-* headers are refused', () => {
  const proxy = { provider: 'openai-compatible', override: { endpoint: 'http://127.0.0.1:9/v1/chat/completions' } };
  const route = (plugins: Record<string, unknown>) => ({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy': proxy, ...plugins } }] });
  const tr = (name: string) => ({ rule_name: name, rule_items: [{ limit_by_header: 'x-user', limit_keys: [{ key: 'alice', token_per_minute: 100 }] }] });
  const rule = (prefix?: string) => ({ key: '${http_x_user}', count: 100, time_window: 60, ...(prefix === undefined ? {} : { header_prefix: prefix }) });
  assert.throws(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule('r1')] }, 'ai-token-ratelimit': tr('r1') })),
    /ai-token-ratelimit\.rule_name: writes the same X-AI-r1-RateLimit-\* headers as routes\[0\]\.plugins\.ai-rate-limiting\.rules\[0\]\.header_prefix/);
  assert.throws(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule('model')], model_limits: [{ model: 'gpt-4o', limit: 100, time_window: 60 }] } })),
    /model_limits: writes the same X-AI-Model-RateLimit-\* headers/);
  assert.throws(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule()] }, 'ai-token-ratelimit': tr('1') })), /rule_name: writes the same X-AI-1-RateLimit-\*/);
  assert.doesNotThrow(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule('team')] }, 'ai-token-ratelimit': tr('tokens') })));
  // A quota that writes no X-AI-<label>-* header clashes with nothing.
  for (const arl of [{ show_limit_quota_header: false }, { header_style: 'ietf' }, { standard_headers: true }]) {
    assert.doesNotThrow(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule('r1')], ...arl }, 'ai-token-ratelimit': tr('r1') })), JSON.stringify(arl));
  }
  assert.doesNotThrow(() => validateConfig(route({ 'ai-rate-limiting': { rules: [rule('r1')] }, 'ai-token-ratelimit': { ...tr('r1'), show_limit_quota_header: false } })));
});

test('a consumer written with the Admin API\'s separate credentials object says where its key goes', () => {
  assert.throws(() => validateConfig({ consumers: [{ username: 'jane', credentials: [{ plugins: { 'key-auth': { key: 'k' } } }] }] }, {}),
    (err: unknown) => err instanceof ConfigError && err.issues.length === 1 && err.issues[0]!.path === 'consumers[0].credentials'
      && /plugins: \{ key-auth/.test(err.issues[0]!.message));
});
