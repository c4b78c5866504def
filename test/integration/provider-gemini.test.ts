// A Gemini instance through the real gateway and the mock, with the real SDKs: @google/genai (generateContent,
// generateContentStream) against /v1beta/models/…, plain HTTP for the JSON-array stream and a cut stream, and the
// openai SDK against the same instance through translation. After each call the route's charged total
// (sluice_quota_tokens_charged_total) must equal the usage the mock reported (thoughts included), or the prompt
// estimate plus the counted text when the stream was cut.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { GoogleGenAI } from '@google/genai';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { charged, expectCharged, mockTotal, waitMoved } from '../helpers/metrics.ts';
import { readAll, readChatStream } from '../helpers/sse.ts';
import { geminiPromptParts, PROMPT_SCALE } from '../../src/providers/gemini/estimate.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';

const ROUTE = 'gem';

function config(mockUrl: string): Record<string, unknown> {
  return {
    routes: [{
      id: ROUTE, uri: '/v1*',
      plugins: {
        'ai-proxy-multi': {
          instances: [{
            name: 'gemini', provider: 'gemini',
            auth: { header: { 'x-goog-api-key': 'instance-key' } },
            options: { model: 'gemini-inst' },
            override: { endpoint: mockUrl },
            forward_headers: ['x-mock-*'],
          }],
        },
        'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 },
      },
    }, {
      // Gemini first, forwarding the mock's fault headers; an OpenAI instance behind it that does not.
      id: 'gemfb', uri: '/fb/*',
      plugins: {
        'ai-proxy-multi': {
          fallback_strategy: ['http_429', 'http_5xx'],
          instances: [
            { name: 'g1', provider: 'gemini', priority: 1, auth: { header: { 'x-goog-api-key': 'k' } }, options: { model: 'gemini-inst' }, override: { endpoint: mockUrl }, forward_headers: ['x-mock-*'] },
            { name: 'o1', provider: 'openai-compatible', priority: 0, auth: { header: { Authorization: 'Bearer k' } }, options: { model: 'gpt-inst' }, override: { endpoint: `${mockUrl}/v1/chat/completions` } },
          ],
        },
        'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 },
      },
    }, {
      id: 'gemq', uri: '/q/*',
      plugins: {
        'ai-proxy': {
          provider: 'gemini', auth: { query: { key: 'query-key' } },
          override: { endpoint: `${mockUrl}/v1beta/models/{model}:generateContent` },
        },
      },
    }, {
      id: 'oai', uri: '/oai/*',
      plugins: { 'ai-proxy': { provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer k' } }, override: { endpoint: `${mockUrl}/v1/chat/completions` } } },
    }],
  };
}

const CONTENTS = [{ role: 'user', parts: [{ text: 'Tell me about the tides, briefly.' }] }];
const SYSTEM = 'You are a concise oceanographer.';
const MESSAGES = [{ role: 'user' as const, content: 'Tell me about the tides, briefly.' }];

/** The promptTokenCount of the last usageMetadata in a raw Gemini stream. */
function lastPromptCount(raw: string): number {
  const all = [...raw.matchAll(/"promptTokenCount":(\d+)/g)];
  assert.ok(all.length > 0, 'a usageMetadata reached the client');
  return Number(all.at(-1)![1]);
}

describe('provider gemini through the gateway', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let genai: GoogleGenAI;
  let openai: OpenAI;

  before(async () => {
    mock = await startMockUpstream({ completionTokens: 24, chunks: 6 });
    gw = await startGateway(config(mock.url));
    genai = new GoogleGenAI({ apiKey: 'client-key', httpOptions: { baseUrl: gw.url, apiVersion: 'v1beta' } });
    openai = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('generateContent (SDK): the mock\'s answer; instance key and model upstream; charged = usage incl. cached and thoughts', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await genai.models.generateContent({
      model: 'gemini-client',
      contents: CONTENTS,
      config: { systemInstruction: SYSTEM, maxOutputTokens: 40, httpOptions: { headers: { 'x-mock-cached-tokens': '5', 'x-mock-reasoning-tokens': '7' } } },
    });
    assert.ok((r.text ?? '').length > 0);
    const um = r.usageMetadata!;
    assert.equal(um.cachedContentTokenCount, 5);
    assert.equal(um.thoughtsTokenCount, 7);
    const total = um.promptTokenCount! + um.candidatesTokenCount! + um.thoughtsTokenCount!;
    assert.equal(um.totalTokenCount, total);
    assert.equal(mockTotal(mock) - u0, total);
    await expectCharged(gw, ROUTE, c0, total);
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1beta/models/gemini-inst:generateContent');
    assert.equal(last.headers['x-goog-api-key'], 'instance-key', 'the client\'s key never goes upstream');
    assert.equal((last.body as { model?: string }).model, undefined);
    assert.deepEqual((last.body as { systemInstruction: unknown }).systemInstruction, { parts: [{ text: SYSTEM }], role: 'user' });
  });

  it('countTokens (SDK): passed through to the instance model, in Google\'s shape; nothing charged', async () => {
    const c0 = await charged(gw, ROUTE);
    const r = await genai.models.countTokens({ model: 'gemini-client', contents: CONTENTS });
    assert.ok((r.totalTokens ?? 0) > 0, JSON.stringify(r));
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1beta/models/gemini-inst:countTokens');
    assert.equal(last.headers['x-goog-api-key'], 'instance-key');
    assert.equal((last.body as { generationConfig?: unknown }).generationConfig, undefined, 'instance options stay out of countTokens');
    assert.equal(await charged(gw, ROUTE), c0);
    // An endpoint with {model}:generateContent counts at {model}:countTokens, auth.query kept.
    const q = new GoogleGenAI({ apiKey: 'client-key', httpOptions: { baseUrl: `${gw.url}/q`, apiVersion: 'v1beta' } });
    assert.ok(((await q.models.countTokens({ model: 'gemini-q', contents: CONTENTS })).totalTokens ?? 0) > 0);
    const lastQ = mock.requests().at(-1)!;
    assert.equal(lastQ.path, '/v1beta/models/gemini-q:countTokens');
    assert.equal(lastQ.query.key, 'query-key');
    // A body that is not JSON: Google's error shape, not OpenAI's.
    const bad = await fetch(`${gw.url}/v1beta/models/gemini-client:countTokens`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{' });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { error: { status: string } }).error.status, 'INVALID_ARGUMENT');
  });

  it('generateContentStream (SDK, alt=sse): frames pass through; charged = the last usageMetadata', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await genai.models.generateContentStream({
      model: 'gemini-client', contents: CONTENTS,
      config: { maxOutputTokens: 40, httpOptions: { headers: { 'x-mock-reasoning-tokens': '3' } } },
    });
    let text = '';
    let last: { totalTokenCount?: number; thoughtsTokenCount?: number } | undefined;
    for await (const chunk of stream) {
      text += chunk.text ?? '';
      if (chunk.usageMetadata !== undefined) last = chunk.usageMetadata;
    }
    assert.ok(text.length > 0);
    assert.equal(last?.thoughtsTokenCount, 3);
    assert.equal(mockTotal(mock) - u0, last!.totalTokenCount);
    await expectCharged(gw, ROUTE, c0, last!.totalTokenCount!);
    const up = mock.requests().at(-1)!;
    assert.equal(up.path, '/v1beta/models/gemini-inst:streamGenerateContent');
    assert.equal(up.query.alt, 'sse');
  });

  it('streamGenerateContent without alt=sse: one JSON array, passed through and metered', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await fetch(`${gw.url}/v1beta/models/gemini-client:streamGenerateContent`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ contents: CONTENTS, generationConfig: { maxOutputTokens: 30 } }),
    });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type') ?? '', /application\/json/);
    const arr = (await r.json()) as Array<{ usageMetadata?: { totalTokenCount: number } }>;
    assert.ok(Array.isArray(arr) && arr.length > 1);
    const total = arr.at(-1)!.usageMetadata!.totalTokenCount;
    assert.equal(mockTotal(mock) - u0, total);
    await expectCharged(gw, ROUTE, c0, total);
    assert.equal(mock.requests().at(-1)!.query.alt, undefined);
  });

  it('stream cut by the upstream: charged = the prompt of the last usageMetadata + the counted text', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { contents: CONTENTS, systemInstruction: { parts: [{ text: SYSTEM }] }, generationConfig: { maxOutputTokens: 40 } };
    const r = await fetch(`${gw.url}/v1beta/models/gemini-client:streamGenerateContent?alt=sse`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-disconnect-after': '3' }, body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    const raw = await readAll(r);
    // Gemini's usageMetadata before the finish counts the prompt: that count stands, not the gateway's estimate.
    const prompt = lastPromptCount(raw);
    const estimate = Math.ceil(countPromptParts(geminiPromptParts(body.contents, body.systemInstruction, undefined), 'o200k_base') * PROMPT_SCALE);
    assert.notEqual(prompt, estimate, 'the mock counts the prompt its own way');
    const seen = [...raw.matchAll(/"text":"((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string).join('');
    const c1 = await waitMoved(gw, ROUTE, c0);
    assert.ok(seen.length > 0, 'the frames before the cut reached the client');
    // Gemini output Sluice had to count: o200k × the module's scale (no public tokenizer), at most maxOutputTokens.
    const counted = Math.min(Math.ceil(countText(seen, 'o200k_base') * PROMPT_SCALE), 40);
    assert.equal(c1 - c0 - prompt, counted, `charged ${c1 - c0} = reported prompt ${prompt} + counted text`);
  });

  it('stream that ends cleanly after an in-stream error, before any finishReason: charged = the mid-stream usageMetadata\'s prompt + the counted text', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { contents: CONTENTS, generationConfig: { maxOutputTokens: 40 } };
    const r = await fetch(`${gw.url}/v1beta/models/gemini-client:streamGenerateContent?alt=sse`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-stream-error-after': '4', 'x-mock-chunks': '16' }, body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    const raw = await readAll(r);
    assert.match(raw, /"error"/, 'the error object reached the client');
    const prompt = lastPromptCount(raw);
    const seen = [...raw.matchAll(/"text":"((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string).join('');
    assert.ok(seen.length > 0, 'the frames before the error reached the client');
    const c1 = await waitMoved(gw, ROUTE, c0);
    // Not the mid-stream usage as a whole (it has no output count): its prompt, and the text counted.
    const counted = Math.min(Math.ceil(countText(seen, 'o200k_base') * PROMPT_SCALE), 40);
    assert.equal(c1 - c0 - prompt, counted, `charged ${c1 - c0} = reported prompt ${prompt} + counted text`);
  });

  it('stream aborted by the client: charged = the reported prompt + the text the gateway had received', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { contents: CONTENTS, generationConfig: { maxOutputTokens: 24 } };
    const ac = new AbortController();
    const r = await fetch(`${gw.url}/v1beta/models/gemini-client:streamGenerateContent?alt=sse`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-chunks': '12', 'x-mock-chunk-delay-ms': '300' },
      body: JSON.stringify(body), signal: ac.signal,
    });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    assert.ok(first.value !== undefined && first.value.length > 0);
    ac.abort();
    const prompt = lastPromptCount(Buffer.from(first.value).toString('utf8'));
    const c1 = await waitMoved(gw, ROUTE, c0);
    // At least the first frame's text was counted; never more than the whole answer (24 tokens) would have been.
    assert.ok(c1 - c0 > prompt, `charged ${c1 - c0} > reported prompt ${prompt}`);
    assert.ok(c1 - c0 <= prompt + 24, `charged ${c1 - c0} ≤ reported prompt ${prompt} + 24`);
  });

  it('estimate: the reservation bounds the mock\'s prompt count (sluice_quota_estimate_error_tokens ≥ 0)', async (t) => {
    const prompts: Array<[string, string]> = [
      ['short', 'Hi'],
      ['english', 'The tide is the rise and fall of sea levels caused by the gravity of the Moon and the Sun. '.repeat(20)],
      ['code', 'function f(a: number[]): number { return a.reduce((s, x) => s + x * x, 0); }\n'.repeat(20)],
      ['cjk', '潮汐是海平面因月球和太阳引力而周期性升降的现象。'.repeat(20)],
      ['numbers', Array.from({ length: 100 }, (_, i) => String(i * 7919)).join(', ')],
    ];
    const ratios: string[] = [];
    for (const [name, text] of prompts) {
      const contents = [{ role: 'user', parts: [{ text }] }];
      const r = await genai.models.generateContent({ model: 'gemini-client', contents, config: { maxOutputTokens: 24 } });
      const actual = r.usageMetadata!.promptTokenCount!;
      const estimate = Math.ceil(countPromptParts(geminiPromptParts(contents, undefined, undefined), 'o200k_base') * PROMPT_SCALE);
      assert.ok(estimate >= actual, `${name}: estimate ${estimate} < mock ${actual}`);
      ratios.push(`${name} ${estimate}/${actual}=${(estimate / actual).toFixed(2)}`);
    }
    t.diagnostic(`estimate/mock prompt: ${ratios.join('; ')}`);
    const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    const under = metrics.split('\n').find((l) => l.startsWith(`sluice_quota_estimate_error_tokens_bucket{le="-1",route="${ROUTE}"}`) || l.startsWith(`sluice_quota_estimate_error_tokens_bucket{route="${ROUTE}",le="-1"}`));
    assert.ok(under !== undefined, 'the estimate-error histogram has the route');
    assert.equal(Number(under.slice(under.lastIndexOf(' ') + 1)), 0, 'no settled request used more than it reserved');
  });

  it('errors: a bad request gets Google\'s error shape; an upstream 429 is relayed as it came', async () => {
    const r = await fetch(`${gw.url}/v1beta/models/gemini-client:generateContent`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ contents: [] }),
    });
    assert.equal(r.status, 400);
    const e = (await r.json()) as { error: { code: number; status: string; message: string } };
    assert.equal(e.error.code, 400);
    assert.equal(e.error.status, 'INVALID_ARGUMENT');
    await assert.rejects(
      genai.models.generateContent({ model: 'gemini-client', contents: CONTENTS, config: { httpOptions: { headers: { 'x-mock-status': '429' } } } }),
      (err: unknown) => {
        assert.equal((err as { status: number }).status, 429);
        assert.match(String((err as Error).message), /RESOURCE_EXHAUSTED/);
        return true;
      },
    );
  });

  it('a Gemini method Sluice does not serve (embedContent, SDK): 404 in Google\'s shape naming it; nothing sent upstream', async () => {
    const before = mock.requests().length;
    await assert.rejects(genai.models.embedContent({ model: 'gemini-client', contents: 'hello' }), (err: unknown) => {
      assert.equal((err as { status: number }).status, 404);
      assert.match(String((err as Error).message), /(embedContent|batchEmbedContents) is not served/);
      assert.match(String((err as Error).message), /NOT_FOUND/);
      return true;
    });
    assert.equal(mock.requests().length, before);
    // A route without a Gemini instance proxies such a path as OpenAI chat, as any custom path.
    const r = await fetch(`${gw.url}/oai/v1/models/x:embedContent`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: MESSAGES }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal(((await r.json()) as { object: string }).object, 'chat.completion');
  });

  it('fallback: a Gemini 429 or 503 moves an OpenAI client to the next instance; charged = the usage that answered', async () => {
    for (const status of ['429', '503']) {
      const c0 = await charged(gw, 'gemfb');
      const u0 = mockTotal(mock);
      const fb = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/fb/v1`, maxRetries: 0 });
      const r = await fb.chat.completions.create({ model: 'gpt-client', max_tokens: 12, messages: MESSAGES }, { headers: { 'x-mock-status': status } });
      assert.equal(r.model, 'gpt-inst');
      const reqs = mock.requests();
      assert.equal(reqs.at(-2)!.path, '/v1beta/models/gemini-inst:generateContent');
      assert.equal(reqs.at(-1)!.path, '/v1/chat/completions');
      assert.equal(mockTotal(mock) - u0, r.usage!.total_tokens);
      await expectCharged(gw, 'gemfb', c0, r.usage!.total_tokens);
    }
  });

  it('auth.query: the key goes in the upstream query; the client\'s x-goog-api-key never goes upstream', async () => {
    const q = new GoogleGenAI({ apiKey: 'client-key', httpOptions: { baseUrl: `${gw.url}/q`, apiVersion: 'v1beta' } });
    const r = await q.models.generateContentStream({ model: 'gemini-client', contents: CONTENTS, config: { maxOutputTokens: 8 } });
    let text = '';
    for await (const chunk of r) text += chunk.text ?? '';
    assert.ok(text.length > 0);
    const up = mock.requests().at(-1)!;
    assert.equal(up.path, '/v1beta/models/gemini-client:streamGenerateContent');
    assert.deepEqual(up.query, { key: 'query-key', alt: 'sse' });
    assert.equal(up.headers['x-goog-api-key'], undefined);
  });

  it('openai SDK → gemini instance (buffered): a chat.completion with usage mapped; charged = that usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await openai.chat.completions.create(
      { model: 'gpt-client', max_tokens: 30, messages: [{ role: 'system', content: SYSTEM }, ...MESSAGES] },
      { headers: { 'x-mock-cached-tokens': '6', 'x-mock-reasoning-tokens': '4' } },
    );
    assert.equal(r.object, 'chat.completion');
    assert.ok((r.choices[0]!.message.content ?? '').length > 0);
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    assert.equal(r.usage!.prompt_tokens_details!.cached_tokens, 6);
    assert.equal(r.usage!.completion_tokens_details!.reasoning_tokens, 4);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + r.usage!.completion_tokens);
    assert.equal(mockTotal(mock) - u0, r.usage!.total_tokens);
    await expectCharged(gw, ROUTE, c0, r.usage!.total_tokens);
    const up = mock.requests().at(-1)!;
    assert.equal(up.path, '/v1beta/models/gemini-inst:generateContent');
    const ub = up.body as Record<string, unknown>;
    assert.deepEqual(ub.systemInstruction, { parts: [{ text: SYSTEM }] });
    assert.deepEqual(ub.generationConfig, { maxOutputTokens: 30 });
    assert.equal(up.headers['x-goog-api-key'], 'instance-key');
  });

  it('openai SDK → gemini instance (stream, include_usage): chunks, a usage chunk, charged = that usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await openai.chat.completions.create({ model: 'gpt-client', max_tokens: 30, messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
    const { text, finish, usage } = await readChatStream(stream);
    assert.ok(text.length > 0);
    assert.equal(finish, 'stop');
    assert.ok(usage !== undefined);
    assert.equal(mockTotal(mock) - u0, usage.total_tokens);
    await expectCharged(gw, ROUTE, c0, usage.total_tokens);
    const up = mock.requests().at(-1)!;
    assert.equal(up.path, '/v1beta/models/gemini-inst:streamGenerateContent');
    assert.equal(up.query.alt, 'sse');
  });

  it('openai SDK → gemini instance (stream, no include_usage): no usage chunk, still charged the mock\'s usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await openai.chat.completions.create({ model: 'gpt-client', max_tokens: 30, messages: MESSAGES, stream: true });
    const { text, usage } = await readChatStream(stream);
    assert.equal(usage, undefined);
    assert.ok(text.length > 0);
    await expectCharged(gw, ROUTE, c0, mockTotal(mock) - u0);
  });

  it('openai SDK → gemini instance (stream): an error Google sends mid-stream is raised by the SDK, and the stream is still charged', async () => {
    const c0 = await charged(gw, ROUTE);
    const stream = await openai.chat.completions.create({ model: 'gpt-client', max_tokens: 30, messages: MESSAGES, stream: true },
      { headers: { 'x-mock-stream-error-after': '2' } });
    let text = '';
    await assert.rejects(async () => {
      for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    }, (e: unknown) => e instanceof OpenAI.APIError && /INTERNAL|error/i.test(e.message));
    assert.ok(text.length > 0, 'the chunks before the error arrived');
    assert.ok((await waitMoved(gw, ROUTE, c0)) > c0);
  });

  it('openai SDK → gemini instance: an upstream error reaches the client in OpenAI\'s shape', async () => {
    await assert.rejects(
      openai.chat.completions.create({ model: 'gpt-client', messages: MESSAGES }, { headers: { 'x-mock-status': '429' } }),
      (e: unknown) => {
        const err = e as { status: number; error: { type: string; code: string } };
        assert.equal(err.status, 429);
        assert.equal(err.error.type, 'rate_limit_error');
        assert.equal(err.error.code, 'rate_limit_exceeded');
        return true;
      },
    );
  });
});
