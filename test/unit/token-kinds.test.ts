// Token kinds in quotas (issue 10): cost_expr over the normalised kinds, limit_strategy kinds, upper bounds
// of the reservation (property-tested), `${model}` / `${upstream_model}` variables, model_limits, the
// X-Sluice-Usage value and the config validation of all of these.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compileCostExpr, type CostUsage } from '../../src/rules/cost-expr.ts';
import { compileRouteQuotas, planRequest, type Usage } from '../../src/quota/plan.ts';
import { usageHeaderValue } from '../../src/quota/headers.ts';
import type { RequestVars } from '../../src/rules/request-vars.ts';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';
import type { SluiceConfig } from '../../src/config/types.ts';
import { SluiceError } from '../../src/core/errors.ts';

// ---- helpers ----

function instance(name: string, model?: string): Record<string, unknown> {
  return {
    name, provider: 'openai-compatible', override: { endpoint: 'http://127.0.0.1:9/v1/chat/completions' },
    ...(model === undefined ? {} : { options: { model } }),
  };
}

function config(plugins: Record<string, unknown>, consumers: unknown[] = [], instances = [instance('a', 'gpt-4o'), instance('b', 'gpt-4o-mini')]): SluiceConfig {
  return validateConfig({
    routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances }, ...plugins } }],
    consumers,
  }, {});
}

function compiled(cfg: SluiceConfig) {
  return compileRouteQuotas(cfg.routes[0]!, cfg.consumers, { trustedProxies: [], keyHashSecret: 'a-test-secret-of-16+-bytes' });
}

function vars(over: Partial<RequestVars> = {}): RequestVars {
  return { headers: {}, query: '', remoteAddr: '10.0.0.1', consumer: undefined, routeId: 'r', uri: '/v1/chat/completions', ...over };
}

function issues(raw: unknown): { path: string; message: string }[] {
  try {
    validateConfig(raw, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => ({ path: i.path, message: i.message }));
    throw err;
  }
  return [];
}

/** A normalised usage as a provider module builds it (kinds always set, raw attached). */
function reported(p: number, c: number, kinds: { cached?: number; write?: number; reasoning?: number } = {}, raw: Record<string, unknown> = {}): CostUsage {
  return {
    prompt_tokens: p, completion_tokens: c, total_tokens: p + c,
    cached_prompt_tokens: kinds.cached ?? 0, cache_write_tokens: kinds.write ?? 0, reasoning_tokens: kinds.reasoning ?? 0, raw,
  };
}

// ---- cost_expr over the kinds ----

test('cached reads at a tenth of the weight: exact with the reported usage', () => {
  const f = compileCostExpr('prompt_tokens - cached_prompt_tokens + cached_prompt_tokens * 0.1 + completion_tokens');
  assert.equal(f(reported(1000, 50, { cached: 800 })), 200 + 80 + 50);
  assert.equal(f(reported(1000, 50)), 1050, 'nothing cached: full weight');
  assert.equal(f(reported(1000, 50, { cached: 1000 })), 150);
  assert.equal(compileCostExpr('uncached_prompt_tokens + cached_prompt_tokens / 10')(reported(1000, 0, { cached: 800 })), 280, 'the derived name');
});

test('normalised names win over raw fields: the expression means the same on every provider', () => {
  const f = compileCostExpr('prompt_tokens + cache_write_tokens * 0.25 - cached_prompt_tokens * 0.9 + completion_tokens');
  // One exchange as OpenAI reports it and as Anthropic reports it, both normalised to the same Usage.
  const openai = reported(1000, 40, { cached: 600, write: 0 }, { prompt_tokens: 1000, completion_tokens: 40, prompt_tokens_details: { cached_tokens: 600 } });
  const anthropic = reported(1000, 40, { cached: 600, write: 0 }, { input_tokens: 400, cache_read_input_tokens: 600, cache_creation_input_tokens: 0, output_tokens: 40 });
  assert.equal(f(openai), f(anthropic));
  assert.equal(f(openai), 1000 - 540 + 40);
  // A raw field of a kind's name is shadowed by the normalised kind.
  assert.equal(compileCostExpr('reasoning_tokens')(reported(10, 30, { reasoning: 20 }, { reasoning_tokens: 999 })), 20);
  // Raw names stay available: Anthropic's input_tokens is its uncached part.
  assert.equal(compileCostExpr('input_tokens + cache_read_input_tokens')(anthropic), 1000);
});

test('a usage without kinds (older readers) falls through to the raw usage, else 0', () => {
  const raw = { prompt_tokens: 100, completion_tokens: 5, cached_prompt_tokens: 7 };
  const u: CostUsage = { prompt_tokens: 100, completion_tokens: 5, total_tokens: 105, raw };
  assert.equal(compileCostExpr('cached_prompt_tokens')(u), 7);
  assert.equal(compileCostExpr('reasoning_tokens + cache_write_tokens')(u), 0);
  assert.equal(compileCostExpr('uncached_prompt_tokens')(u), 93);
});

test('reasoning stays inside completion: total = prompt + completion with reasoning counted once', () => {
  const u = reported(100, 300, { reasoning: 250 });
  assert.equal(compileCostExpr('total_tokens')(u), 400);
  assert.equal(compileCostExpr('completion_tokens - reasoning_tokens')(u), 50, 'the visible answer');
});

test('the reservation bound is exact for the linear part: cached reads do not inflate it', () => {
  const estimate: Usage = { prompt_tokens: 1000, completion_tokens: 200, total_tokens: 1200 };
  const f = compileCostExpr('prompt_tokens - cached_prompt_tokens + cached_prompt_tokens * 0.1 + completion_tokens');
  assert.equal(f(estimate), 1200, 'p + C, not 1.1 p + C');
  assert.equal(compileCostExpr('cached_prompt_tokens')(estimate), 1000);
  assert.equal(compileCostExpr('cached_prompt_tokens + cache_write_tokens')(estimate), 1000, 'both are parts of one prompt');
  assert.equal(compileCostExpr('reasoning_tokens')(estimate), 200);
  assert.equal(compileCostExpr('completion_tokens + reasoning_tokens')(estimate), 400);
  assert.equal(compileCostExpr('completion_tokens - reasoning_tokens')(estimate), 200);
  assert.equal(compileCostExpr('uncached_prompt_tokens')(estimate), 1000);
  assert.equal(compileCostExpr('prompt_tokens - input_tokens')(estimate), 1000, 'raw input_tokens may be below the prompt (Anthropic)');
});

// ---- property: the reservation is an upper bound of every consistent settled usage ----

const NAMES = [
  'prompt_tokens', 'completion_tokens', 'total_tokens', 'cached_prompt_tokens', 'cache_write_tokens', 'reasoning_tokens',
  'uncached_prompt_tokens', 'input_tokens', 'output_tokens', 'cached_tokens', 'cache_read_input_tokens',
] as const;

const { expr } = fc.letrec<{ expr: string }>((tie) => ({
  expr: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(...NAMES),
    fc.constantFrom('0', '1', '2', '0.1', '0.25', '0.9', '3', '10', '1.25'),
    fc.tuple(tie('expr'), fc.constantFrom('+', '-', '*'), tie('expr')).map(([a, op, b]) => `(${a} ${op} ${b})`),
    // Divisors are names or constants: token counts are 0 or at least 1 (the bound's stated assumption).
    fc.tuple(tie('expr'), fc.oneof(fc.constantFrom(...NAMES), fc.constantFrom('2', '10', '0.5', '4'))).map(([a, d]) => `(${a} / ${d})`),
    tie('expr').map((a) => `-${a}`),
    fc.tuple(fc.constantFrom('max', 'min'), tie('expr'), tie('expr')).map(([f, a, b]) => `${f}(${a}, ${b})`),
    fc.tuple(fc.constantFrom('ceil', 'floor'), tie('expr')).map(([f, a]) => `${f}(${a})`),
  ),
}));

const fraction = fc.oneof(fc.constantFrom(0, 1), fc.integer({ min: 0, max: 1000 }).map((n) => n / 1000));

/** An estimate and a settled usage consistent with it: same prompt, completion within the reservation, parts within wholes. */
const exchange = fc.record({
  p: fc.integer({ min: 0, max: 5000 }),
  cap: fc.integer({ min: 0, max: 5000 }),
  // Fractions in thousandths: fc.double favours values near 0, which would leave the parts mostly empty.
  cf: fraction,
  xf: fraction,
  wf: fraction,
  rf: fraction,
  shape: fc.constantFrom('openai', 'anthropic', 'gemini', 'kinds-only'),
}).map(({ p, cap, cf, xf, wf, rf, shape }) => {
  const c = Math.floor(cap * cf);
  const x = Math.floor(p * xf);
  const w = Math.floor((p - x) * wf);
  const r = Math.floor(c * rf);
  const estimate: Usage = { prompt_tokens: p, completion_tokens: cap, total_tokens: p + cap };
  const raw: Record<string, unknown> = shape === 'openai'
    ? { prompt_tokens: p, completion_tokens: c, total_tokens: p + c, prompt_tokens_details: { cached_tokens: x }, completion_tokens_details: { reasoning_tokens: r } }
    : shape === 'anthropic'
      ? { input_tokens: p - x - w, cache_read_input_tokens: x, cache_creation_input_tokens: w, output_tokens: c }
      : shape === 'gemini'
        ? { promptTokenCount: p, candidatesTokenCount: c - r, thoughtsTokenCount: r, cachedContentTokenCount: x, totalTokenCount: p + c }
        : {};
  const actual: CostUsage = {
    prompt_tokens: p, completion_tokens: c, total_tokens: p + c,
    cached_prompt_tokens: x, cache_write_tokens: w, reasoning_tokens: r, raw,
  };
  return { estimate, actual };
});

/** The compiled expression; undefined for one refused as never charging (`-prompt_tokens`): nothing to bound. */
function compiledExpr(src: string): ReturnType<typeof compileCostExpr> | undefined {
  try {
    return compileCostExpr(src);
  } catch (err) {
    if (err instanceof Error && /every charge would be 0|divides by the constant 0/.test(err.message)) return undefined;
    throw err;
  }
}

test('property: a cost expression over any kinds reserves at least what any consistent usage settles', () => {
  fc.assert(fc.property(expr, exchange, (src, { estimate, actual }) => {
    const f = compiledExpr(src);
    if (f === undefined) return;
    const bound = f(estimate);
    const settled = f(actual);
    if (settled > bound) throw new Error(`${src}: settled ${settled} > reserved ${bound} (estimate ${JSON.stringify(estimate)}, actual ${JSON.stringify({ ...actual, raw: actual.raw })})`);
  }), { numRuns: 3000 });
});

test('property: linear combinations of every kind, positive and negative weights, stay upper bounds', () => {
  const linear = fc.array(fc.tuple(fc.constantFrom(...NAMES), fc.constantFrom('-1', '-0.9', '0.1', '0.5', '1', '2')), { minLength: 1, maxLength: 6 })
    .map((terms) => terms.map(([n, k]) => `${k} * ${n}`).join(' + '));
  fc.assert(fc.property(linear, exchange, (src, { estimate, actual }) => {
    const f = compiledExpr(src);
    if (f === undefined) return;
    assert.ok(f(actual) <= f(estimate), src);
  }), { numRuns: 1000 });
});

// ---- limit_strategy kinds ----

test('limit_strategy kinds charge their kind; the reservation bounds them by the estimate', () => {
  const estimate: Usage = { prompt_tokens: 500, completion_tokens: 100, total_tokens: 600 };
  const settled = reported(500, 80, { cached: 300, write: 50, reasoning: 60 });
  const expected = {
    cached_prompt_tokens: [500, 300], cache_write_tokens: [500, 50], reasoning_tokens: [100, 60],
    uncached_prompt_tokens: [500, 200], prompt_tokens: [500, 500], completion_tokens: [100, 80], total_tokens: [600, 580],
  } as const;
  for (const [strategy, [reserve, charge]] of Object.entries(expected)) {
    const plan = planRequest(compiled(config({ 'ai-rate-limiting': { limit: 10000, time_window: 60, limit_strategy: strategy } })), vars());
    const [q] = plan.perInstance('a');
    assert.equal(q!.cost(estimate), reserve, `${strategy} reserve`);
    assert.equal(q!.cost(settled), charge, `${strategy} charge`);
  }
  // A usage counted from text has no kinds: charged the bound, as a stream without usage is.
  const plan = planRequest(compiled(config({ 'ai-rate-limiting': { limit: 10000, time_window: 60, limit_strategy: 'cached_prompt_tokens' } })), vars());
  assert.equal(plan.perInstance('a')[0]!.cost({ prompt_tokens: 40, completion_tokens: 9, total_tokens: 49 }), 40);
});

test('ai-token-ratelimit takes limit_strategy and cost_expr (default total_tokens, as Higress)', () => {
  const base = { rule_name: 'tr', global_threshold: { token_per_minute: 1000 } };
  const dflt = planRequest(compiled(config({ 'ai-token-ratelimit': base })), vars());
  assert.equal(dflt.common[0]!.cost(reported(100, 20, { cached: 90 })), 120);
  const cached = planRequest(compiled(config({ 'ai-token-ratelimit': {
    ...base, limit_strategy: 'expression', cost_expr: 'uncached_prompt_tokens + cached_prompt_tokens * 0.1 + completion_tokens',
    rule_items: [{ limit_by_per_header: 'x-user', limit_keys: [{ key: '*', token_per_minute: 500 }] }],
  } })), vars({ headers: { 'x-user': 'u1' } }));
  assert.equal(cached.common.length, 2);
  for (const q of cached.common) assert.equal(q.cost(reported(100, 20, { cached: 90 })), 10 + 9 + 20);
  const reasoning = planRequest(compiled(config({ 'ai-token-ratelimit': { ...base, limit_strategy: 'reasoning_tokens' } })), vars());
  assert.equal(reasoning.common[0]!.cost(reported(100, 20, { reasoning: 15 })), 15);
});

test('standard_headers name the kind', () => {
  const plan = planRequest(compiled(config({ 'ai-rate-limiting': { limit: 100, time_window: 60, limit_strategy: 'cached_prompt_tokens', standard_headers: true } })), vars());
  assert.equal(plan.perInstance('a')[0]!.headerNames.limit, 'X-RateLimit-Limit-CachedPromptTokens');
});

// ---- ${model} and ${upstream_model} ----

test('${model} keys give each requested model its own counter', () => {
  const c = compiled(config({ 'ai-rate-limiting': { rules: [{ key: '${consumer_name ?? anon}:${model}', count: 100, time_window: 60 }] } }));
  const a = planRequest(c, vars({ model: 'gpt-4o' })).common;
  const b = planRequest(c, vars({ model: 'gpt-4o-mini' })).common;
  const a2 = planRequest(c, vars({ model: 'gpt-4o' })).common;
  assert.equal(a.length, 1);
  assert.notEqual(a[0]!.counter.id, b[0]!.counter.id);
  assert.equal(a[0]!.counter.id, a2[0]!.counter.id);
  // No model: the rule's key is missing, and on_missing_key (reject by default) refuses the request.
  const none = planRequest(c, vars());
  assert.equal(none.missing?.status, 400);
  assert.match(none.missing!.message, /request variable "model" is missing/);
});

test('${upstream_model} is resolved per instance: the instance model, else the requested one', () => {
  const c = compiled(config({ 'ai-rate-limiting': {
    rules: [{ key: '${upstream_model}', count: 100, time_window: 60 }], missing_key_code: 422,
  } }, [], [instance('a', 'gpt-4o'), instance('b')]));
  const plan = planRequest(c, vars({ model: 'client-model' }));
  assert.equal(plan.common.length, 0, 'nothing at admission: the instance decides');
  const onA = plan.perInstance('a', 'gpt-4o');
  const onB = plan.perInstance('b', 'client-model');
  assert.equal(onA.length, 1);
  assert.notEqual(onA[0]!.counter.id, onB[0]!.counter.id);
  assert.equal(planRequest(c, vars({ model: 'x' })).perInstance('b', 'client-model')[0]!.counter.id, onB[0]!.counter.id);
  // Neither model: fail closed with missing_key_code, as a missing rule key does.
  const missing = plan.forInstance('b', undefined);
  assert.ok(!Array.isArray(missing));
  assert.equal((missing as { status: number }).status, 422);
  assert.throws(() => plan.perInstance('b', undefined), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_RULE_KEY_MISSING' && e.status === 422);
});

test('a rule group with instance-scoped rules fails closed only when no rule applies on that instance', () => {
  const c = compiled(config({ 'ai-rate-limiting': { rules: [
    { key: '${http_x_team}', count: 100, time_window: 60 },
    { key: '${upstream_model}', count: 100, time_window: 60 },
  ] } }));
  const withTeam = planRequest(c, vars({ headers: { 'x-team': 't' } }));
  assert.equal(withTeam.common.length, 1);
  assert.equal(withTeam.perInstance('a', 'gpt-4o').length, 1);
  assert.equal(withTeam.perInstance('a', undefined).length, 0, 'the team rule applied: the model rule is skipped');
  const bare = planRequest(c, vars());
  assert.equal(bare.missing, undefined);
  assert.equal(bare.perInstance('a', 'gpt-4o').length, 1);
  assert.throws(() => bare.perInstance('a', undefined), /no rule applies to this request/);
});

test('templated limits and on_missing_key: skip apply to the model variables too', () => {
  const c = compiled(config({ 'ai-rate-limiting': {
    instances: [{ name: 'a', limit: '${http_x_limit ?? 100}', time_window: 60 }],
    rules: [{ key: '${upstream_model}', count: 50, time_window: 60 }],
    on_missing_key: 'skip',
  } }));
  const plan = planRequest(c, vars({ headers: { 'x-limit': '7' } }));
  assert.deepEqual(plan.perInstance('a', undefined).map((q) => q.counter.limit), [7], 'no model: the model rule is skipped');
  assert.deepEqual(plan.perInstance('a', 'm').map((q) => q.counter.limit), [7, 50]);
});

// ---- model_limits ----

test('model_limits: the first matching entry applies, each model with its own counter', () => {
  const c = compiled(config({ 'ai-rate-limiting': { model_limits: [
    { model: 'gpt-4o-mini', limit: 1000, time_window: 60 },
    { model: 'gpt-4o*', limit: 50, time_window: 60, limit_strategy: 'completion_tokens' },
    { model: '*-preview', limit: 5, time_window: 3600 },
  ] } }));
  const plan = planRequest(c, vars());
  const mini = plan.perInstance('a', 'gpt-4o-mini');
  const big = plan.perInstance('a', 'gpt-4o');
  const dated = plan.perInstance('b', 'gpt-4o-2024-08-06');
  assert.deepEqual(mini.map((q) => q.counter.limit), [1000]);
  assert.deepEqual(big.map((q) => q.counter.limit), [50]);
  assert.deepEqual(dated.map((q) => q.counter.limit), [50]);
  assert.notEqual(big[0]!.counter.id, dated[0]!.counter.id, 'a pattern gives each matching model its own counter');
  assert.equal(big[0]!.cost(reported(100, 7)), 7);
  assert.match(big[0]!.counter.id, /^r\/r\/arl\/m\/60\/[0-9a-f]{32}$/);
  assert.equal(big[0]!.headerNames.limit, 'X-AI-Model-RateLimit-Limit');
  assert.equal(big[0]!.metricRule, 'model-2');
  assert.deepEqual(plan.perInstance('a', 'o1-preview').map((q) => q.counter.windowMs), [3_600_000]);
  assert.deepEqual(plan.perInstance('a', 'claude-3'), [], 'no entry matches: no model quota');
  // The same model on another instance shares the model's counter.
  assert.equal(plan.perInstance('b', 'gpt-4o')[0]!.counter.id, big[0]!.counter.id);
  // No model at all: the model quota cannot apply; on_missing_key (reject) refuses.
  assert.throws(() => plan.perInstance('a', undefined), /model_limits.*upstream_model/);
  // A client-chosen model name of any length becomes a fixed-size counter id (hashed), matched in linear time.
  const huge = `gpt-4o${'x'.repeat(1_000_000)}`;
  const [q] = plan.perInstance('b', huge);
  assert.ok(q!.counter.id.length < 64);
});

test('model_limits of a consumer are counted per consumer, beside the route\'s own', () => {
  const cfg = config(
    { 'key-auth': {}, 'ai-rate-limiting': { model_limits: [{ model: '*', limit: 10000, time_window: 60 }] } },
    [
      { username: 'alice', plugins: { 'key-auth': { key: 'k-alice-123' }, 'ai-rate-limiting': { model_limits: [{ model: 'gpt-4o', limit: 100, time_window: 60 }] } } },
      { username: 'bob', plugins: { 'key-auth': { key: 'k-bob-12345' }, 'ai-rate-limiting': { model_limits: [{ model: 'gpt-4o', limit: 100, time_window: 60 }] } } },
    ],
  );
  const c = compiled(cfg);
  const alice = planRequest(c, vars({ consumer: 'alice' })).perInstance('a', 'gpt-4o');
  const bob = planRequest(c, vars({ consumer: 'bob' })).perInstance('a', 'gpt-4o');
  assert.equal(alice.length, 2);
  assert.equal(alice[0]!.counter.id, bob[0]!.counter.id, 'the route\'s model quota is shared');
  assert.match(alice[1]!.counter.id, /^c\/alice\/arl\/m\//);
  assert.notEqual(alice[1]!.counter.id, bob[1]!.counter.id);
  assert.equal(alice[1]!.metricRule, 'consumer-model-1');
});

// ---- X-Sluice-Usage ----

test('X-Sluice-Usage is a structured dictionary of the settled usage', () => {
  assert.equal(usageHeaderValue(reported(120, 30, { cached: 100, reasoning: 20 }) as Usage),
    'prompt=120, completion=30, total=150, cached_prompt=100, cache_write=0, reasoning=20');
  assert.equal(usageHeaderValue({ prompt_tokens: 12, completion_tokens: 3, total_tokens: 15 }), 'prompt=12, completion=3, total=15, estimated');
});

// ---- config validation ----

test('config: kinds are accepted as limit_strategy in both plugins; bad values name their path', () => {
  const route = (plugins: Record<string, unknown>) => ({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [instance('a', 'm')] }, ...plugins } }] });
  for (const s of ['cached_prompt_tokens', 'cache_write_tokens', 'reasoning_tokens', 'uncached_prompt_tokens']) {
    assert.deepEqual(issues(route({ 'ai-rate-limiting': { limit: 1, time_window: 1, limit_strategy: s } })), [], s);
    assert.deepEqual(issues(route({ 'ai-token-ratelimit': { rule_name: 'x', global_threshold: { token_per_minute: 5 }, limit_strategy: s } })), [], s);
  }
  const bad = issues(route({ 'ai-token-ratelimit': { rule_name: 'x', global_threshold: { token_per_minute: 5 }, limit_strategy: 'cached' } }));
  assert.equal(bad[0]!.path, 'routes[0].plugins.ai-token-ratelimit.limit_strategy');
  assert.match(bad[0]!.message, /must be one of: total_tokens, .*reasoning_tokens, uncached_prompt_tokens, expression/);
  const noExpr = issues(route({ 'ai-token-ratelimit': { rule_name: 'x', global_threshold: { token_per_minute: 5 }, limit_strategy: 'expression' } }));
  assert.deepEqual(noExpr, [{ path: 'routes[0].plugins.ai-token-ratelimit.cost_expr', message: 'is required when limit_strategy is expression' }]);
});

test('config: model_limits entries are validated with their paths', () => {
  const at = 'routes[0].plugins.ai-rate-limiting.model_limits';
  const found = issues({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
    'ai-proxy-multi': { instances: [instance('a', 'm')] },
    'ai-rate-limiting': { model_limits: [
      { model: 'gpt-4o', limit: 10, time_window: 60 },
      { model: 'gpt-4o', limit: 10, time_window: 60 },
      { limit: 0, time_window: 60, extra: 1 },
      { model: '*', limit: '${http_x_l ?? 5}', time_window: 60, limit_strategy: 'expression', cost_expr: 'cached_prompt_tokens +' },
      { model: 'o1', limit: 10 },
      { model: 'x'.repeat(300), limit: 1, time_window: 1 },
    ] },
  } }] });
  const by = new Map(found.map((i) => [i.path, i.message]));
  assert.equal(by.get(`${at}[1].model`), 'duplicates model_limits[0].model');
  assert.equal(by.get(`${at}[2].model`), 'is required');
  assert.equal(by.get(`${at}[2].limit`), 'must be a positive integer');
  assert.equal(by.get(`${at}[2].extra`), 'unknown key');
  assert.match(by.get(`${at}[3].cost_expr`)!, /^is not a valid expression/);
  assert.equal(by.get(`${at}[4].model`), 'is never used: model_limits[3].model "*" matches every model first');
  assert.equal(by.get(`${at}[4].time_window`), 'is required');
  assert.equal(by.get(`${at}[5].model`), 'must be at most 256 characters');
  const many = issues({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
    'ai-proxy-multi': { instances: [instance('a', 'm')] },
    'ai-rate-limiting': { model_limits: Array.from({ length: 65 }, (_, i) => ({ model: `m${i}`, limit: 1, time_window: 1 })) },
  } }] });
  assert.deepEqual(many, [{ path: at, message: 'must have at most 64 entries' }]);
  // model_limits alone is a complete ai-rate-limiting.
  assert.deepEqual(issues({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
    'ai-proxy-multi': { instances: [instance('a', 'm')] }, 'ai-rate-limiting': { model_limits: [{ model: 'm', limit: 1, time_window: 1 }] },
  } }] }), []);
});

test('config: ${model} and ${upstream_model} are known template variables', () => {
  const ok = issues({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
    'ai-proxy-multi': { instances: [instance('a', 'm')] },
    'ai-rate-limiting': { rules: [{ key: '${consumer_name ?? anon}:${model}', count: '${http_x_n ?? 5}', time_window: 60 }, { key: '$upstream_model', count: 5, time_window: 60 }] },
  } }] });
  assert.deepEqual(ok, []);
});
