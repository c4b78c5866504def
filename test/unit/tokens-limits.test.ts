// Reservation caps (src/tokens/limits.ts) and their request-side validation (prepareRequest): max_tokens and
// n are validated, the completion reservation is min(n · min(max_tokens, model cap), max_reservation), and a
// request asking for more than every instance's (known) model can give is refused like OpenAI refuses it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  completionCeiling, completionReservation, DEFAULT_MAX_RESERVATION, defaultMaxUsage, KNOWN_MODELS, maxUsageOf, modelLimits, reservationPolicy,
} from '../../src/tokens/limits.ts';
import { prepareRequest, type PrepareFailure, type PreparedRequest, type PrepareOptions } from '../helpers/prepare.ts';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';

test('modelLimits: longest prefix at a name boundary, provider prefixes and case ignored, config first', () => {
  assert.equal(modelLimits('gpt-4o')?.max_output_tokens, 16384);
  assert.equal(modelLimits('gpt-4o-2024-08-06')?.max_output_tokens, 16384);
  assert.equal(modelLimits('openai/GPT-4o-mini')?.max_output_tokens, 16384);
  assert.equal(modelLimits('gpt-4.1-nano-2025-04-14')?.context_window, 1047576);
  assert.equal(modelLimits('o1-mini')?.max_output_tokens, 65536);
  assert.equal(modelLimits('o1')?.max_output_tokens, 100000);
  assert.equal(modelLimits('o3-mini-high')?.max_output_tokens, 100000);
  assert.equal(modelLimits('o4-mini')?.max_output_tokens, 100000);
  assert.equal(modelLimits('gpt-3.5-turbo-0125')?.max_output_tokens, 4096);
  assert.equal(modelLimits('gpt-4-turbo-preview')?.max_output_tokens, 4096);
  assert.equal(modelLimits('gpt-4-0613')?.max_output_tokens, 8192);
  assert.equal(modelLimits('deepseek-chat')?.max_output_tokens, 8192);
  assert.equal(modelLimits('deepseek-reasoner')?.max_output_tokens, 65536);
  // 'gpt-4' must not claim other families that merely start with its letters.
  assert.equal(modelLimits('gpt-4x-custom'), undefined);
  assert.equal(modelLimits('o1x'), undefined);
  for (const m of ['llama-3.1-70b', 'mock-model', '', undefined]) assert.equal(modelLimits(m), undefined, String(m));
  const custom = { 'llama-3.1': { max_output_tokens: 2048, context_window: 131072 }, 'gpt-4o': { max_output_tokens: 1000, context_window: 5000 } };
  assert.equal(modelLimits('llama-3.1-70b', custom)?.max_output_tokens, 2048);
  assert.equal(modelLimits('gpt-4o', custom)?.max_output_tokens, 1000, 'a config entry overrides the built-in one');
  assert.equal(modelLimits('gpt-4o-mini', custom)?.max_output_tokens, 1000, 'the config prefix wins over the built-in table');
  for (const k of Object.keys(KNOWN_MODELS)) assert.ok(KNOWN_MODELS[k]!.max_output_tokens <= KNOWN_MODELS[k]!.context_window, k);
});

test('modelLimits is memoised per table and name: answers unchanged when asked again, past the bound, for long names', () => {
  const custom = { 'my-model': { max_output_tokens: 777, context_window: 9999 } };
  const other = { 'my-model': { max_output_tokens: 555, context_window: 9999 } };
  for (let round = 0; round < 2; round++) {
    assert.equal(modelLimits('my-model-v2', custom)?.max_output_tokens, 777);
    assert.equal(modelLimits('my-model-v2', other)?.max_output_tokens, 555, 'each table answers for itself');
    assert.equal(modelLimits('my-model-v2'), undefined, 'no table: the built-in one only');
    assert.equal(modelLimits('GPT-4o', custom)?.max_output_tokens, 16384);
  }
  // More distinct (client-chosen) names than the memo keeps, then the first ones again.
  for (let i = 0; i < 600; i++) assert.equal(modelLimits(`gpt-4o-${i}`, custom)?.max_output_tokens, 16384);
  for (let i = 0; i < 600; i++) assert.equal(modelLimits(`unknown-${i}`, custom), undefined);
  assert.equal(modelLimits('gpt-4o-0', custom)?.max_output_tokens, 16384);
  const long = `gpt-4.1-${'x'.repeat(300)}`;
  assert.equal(modelLimits(long)?.max_output_tokens, 32768, 'a name past the memo\'s length bound is looked up each time');
  assert.equal(modelLimits(long)?.max_output_tokens, 32768);
});

test('completionReservation: per-choice cap, n multiplies, max_reservation caps the whole', () => {
  const policy = { defaultMaxTokens: 256, maxReservation: 32768, instanceModels: ['gpt-4o-mini'] };
  const r = (req: number | undefined, n = 1, p: typeof policy | Record<string, unknown> = policy) =>
    completionReservation(p as never, undefined, req, 'max_tokens', n);
  assert.deepEqual(r(undefined), { ok: true, tokens: 256 });
  assert.deepEqual(r(1000), { ok: true, tokens: 1000 });
  assert.deepEqual(r(16384), { ok: true, tokens: 16384 });
  assert.deepEqual(r(1000, 4), { ok: true, tokens: 4000 });
  assert.deepEqual(r(16384, 128), { ok: true, tokens: 32768 });
  assert.deepEqual(r(undefined, 3), { ok: true, tokens: 768 });
  const refused = r(100000);
  assert.equal(refused.ok, false);
  if (!refused.ok) {
    assert.equal(refused.param, 'max_tokens');
    assert.match(refused.message, /^max_tokens is too large: 100000\. This model supports at most 16384 completion tokens/);
  }
  // Unknown model: no refusal (the upstream decides), the reservation capped at max_reservation.
  const unknown = { defaultMaxTokens: 256, maxReservation: 32768, instanceModels: ['llama'] };
  assert.deepEqual(r(2 ** 53 - 1, 1, unknown), { ok: true, tokens: 32768 });
  assert.deepEqual(r(2 ** 53 - 1, 128, unknown), { ok: true, tokens: 32768 });
  // Several instances: the largest cap decides; any unknown one lifts the refusal.
  const mixed = { defaultMaxTokens: 256, maxReservation: 65536, instanceModels: ['gpt-4o-mini', 'o3-mini'] };
  assert.deepEqual(r(50000, 1, mixed), { ok: true, tokens: 50000 });
  assert.equal(r(100001, 1, mixed).ok, false);
  assert.deepEqual(r(100001, 1, { ...mixed, instanceModels: ['gpt-4o-mini', null] }), { ok: true, tokens: 65536 });
  // null: the instance sends the request's own model.
  assert.equal(completionReservation({ defaultMaxTokens: 1, instanceModels: [null] }, 'gpt-4o', 20000, 'max_completion_tokens', 1).ok, false);
  assert.deepEqual(completionReservation({ defaultMaxTokens: 1 }, 'whatever', 5, 'max_tokens', 1), { ok: true, tokens: 5 });
  assert.deepEqual(completionReservation({ defaultMaxTokens: 1 }, 'whatever', 10 ** 9, 'max_tokens', 1), { ok: true, tokens: DEFAULT_MAX_RESERVATION });
});

test('reservationPolicy is memoised per tokens config and instance list', () => {
  const tokens = Object.freeze({ default_max_tokens: 100, max_reservation: 500, models: {} });
  const instances = Object.freeze([{ model: 'gpt-4o' }, { model: undefined }]);
  const p = reservationPolicy(tokens, instances);
  assert.equal(reservationPolicy(tokens, instances), p);
  assert.deepEqual(p.instanceModels, ['gpt-4o', null]);
  assert.equal(p.maxReservation, 500);
  assert.equal(p.defaultMaxTokens, 100);
});

const OPTS: PrepareOptions = { kind: 'chat', defaultMaxTokens: 256, maxReservation: 32768, instanceModels: ['gpt-4o-mini'] };
const MESSAGES = [{ role: 'user', content: 'hi' }];

function prep(body: Record<string, unknown>, opts: PrepareOptions = OPTS): PreparedRequest | PrepareFailure {
  return prepareRequest(Buffer.from(JSON.stringify({ messages: MESSAGES, ...body })), opts);
}

test('prepareRequest: n validated (integer 1..128) and multiplying the reservation', () => {
  const ok = prep({ n: 4, max_tokens: 100 });
  assert.ok(ok.ok);
  if (ok.ok) { assert.equal(ok.n, 4); assert.equal(ok.reserveCompletion, 400); }
  const dflt = prep({ n: null });
  assert.ok(dflt.ok && dflt.n === 1 && dflt.reserveCompletion === 256);
  for (const n of [0, -1, 129, 1.5, '2', true, [], {}, 1e300]) {
    const f = prep({ n });
    assert.equal(f.ok, false, JSON.stringify(n));
    if (!f.ok) { assert.equal(f.code, 'SLC_BAD_REQUEST'); assert.equal(f.param, 'n'); assert.match(f.message, /n must be an integer from 1 to 128/); }
  }
});

test('prepareRequest: max_tokens validated, capped, and refused past every instance model', () => {
  for (const [field, v] of [['max_tokens', 0], ['max_tokens', -3], ['max_tokens', 2.5], ['max_tokens', '9'], ['max_completion_tokens', 0], ['max_completion_tokens', 1e300]] as const) {
    const f = prep({ [field]: v });
    assert.equal(f.ok, false);
    if (!f.ok) { assert.equal(f.param, field); assert.match(f.message, /must be a positive integer/); }
  }
  const huge = prep({ max_tokens: 2 ** 53 - 1 });
  assert.equal(huge.ok, false);
  if (!huge.ok) {
    assert.equal(huge.param, 'max_tokens');
    assert.equal(huge.message, `max_tokens is too large: ${2 ** 53 - 1}. This model supports at most 16384 completion tokens, whereas you provided ${2 ** 53 - 1}.`);
  }
  const mct = prep({ max_completion_tokens: 100000 });
  assert.ok(!mct.ok && mct.param === 'max_completion_tokens');
  // The same request to an unknown model is admitted with a capped reservation.
  const capped = prep({ max_tokens: 2 ** 53 - 1 }, { ...OPTS, instanceModels: ['local-llm'] });
  assert.ok(capped.ok && capped.reserveCompletion === 32768 && capped.maxTokens === 2 ** 53 - 1);
  // The upstream body is untouched: the client's max_tokens goes through as sent.
  if (capped.ok) assert.match(capped.tail.toString(), /"max_tokens":9007199254740991/);
});

test('max_usage: configurable, defaulting to max(16 × max_reservation, the largest known context window)', () => {
  assert.equal(defaultMaxUsage(32768), 1047576);
  assert.equal(defaultMaxUsage(100000), 1_600_000);
  assert.equal(defaultMaxUsage(1000, { big: { max_output_tokens: 10, context_window: 2_000_000 } }), 2_000_000);
  assert.equal(maxUsageOf({ max_usage: 5000 }), 5000);
  assert.equal(maxUsageOf({}), 1047576);
  const cfg = validateConfig({});
  assert.equal(cfg.tokens.max_reservation, 32768);
  assert.equal(cfg.tokens.max_usage, 1047576);
  assert.equal(cfg.tokens.count_budget_ms, 2000);
  assert.deepEqual(cfg.tokens.models, {});
  const custom = validateConfig({ tokens: { max_reservation: 100000, models: { 'llama-3.1': { max_output_tokens: 4096, context_window: 131072 } } } });
  assert.equal(custom.tokens.max_usage, 1_600_000);
  assert.deepEqual(custom.tokens.models['llama-3.1'], { max_output_tokens: 4096, context_window: 131072 });
  assert.equal(validateConfig({ tokens: { max_usage: 12345 } }).tokens.max_usage, 12345);
});

test('tokens.* config errors carry their paths', () => {
  const issues = (raw: unknown): string[] => {
    try { validateConfig(raw); } catch (e) { if (e instanceof ConfigError) return e.issues.map((i) => `${i.path}: ${i.message}`); throw e; }
    return [];
  };
  assert.deepEqual(issues({ tokens: { max_reservation: 0 } }), ['tokens.max_reservation: must be an integer between 1 and 100000000']);
  assert.deepEqual(issues({ tokens: { max_usage: -1 } }), ['tokens.max_usage: must be a positive integer']);
  assert.deepEqual(issues({ tokens: { count_budget_ms: 0 } }), ['tokens.count_budget_ms: must be an integer between 1 and 600000']);
  assert.deepEqual(issues({ tokens: { models: [] } }), ['tokens.models: must be an object']);
  assert.deepEqual(issues({ tokens: { models: { m: { max_output_tokens: 5 } } } }), ['tokens.models.m.context_window: is required']);
  assert.deepEqual(issues({ tokens: { models: { m: { max_output_tokens: 5, context_window: 9, extra: 1 } } } }).length, 1);
  assert.deepEqual(issues({ tokens: { modles: {} } }).length, 1);
});

test('completionCeiling: n × the output limit the upstream was sent; an instance\'s options replace the client\'s, never lowering the bound', () => {
  assert.equal(completionCeiling(undefined, 1, undefined), undefined, 'nothing limited the answer');
  assert.equal(completionCeiling(20, 3, undefined), 60);
  assert.equal(completionCeiling(20, 1, { temperature: 0 }), 20, 'options without limits leave the client\'s');
  assert.equal(completionCeiling(20, 1, { max_tokens: 400 }), 400, 'the instance raised it');
  assert.equal(completionCeiling(undefined, 1, { max_completion_tokens: 50 }), 50);
  // The client's limit may be in the other field, which the instance leaves in place: the larger bounds both.
  assert.equal(completionCeiling(500, 1, { max_tokens: 50 }), 500);
  // Both fields set by the instance: the client's may still sit in a third (a Responses client's max_output_tokens).
  assert.equal(completionCeiling(500, 1, { max_tokens: 50, max_completion_tokens: 70 }), 500);
  assert.equal(completionCeiling(undefined, 1, { max_tokens: 50, max_completion_tokens: 70 }), 70);
  assert.equal(completionCeiling(20, 1, { n: 4 }), 80);
  assert.equal(completionCeiling(20, 4, { n: 1, max_tokens: 10 }), 80, 'lower values leave the client\'s (its n may sit in another field)');
  assert.equal(completionCeiling(undefined, 2, { n: 3 }), undefined);
  // The Responses API's field counts; a budget in a shape not read here (Gemini's generationConfig) gives no ceiling.
  assert.equal(completionCeiling(20, 1, { max_output_tokens: 4000 }), 4000);
  assert.equal(completionCeiling(20, 1, { generationConfig: { maxOutputTokens: 4000 } }), undefined);
  assert.equal(completionCeiling(20, 1, { max_tokens_to_sample: 4000 }), undefined);
});
