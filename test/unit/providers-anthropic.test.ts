import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import anthropic, { AnthropicDialect, endpointPaths, resolveAnthropic } from '../../src/providers/anthropic/index.ts';
import { anthropicUsage, StreamUsage } from '../../src/providers/anthropic/usage.ts';
import { countTokensSurface, messagesSurface } from '../../src/providers/anthropic/surface.ts';
import { decodeNative, NativeStreamCodec } from '../../src/providers/anthropic/native.ts';
import { scanDelta, literalText } from '../../src/providers/anthropic/events.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { translateRequest, DEFAULT_TRANSLATED_MAX_TOKENS } from '../../src/providers/anthropic/translate-request.ts';
import { decodeTranslated, TranslatedStreamCodec } from '../../src/providers/anthropic/translate-response.ts';
import { ANTHROPIC_PROMPT_SCALE, anthropicPromptParts } from '../../src/providers/anthropic/estimate.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';
import { composeUpstreamBody } from '../../src/tokens/prepare.ts';
import type { InstanceConfig } from '../../src/config/types.ts';
import type { ParseOptions, PreparedCall, ParsedCall, CallFailure, SurfaceId, StreamCodec } from '../../src/providers/types.ts';

const MAX = 10_000_000;
const OPTS: ParseOptions = { surface: 'anthropic-messages', path: '/v1/messages', query: '', defaultMaxTokens: 256, maxReservation: 32768 };

function body(o: unknown): Buffer {
  return Buffer.from(typeof o === 'string' ? o : JSON.stringify(o));
}

function parse(o: unknown, opts: Partial<ParseOptions> = {}): ParsedCall | CallFailure {
  return messagesSurface.parse(body(o), { ...OPTS, ...opts });
}

const GOOD = { model: 'claude-sonnet-4-5', max_tokens: 100, system: 'You are a scientist', messages: [{ role: 'user', content: 'Hello, Claude' }] };

function call(surface: SurfaceId, extra: Partial<PreparedCall> = {}, tail = '}'): PreparedCall {
  return {
    ok: true, surface, model: 'claude-x', stream: false, clientWantsUsage: false, maxTokens: undefined, n: 1, promptTokens: 10,
    promptCounted: true, promptExact: true, reserveCompletion: 300, tail: Buffer.from(tail), ...extra,
  };
}

function inst(extra: Partial<InstanceConfig> = {}): InstanceConfig {
  return { name: 'a', provider: 'anthropic' as InstanceConfig['provider'], weight: 1, priority: 0, auth_header: { 'x-api-key': 'k' }, auth_query: {}, model: 'claude-i', endpoint: undefined, ...extra };
}

function dialect(extra: Partial<InstanceConfig> = {}): AnthropicDialect {
  const r = resolveAnthropic(inst(extra));
  assert.ok(r instanceof AnthropicDialect, JSON.stringify(r));
  return r;
}

// ─── surfaces ───────────────────────────────────────────────────────────────────────────────────

test('messages: a valid request parses, reserves max_tokens, counts system + messages, scale ≥ the module\'s', () => {
  const p = parse(GOOD);
  assert.ok(p.ok);
  assert.equal(p.surface, 'anthropic-messages');
  assert.equal(p.model, 'claude-sonnet-4-5');
  assert.equal(p.maxTokens, 100);
  assert.equal(p.reserveCompletion, 100);
  assert.equal(p.n, 1);
  assert.equal(p.stream, false);
  assert.equal(p.clientWantsUsage, true);
  assert.equal(p.enc, 'o200k_base');
  assert.equal(p.scale, ANTHROPIC_PROMPT_SCALE);
  assert.deepEqual(p.parts?.texts, ['You are a scientist', 'Hello, Claude']);
  const big = parse({ ...GOOD, max_tokens: 1_000_000 });
  assert.ok(big.ok);
  assert.equal(big.reserveCompletion, 32768, 'capped by max_reservation');
  const s = parse({ ...GOOD, stream: true }, { countPrompt: false, promptScale: 3 });
  assert.ok(s.ok);
  assert.equal(s.stream, true);
  assert.equal(s.parts, undefined);
  assert.equal(s.scale, 3, 'a larger route scale wins');
});

test('messages: validation failures name the field', () => {
  const cases: [unknown, string, string | undefined][] = [
    ['{not json', 'SLC_BAD_JSON', undefined],
    [[1, 2], 'SLC_BAD_REQUEST', undefined],
    [{ ...GOOD, model: undefined }, 'SLC_BAD_REQUEST', 'model'],
    [{ ...GOOD, model: 7 }, 'SLC_BAD_REQUEST', 'model'],
    [{ ...GOOD, max_tokens: undefined }, 'SLC_BAD_REQUEST', 'max_tokens'],
    [{ ...GOOD, max_tokens: 0 }, 'SLC_BAD_REQUEST', 'max_tokens'],
    [{ ...GOOD, max_tokens: 1.5 }, 'SLC_BAD_REQUEST', 'max_tokens'],
    [{ ...GOOD, max_tokens: '10' }, 'SLC_BAD_REQUEST', 'max_tokens'],
    [{ ...GOOD, messages: [] }, 'SLC_BAD_REQUEST', 'messages'],
    [{ ...GOOD, messages: 'hi' }, 'SLC_BAD_REQUEST', 'messages'],
    [{ ...GOOD, messages: ['hi'] }, 'SLC_BAD_REQUEST', 'messages'],
    [{ ...GOOD, messages: [{ role: 'user', content: 5 }] }, 'SLC_BAD_REQUEST', 'messages'],
    [{ ...GOOD, messages: [{ role: 'user', content: [{ text: 'no type' }] }] }, 'SLC_BAD_REQUEST', 'messages'],
    [{ ...GOOD, system: 5 }, 'SLC_BAD_REQUEST', 'system'],
    [{ ...GOOD, stream: 'yes' }, 'SLC_BAD_REQUEST', 'stream'],
    [{ ...GOOD, tools: {} }, 'SLC_BAD_REQUEST', 'tools'],
    [{ ...GOOD, tools: [1] }, 'SLC_BAD_REQUEST', 'tools'],
  ];
  for (const [b, code, param] of cases) {
    const r = parse(b);
    assert.equal(r.ok, false, JSON.stringify(b));
    if (r.ok) continue;
    assert.equal(r.code, code, JSON.stringify(b));
    assert.equal(r.param, param, JSON.stringify(b));
  }
  assert.ok(parse({ ...GOOD, system: [{ type: 'text', text: 's', cache_control: { type: 'ephemeral' } }] }).ok);
});

test('messages: instance options take their fields out of the tail; options max_tokens sizes the reservation', () => {
  const p = parse({ ...GOOD, temperature: 0.5 }, { overrideKeys: ['max_tokens', 'temperature'], instanceModels: [null], instanceAsks: [{ max_tokens: 900 }] });
  assert.ok(p.ok);
  assert.deepEqual(p.fieldKeys, ['max_tokens', 'temperature']);
  assert.deepEqual(p.clientFields, ['100', '0.5']);
  assert.equal(p.obj.max_tokens, undefined);
  assert.equal(p.reserveCompletion, 900);
});

test('count_tokens: only JSON is checked; not metered', () => {
  assert.equal(countTokensSurface.metered, false);
  const ok = countTokensSurface.parse(body({ model: 'm', messages: [] }), { ...OPTS, surface: 'anthropic-count-tokens' });
  assert.ok(ok.ok);
  assert.equal(ok.reserveCompletion, 0);
  assert.equal(ok.parts, undefined);
  const bad = countTokensSurface.parse(body('nope'), { ...OPTS, surface: 'anthropic-count-tokens' });
  assert.ok(!bad.ok && bad.code === 'SLC_BAD_JSON');
});

test('errorBody: Anthropic shape and error types', () => {
  const types: [number, string][] = [[400, 'invalid_request_error'], [401, 'authentication_error'], [403, 'permission_error'], [404, 'not_found_error'],
    [413, 'request_too_large'], [429, 'rate_limit_error'], [500, 'api_error'], [503, 'api_error'], [504, 'timeout_error'], [529, 'overloaded_error']];
  for (const [status, type] of types) {
    const b = JSON.parse(messagesSurface.errorBody(status, 'SLC_X', 'ignored', 'msg', undefined));
    assert.deepEqual(b, { type: 'error', error: { type, message: 'msg', code: 'SLC_X' } });
  }
});

// ─── usage ──────────────────────────────────────────────────────────────────────────────────────

test('usage: prompt sums input and both cache fields; cached = reads, cache_write = creations; thinking = reasoning', () => {
  const u = anthropicUsage({ input_tokens: 10, cache_creation_input_tokens: 5, cache_read_input_tokens: 20, output_tokens: 7 }, MAX);
  assert.deepEqual({ ...u }, { prompt_tokens: 35, completion_tokens: 7, total_tokens: 42, cached_prompt_tokens: 20, cache_write_tokens: 5, reasoning_tokens: 0 });
  const t = anthropicUsage({ input_tokens: 3, output_tokens: 9, output_tokens_details: { thinking_tokens: 4 } }, MAX);
  assert.equal((t as { reasoning_tokens: number }).reasoning_tokens, 4);
  assert.equal((t as { raw: unknown }).raw !== undefined, true);
  assert.equal(anthropicUsage(undefined, MAX), undefined);
  assert.equal(anthropicUsage({ service_tier: 'standard' }, MAX), undefined);
  assert.equal(anthropicUsage({ output_tokens: 5 }, MAX), undefined, 'output alone would charge the prompt as 0: counted instead');
  assert.deepEqual(anthropicUsage({ output_tokens: -5 }, MAX), { rejected: 'negative' });
  assert.deepEqual(anthropicUsage('x', MAX), { rejected: 'malformed' });
  assert.deepEqual(anthropicUsage({ input_tokens: 10, cache_read_input_tokens: -5, output_tokens: 1 }, MAX), { rejected: 'negative' }, 'a negative part cannot hide in the sum');
  assert.deepEqual(anthropicUsage({ input_tokens: '10', output_tokens: 1 }, MAX), { rejected: 'not_a_number' });
  assert.deepEqual(anthropicUsage({ input_tokens: 1.5, output_tokens: 1 }, MAX), { rejected: 'fractional' });
  assert.deepEqual(anthropicUsage({ input_tokens: 1, output_tokens: MAX + 1 }, MAX), { rejected: 'too_large' });
  assert.deepEqual(anthropicUsage({ input_tokens: 1, output_tokens: 2, output_tokens_details: { thinking_tokens: 3 } }, MAX), { rejected: 'inconsistent' });
});

test('usage: message_start + cumulative message_delta; later values replace, never add, never lower', () => {
  const s = new StreamUsage();
  s.add({ input_tokens: 10, cache_creation_input_tokens: 5, cache_read_input_tokens: 20, output_tokens: 1 }, false, MAX);
  assert.equal(s.read(MAX), undefined, 'no final usage before message_delta');
  s.add({ output_tokens: 30 }, true, MAX);
  s.add({ output_tokens: 42, input_tokens: 12 }, true, MAX);
  const u = s.read(MAX) as unknown as Record<string, number>;
  assert.equal(u.prompt_tokens, 37);
  assert.equal(u.completion_tokens, 42);
  assert.equal(u.cached_prompt_tokens, 20);
  assert.equal(u.cache_write_tokens, 5);
  // Cumulative counts: a later, smaller value cannot take back what was reported.
  s.add({ output_tokens: 3, input_tokens: 2 }, true, MAX);
  const lower = s.read(MAX) as unknown as Record<string, number>;
  assert.equal(lower.prompt_tokens, 37);
  assert.equal(lower.completion_tokens, 42);
  const deltaOnly = new StreamUsage();
  deltaOnly.add({ output_tokens: 9 }, true, MAX);
  assert.equal(deltaOnly.read(MAX), undefined, 'no input reported anywhere: counted instead');
  const sticky = new StreamUsage();
  sticky.add('junk', false, MAX);
  sticky.add({ input_tokens: 1, output_tokens: 9 }, true, MAX);
  assert.deepEqual(sticky.read(MAX), { rejected: 'malformed' });
  // A final count that is not believed leaves the believable input counts as the prompt report.
  const lied = new StreamUsage();
  lied.add({ input_tokens: 1000, cache_read_input_tokens: 200, output_tokens: -1 }, false, MAX);
  assert.deepEqual(lied.readPrompt(MAX), { prompt_tokens: 1200, completion_tokens: 0, total_tokens: 1200, cached_prompt_tokens: 200, cache_write_tokens: 0 },
    'a bad output count does not discard the input counts');
  lied.add({ output_tokens: '50', input_tokens: -1 }, true, MAX);
  assert.deepEqual(lied.read(MAX), { rejected: 'negative' });
  assert.equal(lied.readPrompt(MAX)?.prompt_tokens, 1200);
});

// ─── native buffered ────────────────────────────────────────────────────────────────────────────

test('native decode: usage read, body untouched; without usage the content is the text to count', () => {
  const msg = { id: 'msg_1', type: 'message', content: [{ type: 'text', text: 'Hi' }], usage: { input_tokens: 4, cache_read_input_tokens: 6, output_tokens: 2 } };
  const b = body(msg);
  const d = decodeNative(b, MAX);
  assert.equal(d.body, b);
  assert.equal(d.usage?.prompt_tokens, 10);
  assert.equal(d.usage?.cached_prompt_tokens, 6);
  assert.equal(d.text, '');
  const n = decodeNative(body({ content: [{ type: 'thinking', thinking: 'hmm ' }, { type: 'text', text: 'Hi' }, { type: 'tool_use', id: 't', name: 'f', input: { a: 1 } }] }), MAX);
  assert.equal(n.usage, undefined);
  assert.equal(n.text, 'hmm Hif{"a":1}');
  const r = decodeNative(body({ content: [{ type: 'text', text: 'Hi' }], usage: { input_tokens: -1, output_tokens: 2 } }), MAX);
  assert.equal(r.rejected, 'negative');
  assert.equal(r.text, 'Hi');
  // A 2xx no Anthropic client could use is refused (the pipeline answers 502), not relayed as a message.
  for (const junk of ['not json', '', '<html><body>Login</body></html>', '[1]']) {
    assert.equal(decodeNative(Buffer.from(junk), MAX).unusable, 'the upstream answer is not a JSON object', junk);
  }
  assert.equal(decodeNative(body({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }), MAX).unusable,
    'the upstream answered 2xx with an error: Overloaded');
  assert.equal(decodeNative(body({ id: 'm', type: 'message' }), MAX).unusable, 'the upstream answer has no content array');
  assert.equal(decodeNative(body({ type: 'error', error: { message: 'x' }, usage: { input_tokens: 1, output_tokens: 9 } }), MAX).unusable,
    'the upstream answered 2xx with an error: x', 'a usage at the end does not make an error an answer');
  // Nor does a believable usage at the end make an answer of a null or nested content.
  assert.equal(decodeNative(body({ id: 'm', content: null, usage: { input_tokens: 1, output_tokens: 3 } }), MAX).unusable, 'the upstream answer has no content array');
  assert.equal(decodeNative(body({ id: 'm', meta: { content: 1 }, usage: { input_tokens: 1, output_tokens: 3 } }), MAX).unusable, 'the upstream answer has no content array');
  // A believed output far too small for its text: the text is counted (the pipeline charges the larger).
  const big = 'word '.repeat(20_000);
  const small = decodeNative(body({ content: [{ type: 'text', text: big }], usage: { input_tokens: 4, output_tokens: 1 } }), MAX);
  assert.equal(small.verifyText, big);
});

test('native decode: the root usage is read from the tail; a nested usage after it, or odd text, goes to the whole parse', () => {
  const root = { input_tokens: 3, output_tokens: 5 };
  const last = decodeNative(Buffer.from(JSON.stringify({ id: 'm', content: [{ type: 'text', text: 'say "usage":{"input_tokens":999}' }], usage: root })), MAX);
  assert.equal(last.usage?.prompt_tokens, 3);
  assert.equal(last.usage?.completion_tokens, 5);
  const nestedAfter = decodeNative(Buffer.from(JSON.stringify({ content: [], usage: root, extra: { usage: { input_tokens: 999, output_tokens: 999 } } })), MAX);
  assert.equal(nestedAfter.usage?.prompt_tokens, 3, 'the root usage, not the later nested one');
  const trailing = decodeNative(Buffer.from(`${JSON.stringify({ content: [{ type: 'text', text: 'Hi' }], usage: root })} junk`), MAX);
  assert.equal(trailing.unusable, 'the upstream answer is not a JSON object', 'not JSON: refused, charged as an answer that broke off');
});

// ─── streams ────────────────────────────────────────────────────────────────────────────────────

function ev(type: string, data: Record<string, unknown>): string {
  return `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
}

const START_USAGE = { input_tokens: 10, cache_creation_input_tokens: 5, cache_read_input_tokens: 20, output_tokens: 1 };
const HEAD = ev('message_start', { message: { id: 'msg_01', type: 'message', role: 'assistant', model: 'claude-up', content: [], stop_reason: null, usage: START_USAGE } });
const BODY = [
  ev('content_block_start', { index: 0, content_block: { type: 'thinking', thinking: '' } }),
  ev('content_block_delta', { index: 0, delta: { type: 'thinking_delta', thinking: 'Let me think. ' } }),
  ev('content_block_delta', { index: 0, delta: { type: 'signature_delta', signature: 'EqQBCgIYAhIM' } }),
  ev('content_block_stop', { index: 0 }),
  ev('ping', {}),
  ev('content_block_start', { index: 1, content_block: { type: 'text', text: '' } }),
  ev('content_block_delta', { index: 1, delta: { type: 'text_delta', text: 'Bonjour, "le" monde\n' } }),
  ev('content_block_delta', { index: 1, delta: { type: 'text_delta', text: '🌍 日本' } }),
  // A layout the scan does not expect: the full parse must read the same text.
  `event: content_block_delta\ndata: {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " spaced"}}\n\n`,
  ev('content_block_stop', { index: 1 }),
  ev('content_block_start', { index: 2, content_block: { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: {} } }),
  ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: '{"loc' } }),
  ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: 'ation": "Paris"}' } }),
  ev('content_block_stop', { index: 2 }),
].join('');
const DELTA = ev('message_delta', { delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: { output_tokens: 42 } });
const STOP = ev('message_stop', {});
const STREAM = HEAD + BODY + DELTA + STOP;
const TEXT = 'Let me think. Bonjour, "le" monde\n🌍 日本 spacedget_weather{"location": "Paris"}';
const FINAL = { prompt_tokens: 35, completion_tokens: 42, total_tokens: 77, cached_prompt_tokens: 20, cache_write_tokens: 5, reasoning_tokens: 0 };

function feed(codec: StreamCodec, pieces: Buffer[]): Buffer {
  const out: Buffer[] = [];
  for (const p of pieces) {
    const o = codec.push(p);
    if (o !== undefined) out.push(o);
  }
  const e = codec.end();
  if (e !== undefined) out.push(e);
  return Buffer.concat(out);
}

function splits(bytes: Buffer): Buffer[][] {
  const all: Buffer[][] = [];
  for (let i = 0; i <= bytes.length; i++) all.push([bytes.subarray(0, i), bytes.subarray(i)]);
  const single: Buffer[] = [];
  for (let i = 0; i < bytes.length; i++) single.push(bytes.subarray(i, i + 1));
  all.push(single);
  return all;
}

test('scan: the compact delta layout is read without a parse, and the same text as JSON.parse', () => {
  const data = JSON.stringify({ type: 'content_block_delta', index: 12, delta: { type: 'text_delta', text: 'a\\"b\n🌍' } });
  const s = scanDelta(data);
  assert.ok(s !== null);
  assert.equal(s.index, 12);
  assert.equal(s.kind, 'text');
  assert.equal(literalText(data, s), 'a\\"b\n🌍');
  assert.equal(scanDelta(data.replace('}}', '},"x":1}')), null, 'a trailing member sends the frame to the full parse');
  assert.equal(scanDelta('{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}'), null);
});

for (const [name, term] of [['LF', '\n'], ['CRLF', '\r\n']] as const) {
  test(`native stream (${name}): bytes pass through, usage and text the same at every split`, () => {
    const bytes = Buffer.from(STREAM.replaceAll('\n', term));
    for (const pieces of splits(bytes)) {
      const c = anthropic.resolve(inst()) as AnthropicDialect;
      const codec = c.stream(call('anthropic-messages', { stream: true }), { maxUsage: MAX });
      const out = feed(codec, pieces);
      assert.deepEqual(out, bytes);
      assert.deepEqual({ ...codec.usage }, FINAL);
      assert.equal(codec.text, TEXT);
      assert.equal(codec.usageRejected, undefined);
    }
  });
}

test('native stream: aborted before message_delta → no usage, the text so far; usage-less delta → none; rejected usage', () => {
  const cut = STREAM.indexOf('event: content_block_delta', STREAM.indexOf('{\\"loc'));
  const a = new NativeStreamCodec({ maxUsage: MAX });
  a.push(Buffer.from(STREAM.slice(0, cut)));
  assert.equal(a.usage, undefined, 'message_start alone is not the final usage');
  assert.equal(a.text, 'Let me think. Bonjour, "le" monde\n🌍 日本 spacedget_weather{"loc');
  const none = new NativeStreamCodec({ maxUsage: MAX });
  feed(none, [Buffer.from(HEAD.replace(/"usage":\{[^}]*\}/, '"x":1') + BODY + ev('message_delta', { delta: { stop_reason: 'end_turn' } }) + STOP)]);
  assert.equal(none.usage, undefined);
  assert.equal(none.text, TEXT);
  const bad = new NativeStreamCodec({ maxUsage: MAX });
  feed(bad, [Buffer.from(HEAD + BODY + ev('message_delta', { delta: {}, usage: { output_tokens: -3 } }) + STOP)]);
  assert.equal(bad.usage, undefined);
  assert.equal(bad.usageRejected, 'negative');
  const replaced = new NativeStreamCodec({ maxUsage: MAX });
  feed(replaced, [Buffer.from(HEAD + BODY + ev('message_delta', { delta: {}, usage: { input_tokens: 11, cache_read_input_tokens: 0, output_tokens: 42 } }) + STOP)]);
  // Counts are cumulative: a larger input raises the prompt, a smaller cache read does not take back message_start's.
  assert.equal(replaced.usage?.prompt_tokens, 11 + START_USAGE.cache_read_input_tokens + START_USAGE.cache_creation_input_tokens);
  assert.equal(replaced.usage?.cached_prompt_tokens, START_USAGE.cache_read_input_tokens);
});

test('native stream: a message_delta whose usage has no output_tokens is not the final count (message_start\'s early 1 is not the answer)', () => {
  for (const usage of [{}, { output_tokens: null }, { input_tokens: 11 }]) {
    const c = new NativeStreamCodec({ maxUsage: MAX });
    feed(c, [Buffer.from(HEAD + BODY + ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage }) + STOP)]);
    assert.equal(c.usage, undefined, JSON.stringify(usage));
    assert.equal(c.usageRejected, undefined);
    assert.equal(c.text, TEXT, 'the whole answer is counted instead');
  }
  const floor = new NativeStreamCodec({ maxUsage: MAX });
  feed(floor, [Buffer.from(HEAD + BODY + DELTA + ev('message_delta', { delta: {}, usage: { output_tokens: -5 } }) + STOP)]);
  assert.deepEqual({ ...floor.usage }, FINAL, 'a lie after a believed final count keeps the believed one as the floor');
  assert.equal(floor.usageRejected, 'negative');
  const later = new NativeStreamCodec({ maxUsage: MAX });
  feed(later, [Buffer.from(HEAD + BODY + ev('message_delta', { delta: {}, usage: {} }) + DELTA + STOP)]);
  assert.deepEqual({ ...later.usage }, FINAL, 'a later delta with output_tokens is believed');
});

test('native stream: error event recorded, bytes still passed through; the text bound hands pieces out', () => {
  const c = new NativeStreamCodec({ maxUsage: MAX, textBound: 64 });
  const errEv = 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
  let counted = '';
  const pieces = [HEAD, ...Array.from({ length: 20 }, (_, i) => ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: `word${i} ` } })), errEv];
  for (const p of pieces) {
    assert.deepEqual(c.push(Buffer.from(p)), Buffer.from(p));
    counted += c.takeCountable() ?? '';
  }
  assert.deepEqual(c.error, { type: 'overloaded_error', message: 'Overloaded' });
  assert.equal(counted + c.text, Array.from({ length: 20 }, (_, i) => `word${i} `).join(''));
  assert.ok(c.countMargin > 0);
});

// ─── translation ────────────────────────────────────────────────────────────────────────────────

test('translate request: roles, images, tool calls and results, limits, tools, stop, stream', () => {
  const req = {
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'developer', content: [{ type: 'text', text: 'Use metric.' }] },
      { role: 'user', content: [{ type: 'text', text: 'Weather?' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } }, { type: 'image_url', image_url: { url: 'https://x/y.png' } }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }, { id: 'call_2', type: 'function', function: { name: 'get_time', arguments: '' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '18C' },
      { role: 'tool', tool_call_id: 'call_2', content: [{ type: 'text', text: 'noon' }] },
      { role: 'user', content: 'Thanks' },
    ],
    temperature: 1.6, top_p: 0.9, stop: 'END', stream: true, stream_options: { include_usage: true }, n: 1, user: 'u1',
    tools: [{ type: 'function', function: { name: 'get_weather', description: 'Weather', parameters: { type: 'object', properties: { location: { type: 'string' } } } } }],
    tool_choice: 'required', parallel_tool_calls: false,
  };
  const out = JSON.parse(translateRequest(req, 'claude-i', 512));
  assert.equal(out.model, 'claude-i');
  assert.equal(out.max_tokens, 512, 'the reservation when the client gives no max_tokens');
  assert.deepEqual(out.system, [{ type: 'text', text: 'Be brief.' }, { type: 'text', text: 'Use metric.' }]);
  assert.deepEqual(out.messages, [
    { role: 'user', content: [{ type: 'text', text: 'Weather?' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AAAA' } }, { type: 'image', source: { type: 'url', url: 'https://x/y.png' } }] },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'call_1', name: 'get_weather', input: { location: 'Paris' } }, { type: 'tool_use', id: 'call_2', name: 'get_time', input: {} }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'call_1', content: '18C' }, { type: 'tool_result', tool_use_id: 'call_2', content: 'noon' }, { type: 'text', text: 'Thanks' }] },
  ]);
  assert.equal(out.temperature, 1);
  assert.equal(out.top_p, 0.9);
  assert.deepEqual(out.stop_sequences, ['END']);
  assert.equal(out.stream, true);
  assert.equal(out.stream_options, undefined);
  assert.equal(out.n, undefined);
  assert.deepEqual(out.metadata, { user_id: 'u1' });
  assert.deepEqual(out.tools, [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { location: { type: 'string' } } } }]);
  assert.deepEqual(out.tool_choice, { type: 'any', disable_parallel_tool_use: true });
  const simple = JSON.parse(translateRequest({ messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'hi' }], max_completion_tokens: 7, max_tokens: 9 }, undefined, 0));
  assert.equal(simple.system, 'S');
  assert.equal(simple.max_tokens, 7);
  assert.equal(simple.model, undefined);
  assert.equal(JSON.parse(translateRequest({ messages: [] }, 'm', 0)).max_tokens, DEFAULT_TRANSLATED_MAX_TOKENS);
  assert.deepEqual(JSON.parse(translateRequest({ messages: [], tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'f' } } }, 'm', 0)).tool_choice, { type: 'tool', name: 'f' });
});

test('translate request: empty turns are left out (Anthropic refuses them)', () => {
  const out = JSON.parse(translateRequest({ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: '' }, { role: 'assistant', content: null }, { role: 'user', content: 'b' }] }, 'm', 10));
  assert.deepEqual(out.messages, [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }]);
});

test('translate request: an inline PDF file part is a document block; parts Anthropic cannot take are a 400, not dropped', () => {
  const pdf = { type: 'file', file: { filename: 'a.pdf', file_data: 'data:application/pdf;base64,JVBERi0x' } };
  const out = JSON.parse(translateRequest({ messages: [{ role: 'user', content: [{ type: 'text', text: 'sum up' }, pdf] }] }, 'm', 10));
  assert.deepEqual(out.messages[0].content[1], { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0x' } });
  for (const part of [
    { type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } },
    { type: 'file', file: { file_id: 'file-1' } },
    { type: 'file', file: { file_data: 'data:text/plain;base64,aGk=' } },
  ]) {
    const ask = { messages: [{ role: 'user', content: 'first' }, { role: 'assistant', content: 'ok' }, { role: 'user', content: [part] }] };
    assert.throws(() => translateRequest(ask, 'm', 10), (e: unknown) => e instanceof SluiceError && e.status === 400 && /cannot be sent to an Anthropic instance/.test(e.message), JSON.stringify(part));
  }
});

test('streams: an event past the size bound fails the push (the gateway treats the stream as broken)', () => {
  const c = new NativeStreamCodec({ maxUsage: MAX });
  const huge = ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'x'.repeat(1024 * 1024 + 10) } });
  assert.throws(() => c.push(Buffer.from(huge)), (e: Error) => e.name === 'SluiceError');
});

test('dialect: request bodies per surface; the translated one from the tail with instance options merged', () => {
  const d = dialect();
  const tail = Buffer.from(JSON.stringify({ max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] }).slice(1));
  const native = d.request(call('anthropic-messages', { tail }), 'claude-i', '"temperature":0.2');
  assert.equal(native.path, '/v1/messages');
  assert.deepEqual(native.headers, { 'anthropic-version': '2023-06-01' });
  assert.deepEqual(native.body, composeUpstreamBody('claude-i', tail, '"temperature":0.2'));
  const count = d.request(call('anthropic-count-tokens', { tail }), 'claude-i', '"temperature":0.2');
  assert.equal(count.path, '/v1/messages/count_tokens');
  assert.equal(JSON.parse(count.body.toString()).temperature, undefined, 'options stay out of count_tokens');
  const oa = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } }).slice(1));
  const tr = d.request(call('openai-chat', { tail: oa, reserveCompletion: 77 }), 'claude-i', '"temperature":0.3');
  const tb = JSON.parse(tr.body.toString());
  assert.deepEqual(tb, { model: 'claude-i', max_tokens: 77, messages: [{ role: 'user', content: 'hi' }], temperature: 0.3, stream: true });
  assert.equal(d.mode('openai-chat'), 'translated');
  assert.equal(d.mode('anthropic-messages'), 'native');
  assert.equal(d.mode('anthropic-count-tokens'), 'native');
  assert.equal(d.mode('openai-embeddings'), undefined);
  assert.equal(d.isStream(call('anthropic-messages', { stream: true }), 'text/event-stream; charset=utf-8'), true);
  assert.equal(d.isStream(call('anthropic-messages', { stream: true }), 'Text/Event-Stream'), true, 'media types are case-insensitive');
  assert.equal(d.isStream(call('anthropic-messages', { stream: true }), 'application/json'), false);
  assert.equal(d.isStream(call('anthropic-messages'), 'text/event-stream'), false, 'a request that asked for no stream is answered in JSON');
});

test('dialect: endpoints, version header, auth query, bad URLs', () => {
  assert.equal(dialect().origin, 'https://api.anthropic.com');
  const host = dialect({ endpoint: 'http://127.0.0.1:9100' });
  assert.equal(host.origin, 'http://127.0.0.1:9100');
  assert.equal(host.messagesPath, '/v1/messages');
  assert.equal(host.countPath, '/v1/messages/count_tokens');
  const full = dialect({ endpoint: 'https://gw.example/anthropic/v1/messages?beta=true', auth_query: { k: 'v' } });
  assert.equal(full.messagesPath, '/anthropic/v1/messages?beta=true&k=v');
  assert.equal(full.countPath, '/anthropic/v1/messages/count_tokens?beta=true&k=v');
  assert.deepEqual(endpointPaths(new URL('http://h/proxy/claude/')), { messages: '/proxy/claude/', count: '/proxy/claude/count_tokens' });
  assert.equal(dialect({ auth_header: { 'x-api-key': 'k', 'Anthropic-Version': '2024-01-01' } }).headers, undefined);
  for (const endpoint of ['not a url', 'ftp://x/y']) {
    const r = resolveAnthropic(inst({ endpoint }));
    assert.ok(Array.isArray(r) && r[0]!.path === 'override.endpoint', endpoint);
  }
  assert.equal(anthropic.id, 'anthropic');
  assert.deepEqual(anthropic.names, ['anthropic']);
  assert.deepEqual(anthropic.surfaces.map((s) => s.id), ['anthropic-messages', 'anthropic-count-tokens']);
});

test('failure: 429 and 5xx (529 included) fall back; the body passes through natively, in OpenAI shape translated', () => {
  const d = dialect();
  const err = Buffer.from(JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
  for (const [status, retry] of [[429, 'http_429'], [500, 'http_5xx'], [502, 'http_5xx'], [503, 'http_5xx'], [504, 'http_5xx'], [529, 'http_5xx'], [400, undefined], [401, undefined]] as const) {
    const f = d.failure(call('anthropic-messages'), status, err);
    assert.equal(f.retry, retry, String(status));
    assert.equal(f.body, err);
    assert.equal(f.status, status);
  }
  const t = d.failure(call('openai-chat'), 529, err);
  assert.deepEqual(JSON.parse(t.body.toString()), { error: { message: 'Overloaded', type: 'overloaded_error', param: null, code: 'overloaded_error' } });
  assert.equal(t.contentType, 'application/json');
  const raw = d.failure(call('openai-chat'), 502, Buffer.from('Bad Gateway'));
  assert.equal(JSON.parse(raw.body.toString()).error.message, 'Bad Gateway');
});

test('translate response: chat.completion with text, tool calls, finish_reason and usage mapped', () => {
  const msg = {
    id: 'msg_9', type: 'message', role: 'assistant', model: 'claude-up', stop_reason: 'tool_use',
    content: [{ type: 'thinking', thinking: 'hm' }, { type: 'text', text: 'Checking.' }, { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { location: 'Paris' } }],
    usage: { input_tokens: 10, cache_creation_input_tokens: 5, cache_read_input_tokens: 20, output_tokens: 7 },
  };
  const d = decodeTranslated(body(msg), MAX, 'fallback');
  const o = JSON.parse(d.body.toString());
  assert.equal(o.object, 'chat.completion');
  assert.equal(o.id, 'msg_9');
  assert.equal(o.model, 'claude-up');
  assert.equal(typeof o.created, 'number');
  assert.deepEqual(o.choices[0].message.tool_calls, [{ id: 'toolu_1', type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }]);
  assert.equal(o.choices[0].message.content, 'Checking.');
  assert.equal(o.choices[0].message.reasoning_content, 'hm');
  assert.equal(o.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(o.usage, { prompt_tokens: 35, completion_tokens: 7, total_tokens: 42, prompt_tokens_details: { cached_tokens: 20 } });
  assert.equal(d.usage?.cache_write_tokens, 5);
  // A null stop_reason (a message that does not say why it ended) reads as stop, as in streams.
  for (const [stop, finish] of [['end_turn', 'stop'], ['stop_sequence', 'stop'], ['max_tokens', 'length'], ['refusal', 'content_filter'], [null, 'stop']] as const) {
    assert.equal(JSON.parse(decodeTranslated(body({ ...msg, stop_reason: stop }), MAX, 'm').body.toString()).choices[0].finish_reason, finish);
  }
  const noUsage = decodeTranslated(body({ ...msg, usage: undefined }), MAX, 'm');
  assert.equal(noUsage.usage, undefined);
  assert.equal(JSON.parse(noUsage.body.toString()).usage, undefined);
  assert.equal(noUsage.text, 'hmChecking.get_weather{"location":"Paris"}');
});

interface Chunk { id?: string; object?: string; model?: string; choices: { delta: Record<string, unknown>; finish_reason: string | null }[]; usage?: Record<string, unknown>; error?: unknown }

function chunksOf(out: Buffer): { frames: Chunk[]; done: boolean; raw: string } {
  const raw = out.toString('utf8');
  const events = raw.split('\n\n').filter((e) => e !== '');
  let done = false;
  const frames: Chunk[] = [];
  for (const e of events) {
    assert.ok(e.startsWith('data: '), e);
    const d = e.slice(6);
    if (d === '[DONE]') { done = true; continue; }
    assert.equal(done, false, 'nothing after [DONE]');
    frames.push(JSON.parse(d) as Chunk);
  }
  return { frames, done, raw };
}

/** `settle`: append what the pipeline sends once the stream is settled (closing, with the codec's own usage). */
function translatedStream(wantsUsage: boolean, pieces: Buffer[], settle = true): { out: Buffer; codec: TranslatedStreamCodec } {
  const codec = new TranslatedStreamCodec({ maxUsage: MAX }, wantsUsage, 'req-model');
  const out = feed(codec, pieces);
  const tail = settle && codec.usage !== undefined ? codec.closing(codec.usage) : undefined;
  return { out: tail === undefined ? out : Buffer.concat([out, tail]), codec };
}

test('translated stream: role first, content and tool-call deltas, finish, usage only when asked, [DONE]; same at every split', () => {
  const bytes = Buffer.from(STREAM);
  const reference = chunksOf(translatedStream(true, [bytes]).out);
  const f = reference.frames;
  assert.deepEqual(f[0]!.choices[0]!.delta, { role: 'assistant', content: '' });
  assert.equal(f[0]!.object, 'chat.completion.chunk');
  assert.equal(f[0]!.id, 'msg_01');
  assert.equal(f[0]!.model, 'claude-up');
  let content = '';
  let reasoning = '';
  let args = '';
  for (const c of f) {
    const d = c.choices[0]?.delta ?? {};
    if (typeof d.content === 'string') content += d.content;
    if (typeof d.reasoning_content === 'string') reasoning += d.reasoning_content;
    const tc = d.tool_calls as { index: number; id?: string; function: { name?: string; arguments: string } }[] | undefined;
    if (tc !== undefined) {
      assert.equal(tc[0]!.index, 0);
      if (tc[0]!.id !== undefined) assert.deepEqual(tc[0], { index: 0, id: 'toolu_1', type: 'function', function: { name: 'get_weather', arguments: '' } });
      args += tc[0]!.function.arguments;
    }
  }
  assert.equal(content, 'Bonjour, "le" monde\n🌍 日本 spaced');
  assert.equal(reasoning, 'Let me think. ');
  assert.equal(args, '{"location": "Paris"}');
  const finish = f.filter((c) => c.choices.length > 0 && c.choices[0]!.finish_reason !== null);
  assert.equal(finish.length, 1);
  assert.equal(finish[0]!.choices[0]!.finish_reason, 'tool_calls');
  const last = f.at(-1)!;
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, { prompt_tokens: 35, completion_tokens: 42, total_tokens: 77, prompt_tokens_details: { cached_tokens: 20 } });
  assert.equal(reference.done, true);
  const norm = (s: string) => s.replace(/"created":\d+/g, '"created":0');
  for (const pieces of splits(bytes)) {
    const r = translatedStream(true, pieces);
    assert.equal(norm(r.out.toString()), norm(reference.raw));
    assert.deepEqual({ ...r.codec.usage }, FINAL);
    assert.equal(r.codec.text, TEXT);
  }
  const noUsage = chunksOf(translatedStream(false, [bytes]).out);
  assert.equal(noUsage.frames.some((c) => c.usage !== undefined), false, 'no usage chunk unless include_usage');
  assert.equal(noUsage.done, true);
  assert.equal(noUsage.frames.length, f.length - 1);
});

test('translated stream: a tool call without input deltas gets "{}" as its arguments, as the buffered translation does', () => {
  const tool = (index: number, id: string) => ev('content_block_start', { index, content_block: { type: 'tool_use', id, name: 'now', input: {} } });
  const stream = HEAD + tool(0, 'toolu_a') + ev('content_block_stop', { index: 0 })
    // An empty delta is no argument either; the second call's block never stops (the message ends it).
    + tool(1, 'toolu_b') + ev('content_block_delta', { index: 1, delta: { type: 'input_json_delta', partial_json: '' } }) + DELTA + STOP;
  const args = ['', ''];
  for (const c of chunksOf(translatedStream(false, [Buffer.from(stream)]).out).frames) {
    const tc = c.choices[0]?.delta?.tool_calls as { index: number; function: { arguments: string } }[] | undefined;
    if (tc !== undefined) args[tc[0]!.index] += tc[0]!.function.arguments;
  }
  assert.deepEqual(args.map((a) => JSON.parse(a)), [{}, {}]);
});

test('translated stream: an error event becomes an OpenAI error frame; a clean end before message_delta is an error, not a finish', () => {
  const errEv = 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
  const e = chunksOf(translatedStream(true, [Buffer.from(HEAD + errEv)]).out);
  assert.deepEqual(e.frames.at(-1)!.error, { message: 'Overloaded', type: 'overloaded_error', param: null, code: 'overloaded_error' });
  assert.equal(e.done, false);
  // Cut before message_delta (no stop reason, no final count): the client gets an error, never finish_reason "stop".
  for (const [wants, wire] of [[true, HEAD + BODY], [false, HEAD + BODY], [true, ''], [false, HEAD]] as const) {
    const cut = translatedStream(wants, [Buffer.from(wire)], false);
    const c = chunksOf(cut.out);
    assert.equal(c.done, false, wire);
    assert.equal(cut.codec.truncated, true);
    assert.equal(c.frames.some((f) => f.choices?.[0]?.finish_reason != null), false, 'no made-up finish');
    assert.deepEqual(c.frames.at(-1)!.error, {
      message: 'the upstream stream ended before message_delta: the answer is incomplete', type: 'upstream_error', code: 'SLC_UPSTREAM_ERROR', param: null,
    });
    assert.equal(cut.codec.closing({ prompt_tokens: 40, completion_tokens: 7, total_tokens: 47 }), undefined, 'nothing held after the error');
  }
  assert.equal(translatedStream(true, [Buffer.from(HEAD + BODY)], false).codec.text, TEXT, 'the text is still counted');
  // Closed after message_delta but before message_stop: finished as OpenAI clients expect, the usage chunk held for the charge.
  const late = translatedStream(true, [Buffer.from(HEAD + BODY + DELTA)], false);
  const l = chunksOf(late.out);
  assert.equal(late.codec.truncated, false);
  assert.equal(l.done, false);
  assert.equal(l.frames.at(-1)!.choices[0]!.finish_reason, 'tool_calls');
  const tail = chunksOf(late.codec.closing({ prompt_tokens: 40, completion_tokens: 7, total_tokens: 47 })!);
  assert.equal(tail.done, true);
  assert.deepEqual(tail.frames.map((f) => f.usage?.total_tokens), [47], 'the usage chunk says what was charged');
  assert.equal(late.codec.closing(undefined), undefined, 'given once');
  // Without include_usage nothing is held.
  const plain = translatedStream(false, [Buffer.from(HEAD + BODY + DELTA)], false);
  assert.equal(chunksOf(plain.out).done, true);
  assert.equal(plain.codec.closing(undefined), undefined);
});

test('stream reader: message_start\'s input counts are the prompt report, until a lie', () => {
  const start = (usage: object): string => `event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { id: 'm', usage } })}\n\n`;
  const of = (s: string) => translatedStream(false, [Buffer.from(s)]).codec.promptReport;
  assert.deepEqual(of(start({ input_tokens: 30, cache_read_input_tokens: 5, cache_creation_input_tokens: 2, output_tokens: 1 })),
    { prompt_tokens: 37, completion_tokens: 0, total_tokens: 37, cached_prompt_tokens: 5, cache_write_tokens: 2 });
  assert.equal(of(start({ input_tokens: 0, output_tokens: 1 })), undefined, 'a prompt of 0 is no report');
  assert.equal(of(start({ input_tokens: -3, output_tokens: 1 })), undefined);
  assert.equal(of(start({ output_tokens: 1 })), undefined);
  assert.equal(of('event: ping\ndata: {"type":"ping"}\n\n'), undefined);
});

// ─── estimate ───────────────────────────────────────────────────────────────────────────────────

function estimate(req: Record<string, unknown>): number {
  return Math.ceil(countPromptParts(anthropicPromptParts(req), 'o200k_base') * ANTHROPIC_PROMPT_SCALE);
}

// Counts Anthropic publishes for exact requests (docs "Token counting": basic, tools, extended thinking).
const PUBLISHED: [string, Record<string, unknown>, number][] = [
  ['basic', { system: 'You are a scientist', messages: [{ role: 'user', content: 'Hello, Claude' }] }, 14],
  ['tools', {
    tools: [{ name: 'get_weather', description: 'Get the current weather in a given location', input_schema: { type: 'object', properties: { location: { type: 'string', description: 'The city and state, e.g. San Francisco, CA' } }, required: ['location'] } }],
    messages: [{ role: 'user', content: "What's the weather like in San Francisco?" }],
  }, 403],
  ['thinking', {
    messages: [
      { role: 'user', content: 'Are there an infinite number of prime numbers such that n mod 4 == 3?' },
      { role: 'assistant', content: [{ type: 'thinking', thinking: "This is a nice number theory question. Let's think about it step by step...", signature: 'EuYBCkQYAiJAgCs1le6/Pol5Z4/JMomVOouGrWdhYNsH3ukzUECbB6iWrSQtsQuRHJID6lWV...' }, { type: 'text', text: 'Yes, there are infinitely many prime numbers p such that p mod 4 = 3...' }] },
      { role: 'user', content: 'Can you write a formal proof?' },
    ],
  }, 88],
  ['image', { messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: 'AAAA' } }, { type: 'text', text: 'Describe this image' }] }] }, 1551],
];

// Claude tokens of real texts published with their character counts (Claude Code Camp, count_tokens on Opus 4.6
// and 4.7): the fewest characters per Claude token of each kind, against o200k's on text of the same kind here.
const CHARS_PER_CLAUDE_TOKEN: [string, string, number][] = [
  ['README.md vs CLAUDE.md (markdown instructions)', 'README.md', Math.min(5000 / 1399, 5000 / 2021)],
  ['docs/architecture.md vs blog post (markdown)', 'docs/architecture.md', Math.min(5000 / 1209, 5000 / 1654)],
];

test('estimate: an upper bound of every published Claude count (error distribution in docs/providers-anthropic.md)', (t) => {
  const ratios: string[] = [];
  for (const [name, req, published] of PUBLISHED) {
    const e = estimate(req);
    ratios.push(`${name} ${e}/${published}=${(e / published).toFixed(2)}`);
    assert.ok(e >= published, `${name}: estimate ${e} < published ${published}`);
  }
  for (const [name, file, claudeCpt] of CHARS_PER_CLAUDE_TOKEN) {
    const text = readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8').slice(0, 5000);
    const ratio = (text.length / countText(text, 'o200k_base')) / claudeCpt;
    ratios.push(`${name}: Claude/o200k≈${ratio.toFixed(2)}`);
    assert.ok(ratio < ANTHROPIC_PROMPT_SCALE, `${name}: ${ratio} ≥ scale`);
  }
  t.diagnostic(ratios.join('; '));
});
