// Properties of request preparation (src/tokens/prepare.ts): any bytes or JSON value gives a prepared request
// or a typed 400 failure, never a throw; the upstream body is the client's body minus `model` (plus forced
// stream_options for streams); prompt counts are non-negative integers that never drop when a message is added.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { composeUpstreamBody } from '../../src/tokens/prepare.ts';
import { prepareRequest, type PrepareFailure, type PrepareOptions, type PreparedRequest } from '../helpers/prepare.ts';
import { warmTokenizers } from '../../src/tokens/encoding.ts';
import { check, describeThrown } from './fc-setup.ts';

// Loading the BPE tables takes a noticeable time: outside the properties' time budgets.
warmTokenizers(['o200k_base', 'cl100k_base']);

const KINDS = ['chat', 'completion'] as const;
const FAILURE_CODES: readonly string[] = ['SLC_BAD_JSON', 'SLC_BAD_REQUEST'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Prepares, failing the property on any throw and on an untyped failure. */
function prep(body: Uint8Array, opts: PrepareOptions): PreparedRequest | PrepareFailure {
  let r: PreparedRequest | PrepareFailure;
  try {
    r = prepareRequest(body, opts);
  } catch (err) {
    assert.fail(`prepareRequest threw: ${describeThrown(err)}`);
  }
  if (!r.ok) {
    assert.ok(FAILURE_CODES.includes(r.code), `unexpected failure code ${r.code}`);
    assert.ok(typeof r.message === 'string' && r.message.length > 0, 'failure without a message');
  }
  return r;
}

const optsArb: fc.Arbitrary<PrepareOptions> = fc.record({
  kind: fc.constantFrom(...KINDS),
  defaultMaxTokens: fc.integer({ min: 1, max: 100_000 }),
  countPrompt: fc.boolean(),
  maxReservation: fc.integer({ min: 1, max: 1_000_000 }),
  instanceModels: fc.array(fc.oneof(fc.constant(null), fc.constantFrom('gpt-4o', 'gpt-4', 'deepseek-chat', 'llama-3', 'o1')), { maxLength: 3 }),
}, { requiredKeys: ['kind', 'defaultMaxTokens'] });

/** A Uint8Array view at a non-zero offset of a larger buffer (not a Buffer), or a Buffer. */
function asView(bytes: Uint8Array, offset: number, plain: boolean): Uint8Array {
  if (!plain) return Buffer.from(bytes);
  const backing = new Uint8Array(bytes.length + offset + 3);
  backing.set(bytes, offset);
  return backing.subarray(offset, offset + bytes.length);
}

// Text with multi-byte characters, lone surrogates (escaped by JSON.stringify), tokenizer special tokens and JSON syntax.
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.constantFrom('<|endoftext|>', '<|im_start|>system', '<|fim_prefix|>', '\ud800', '\udfff x', '日本語 🎌', '"}]', '\u0000', 'model', '__proto__'),
);

const json = fc.jsonValue({ maxDepth: 3 });

const part = fc.oneof(
  text,
  fc.record({ type: fc.constant('text'), text }),
  fc.record({ type: fc.constantFrom('image_url', 'image', 'input_image'), image_url: fc.record({ url: text }) }),
  fc.record({ type: fc.constant('refusal'), refusal: text }),
  json,
);

const message = fc.record({
  role: fc.oneof(fc.constantFrom('system', 'user', 'assistant', 'tool', 'developer'), text, json),
  content: fc.oneof(text, fc.array(part, { maxLength: 4 }), fc.constant(null), json),
  name: fc.oneof(text, json),
  tool_calls: fc.oneof(fc.array(fc.record({ id: text, type: fc.constant('function'), function: fc.record({ name: text, arguments: text }) }), { maxLength: 2 }), json),
  function_call: json,
  tool_call_id: fc.oneof(text, json),
}, { requiredKeys: ['role'] });

const tokenCount = fc.oneof(
  fc.integer({ min: 1, max: 1_000_000 }),
  fc.constantFrom(0, -1, 1.5, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, 1e300, '10', true, null),
  json,
);

/** Mostly a valid value, sometimes a hostile one: most bodies get through validation and reach re-serialisation. */
function mostly<T>(valid: fc.Arbitrary<T>, hostile: fc.Arbitrary<unknown>): fc.Arbitrary<unknown> {
  return fc.oneof({ weight: 8, arbitrary: valid }, { weight: 1, arbitrary: hostile });
}

const requestBody = fc.record({
  model: mostly(fc.oneof(fc.constantFrom('gpt-4o', 'gpt-4', 'gpt-3.5-turbo', 'org/GPT-4o-mini', 'deepseek-chat', ''), text), json),
  stream: mostly(fc.oneof(fc.boolean(), fc.constant(null)), json),
  stream_options: mostly(fc.record({ include_usage: fc.oneof(fc.boolean(), json), extra: json }, { requiredKeys: [] }), json),
  max_tokens: mostly(fc.integer({ min: 1, max: 4096 }), tokenCount),
  max_completion_tokens: mostly(fc.integer({ min: 1, max: 4096 }), tokenCount),
  n: mostly(fc.integer({ min: 1, max: 4 }), tokenCount),
  messages: mostly(fc.array(message, { minLength: 1, maxLength: 4 }), json),
  prompt: mostly(fc.oneof(text, fc.array(fc.oneof(text, fc.integer(), fc.array(fc.integer(), { maxLength: 4 })), { maxLength: 4 })), json),
  tools: json,
  functions: json,
  temperature: fc.double(),
  extra: json,
}, { requiredKeys: ['messages', 'prompt'] });

/** Drops values JSON cannot carry (NaN, -0) so the generated body is what a client could send. */
function viaJson(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v) ?? 'null');
}

test('prepare: arbitrary bytes give a prepared request or a typed 400 failure, never a throw', () => {
  check(fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat({ max: 7 }), fc.boolean(), optsArb, (bytes, offset, plain, opts) => {
    prep(asView(bytes, offset, plain), opts);
  }), 400);
});

test('prepare: any JSON value gives a prepared request or SLC_BAD_REQUEST (never SLC_BAD_JSON)', () => {
  check(fc.property(fc.jsonValue({ maxDepth: 4 }), fc.constantFrom('', ' ', '\n\t'), optsArb, (value, pad, opts) => {
    const r = prep(Buffer.from(pad + JSON.stringify(value) + pad), opts);
    if (!r.ok) assert.equal(r.code, 'SLC_BAD_REQUEST', r.message);
    if (!isObject(value)) assert.equal(r.ok, false, 'a body that is not an object was accepted');
  }), 300);
});

test('prepare: the upstream body is the client body minus model, with include_usage forced for streams', () => {
  // Any layout: the upstream body is built from the client's own bytes of each member (tokens/json-members.ts).
  const layout = fc.constantFrom<string | number | undefined>(undefined, 1, '\t', ' \r\n ');
  check(fc.property(requestBody, optsArb, fc.option(text.filter((s) => s.length > 0), { nil: undefined }), layout, (raw, opts, upstreamModel, indent) => {
    const body = viaJson(raw) as Record<string, unknown>;
    const bytes = Buffer.from(JSON.stringify(body, null, indent));
    const r = prep(bytes, opts);
    if (!r.ok) return;
    assert.equal(r.model, body.model);
    assert.equal(r.stream, body.stream === true);
    assert.equal(r.clientWantsUsage, r.stream && isObject(body.stream_options) && body.stream_options.include_usage === true);
    assert.ok(r.maxTokens === undefined || (Number.isSafeInteger(r.maxTokens) && r.maxTokens > 0), `maxTokens ${r.maxTokens}`);
    // Reservation sizing (src/tokens/limits.ts): n choices of the asked or default size, within the cap.
    assert.ok(Number.isSafeInteger(r.n) && r.n >= 1 && r.n <= 128, `n ${r.n}`);
    assert.ok(Number.isSafeInteger(r.reserveCompletion) && r.reserveCompletion >= 1, `reserveCompletion ${r.reserveCompletion}`);
    assert.ok(r.reserveCompletion <= (opts.maxReservation ?? 32768), `reserveCompletion ${r.reserveCompletion} above the cap`);
    assert.ok(r.reserveCompletion <= r.n * (r.maxTokens ?? opts.defaultMaxTokens), `reserveCompletion ${r.reserveCompletion} above what was asked`);
    assert.ok(Number.isSafeInteger(r.promptTokens) && r.promptTokens >= 0, `promptTokens ${r.promptTokens}`);
    assert.equal(r.promptCounted, opts.countPrompt !== false);
    if (!r.promptCounted) assert.equal(r.promptTokens, 0);

    const expected = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
    delete expected.model;
    if (r.stream) {
      const so = expected.stream_options;
      expected.stream_options = isObject(so) ? { ...so, include_usage: true } : { include_usage: true };
    }
    const sent = JSON.parse(composeUpstreamBody(undefined, r.tail).toString('utf8')) as unknown;
    assert.deepStrictEqual(sent, expected);
    if (upstreamModel !== undefined) {
      const withModel = JSON.parse(composeUpstreamBody(upstreamModel, r.tail).toString('utf8')) as Record<string, unknown>;
      assert.equal(withModel.model, upstreamModel);
      delete withModel.model;
      assert.deepStrictEqual(withModel, expected);
    }
  }), 300);
});

test('prepare: an invalid max_tokens or max_completion_tokens is a 400 naming the field', () => {
  const bad = fc.oneof(fc.constantFrom(0, -1, 1.5, 1e300, Number.MAX_SAFE_INTEGER + 2, '10', true, false), fc.array(fc.nat(), { maxLength: 2 }), fc.object({ maxDepth: 1 }));
  check(fc.property(fc.constantFrom('max_tokens', 'max_completion_tokens'), bad, fc.constantFrom(...KINDS), (field, value, kind) => {
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], prompt: 'hi', [field]: value };
    const r = prep(Buffer.from(JSON.stringify(body)), { kind, defaultMaxTokens: 16 });
    assert.equal(r.ok, false);
    assert.equal((r as PrepareFailure).code, 'SLC_BAD_REQUEST');
    assert.ok((r as PrepareFailure).message.includes(field), (r as PrepareFailure).message);
    assert.equal((r as PrepareFailure).param, field);
  }), 200);
});

test('prepare: an invalid n is a 400 naming n', () => {
  const bad = fc.oneof(fc.constantFrom(0, -1, 1.5, 129, 1e300, '2', true), fc.array(fc.nat(), { maxLength: 2 }), fc.object({ maxDepth: 1 }));
  check(fc.property(bad, fc.constantFrom(...KINDS), (value, kind) => {
    const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], prompt: 'hi', n: value };
    const r = prep(Buffer.from(JSON.stringify(body)), { kind, defaultMaxTokens: 16 });
    assert.equal(r.ok, false);
    assert.equal((r as PrepareFailure).code, 'SLC_BAD_REQUEST');
    assert.equal((r as PrepareFailure).param, 'n');
  }), 100);
});

test('prepare: the prompt count is deterministic and never drops when a message or prompt entry is added', () => {
  check(fc.property(fc.array(message, { minLength: 1, maxLength: 4 }), message, fc.constantFrom('gpt-4o', 'gpt-4', undefined), (msgs, extra, model) => {
    const opts: PrepareOptions = { kind: 'chat', defaultMaxTokens: 16 };
    const messages = viaJson(msgs) as unknown[];
    const before = prep(Buffer.from(JSON.stringify({ model, messages })), opts);
    if (!before.ok) return;
    const again = prep(Buffer.from(JSON.stringify({ model, messages })), opts) as PreparedRequest;
    assert.equal(again.promptTokens, before.promptTokens, 'the cached count differs from the first count');
    const after = prep(Buffer.from(JSON.stringify({ model, messages: [...messages, viaJson(extra)] })), opts);
    assert.ok(after.ok, 'adding a message object made the request invalid');
    assert.ok(after.promptTokens >= before.promptTokens + 3, `${after.promptTokens} < ${before.promptTokens} + 3`);
  }), 200);

  check(fc.property(fc.array(fc.oneof(text, fc.nat(), fc.array(fc.nat(), { maxLength: 4 })), { maxLength: 4 }), fc.oneof(text, fc.nat()), (prompt, extra) => {
    const opts: PrepareOptions = { kind: 'completion', defaultMaxTokens: 16 };
    const before = prep(Buffer.from(JSON.stringify({ prompt })), opts);
    const after = prep(Buffer.from(JSON.stringify({ prompt: [...prompt, extra] })), opts);
    assert.ok(before.ok && after.ok, 'a valid prompt array was refused');
    assert.ok(after.promptTokens >= before.promptTokens, `${after.promptTokens} < ${before.promptTokens}`);
  }), 200);
});
