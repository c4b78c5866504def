import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import gemini, { GeminiProvider, pathTemplate } from '../../src/providers/gemini/index.ts';
import { extraTokens, geminiPromptParts, PROMPT_SCALE } from '../../src/providers/gemini/estimate.ts';
import { scanTextFrame, usageMetadataText } from '../../src/providers/gemini/frame-scan.ts';
import { JsonArrayScanner } from '../../src/providers/gemini/json-array.ts';
import { GeminiStream } from '../../src/providers/gemini/stream.ts';
import { geminiErrorBody, parseGeminiPath, parseGenerate, wantsSse } from '../../src/providers/gemini/surface.ts';
import { translateMessages, translateRequest } from '../../src/providers/gemini/translate-request.ts';
import { TranslatedStream } from '../../src/providers/gemini/translate-response.ts';
import { geminiUsage } from '../../src/providers/gemini/usage.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';
import { isRejection, type Usage } from '../../src/streaming/usage.ts';
import type { CallFailure, ParseOptions, ParsedCall, PreparedCall, ResolvedProvider, StreamCodec } from '../../src/providers/types.ts';
import type { InstanceConfig } from '../../src/config/types.ts';

const MAX = 10_000_000;

function opts(path: string, query = '', extra: Partial<ParseOptions> = {}): ParseOptions {
  return { surface: 'gemini-generate', path, query, defaultMaxTokens: 256, ...extra };
}

function parse(body: unknown, path = '/v1beta/models/gemini-2.0-flash:generateContent', extra: Partial<ParseOptions> = {}): ParsedCall | CallFailure {
  return parseGenerate(Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), opts(path, '', extra));
}

function ok(r: ParsedCall | CallFailure): ParsedCall {
  if (!r.ok) assert.fail(`expected a parsed call, got ${r.code}: ${r.message}`);
  return r;
}

function bad(r: ParsedCall | CallFailure, param?: string): CallFailure {
  if (r.ok) assert.fail('expected a failure');
  if (param !== undefined) assert.equal(r.param, param);
  return r;
}

function call(over: Partial<PreparedCall> = {}): PreparedCall {
  return {
    ok: true, surface: 'gemini-generate', model: 'gemini-2.0-flash', stream: false, clientWantsUsage: true, maxTokens: undefined, n: 1,
    promptTokens: 10, promptCounted: true, promptExact: true, reserveCompletion: 256, tail: Buffer.from('"contents":[]}'), ...over,
  };
}

function instance(over: Partial<InstanceConfig> = {}): InstanceConfig {
  return { name: 'g', provider: 'gemini', weight: 1, priority: 0, auth_header: { 'x-goog-api-key': 'secret' }, auth_query: {}, model: undefined, endpoint: undefined, ...over };
}

function resolved(over: Partial<InstanceConfig> = {}): ResolvedProvider {
  const r = gemini.resolve(instance(over));
  assert.ok(!Array.isArray(r), 'resolves');
  return r as ResolvedProvider;
}

test('quotaModel: the model the endpoint fixes, else the one sent, without its models/ prefix', () => {
  assert.equal(resolved().quotaModel?.('gemini-generate', 'models/gemini-2.5-pro'), 'gemini-2.5-pro');
  assert.equal(resolved().quotaModel?.('openai-chat', 'gemini-2.5-flash'), 'gemini-2.5-flash');
  const fixed = resolved({ endpoint: 'https://g.example/v1beta/models/gemini-2.5-pro:generateContent' });
  assert.equal(fixed.quotaModel?.('gemini-generate', 'other'), 'gemini-2.5-pro', 'a client naming another model still reaches this one');
  assert.equal(resolved({ endpoint: 'https://g.example/v1beta/models/{model}:generateContent' }).quotaModel?.('gemini-generate', 'x'), 'x');
  assert.equal(resolved({ endpoint: 'https://g.example/v1/projects/p/locations/l/endpoints/1234567:generateContent' }).quotaModel?.('gemini-generate', 'x'), 'x', 'a tuned endpoint id is no model');
});

const BODY = {
  contents: [{ role: 'user', parts: [{ text: 'Tell me about 2024.' }] }, { role: 'model', parts: [{ text: 'It was a leap year.' }] }, { role: 'user', parts: [{ text: 'And?' }, { inlineData: { mimeType: 'image/png', data: 'AAAA' } }] }],
  systemInstruction: { parts: [{ text: 'Be brief.' }] },
  tools: [{ functionDeclarations: [{ name: 'lookup', description: 'find', parameters: { type: 'OBJECT' } }] }],
  generationConfig: { maxOutputTokens: 100, candidateCount: 3, temperature: 0.2 },
};

// ---- surface: path, query, parse ----

test('the model and the streaming mode come from the path; alt=sse from the query', () => {
  assert.deepEqual(parseGeminiPath('/v1beta/models/gemini-2.0-flash:generateContent'), { model: 'gemini-2.0-flash', stream: false });
  assert.deepEqual(parseGeminiPath('/v1/models/gemini-pro:streamGenerateContent'), { model: 'gemini-pro', stream: true });
  // The segment is percent-encoded: its text is the model (sent upstream encoded once, not %25-encoded again).
  assert.deepEqual(parseGeminiPath('/v1beta/models/a%2F..%2Fx:generateContent'), { model: 'a/../x', stream: false });
  // `models/<m>` spelt into the segment is the model <m>, as upstream reads it: one name for quotas and keys.
  assert.deepEqual(parseGeminiPath('/v1beta/models/models%2Fgemini-2.5-pro:generateContent'), { model: 'gemini-2.5-pro', stream: false });
  assert.deepEqual(parseGeminiPath('/v1beta/models/tuned%40v2:generateContent'), { model: 'tuned@v2', stream: false });
  assert.deepEqual(parseGeminiPath('/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent'), { model: 'gemini-2.5-pro', stream: false });
  assert.equal(parseGeminiPath('/v1beta/models/gemini-pro:countTokens'), undefined);
  assert.equal(parseGeminiPath('/v1beta/models/:generateContent'), undefined);
  assert.equal(parseGeminiPath('/v1/chat/completions'), undefined);
  assert.equal(wantsSse('alt=sse'), true);
  assert.equal(wantsSse('?key=x&alt=sse'), true);
  assert.equal(wantsSse('alt=json'), false);
  assert.equal(wantsSse('xalt=sse'), false);
  assert.equal(wantsSse(''), false);
});

test('parse: a full request is sized from generationConfig, counted over texts, system, tools; the body keeps no model', () => {
  const p = ok(parse(BODY));
  assert.equal(p.model, 'gemini-2.0-flash');
  assert.equal(p.stream, false);
  assert.equal(p.maxTokens, 100);
  assert.equal(p.n, 3);
  assert.equal(p.reserveCompletion, 300);
  assert.equal(p.enc, 'o200k_base');
  assert.equal(p.scale, PROMPT_SCALE);
  assert.equal(p.clientWantsUsage, true);
  const parts = p.parts!;
  assert.ok(parts.texts.includes('Tell me about 2024.'));
  assert.ok(parts.texts.includes('Be brief.'));
  assert.ok(parts.texts.some((t) => t.includes('"lookup"')));
  // 3 per request + 3 per content (4 with the system turn) + 258 for the image + digit correction of "2024" (4 − 2).
  assert.equal(parts.fixed, 3 + 4 * 3 + 258 + 2);
  assert.equal(Object.hasOwn(p.obj, 'model'), false);
  const s = ok(parse(BODY, '/v1beta/models/gemini-2.0-flash:streamGenerateContent'));
  assert.equal(s.stream, true);
});

test('parse: snake_case fields are read too; defaults without generationConfig; countPrompt false skips parts', () => {
  const p = ok(parse({ contents: [{ parts: [{ text: 'hi' }] }], system_instruction: { parts: [{ text: 'sys' }] }, generation_config: { max_output_tokens: 7, candidate_count: 2 } }));
  assert.equal(p.maxTokens, 7);
  assert.equal(p.n, 2);
  assert.equal(p.reserveCompletion, 14);
  assert.ok(p.parts!.texts.includes('sys'));
  const d = ok(parse({ contents: [{ parts: [{ text: 'hi' }] }] }, undefined, { countPrompt: false }));
  assert.equal(d.maxTokens, undefined);
  assert.equal(d.reserveCompletion, 256);
  assert.equal(d.parts, undefined);
  const capped = ok(parse({ contents: [{ parts: [{ text: 'hi' }] }], generationConfig: { maxOutputTokens: 9000, candidateCount: 8 } }, undefined, { maxReservation: 20000 }));
  assert.equal(capped.reserveCompletion, 20000);
});

test('parse: invalid requests fail with the field at fault', () => {
  assert.equal(bad(parse('{nope')).code, 'SLC_BAD_JSON');
  assert.equal(bad(parse('[1]')).code, 'SLC_BAD_REQUEST');
  bad(parse({}), 'contents');
  bad(parse({ contents: [] }), 'contents');
  bad(parse({ contents: {} }), 'contents');
  bad(parse({ contents: [{ role: 'user' }] }), 'contents');
  bad(parse({ contents: [{ parts: [] }] }), 'contents');
  bad(parse({ contents: [{ parts: ['text'] }] }), 'contents');
  bad(parse({ contents: [{ role: 5, parts: [{ text: 'x' }] }] }), 'contents');
  bad(parse({ contents: [{ parts: [{ text: 'x' }] }], systemInstruction: 'be brief' }), 'systemInstruction');
  bad(parse({ contents: [{ parts: [{ text: 'x' }] }], tools: {} }), 'tools');
  bad(parse({ contents: [{ parts: [{ text: 'x' }] }], generationConfig: 3 }), 'generationConfig');
  for (const v of [0, -1, 1.5, '10', 2 ** 53]) {
    bad(parse({ contents: [{ parts: [{ text: 'x' }] }], generationConfig: { maxOutputTokens: v } }), 'generationConfig.maxOutputTokens');
  }
  for (const v of [0, 9, 1.5, '2']) {
    bad(parse({ contents: [{ parts: [{ text: 'x' }] }], generationConfig: { candidateCount: v } }), 'generationConfig.candidateCount');
  }
  const known = bad(parse({ contents: [{ parts: [{ text: 'x' }] }], generationConfig: { maxOutputTokens: 50000 } }, undefined, { models: { 'gemini-2.0-flash': { max_output_tokens: 8192, context_window: 1048576 } } }), 'generationConfig.maxOutputTokens');
  assert.match(known.message, /generationConfig\.maxOutputTokens is too large/);
  bad(parse({ contents: [{ parts: [{ text: 'x' }] }] }, '/v1beta/models/x:countTokens'));
});

test('parse: instance-overridable fields leave the body', () => {
  const p = ok(parse({ contents: [{ parts: [{ text: 'x' }] }], safetySettings: [{ category: 'c' }] }, undefined, { overrideKeys: ['safetySettings', 'toolConfig'] }));
  assert.deepEqual(p.fieldKeys, ['safetySettings', 'toolConfig']);
  assert.deepEqual(p.clientFields, ['[{"category":"c"}]', null]);
  assert.equal(JSON.stringify(p.obj).includes('safetySettings'), false);
});

test('errors are in Google\'s shape, with Sluice\'s code as ErrorInfo reason', () => {
  const e = JSON.parse(geminiErrorBody(400, 'SLC_BAD_REQUEST', 'invalid_request_error', 'contents must be an array', 'contents'));
  assert.equal(e.error.code, 400);
  assert.equal(e.error.status, 'INVALID_ARGUMENT');
  assert.equal(e.error.message, 'contents must be an array');
  assert.equal(e.error.details[0].reason, 'SLC_BAD_REQUEST');
  assert.deepEqual(e.error.details[0].metadata, { param: 'contents' });
  assert.equal(JSON.parse(geminiErrorBody(429, 'SLC_RATE_LIMITED', 'rate_limit_error', 'quota', undefined)).error.status, 'RESOURCE_EXHAUSTED');
  assert.equal(JSON.parse(geminiErrorBody(503, 'SLC_UPSTREAM_UNAVAILABLE', 'upstream_error', 'x', undefined)).error.status, 'UNAVAILABLE');
  assert.equal(JSON.parse(geminiErrorBody(502, 'SLC_UPSTREAM_ERROR', 'upstream_error', 'x', undefined)).error.status, 'INTERNAL');
});

// ---- usage normalisation ----

test('usageMetadata: prompt + tool-use prompt, candidates + thoughts, cached and reasoning as parts', () => {
  const u = geminiUsage({ promptTokenCount: 100, cachedContentTokenCount: 60, toolUsePromptTokenCount: 5, candidatesTokenCount: 20, thoughtsTokenCount: 30, totalTokenCount: 155 }, MAX);
  assert.ok(u !== undefined && !isRejection(u));
  assert.deepEqual({ ...u }, { prompt_tokens: 105, completion_tokens: 50, total_tokens: 155, cached_prompt_tokens: 60, cache_write_tokens: 0, reasoning_tokens: 30 });
  assert.equal((u.raw as Record<string, unknown>).thoughtsTokenCount, 30);
  const plain = geminiUsage({ promptTokenCount: 8, candidatesTokenCount: 4, totalTokenCount: 12 }, MAX);
  assert.deepEqual({ ...plain }, { prompt_tokens: 8, completion_tokens: 4, total_tokens: 12, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
  // A total below the parts (an old API that left thoughts out of it) is replaced by their sum.
  const low = geminiUsage({ promptTokenCount: 8, candidatesTokenCount: 4, thoughtsTokenCount: 3, totalTokenCount: 12 }, MAX);
  assert.ok(isRejection(low) && low.rejected === 'inconsistent');
  assert.equal(geminiUsage(undefined, MAX), undefined);
  assert.equal(geminiUsage({ totalTokenCount: 5 }, MAX), undefined);
  // No prompt count: the prompt would be charged as 0, so the answer is counted instead.
  assert.equal(geminiUsage({ candidatesTokenCount: 20, totalTokenCount: 20 }, MAX), undefined);
  const prompt = geminiUsage({ promptTokenCount: 8 }, MAX);
  assert.deepEqual({ ...prompt }, { prompt_tokens: 8, completion_tokens: 0, total_tokens: 8, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
});

test('usageMetadata: implausible numbers are rejected before any sum can hide them', () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ promptTokenCount: -5, toolUsePromptTokenCount: 10, candidatesTokenCount: 1 }, 'negative'],
    [{ promptTokenCount: 0.5, toolUsePromptTokenCount: 0.5, candidatesTokenCount: 1 }, 'fractional'],
    [{ promptTokenCount: '8', candidatesTokenCount: 1 }, 'not_a_number'],
    [{ promptTokenCount: 8, thoughtsTokenCount: Number.NaN }, 'not_a_number'],
    [{ promptTokenCount: 8, candidatesTokenCount: MAX + 1 }, 'too_large'],
    [{ promptTokenCount: 8, cachedContentTokenCount: 9, candidatesTokenCount: 1 }, 'inconsistent'],
  ];
  for (const [meta, reason] of cases) {
    const u = geminiUsage(meta, MAX);
    assert.ok(isRejection(u), JSON.stringify(meta));
    assert.equal(u.rejected, reason, JSON.stringify(meta));
  }
  assert.deepEqual(geminiUsage([1], MAX), { rejected: 'malformed' });
});

// ---- streams ----

const FRAMES = [
  { candidates: [{ content: { role: 'model', parts: [{ text: 'Hel' }] }, index: 0 }], usageMetadata: { promptTokenCount: 9, totalTokenCount: 9 }, modelVersion: 'gemini-2.0-flash', responseId: 'r1' },
  { candidates: [{ content: { role: 'model', parts: [{ text: 'lo 🌍 ', thought: true }] }, index: 0 }], usageMetadata: { promptTokenCount: 9, candidatesTokenCount: 2, totalTokenCount: 11 } },
  { candidates: [{ content: { role: 'model', parts: [{ text: 'wörld' }, { functionCall: { name: 'f', args: { a: '"x"' } } }] }, index: 0, finishReason: 'STOP' }], usageMetadata: { promptTokenCount: 9, cachedContentTokenCount: 4, candidatesTokenCount: 5, thoughtsTokenCount: 3, totalTokenCount: 17 } },
];
const TEXT = 'Hello 🌍 wörld{"name":"f","args":{"a":"\\"x\\""}}';
const SSE = FRAMES.map((f) => `data: ${JSON.stringify(f)}\r\n\r\n`).join('');
const ARRAY = '[' + FRAMES.map((f) => JSON.stringify(f, null, 2)).join('\n,\r\n') + ']';
const FINAL = { prompt_tokens: 9, completion_tokens: 8, total_tokens: 17, cached_prompt_tokens: 4, cache_write_tokens: 0, reasoning_tokens: 3 };

/** Read through a function: after an assertion of undefined, TypeScript would narrow `codec.usage` for good. */
function usageOf(codec: StreamCodec): Usage | undefined {
  return codec.usage;
}

function run(codec: StreamCodec, bytes: Buffer, cuts: number[]): { out: Buffer; codec: StreamCodec } {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    const r = codec.push(bytes.subarray(at, c));
    if (r !== undefined) out.push(Buffer.from(r));
    at = c;
  }
  const e = codec.end();
  if (e !== undefined) out.push(e);
  // As the pipeline does once the stream is settled (here with the codec's own usage, which settles unchanged).
  const tail = codec.closing?.(codec.usage);
  if (tail !== undefined) out.push(tail);
  return { out: Buffer.concat(out), codec };
}

test('native stream, SSE and JSON array: split at every byte, bytes pass through, last usage wins, text counted', () => {
  for (const [name, wire, sse] of [['sse', SSE, true], ['array', ARRAY, false]] as const) {
    const bytes = Buffer.from(wire, 'utf8');
    for (let cut = 0; cut <= bytes.length; cut++) {
      const { out, codec } = run(new GeminiStream(sse, { maxUsage: MAX }), bytes, [cut]);
      assert.ok(out.equals(bytes), `${name} cut ${cut}: bytes unchanged`);
      assert.deepEqual({ ...codec.usage }, FINAL, `${name} cut ${cut}`);
      assert.equal(codec.text, TEXT, `${name} cut ${cut}`);
    }
    // Every byte its own chunk.
    const { codec } = run(new GeminiStream(sse, { maxUsage: MAX }), bytes, Array.from({ length: bytes.length }, (_, i) => i));
    assert.deepEqual({ ...codec.usage }, FINAL);
    assert.equal(codec.text, TEXT);
    assert.equal(new GeminiStream(sse, { maxUsage: MAX }).contentType, sse ? 'text/event-stream' : 'application/json');
  }
});

test('native stream after a UTF-8 byte order mark, split anywhere: read as without it, bytes passed through', () => {
  for (const [name, wire, sse] of [['sse', SSE, true], ['array', ARRAY, false]] as const) {
    const bytes = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(wire, 'utf8')]);
    for (const cuts of [[], [1], [2], [1, 2], [3], [5]]) {
      const { out, codec } = run(new GeminiStream(sse, { maxUsage: MAX }), bytes, cuts);
      assert.ok(out.equals(bytes), `${name} ${cuts}: bytes unchanged`);
      assert.deepEqual({ ...codec.usage }, FINAL, `${name} ${cuts}`);
      assert.equal(codec.text, TEXT, `${name} ${cuts}`);
    }
  }
});

test('native stream: usage only once final; a stream ending before its finish reports none (its text is charged)', () => {
  const partial = Buffer.from(`data: ${JSON.stringify(FRAMES[0])}\n\ndata: ${JSON.stringify(FRAMES[1])}\n\n`);
  const codec = new GeminiStream(true, { maxUsage: MAX });
  codec.push(partial);
  assert.equal(codec.usage, undefined);
  assert.equal(codec.text, 'Hello 🌍 ');
  // A clean end without a finishReason (Gemini's mid-stream usageMetadata counts the prompt only): no usage.
  codec.end();
  assert.equal(codec.usage, undefined);
  assert.equal(codec.usageRejected, undefined);
  // The same after an in-stream error object.
  const errored = new GeminiStream(true, { maxUsage: MAX });
  errored.push(Buffer.concat([partial, Buffer.from('data: {"error":{"code":500,"message":"x","status":"INTERNAL"}}\n\n')]));
  errored.end();
  assert.equal(errored.usage, undefined);
  // Text after a finishReason (an upstream going on): the usage read so far is not final; a later finish makes it so.
  const after = new GeminiStream(true, { maxUsage: MAX });
  after.push(Buffer.from(`data: ${JSON.stringify(FRAMES[2])}\n\n`));
  assert.ok(after.usage !== undefined, 'final after its finishReason');
  after.push(Buffer.from(`data: ${JSON.stringify(FRAMES[0])}\n\n`));
  after.end();
  assert.equal(after.usage, undefined, 'text after the finish: counted, not the earlier usage');
  // A second finish without a usageMetadata of its own does not make the earlier usage final again.
  const stale = new GeminiStream(true, { maxUsage: MAX });
  stale.push(Buffer.from(`data: ${JSON.stringify(FRAMES[2])}\n\ndata: ${JSON.stringify(FRAMES[0])}\n\n`));
  stale.push(Buffer.from(`data: ${JSON.stringify({ candidates: [{ content: { role: 'model', parts: [{ text: '' }] }, index: 1, finishReason: 'STOP' }] })}\n\n`));
  stale.end();
  assert.equal(stale.usage, undefined, 'the finish after the text brings no usage: the stream is counted');
  // A blocked prompt has no candidates and no finishReason: its usage (the prompt) is final.
  const blocked = new GeminiStream(true, { maxUsage: MAX });
  blocked.push(Buffer.from(`data: ${JSON.stringify({ promptFeedback: { blockReason: 'SAFETY' }, usageMetadata: { promptTokenCount: 7, totalTokenCount: 7 } })}\n\n`));
  blocked.end();
  assert.equal(usageOf(blocked)?.prompt_tokens, 7);
  assert.equal(usageOf(blocked)?.completion_tokens, 0);
  // Translated for an OpenAI client: the one choice opens with its role (the SDK refuses a choice without one).
  const wire = Buffer.from(`data: ${JSON.stringify({ promptFeedback: { blockReason: 'SAFETY' }, usageMetadata: { promptTokenCount: 7, totalTokenCount: 7 } })}\n\n`);
  const translated = run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: false }), { maxUsage: MAX }), wire, []);
  const first = JSON.parse(sseData(translated.out)[0]!) as { choices: { delta: { role?: string }; finish_reason: string }[] };
  assert.equal(first.choices[0]!.delta.role, 'assistant');
  assert.equal(first.choices[0]!.finish_reason, 'content_filter');
  const lying = new GeminiStream(true, { maxUsage: MAX });
  lying.push(Buffer.from(`data: ${JSON.stringify({ ...FRAMES[2], usageMetadata: { promptTokenCount: -1 } })}\n\n`));
  lying.end();
  assert.equal(lying.usage, undefined);
  assert.equal(lying.usageRejected, 'negative');
});

test('JSON array scanner: strings with brackets and escapes, a bare object, a bound per element', () => {
  const got: string[] = [];
  const s = new JsonArrayScanner((j) => got.push(j), 64);
  const a = '[ {"t":"a]}[{\\"\\\\"} , {"u":[1,{"v":"}"}]} ]  trailing';
  for (const ch of a) s.push(Buffer.from(ch));
  assert.deepEqual(got.map((j) => JSON.parse(j)), [{ t: 'a]}[{"\\' }, { u: [1, { v: '}' }] }]);
  const bare: string[] = [];
  new JsonArrayScanner((j) => bare.push(j)).push(Buffer.from(' {"error":{"code":500}}'));
  assert.deepEqual(bare, ['{"error":{"code":500}}']);
  const big = new JsonArrayScanner(() => {}, 64);
  assert.throws(() => { big.push(Buffer.from('[{"x":"')); big.push(Buffer.from('y'.repeat(100))); }, /exceeds 64 bytes/);
});

// ---- dialect ----

test('addressing: host only, {model}, fixed model, API base; the endpoint query and auth.query kept', () => {
  assert.equal(pathTemplate('/')('gemini-pro', ':generateContent'), '/v1beta/models/gemini-pro:generateContent');
  assert.equal(pathTemplate('/')('models/gemini-pro', ':streamGenerateContent'), '/v1beta/models/gemini-pro:streamGenerateContent');
  assert.equal(pathTemplate('/v1/models/%7Bmodel%7D:generateContent')('m', ':streamGenerateContent'), '/v1/models/m:streamGenerateContent');
  assert.equal(pathTemplate('/proxy/{model}')('m', ':generateContent'), '/proxy/m:generateContent');
  // A model of '.' or '..' never becomes a dot-segment of the upstream path.
  assert.equal(pathTemplate('/api/{model}/run')('..', ':generateContent'), '/api/%2E%2E/run:generateContent');
  assert.equal(pathTemplate('/api/{model}/run')('models/.', ':generateContent'), '/api/%2E/run:generateContent');
  assert.equal(pathTemplate('/api/{model}/run')('...', ':generateContent'), '/api/.../run:generateContent');
  assert.equal(pathTemplate('/v1beta/models/fixed:streamGenerateContent')('m', ':generateContent'), '/v1beta/models/fixed:generateContent');
  assert.equal(pathTemplate('/gw/v1beta/')('m', ':generateContent'), '/gw/v1beta/models/m:generateContent');
  assert.equal(pathTemplate('/gw/v1beta/models')('m', ':streamGenerateContent'), '/gw/v1beta/models/m:streamGenerateContent');

  const p = resolved({ endpoint: 'http://127.0.0.1:9100', auth_header: {}, auth_query: { key: 'k&1' } }) as GeminiProvider;
  assert.equal(p.origin, 'http://127.0.0.1:9100');
  assert.equal(p.pathFor('gemini-pro', false, false), '/v1beta/models/gemini-pro:generateContent?key=k%261');
  assert.equal(p.pathFor('gemini-pro', true, true), '/v1beta/models/gemini-pro:streamGenerateContent?key=k%261&alt=sse');
  const pub = resolved() as GeminiProvider;
  assert.equal(pub.origin, 'https://generativelanguage.googleapis.com');
  assert.equal(pub.pathFor('m', true, false), '/v1beta/models/m:streamGenerateContent');
  const q = resolved({ endpoint: 'https://gw.example/v1beta/models/{model}:generateContent?alt=sse&x=1' }) as GeminiProvider;
  assert.equal(q.pathFor('m', true, true), '/v1beta/models/m:streamGenerateContent?alt=sse&x=1');
  assert.deepEqual(gemini.names, ['gemini']);
  assert.equal(gemini.surfaces[0]!.id, 'gemini-generate');
});

test('native request: the model of the instance or the path, the client body as is, SSE as the client asked', () => {
  const p = resolved({ endpoint: 'http://h:1' });
  assert.equal(p.mode('gemini-generate'), 'native');
  assert.equal(p.mode('openai-chat'), 'translated');
  assert.equal(p.mode('anthropic-messages'), undefined);
  const c = call({ tail: Buffer.from('"contents":[{"parts":[{"text":"hi"}]}]}'), stream: true, query: 'alt=sse' });
  const r = p.request(c, 'gemini-2.5-pro', undefined);
  assert.equal(r.path, '/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse');
  assert.equal(r.body.toString(), '{"contents":[{"parts":[{"text":"hi"}]}]}');
  assert.equal(r.headers, undefined);
  assert.equal(p.request({ ...c, query: '' }, undefined, undefined).path, '/v1beta/models/gemini-2.0-flash:streamGenerateContent');
  assert.equal(p.request({ ...c, query: '' }, undefined, '"safetySettings":[]').body.toString(), '{"safetySettings":[],"contents":[{"parts":[{"text":"hi"}]}]}');
  assert.equal(p.isStream(c, 'application/json'), true);
  assert.equal(p.isStream(call(), 'application/json'), false);
});

test('native decode and failures: usage from usageMetadata, text when it is missing; 429 and 5xx fall back', () => {
  const p = resolved();
  const body = Buffer.from(JSON.stringify(FRAMES[2]));
  const d = p.decode(call(), body, MAX);
  assert.equal(d.body, body);
  assert.deepEqual({ ...d.usage }, FINAL);
  assert.equal(d.text, '');
  const none = p.decode(call(), Buffer.from(JSON.stringify({ candidates: FRAMES[2]!.candidates })), MAX);
  assert.equal(none.usage, undefined);
  // usageMetadata followed by more root members (as Gemini sends it) is read from the tail; a nested one after it is not taken.
  const after = p.decode(call(), Buffer.from(JSON.stringify({ ...FRAMES[2], modelVersion: 'gemini-2.0-flash', responseId: 'r1' })), MAX);
  assert.deepEqual({ ...after.usage }, FINAL);
  const nested = p.decode(call(), Buffer.from(JSON.stringify({ ...FRAMES[2], extra: { usageMetadata: { promptTokenCount: 999, candidatesTokenCount: 999, totalTokenCount: 1998 } } })), MAX);
  assert.deepEqual({ ...nested.usage }, FINAL);
  assert.equal(none.text, 'wörld{"name":"f","args":{"a":"\\"x\\""}}');
  // A 2xx no Gemini client could use is refused (502); a prompt the filters blocked is an answer.
  for (const junk of ['not json', '', '<html>Login</html>', '[1]']) assert.equal(p.decode(call(), Buffer.from(junk), MAX).unusable, 'the upstream answer is not a JSON object', junk);
  assert.equal(p.decode(call(), Buffer.from('{"error":{"code":429,"message":"Resource exhausted"}}'), MAX).unusable, 'the upstream answered 2xx with an error: Resource exhausted');
  assert.equal(p.decode(call(), Buffer.from('{"modelVersion":"x"}'), MAX).unusable, 'the upstream answer has no candidates array');
  const blocked = p.decode(call(), Buffer.from(JSON.stringify({ promptFeedback: { blockReason: 'SAFETY' }, usageMetadata: { promptTokenCount: 7, totalTokenCount: 7 } })), MAX);
  assert.equal(blocked.unusable, undefined);
  assert.equal(blocked.usage?.prompt_tokens, 7);
  const err = Buffer.from('{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}');
  assert.equal(p.failure(call(), 429, err).retry, 'http_429');
  assert.equal(p.failure(call(), 429, err).body, err);
  for (const s of [500, 502, 503, 504]) assert.equal(p.failure(call(), s, err).retry, 'http_5xx');
  assert.equal(p.failure(call(), 400, err).retry, undefined);
});

// ---- translation ----

test('translation: OpenAI messages, tools and sampling fields → a Gemini request', () => {
  const req = translateRequest({
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'developer', content: [{ type: 'text', text: 'No emojis.' }] },
      { role: 'user', content: [{ type: 'text', text: 'What is here?' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBOR' } }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'look', arguments: '{"q":"x"}' } }, { id: 'c2', type: 'function', function: { name: 'see', arguments: '' } }] },
      { role: 'tool', tool_call_id: 'c1', content: '{"found":true}' },
      { role: 'tool', tool_call_id: 'c2', content: 'plain' },
      { role: 'assistant', content: 'A cat.' },
      { role: 'user', content: 'Thanks' },
    ],
    tools: [{ type: 'function', function: { name: 'look', description: 'd', parameters: { type: 'object', properties: { q: { type: 'string' } }, additionalProperties: false } } }],
    tool_choice: { type: 'function', function: { name: 'look' } },
    max_tokens: 50, temperature: 0.3, top_p: 0.9, n: 2, stop: 'END', seed: 7,
    response_format: { type: 'json_object' },
    stream: true, stream_options: { include_usage: true },
  });
  assert.deepEqual(req.systemInstruction, { parts: [{ text: 'Be brief.' }, { text: 'No emojis.' }] });
  assert.deepEqual(req.contents, [
    { role: 'user', parts: [{ text: 'What is here?' }, { inlineData: { mimeType: 'image/png', data: 'iVBOR' } }] },
    { role: 'model', parts: [{ functionCall: { name: 'look', args: { q: 'x' } } }, { functionCall: { name: 'see', args: {} } }] },
    { role: 'user', parts: [{ functionResponse: { name: 'look', response: { found: true } } }, { functionResponse: { name: 'see', response: { content: 'plain' } } }] },
    { role: 'model', parts: [{ text: 'A cat.' }] },
    { role: 'user', parts: [{ text: 'Thanks' }] },
  ]);
  assert.deepEqual(req.tools, [{ functionDeclarations: [{ name: 'look', description: 'd', parametersJsonSchema: { type: 'object', properties: { q: { type: 'string' } }, additionalProperties: false } }] }]);
  assert.deepEqual(req.toolConfig, { functionCallingConfig: { mode: 'ANY', allowedFunctionNames: ['look'] } });
  assert.deepEqual(req.generationConfig, { maxOutputTokens: 50, temperature: 0.3, topP: 0.9, candidateCount: 2, stopSequences: ['END'], seed: 7, responseMimeType: 'application/json' });
  assert.equal(Object.hasOwn(req, 'stream'), false);
  assert.deepEqual(translateMessages([{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://x/y.webp' } }] }]).contents,
    [{ role: 'user', parts: [{ fileData: { mimeType: 'image/webp', fileUri: 'https://x/y.webp' } }] }]);
});

function chatCall(over: Partial<PreparedCall> = {}): PreparedCall {
  return call({ surface: 'openai-chat', model: 'gemini-2.0-flash', clientWantsUsage: false, tail: Buffer.from('"messages":[{"role":"user","content":"hi"}],"max_tokens":5}'), ...over });
}

test('translated request: the Gemini path with alt=sse for streams, the OpenAI body translated', () => {
  const p = resolved({ endpoint: 'http://h:1', auth_query: { key: 'k' } });
  const r = p.request(chatCall(), 'gemini-2.5-flash', '"temperature":0.1');
  assert.equal(r.path, '/v1beta/models/gemini-2.5-flash:generateContent?key=k');
  assert.deepEqual(JSON.parse(r.body.toString()), { contents: [{ role: 'user', parts: [{ text: 'hi' }] }], generationConfig: { maxOutputTokens: 5, temperature: 0.1 } });
  assert.equal(p.request(chatCall({ stream: true }), undefined, undefined).path, '/v1beta/models/gemini-2.0-flash:streamGenerateContent?key=k&alt=sse');
});

test('translated answer: chat.completion with finish reasons and usage in OpenAI names', () => {
  const p = resolved();
  const g = {
    candidates: [
      { content: { parts: [{ text: 'thinking', thought: true }, { text: 'Hi there' }] }, finishReason: 'STOP', index: 0 },
      { content: { parts: [{ functionCall: { name: 'f', args: { a: 1 } } }] }, finishReason: 'STOP', index: 1 },
      { content: { parts: [{ text: 'cut' }] }, finishReason: 'MAX_TOKENS', index: 2 },
      { content: { parts: [] }, finishReason: 'SAFETY', index: 3 },
    ],
    usageMetadata: { promptTokenCount: 10, cachedContentTokenCount: 4, candidatesTokenCount: 6, thoughtsTokenCount: 2, totalTokenCount: 18 },
    modelVersion: 'gemini-2.0-flash-001', responseId: 'abc',
  };
  const d = p.decode(chatCall(), Buffer.from(JSON.stringify(g)), MAX);
  const j = JSON.parse(d.body.toString());
  assert.equal(d.contentType, 'application/json');
  assert.equal(j.object, 'chat.completion');
  assert.equal(j.id, 'chatcmpl-abc');
  assert.equal(j.model, 'gemini-2.0-flash-001');
  assert.deepEqual(j.choices.map((c: { finish_reason: string }) => c.finish_reason), ['stop', 'tool_calls', 'length', 'content_filter']);
  assert.equal(j.choices[0].message.content, 'Hi there');
  assert.equal(j.choices[0].message.reasoning_content, 'thinking');
  assert.equal(j.choices[1].message.content, null);
  assert.equal(j.choices[1].message.tool_calls[0].function.name, 'f');
  assert.equal(j.choices[1].message.tool_calls[0].function.arguments, '{"a":1}');
  assert.deepEqual(j.usage, { prompt_tokens: 10, completion_tokens: 8, total_tokens: 18, prompt_tokens_details: { cached_tokens: 4 }, completion_tokens_details: { reasoning_tokens: 2 } });
  assert.deepEqual({ ...d.usage }, { prompt_tokens: 10, completion_tokens: 8, total_tokens: 18, cached_prompt_tokens: 4, cache_write_tokens: 0, reasoning_tokens: 2 });
  const none = p.decode(chatCall(), Buffer.from(JSON.stringify({ candidates: g.candidates })), MAX);
  assert.equal(none.usage, undefined);
  assert.equal(none.text, 'thinkingHi there{"name":"f","args":{"a":1}}cut');
  assert.equal(JSON.parse(none.body.toString()).usage, undefined);
});

function sseData(buf: Buffer): string[] {
  return buf.toString('utf8').split('\n\n').filter((s) => s !== '').map((s) => s.replace(/^data: /, ''));
}

test('translated stream: an error frame from Google reaches OpenAI clients as an error object, with no [DONE] after it', () => {
  const text = 'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"responseId":"r1"}\r\n\r\n'
    + 'data: {"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}\r\n\r\n'
    + 'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"ignored"}]},"index":0}]}\r\n\r\n';
  const bytes = Buffer.from(text, 'utf8');
  for (const cuts of [[], [40], [130, 131]]) {
    const frames = sseData(run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: true }), { maxUsage: MAX }), bytes, cuts).out);
    assert.notEqual(frames.at(-1), '[DONE]');
    assert.equal(JSON.parse(frames[0]!).choices[0].delta.content, 'Hel');
    assert.deepEqual(JSON.parse(frames.at(-1)!), { error: { message: 'Internal error encountered.', type: 'server_error', code: 'internal', param: null } });
    assert.equal(frames.length, 2, 'nothing after the error');
  }
  const quota = sseData(run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: false }), { maxUsage: MAX }),
    Buffer.from('data: {"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}\n\n'), []).out);
  assert.deepEqual(JSON.parse(quota[0]!).error, { message: 'Resource exhausted', type: 'rate_limit_error', code: 'rate_limit_exceeded', param: null });
});

test('translated stream: chunks, a usage chunk only when asked, [DONE]; split at every byte gives the same', () => {
  const bytes = Buffer.from(SSE, 'utf8');
  for (const wants of [false, true]) {
    let reference: string | undefined;
    for (let cut = 0; cut <= bytes.length; cut++) {
      const { out, codec } = run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: wants }), { maxUsage: MAX }), bytes, [cut]);
      assert.deepEqual({ ...codec.usage }, FINAL);
      assert.equal(codec.text, TEXT);
      const frames = sseData(out);
      assert.equal(frames.at(-1), '[DONE]');
      // Ids differ per stream only in tool-call ids: compare with them masked.
      const masked = frames.join('|').replace(/"call_[0-9a-z]+"/g, '"call"').replace(/"created":\d+/g, '"created":0');
      if (reference === undefined) reference = masked; else assert.equal(masked, reference, `cut ${cut}`);
    }
    const frames = sseData(Buffer.from(reference!.split('|').map((f) => `data: ${f}\n\n`).join('')));
    const chunks = frames.slice(0, -1).map((f) => JSON.parse(f));
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === 'chatcmpl-r1' && c.model === 'gemini-2.0-flash'));
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: 'Hel' });
    assert.deepEqual(chunks[1].choices[0].delta, { content: '', reasoning_content: 'lo 🌍 ' });
    assert.deepEqual(chunks[2].choices[0].delta, { content: 'wörld' });
    assert.equal(chunks[3].choices[0].delta.tool_calls[0].function.name, 'f');
    assert.equal(chunks[3].choices[0].delta.tool_calls[0].function.arguments, '{"a":"\\"x\\""}');
    assert.equal(chunks[4].choices[0].finish_reason, 'tool_calls');
    const usageChunks = chunks.filter((c) => c.usage !== undefined);
    if (wants) {
      assert.equal(usageChunks.length, 1);
      assert.deepEqual(usageChunks[0].choices, []);
      assert.deepEqual(usageChunks[0].usage, { prompt_tokens: 9, completion_tokens: 8, total_tokens: 17, prompt_tokens_details: { cached_tokens: 4 }, completion_tokens_details: { reasoning_tokens: 3 } });
    } else assert.equal(usageChunks.length, 0);
  }
});

test('translated errors: Google\'s error → OpenAI\'s shape; retries as native', () => {
  const p = resolved();
  const f = p.failure(chatCall(), 429, Buffer.from('{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}'));
  assert.equal(f.retry, 'http_429');
  assert.equal(f.contentType, 'application/json');
  assert.deepEqual(JSON.parse(f.body.toString()), { error: { message: 'Resource has been exhausted', type: 'rate_limit_error', code: 'rate_limit_exceeded', param: null } });
  const b = JSON.parse(p.failure(chatCall(), 400, Buffer.from('{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}')).body.toString());
  assert.deepEqual(b, { error: { message: 'bad', type: 'invalid_request_error', code: 'invalid_argument', param: null } });
  const h = JSON.parse(p.failure(chatCall(), 503, Buffer.from('<html>down</html>')).body.toString());
  assert.equal(h.error.type, 'server_error');
  assert.equal(h.error.message, '<html>down</html>');
});

// ---- the estimate ----

test('extraTokens: digits are one token each in Gemini, long space runs 16 per token', () => {
  assert.equal(extraTokens('no digits'), 0);
  assert.equal(extraTokens('1234567890'), 10 - 4);
  assert.equal(extraTokens('a 12 b 3'), 1);
  assert.equal(extraTokens(' '.repeat(16)), 0);
  assert.equal(extraTokens('x' + ' '.repeat(40) + 'y'), 3);
  assert.equal(extraTokens('12' + ' '.repeat(17)), 1 + 2);
});

test('estimate: o200k × 1.3 (+ corrections) is an upper bound of Gemini\'s count on every fixture text', () => {
  const fixture = JSON.parse(readFileSync(new URL('../fixtures/gemini-token-counts.json', import.meta.url), 'utf8')) as { samples: Array<{ cat: string; name: string; gemini: number; text: string }> };
  const errors: number[] = [];
  for (const s of fixture.samples) {
    const estimate = Math.ceil(PROMPT_SCALE * (countText(s.text, 'o200k_base') + extraTokens(s.text)));
    const err = (estimate - s.gemini) / s.gemini;
    assert.ok(err >= 0, `${s.cat}/${s.name}: estimate ${estimate} < gemini ${s.gemini}`);
    errors.push(err);
  }
  errors.sort((a, b) => a - b);
  const pct = (q: number) => (100 * errors[Math.min(errors.length - 1, Math.floor(q * errors.length))]!).toFixed(1);
  // Recorded in docs (README, Gemini): min +3%, median +17%, p95 +33%, max +91% over the full 283-text corpus.
  console.log(`gemini estimate error over ${errors.length} fixture texts: min +${pct(0)}% p50 +${pct(0.5)}% p95 +${pct(0.95)}% max +${pct(1)}%`);
  assert.ok(errors.length >= 50);
  // The published figure: countTokens gives the fox sentence 10 tokens.
  assert.equal(countText('The quick brown fox jumps over the lazy dog.', 'o200k_base'), 10);
});

test('estimate of a request: parts counted with the framing', () => {
  const parts = geminiPromptParts([{ parts: [{ text: 'hello world' }] }], undefined, undefined);
  assert.equal(countPromptParts(parts, 'o200k_base'), 3 + 3 + 2);
});

// ---- the fast path for plain text frames ----

/** A frame as the real API writes it: spaces after colons, '<' escaped as \u003c. */
function googleFrame(literal: string, extra = ''): string {
  return `{"candidates": [{"content": {"parts": [{"text": ${literal}}],"role": "model"},"index": 0${extra}}],"usageMetadata": {"promptTokenCount": 5,"totalTokenCount": 5},"modelVersion": "gemini-2.0-flash","responseId": "x"}`;
}

test('fast path: plain text frames are read without a parse, in compact and spaced layouts; anything else is not', () => {
  const lit = '"a \\"q\\" \\u003cb\\u003e ✓"';
  const f = scanTextFrame(googleFrame(lit));
  assert.deepEqual(f, { text: 'a "q" <b> ✓', literal: lit, index: 0, usageAt: googleFrame(lit).indexOf('"usageMetadata"') });
  const first = JSON.stringify(FRAMES[0]);
  assert.deepEqual(scanTextFrame(first), { text: 'Hel', literal: '"Hel"', index: 0, usageAt: first.indexOf('"usageMetadata"') });
  assert.equal(scanTextFrame(JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x' }] }, index: 2 }] }))?.index, 2);
  const pretty = JSON.stringify({ candidates: [{ content: { parts: [{ text: 'p' }] } }] }, null, 2);
  assert.deepEqual(scanTextFrame(pretty), { text: 'p', literal: '"p"', index: 0, usageAt: -1 });
  const refused = [
    googleFrame('"x"', ',"finishReason": "STOP"'),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x', thought: true }] } }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ thought: true, text: 'x' }] } }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x' }, { text: 'y' }] } }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x' }, { functionCall: { name: 'f' } }] } }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x' }] }, index: 0 }, { content: { parts: [{ inlineData: {} }] }, index: 1 }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 'x', thoughtSignature: 'sig' }] } }] }),
    JSON.stringify({ candidates: [{ content: { parts: [{ text: 5 }] } }] }),
    JSON.stringify({ other: { text: 'x' } }),
    '[{"candidates":[]}]',
  ];
  for (const r of refused) assert.equal(scanTextFrame(r), null, r);
  // A key name inside a text is not a key: quotes in strings are always escaped.
  assert.equal(scanTextFrame(JSON.stringify({ candidates: [{ content: { parts: [{ text: 'say "finishReason" and "text"' }] } }] }))?.text, 'say "finishReason" and "text"');
});

test('fast path: a stream of spaced frames with escapes reads the same through the native and translated codecs', () => {
  const texts = ['Hello', ' "world"', ' \u003ctag\u003e', ' ✓\n', '', ' end'];
  const frames = texts.map((t) => googleFrame(JSON.stringify(t).replace(/</g, '\\u003c').replace(/>/g, '\\u003e')));
  frames.push(googleFrame('""', ',"finishReason": "STOP"').replace('"promptTokenCount": 5,"totalTokenCount": 5', '"promptTokenCount": 5,"candidatesTokenCount": 6,"totalTokenCount": 11'));
  const bytes = Buffer.from(frames.map((f) => `data: ${f}\r\n\r\n`).join(''));
  const native = run(new GeminiStream(true, { maxUsage: MAX }), bytes, [7, 100, 101, 300]);
  assert.equal(native.codec.text, texts.join(''));
  assert.equal(native.codec.usage?.total_tokens, 11);
  const tr = run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: true }), { maxUsage: MAX }), bytes, [7, 100, 101, 300]);
  assert.equal(tr.codec.text, texts.join(''));
  const chunks = sseData(tr.out).slice(0, -1).map((d) => JSON.parse(d));
  assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), texts.join(''));
  assert.equal(chunks.at(-1).usage.total_tokens, 11);
  assert.equal(chunks.filter((c) => c.choices[0]?.finish_reason === 'stop').length, 1);
});

test('usageMetadataText: the usage object as written, strings and nesting skipped; none when absent, repeated or unbalanced', () => {
  const usage = '{"promptTokenCount": 5, "promptTokensDetails": [{"modality": "TEXT}]", "tokenCount": 5}], "totalTokenCount": 5}';
  assert.equal(usageMetadataText(`{"candidates": [], "usageMetadata": ${usage}, "responseId": "x"}`), usage);
  assert.equal(usageMetadataText('{"candidates": [{"content": {"parts": [{"text": "\\"usageMetadata\\": {}"}]}}]}'), undefined, 'a key inside a string is no key');
  assert.equal(usageMetadataText(`{"usageMetadata": ${usage}, "usageMetadata": {"promptTokenCount": 1}}`), undefined, 'twice: parsed whole instead');
  assert.equal(usageMetadataText('{"usageMetadata": {"promptTokenCount": 5'), undefined);
  assert.equal(usageMetadataText('{"usageMetadata": 5}'), undefined);
});

test('stream meter: counts are cumulative: the largest believable prompt of any frame stands; a later smaller or lying report cannot lower it', () => {
  const frame = (usage: string, extra = ''): string => `data: {"candidates": [{"content": {"parts": [{"text": "hi"}],"role": "model"},"index": 0${extra}}],"usageMetadata": ${usage}}\r\n\r\n`;
  const mid = frame('{"promptTokenCount": 1000, "totalTokenCount": 1000}');
  const meter = (wire: string) => run(new GeminiStream(true, { maxUsage: MAX }), Buffer.from(wire), []).codec;
  // Good mid-stream reports, then a lie, then a cut: the good prompt is the report.
  for (const lie of ['{"promptTokenCount": "abc"}', '{"promptTokenCount": 10}', '{"promptTokenCount": -1}']) {
    const c = meter(mid.repeat(3) + frame(lie));
    assert.equal(c.usage, undefined);
    assert.equal(c.promptReport?.prompt_tokens, 1000, lie);
  }
  // A final report whose prompt is below the one reported on the way: that prompt stands, the completion is the report's.
  const low = meter(mid + frame('{"promptTokenCount": 0, "candidatesTokenCount": 50, "totalTokenCount": 50}', ', "finishReason": "STOP"'));
  assert.equal(low.usage?.prompt_tokens, 1000);
  assert.equal(low.usage?.completion_tokens, 50);
  assert.equal(low.usage?.total_tokens, 1050);
  // Two finals, the second smaller: the first is not taken back.
  const twice = meter(mid + frame('{"promptTokenCount": 1000, "candidatesTokenCount": 50, "totalTokenCount": 1050}', ', "finishReason": "STOP"')
    + frame('{"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}', ', "finishReason": "STOP"').replace('"hi"', '""'));
  assert.equal(twice.usage?.total_tokens, 1050);
  // A final report that lies after good mid reports: rejected, and the prompt report stays for the pipeline.
  const lied = meter(mid + frame('{"promptTokenCount": 1000, "candidatesTokenCount": -50}', ', "finishReason": "STOP"'));
  assert.equal(lied.usageRejected, 'negative');
  assert.equal(lied.promptReport?.prompt_tokens, 1000);
  // Thoughts reported before the finish (Gemini 2.5, once thinking is done) show in no text: a cut stream keeps them.
  const thought = meter(mid + frame('{"promptTokenCount": 1000, "candidatesTokenCount": 2, "thoughtsTokenCount": 3000, "totalTokenCount": 4002}')
    + frame('{"promptTokenCount": 1000, "thoughtsTokenCount": 7, "totalTokenCount": 1007}'));
  assert.equal(thought.usage, undefined);
  assert.equal(thought.hiddenCompletion, 3000, 'the largest believable report, a later smaller one not taking it back');
  assert.equal(meter(mid).hiddenCompletion, 0);
  // A mid-stream report of 400 thoughts or candidates, then a final one of 1 or 5: the final is not believed lower.
  for (const [before, last] of [
    ['{"promptTokenCount": 10, "candidatesTokenCount": 1, "thoughtsTokenCount": 400, "totalTokenCount": 411}', '{"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 1, "totalTokenCount": 16}'],
    ['{"promptTokenCount": 10, "candidatesTokenCount": 400, "totalTokenCount": 410}', '{"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}'],
  ]) {
    const c = meter(frame(before!) + frame(last!, ', "finishReason": "STOP"'));
    assert.ok(c.usage!.completion_tokens >= 400, `${before} then ${last}: completion ${c.usage!.completion_tokens}`);
    assert.ok(c.usage!.total_tokens >= 410);
  }
});

test('translated stream: a stream that ends before any finishReason is an error for the client, not a [DONE]', () => {
  const text = 'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]},"index":0}],"usageMetadata":{"promptTokenCount":7},"responseId":"r1"}\r\n\r\n';
  for (const [wants, wire] of [[true, text], [false, text], [true, '']] as const) {
    const { out, codec } = run(new TranslatedStream(chatCall({ stream: true, clientWantsUsage: wants }), { maxUsage: MAX }), Buffer.from(wire), []);
    const frames = sseData(out);
    assert.equal(codec.truncated, true);
    assert.notEqual(frames.at(-1), '[DONE]');
    assert.deepEqual(JSON.parse(frames.at(-1)!).error, {
      message: 'the upstream stream ended before a finishReason: the answer is incomplete', type: 'upstream_error', code: 'SLC_UPSTREAM_ERROR', param: null,
    });
    assert.equal(frames.some((f) => f.includes('finish_reason":"')), false, 'no made-up finish');
  }
});
