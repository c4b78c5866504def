// Every mock surface over plain fetch: bodies and streams in each provider's wire format, token kinds set by
// headers, faults in each provider's error shape, auth checks, /mock/last-request, /mock/requests and the usage
// sums in /mock/stats. The wire usage is normalised here independently of src/providers (issue 10's rules).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { startMockUpstream, MOCK_HISTORY, type MockStats, type MockUpstream } from '../../src/mock/server.ts';
import { mockEmbedding } from '../../src/mock/openai-wire.ts';
import { parseMockUpstreamArgs } from '../../src/mock/command.ts';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Normalised { prompt: number; completion: number; total: number; cached: number; cacheWrite: number; reasoning: number }

interface SurfaceCase {
  surface: string;
  dialect: 'openai' | 'anthropic' | 'gemini';
  path: (stream: boolean) => string;
  body: (stream: boolean) => Json;
  /** Prompt tokens of `body` by the mock's rule. */
  prompt: number;
}

const HI = [{ role: 'user', content: 'hi' }];
const HI_TOKENS = 3 + 3 + countTokens('hi');
const AZ = '?api-version=2024-10-21';
const PROMPT = 'hello, how are you today?';

const CASES: SurfaceCase[] = [
  { surface: 'openai.chat', dialect: 'openai', path: () => '/v1/chat/completions', prompt: HI_TOKENS,
    body: (s) => ({ model: 'm', messages: HI, stream: s, ...(s ? { stream_options: { include_usage: true } } : {}) }) },
  { surface: 'openai.completions', dialect: 'openai', path: () => '/v1/completions', prompt: countTokens(PROMPT),
    body: (s) => ({ model: 'm', prompt: PROMPT, stream: s, ...(s ? { stream_options: { include_usage: true } } : {}) }) },
  { surface: 'openai.responses', dialect: 'openai', path: () => '/v1/responses', prompt: HI_TOKENS,
    body: (s) => ({ model: 'm', input: 'hi', stream: s }) },
  { surface: 'azure.chat', dialect: 'openai', path: () => `/openai/deployments/dep-1/chat/completions${AZ}`, prompt: HI_TOKENS,
    body: (s) => ({ messages: HI, stream: s, ...(s ? { stream_options: { include_usage: true } } : {}) }) },
  { surface: 'azure.completions', dialect: 'openai', path: () => `/openai/deployments/dep-1/completions${AZ}`, prompt: countTokens(PROMPT),
    body: (s) => ({ prompt: PROMPT, stream: s, ...(s ? { stream_options: { include_usage: true } } : {}) }) },
  { surface: 'azure.responses', dialect: 'openai', path: () => '/openai/v1/responses', prompt: HI_TOKENS,
    body: (s) => ({ model: 'dep-2', input: [{ role: 'user', content: 'hi' }], stream: s }) },
  { surface: 'anthropic.messages', dialect: 'anthropic', path: () => '/v1/messages', prompt: HI_TOKENS,
    body: (s) => ({ model: 'claude-x', max_tokens: 1000, messages: HI, stream: s }) },
  { surface: 'gemini.sse', dialect: 'gemini', prompt: HI_TOKENS,
    path: (s) => s ? '/v1beta/models/gemini-x:streamGenerateContent?alt=sse' : '/v1beta/models/gemini-x:generateContent',
    body: () => ({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }) },
  { surface: 'gemini.array', dialect: 'gemini', prompt: HI_TOKENS,
    path: (s) => s ? '/v1beta/models/gemini-x:streamGenerateContent' : '/v1/models/gemini-x:generateContent',
    body: () => ({ contents: [{ role: 'user', parts: [{ text: 'hi' }] }] }) },
];

function post(mock: MockUpstream, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(mock.url + path, { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });
}

interface SseEvent { event: string | undefined; data: string }
function parseSse(text: string): SseEvent[] {
  const out: SseEvent[] = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (block.trim() === '') continue;
    let event: string | undefined;
    const data: string[] = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    out.push({ event, data: data.join('\n') });
  }
  return out;
}

/** Text and normalised usage of an answer, read from the wire the way issue 10 defines it. */
function readAnswer(c: SurfaceCase, stream: boolean, raw: string): { text: string; usage: Normalised | undefined } {
  const openai = (u: Json | undefined | null): Normalised | undefined => u == null ? undefined : {
    prompt: u.prompt_tokens, completion: u.completion_tokens, total: u.total_tokens, cacheWrite: 0,
    cached: u.prompt_tokens_details?.cached_tokens ?? 0, reasoning: u.completion_tokens_details?.reasoning_tokens ?? 0,
  };
  const responses = (u: Json | undefined | null): Normalised | undefined => u == null ? undefined : {
    prompt: u.input_tokens, completion: u.output_tokens, total: u.total_tokens, cacheWrite: 0,
    cached: u.input_tokens_details.cached_tokens, reasoning: u.output_tokens_details.reasoning_tokens,
  };
  const anthropic = (u: Json | undefined, output: number | undefined, thinking?: number): Normalised | undefined => u === undefined || output === undefined ? undefined : {
    prompt: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens, completion: output,
    total: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens + output,
    cached: u.cache_read_input_tokens, cacheWrite: u.cache_creation_input_tokens, reasoning: thinking ?? 0,
  };
  const gemini = (u: Json | undefined): Normalised | undefined => u === undefined ? undefined : {
    prompt: u.promptTokenCount, completion: (u.candidatesTokenCount ?? 0) + (u.thoughtsTokenCount ?? 0), total: u.totalTokenCount,
    cached: u.cachedContentTokenCount ?? 0, cacheWrite: 0, reasoning: u.thoughtsTokenCount ?? 0,
  };
  const responsesKind = c.surface.endsWith('responses');
  if (!stream) {
    const b = JSON.parse(raw) as Json;
    if (c.dialect === 'anthropic') return { text: b.content.at(-1).text, usage: anthropic(b.usage, b.usage?.output_tokens, b.usage?.output_tokens_details?.thinking_tokens) };
    if (c.dialect === 'gemini') return { text: b.candidates[0].content.parts[0].text, usage: gemini(b.usageMetadata) };
    if (responsesKind) return { text: b.output[0].content[0].text, usage: responses(b.usage) };
    return { text: b.choices[0].message?.content ?? b.choices[0].text, usage: openai(b.usage) };
  }
  if (c.surface === 'gemini.array') {
    const chunks = JSON.parse(raw) as Json[];
    return { text: chunks.map((x) => x.candidates[0].content.parts[0].text).join(''), usage: gemini(chunks.at(-1)!.usageMetadata) };
  }
  const events = parseSse(raw);
  if (c.dialect === 'openai' && !responsesKind) {
    assert.equal(events.at(-1)!.data, '[DONE]');
    const frames = events.slice(0, -1).map((e) => JSON.parse(e.data) as Json);
    return {
      text: frames.map((f) => f.choices[0]?.delta?.content ?? f.choices[0]?.text ?? '').join(''),
      usage: openai(frames.at(-1)!.usage),
    };
  }
  const objs: Json[] = events.map((e) => ({ event: e.event, ...(JSON.parse(e.data) as Json) }));
  if (responsesKind) {
    for (const o of objs) assert.equal(o.event, o.type);
    return { text: objs.filter((o) => o.type === 'response.output_text.delta').map((o) => o.delta).join(''), usage: responses(objs.at(-1)!.response.usage) };
  }
  if (c.dialect === 'anthropic') {
    for (const o of objs) assert.equal(o.event, o.type);
    const start = objs.find((o) => o.type === 'message_start')!;
    const delta = objs.find((o) => o.type === 'message_delta')!;
    return {
      text: objs.filter((o) => o.type === 'content_block_delta' && o.delta.type === 'text_delta').map((o) => o.delta.text).join(''),
      usage: anthropic(start.message.usage, delta.usage?.output_tokens, delta.usage?.output_tokens_details?.thinking_tokens),
    };
  }
  return { text: objs.map((o) => o.candidates[0].content.parts[0].text).join(''), usage: gemini(objs.at(-1)!.usageMetadata) };
}

function errorShape(dialect: SurfaceCase['dialect'], body: Json, status: number): void {
  if (dialect === 'openai') {
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  } else if (dialect === 'anthropic') {
    assert.equal(body.type, 'error');
    assert.equal(typeof body.error.type, 'string');
    assert.equal(typeof body.error.message, 'string');
    if (status === 529) assert.equal(body.error.type, 'overloaded_error');
    if (status === 429) assert.equal(body.error.type, 'rate_limit_error');
  } else {
    assert.equal(body.error.code, status);
    assert.equal(typeof body.error.status, 'string');
    if (status === 429) assert.equal(body.error.status, 'RESOURCE_EXHAUSTED');
  }
}

async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('mock surfaces: bodies, streams and token kinds', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ chunks: 3 }); });
  after(() => mock.close());

  for (const c of CASES) {
    for (const stream of [false, true]) {
      it(`${c.surface} ${stream ? 'stream' : 'json'}: deterministic text and usage, cached and reasoning kinds`, async () => {
        const before = mock.stats();
        const plain = await post(mock, c.path(stream), c.body(stream));
        assert.equal(plain.status, 200);
        const streamType = c.surface === 'gemini.array' ? /^application\/json/ : /^text\/event-stream/;
        assert.match(plain.headers.get('content-type')!, stream ? streamType : /^application\/json/);
        const a = readAnswer(c, stream, await plain.text());
        assert.equal(countTokens(a.text), 16);
        assert.deepEqual(a.usage, { prompt: c.prompt, completion: 16, total: c.prompt + 16, cached: 0, cacheWrite: 0, reasoning: 0 });

        const kinds = { 'x-mock-cached-tokens': '2', 'x-mock-cache-write-tokens': '1', 'x-mock-reasoning-tokens': '5', 'x-mock-completion-tokens': '7' };
        const k = readAnswer(c, stream, await (await post(mock, c.path(stream), c.body(stream), kinds)).text());
        assert.equal(countTokens(k.text), 7);
        const anthropic = c.dialect === 'anthropic';
        assert.deepEqual(k.usage, { prompt: c.prompt, completion: 12, total: c.prompt + 12, cached: 2, cacheWrite: anthropic ? 1 : 0, reasoning: 5 });

        const after = mock.stats();
        assert.equal(after.textTokensSent - before.textTokensSent, 16 + 7);
        assert.equal(after.usageReports - before.usageReports, 2);
        assert.equal(after.usage.prompt_tokens - before.usage.prompt_tokens, 2 * c.prompt);
        assert.equal(after.usage.completion_tokens - before.usage.completion_tokens, 28);
        assert.equal(after.usage.cached_prompt_tokens - before.usage.cached_prompt_tokens, 2);
        assert.equal(after.usage.reasoning_tokens - before.usage.reasoning_tokens, 5);
      });
    }
  }

  it('keeps within the output limit: reasoning inside it, capped answers say so in each dialect', async () => {
    const r = await (await post(mock, '/v1/responses', { model: 'm', input: 'hi', max_output_tokens: 10 }, { 'x-mock-reasoning-tokens': '4' })).json() as Json;
    assert.equal(r.status, 'incomplete');
    assert.deepEqual(r.incomplete_details, { reason: 'max_output_tokens' });
    assert.equal(r.usage.output_tokens, 10);
    assert.equal(r.usage.output_tokens_details.reasoning_tokens, 4);
    assert.equal(countTokens(r.output[0].content[0].text), 6);

    const a = await (await post(mock, '/v1/messages', { model: 'c', max_tokens: 5, messages: HI })).json() as Json;
    assert.equal(a.stop_reason, 'max_tokens');
    assert.equal(a.usage.output_tokens, 5);
    const enough = await (await post(mock, '/v1/messages', { model: 'c', max_tokens: 16, messages: HI })).json() as Json;
    assert.equal(enough.stop_reason, 'end_turn');

    const g = await (await post(mock, '/v1beta/models/g:generateContent', { contents: [], generationConfig: { maxOutputTokens: 3 } })).json() as Json;
    assert.equal(g.candidates[0].finishReason, 'MAX_TOKENS');
    assert.equal(g.usageMetadata.candidatesTokenCount, 3);

    // Chat keeps its first rule: max_tokens → exactly that many, reasoning inside.
    const chat = await (await post(mock, '/v1/chat/completions', { model: 'm', messages: HI, max_tokens: 9 }, { 'x-mock-reasoning-tokens': '4' })).json() as Json;
    assert.equal(chat.usage.completion_tokens, 9);
    assert.equal(chat.usage.completion_tokens_details.reasoning_tokens, 4);
    assert.equal(countTokens(chat.choices[0].message.content), 5);
  });

  it('streams the Responses events in order and the Anthropic events with split usage', async () => {
    const rs = parseSse(await (await post(mock, '/v1/responses', { model: 'm', input: 'hi', stream: true })).text()).map((e) => e.event);
    assert.deepEqual(rs, [
      'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
      'response.output_text.delta', 'response.output_text.delta', 'response.output_text.delta',
      'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed',
    ]);
    const events = parseSse(await (await post(mock, '/v1/messages', { model: 'c', max_tokens: 100, messages: HI, stream: true }, { 'x-mock-cached-tokens': '3' })).text());
    assert.deepEqual(events.map((e) => e.event), [
      'message_start', 'content_block_start', 'ping', 'content_block_delta', 'content_block_delta', 'content_block_delta',
      'content_block_stop', 'message_delta', 'message_stop',
    ]);
    const start = JSON.parse(events[0]!.data) as Json;
    assert.deepEqual(start.message.usage, { input_tokens: HI_TOKENS - 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 3, output_tokens: 1, service_tier: 'standard' });
    assert.deepEqual((JSON.parse(events[7]!.data) as Json).usage, { output_tokens: 16 });
  });

  it('gives Anthropic requests with thinking enabled a thinking block before the text', async () => {
    const body = { model: 'c', max_tokens: 100, thinking: { type: 'enabled', budget_tokens: 50 }, messages: HI };
    const m = await (await post(mock, '/v1/messages', body, { 'x-mock-reasoning-tokens': '6' })).json() as Json;
    assert.deepEqual(m.content.map((b: Json) => b.type), ['thinking', 'text']);
    assert.equal(countTokens(m.content[0].thinking), 6);
    assert.equal(m.usage.output_tokens, 22);
    assert.deepEqual(m.usage.output_tokens_details, { thinking_tokens: 6 });
    const events = parseSse(await (await post(mock, '/v1/messages', { ...body, stream: true }, { 'x-mock-reasoning-tokens': '6' })).text());
    const objs = events.map((e) => JSON.parse(e.data) as Json);
    assert.deepEqual(objs.filter((o) => o.type === 'content_block_start').map((o) => [o.index, o.content_block.type]), [[0, 'thinking'], [1, 'text']]);
    assert.equal(objs.find((o) => o.delta?.type === 'thinking_delta')!.delta.thinking, m.content[0].thinking);
    assert.deepEqual(objs.find((o) => o.type === 'message_delta')!.usage, { output_tokens: 22, output_tokens_details: { thinking_tokens: 6 } });
    const plain = await (await post(mock, '/v1/messages', { ...body, thinking: undefined }, { 'x-mock-reasoning-tokens': '6' })).json() as Json;
    assert.deepEqual(plain.content.map((b: Json) => b.type), ['text']);
  });

  it('gives Gemini requests with includeThoughts a thought part before the text', async () => {
    const body = { contents: [{ parts: [{ text: 'hi' }] }], generationConfig: { thinkingConfig: { includeThoughts: true } } };
    const g = await (await post(mock, '/v1beta/models/g:generateContent', body, { 'x-mock-reasoning-tokens': '4' })).json() as Json;
    const parts = g.candidates[0].content.parts as Json[];
    assert.equal(parts.length, 2);
    assert.equal(parts[0]!.thought, true);
    assert.equal(countTokens(parts[0]!.text), 4);
    assert.equal(countTokens(parts[1]!.text), 16);
    assert.equal(g.usageMetadata.thoughtsTokenCount, 4);
    const chunks = JSON.parse(await (await post(mock, '/v1beta/models/g:streamGenerateContent', body, { 'x-mock-reasoning-tokens': '4' })).text()) as Json[];
    assert.deepEqual(chunks[0]!.candidates[0].content.parts, [{ text: parts[0]!.text, thought: true }]);
    assert.equal(chunks.slice(1).map((c) => c.candidates[0].content.parts[0].text).join(''), parts[1]!.text);
  });

  it('answers count_tokens (Anthropic, Gemini) with the prompt count and reports no usage', async () => {
    const before = mock.stats().usageReports;
    const body = { model: 'c', system: [{ type: 'text', text: 'be brief' }], messages: [{ role: 'user', content: [{ type: 'text', text: 'hello there' }, { type: 'image', source: {} }] }] };
    const a = await (await post(mock, '/v1/messages/count_tokens', body)).json() as Json;
    assert.deepEqual(a, { input_tokens: 3 + 3 + countTokens('be brief') + 3 + countTokens('hello there') });
    const g = await (await post(mock, '/v1beta/models/g:countTokens', { generateContentRequest: { systemInstruction: { parts: [{ text: 'sys' }] }, contents: [{ parts: [{ text: 'a b' }] }] } })).json() as Json;
    assert.equal(g.totalTokens, 3 + 3 + countTokens('sys') + 3 + countTokens('a b'));
    assert.equal(mock.stats().usageReports, before);
  });

  it('embeds strings, string arrays and token ids deterministically, as float or base64', async () => {
    const one = await (await post(mock, '/v1/embeddings', { model: 'e', input: 'hello world' })).json() as Json;
    assert.equal(one.object, 'list');
    assert.equal(one.model, 'e');
    assert.equal(one.data[0].embedding.length, 8);
    const norm = Math.hypot(...(one.data[0].embedding as number[]));
    assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
    assert.deepEqual(one.usage, { prompt_tokens: countTokens('hello world'), total_tokens: countTokens('hello world') });

    const many = await (await post(mock, '/v1/embeddings', { model: 'e', input: ['hello world', 'other', [1, 2, 3]], dimensions: 16 })).json() as Json;
    assert.deepEqual(many.data.map((d: Json) => d.index), [0, 1, 2]);
    assert.equal(many.data[1].embedding.length, 16);
    assert.notDeepEqual(many.data[0].embedding, many.data[1].embedding);
    assert.equal(many.usage.prompt_tokens, countTokens('hello world') + countTokens('other') + 3);
    const ids = await (await post(mock, '/v1/embeddings', { model: 'e', input: [5, 6, 7, 8] })).json() as Json;
    assert.equal(ids.usage.prompt_tokens, 4);

    const b64 = await (await post(mock, '/v1/embeddings', { model: 'e', input: 'hello world', encoding_format: 'base64' })).json() as Json;
    const buf = Buffer.from(b64.data[0].embedding as string, 'base64');
    const floats = Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4));
    assert.deepEqual(floats, one.data[0].embedding);
    assert.deepEqual(floats, Array.from(mockEmbedding('hello world', 8)));

    for (const bad of [{ input: 3 }, { input: [] }, { input: 'x', dimensions: 0 }, { input: 'x', encoding_format: 'hex' }, { input: [{}] }]) {
      const r = await post(mock, '/v1/embeddings', { model: 'e', ...bad });
      assert.equal(r.status, 400, JSON.stringify(bad));
      errorShape('openai', await r.json() as Json, 400);
    }
    const az = await (await post(mock, `/openai/deployments/emb-dep/embeddings${AZ}`, { input: 'x' })).json() as Json;
    assert.equal(az.model, 'emb-dep');
  });

  it('serves the Azure URL shapes: deployment echoed as model, api-version required on deployment paths', async () => {
    const r = await (await post(mock, `/openai/deployments/my%20dep/chat/completions${AZ}`, { model: 'ignored', messages: HI })).json() as Json;
    assert.equal(r.model, 'my dep');
    const last = await (await fetch(mock.url + '/mock/last-request')).json() as Json;
    assert.equal(last.path, '/openai/deployments/my%20dep/chat/completions');
    assert.deepEqual(last.query, { 'api-version': '2024-10-21' });
    const missing = await post(mock, '/openai/deployments/d/chat/completions', { messages: HI });
    assert.equal(missing.status, 404);
    errorShape('openai', await missing.json() as Json, 404);
    const v1 = await (await post(mock, '/openai/v1/chat/completions', { model: 'v1-dep', messages: HI })).json() as Json;
    assert.equal(v1.model, 'v1-dep');
    const preview = await post(mock, '/openai/responses?api-version=preview', { model: 'd', input: 'hi' });
    assert.equal(preview.status, 200);
    await preview.arrayBuffer();
  });
});

describe('mock surfaces: faults in each provider\'s shape', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ chunks: 4 }); });
  after(() => mock.close());

  for (const c of CASES) {
    it(`${c.surface}: status, retry-after, delay, drop, in-stream error, no usage, lying usage`, async () => {
      for (const status of [400, 429, 500, 503, 529]) {
        const r = await post(mock, c.path(false), c.body(false), { 'x-mock-status': String(status), 'x-mock-retry-after': '7' });
        assert.equal(r.status, status);
        assert.equal(r.headers.get('retry-after'), '7');
        errorShape(c.dialect, await r.json() as Json, status);
      }
      const rs = await post(mock, c.path(true), c.body(true), { 'x-mock-status': '429' });
      assert.equal(rs.status, 429);
      errorShape(c.dialect, await rs.json() as Json, 429);

      const t0 = performance.now();
      const slow = await post(mock, c.path(false), c.body(false), { 'x-mock-delay-ms': '60' });
      assert.equal(slow.status, 200);
      await slow.arrayBuffer();
      assert.ok(performance.now() - t0 >= 55);

      // Dropped after one content frame: the body never completes.
      const dropped = await post(mock, c.path(true), c.body(true), { 'x-mock-disconnect-after': '1' });
      assert.equal(dropped.status, 200);
      await assert.rejects(dropped.text());
      await assert.rejects(post(mock, c.path(false), c.body(false), { 'x-mock-disconnect-after': '0' }));
      const truncated = await post(mock, c.path(false), c.body(false), { 'x-mock-disconnect-after': '10' });
      await assert.rejects(truncated.text());

      // A provider error inside a started stream.
      const broken = await (await post(mock, c.path(true), c.body(true), { 'x-mock-stream-error-after': '2', 'x-mock-stream-error-status': '529' })).text();
      if (c.surface === 'gemini.array') {
        const arr = JSON.parse(broken) as Json[];
        assert.equal(arr.length, 3);
        errorShape('gemini', arr[2]!, 529);
      } else {
        const last = parseSse(broken).at(-1)!;
        const body = JSON.parse(last.data) as Json;
        if (c.dialect === 'anthropic') { assert.equal(last.event, 'error'); errorShape('anthropic', body, 529); }
        else if (c.dialect === 'gemini') errorShape('gemini', body, 529);
        else if (c.surface.endsWith('responses')) { assert.equal(last.event, 'error'); assert.equal(body.code, '529'); }
        else errorShape('openai', body, 529);
      }

      const before = mock.stats();
      for (const stream of [false, true]) {
        const none = readAnswer(c, stream, await (await post(mock, c.path(stream), c.body(stream), { 'x-mock-usage': 'off' })).text());
        assert.equal(none.usage, undefined);
        assert.equal(countTokens(none.text), 16);
      }
      const lie = readAnswer(c, false, await (await post(mock, c.path(false), c.body(false), { 'x-mock-lie-prompt-tokens': '-5', 'x-mock-lie-completion-tokens': '1.5' })).text());
      assert.equal(lie.usage!.prompt, -5);
      assert.equal(lie.usage!.completion, 1.5);
      const nan = await (await post(mock, c.path(false), c.body(false), { 'x-mock-lie-completion-tokens': 'lots' })).text();
      assert.match(nan, /"lots"/);
      const after = mock.stats();
      assert.equal(after.usageReports, before.usageReports, 'no-usage and lying answers are not summed');
      assert.equal(after.usageLies - before.usageLies, 2);
    });
  }

  it('answers malformed requests and bad fault headers in the surface\'s shape', async () => {
    for (const c of CASES) {
      const bad = await post(mock, c.path(false), '{"nope":');
      assert.equal(bad.status, 400);
      errorShape(c.dialect, await bad.json() as Json, 400);
      const hdr = await post(mock, c.path(false), c.body(false), { 'x-mock-cached-tokens': '100000' });
      assert.equal(hdr.status, 400);
      const hb = await hdr.json() as Json;
      errorShape(c.dialect, hb, 400);
      assert.match(JSON.stringify(hb), /exceed the prompt/);
      const get = await fetch(mock.url + c.path(false));
      assert.equal(get.status, 405);
      errorShape(c.dialect, await get.json() as Json, 405);
    }
    const shape = await post(mock, '/v1/messages', { model: 'c', messages: 'nope' });
    assert.equal(shape.status, 400);
    errorShape('anthropic', await shape.json() as Json, 400);
  });
});

describe('mock surfaces: auth checks and request records', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream(); });
  after(() => mock.close());

  it('answers the provider\'s 401 without the required credential, and serves it with it', async () => {
    const need = (spec: string) => ({ 'x-mock-require-auth': spec });
    const oa = await post(mock, '/v1/chat/completions', { messages: HI }, need('authorization=Bearer sk-1'));
    assert.equal(oa.status, 401);
    assert.equal((await oa.json() as Json).error.code, 'invalid_api_key');
    const ok = await post(mock, '/v1/chat/completions', { messages: HI }, { ...need('authorization=Bearer sk-1'), authorization: 'Bearer sk-1' });
    assert.equal(ok.status, 200);
    await ok.arrayBuffer();

    const az = await post(mock, `/openai/deployments/d/chat/completions${AZ}`, { messages: HI }, { ...need('api-key=az'), 'api-key': 'wrong' });
    assert.equal(az.status, 401);
    assert.equal((await az.json() as Json).error.code, '401');

    const an = await post(mock, '/v1/messages', { model: 'c', max_tokens: 5, messages: HI }, need('x-api-key=sk-ant'));
    assert.equal(an.status, 401);
    assert.deepEqual(await an.json(), { type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } });
    const anOk = await post(mock, '/v1/messages', { model: 'c', max_tokens: 5, messages: HI }, { ...need('x-api-key=sk-ant'), 'x-api-key': 'sk-ant' });
    assert.equal(anOk.status, 200);
    await anOk.arrayBuffer();

    const spec = need('x-goog-api-key=g1|?key=g1');
    const gm = await post(mock, '/v1beta/models/g:generateContent', { contents: [] }, spec);
    assert.equal(gm.status, 401);
    assert.equal((await gm.json() as Json).error.status, 'UNAUTHENTICATED');
    for (const [path, h] of [['/v1beta/models/g:generateContent?key=g1', {}], ['/v1beta/models/g:generateContent', { 'x-goog-api-key': 'g1' }]] as const) {
      const r = await post(mock, path, { contents: [] }, { ...spec, ...h });
      assert.equal(r.status, 200, path);
      await r.arrayBuffer();
    }
    const badSpec = await post(mock, '/v1/chat/completions', { messages: HI }, need('no-equals-sign'));
    assert.equal(badSpec.status, 400);
    await badSpec.arrayBuffer();
  });

  it('checks a server-wide requireAuth option', async () => {
    const locked = await startMockUpstream({ requireAuth: 'x-api-key=k' });
    try {
      const r = await post(locked, '/v1/messages', { model: 'c', max_tokens: 5, messages: HI });
      assert.equal(r.status, 401);
      await r.arrayBuffer();
      const ok = await post(locked, '/v1/messages', { model: 'c', max_tokens: 5, messages: HI }, { 'x-api-key': 'k' });
      assert.equal(ok.status, 200);
      await ok.arrayBuffer();
    } finally {
      await locked.close();
    }
    await assert.rejects(startMockUpstream({ requireAuth: 'bad' }), RangeError);
    assert.deepEqual(parseMockUpstreamArgs(['--require-auth', 'api-key=a=b|?key=k']), { requireAuth: 'api-key=a=b|?key=k' });
    assert.throws(() => parseMockUpstreamArgs(['--require-auth', 'nothing']), /require-auth/);
  });

  it('records the last request and a bounded history; counts per surface; resets', async () => {
    mock.reset();
    await (await post(mock, '/v1/messages?beta=true', { model: 'c', max_tokens: 5, messages: HI }, { 'anthropic-version': '2023-06-01', 'x-api-key': 'secret' })).arrayBuffer();
    const last = await (await fetch(mock.url + '/mock/last-request')).json() as Json;
    assert.equal(last.method, 'POST');
    assert.equal(last.path, '/v1/messages');
    assert.deepEqual(last.query, { beta: 'true' });
    assert.equal(last.headers['anthropic-version'], '2023-06-01');
    assert.equal(last.headers['x-api-key'], 'secret');
    assert.equal(last.body.model, 'c');
    const bad = await post(mock, '/v1/chat/completions', 'not json');
    await bad.arrayBuffer();
    assert.equal(mock.stats().lastRequest!.body, 'not json');

    for (let i = 0; i < MOCK_HISTORY + 5; i++) await (await post(mock, '/v1/embeddings', { model: `e${i}`, input: 'x' })).arrayBuffer();
    const hist = await (await fetch(mock.url + '/mock/requests')).json() as Json[];
    assert.equal(hist.length, MOCK_HISTORY);
    assert.equal(hist.at(-1)!.body.model, `e${MOCK_HISTORY + 4}`);
    assert.equal(hist[0]!.body.model, 'e5');
    assert.deepEqual(mock.requests(), hist);

    const s = await (await fetch(mock.url + '/mock/stats')).json() as MockStats;
    assert.deepEqual(s.bySurface, { 'anthropic.messages': 1, 'openai.chat': 1, 'openai.embeddings': MOCK_HISTORY + 5 });
    assert.equal(s.usageBySurface['openai.embeddings']!.prompt_tokens, (MOCK_HISTORY + 5) * countTokens('x'));
    assert.equal(s.usageBySurface['anthropic.messages']!.completion_tokens, 5);
    const post405 = await fetch(mock.url + '/mock/last-request', { method: 'POST' });
    assert.equal(post405.status, 405);
    await post405.arrayBuffer();

    await (await fetch(mock.url + '/mock/reset', { method: 'POST' })).arrayBuffer();
    assert.equal(await (await fetch(mock.url + '/mock/last-request')).json(), null);
    assert.deepEqual(mock.requests(), []);
    assert.equal(mock.stats().usageReports, 0);
  });

  it('keeps a large body only for the newest request', async () => {
    const big = 'x '.repeat(600_000);
    await (await post(mock, '/v1/embeddings', { model: 'big', input: big })).arrayBuffer();
    assert.equal((mock.stats().lastRequest!.body as Json).model, 'big');
    await (await post(mock, '/v1/embeddings', { model: 'small', input: 'x' })).arrayBuffer();
    const [older] = mock.requests().slice(-2);
    assert.ok((older!.body as Json).mock_body_omitted_bytes > 1024 * 1024);
  });

  it('stops a slow stream of every dialect when the client aborts', async () => {
    for (const c of CASES) {
      const ac = new AbortController();
      const r = await fetch(mock.url + c.path(true), {
        method: 'POST', body: JSON.stringify(c.body(true)), signal: ac.signal,
        headers: { 'content-type': 'application/json', 'x-mock-chunks': '50', 'x-mock-chunk-delay-ms': '200' },
      });
      const reader = r.body!.getReader();
      await reader.read();
      ac.abort();
      await reader.cancel().catch(() => undefined);
    }
    await waitFor(() => mock.stats().inFlight === 0, 'aborted streams to stop');
    assert.ok(mock.stats().aborted >= CASES.length);
  });
});
