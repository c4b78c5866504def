// The real SDKs straight against the mock: proof that every mock surface speaks what the SDKs parse
// (openai 6.49.0: chat, responses, embeddings, Azure; @anthropic-ai/sdk 1.14.0: messages, stream, countTokens;
// @google/genai 2.32.0: generateContent, generateContentStream), including their error classes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { AzureOpenAI } from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { ApiError, GoogleGenAI } from '@google/genai';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { mockEmbedding } from '../../src/mock/openai-wire.ts';

const PROMPT_HI = 3 + 3 + countTokens('hi');

describe('mock + openai SDK', () => {
  let mock: MockUpstream;
  let ai: OpenAI;
  before(async () => {
    mock = await startMockUpstream({ chunks: 4 });
    ai = new OpenAI({ baseURL: mock.url + '/v1', apiKey: 'sk-test', maxRetries: 0, timeout: 20_000 });
  });
  after(() => mock.close());

  it('chat with cached and reasoning details', async () => {
    const r = await ai.chat.completions.create({ model: 'o-x', messages: [{ role: 'user', content: 'hi' }] },
      { headers: { 'x-mock-cached-tokens': '4', 'x-mock-reasoning-tokens': '6' } });
    assert.equal(r.usage!.prompt_tokens, PROMPT_HI);
    assert.equal(r.usage!.prompt_tokens_details!.cached_tokens, 4);
    assert.equal(r.usage!.completion_tokens, 22);
    assert.equal(r.usage!.completion_tokens_details!.reasoning_tokens, 6);
  });

  it('responses: create, stream events and finalResponse', async () => {
    const r = await ai.responses.create({ model: 'gpt-r', input: 'hi', instructions: 'be brief' }, { headers: { 'x-mock-cached-tokens': '2' } });
    const prompt = 3 + 3 + countTokens('be brief') + 3 + countTokens('hi');
    assert.equal(r.status, 'completed');
    assert.equal(r.model, 'gpt-r');
    assert.equal(countTokens(r.output_text), 16);
    assert.deepEqual(r.usage, { input_tokens: prompt, input_tokens_details: { cached_tokens: 2 }, output_tokens: 16, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: prompt + 16 });

    const stream = ai.responses.stream({ model: 'gpt-r', input: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-reasoning-tokens': '3' } });
    const types: string[] = [];
    let deltas = '';
    for await (const e of stream) {
      types.push(e.type);
      if (e.type === 'response.output_text.delta') deltas += e.delta;
    }
    const final = await stream.finalResponse();
    assert.equal(types[0], 'response.created');
    assert.equal(types.at(-1), 'response.completed');
    assert.equal(final.output_text, deltas);
    assert.equal(countTokens(deltas), 16);
    assert.equal(final.usage!.output_tokens, 19);
    assert.equal(final.usage!.output_tokens_details.reasoning_tokens, 3);

    const raw = await ai.responses.create({ model: 'gpt-r', input: 'hi', stream: true });
    let completed: OpenAI.Responses.Response | undefined;
    for await (const e of raw) if (e.type === 'response.completed') completed = e.response;
    assert.equal(completed!.usage!.input_tokens, PROMPT_HI);
  });

  it('responses: an in-stream error surfaces as an SDK error', async () => {
    const stream = await ai.responses.create({ model: 'gpt-r', input: 'hi', stream: true }, { headers: { 'x-mock-stream-error-after': '1' } });
    const seen: string[] = [];
    for await (const e of stream) seen.push(e.type);
    assert.equal(seen.at(-1), 'error');
  });

  it('embeddings: the SDK default (base64, decoded) and explicit float match the mock vectors', async () => {
    const r = await ai.embeddings.create({ model: 'emb', input: ['alpha', 'beta gamma'] });
    assert.equal(r.data.length, 2);
    assert.deepEqual(r.data[0]!.embedding, Array.from(mockEmbedding('alpha', 8)));
    assert.equal(r.usage.prompt_tokens, countTokens('alpha') + countTokens('beta gamma'));
    const f = await ai.embeddings.create({ model: 'emb', input: 'alpha', encoding_format: 'float', dimensions: 4 });
    assert.deepEqual(f.data[0]!.embedding, Array.from(mockEmbedding('alpha', 4)));
    const last = mock.stats().lastRequest!;
    assert.equal((last.body as { encoding_format: string }).encoding_format, 'float');
  });

  it('errors map to the SDK classes', async () => {
    await assert.rejects(ai.responses.create({ model: 'm', input: 'x' }, { headers: { 'x-mock-status': '429' } }), OpenAI.RateLimitError);
    await assert.rejects(ai.embeddings.create({ model: 'm', input: 'x' }, { headers: { 'x-mock-require-auth': 'authorization=Bearer other' } }), OpenAI.AuthenticationError);
  });

  it('AzureOpenAI: deployment URL, api-version and api-key reach the mock', async () => {
    const az = new AzureOpenAI({ endpoint: mock.url, apiKey: 'az-key', apiVersion: '2024-10-21', deployment: 'gpt4o-dep', maxRetries: 0, timeout: 20_000 });
    const r = await az.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-require-auth': 'api-key=az-key' } });
    assert.equal(r.model, 'gpt4o-dep');
    const seen = mock.requests().at(-1)!;
    assert.equal(seen.path, '/openai/deployments/gpt4o-dep/chat/completions');
    assert.equal(seen.query['api-version'], '2024-10-21');
    assert.equal(seen.headers['api-key'], 'az-key');
    const e = await az.embeddings.create({ model: 'emb', input: 'x' });
    assert.equal(e.model, 'gpt4o-dep');
    const stream = await az.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const c of stream) if (c.usage) usage = c.usage;
    assert.equal(usage!.completion_tokens, 16);
  });
});

describe('mock + @anthropic-ai/sdk', () => {
  let mock: MockUpstream;
  let ai: Anthropic;
  before(async () => {
    mock = await startMockUpstream({ chunks: 4 });
    ai = new Anthropic({ baseURL: mock.url, apiKey: 'sk-ant', maxRetries: 0, timeout: 20_000 });
  });
  after(() => mock.close());

  it('messages.create with cache fields; the SDK sends its key and anthropic-version', async () => {
    const m = await ai.messages.create({ model: 'claude-x', max_tokens: 1024, system: 'sys', messages: [{ role: 'user', content: 'hi' }] },
      { headers: { 'x-mock-cached-tokens': '3', 'x-mock-cache-write-tokens': '2', 'x-mock-require-auth': 'x-api-key=sk-ant|authorization=Bearer sk-ant' } });
    const prompt = 3 + 3 + countTokens('sys') + PROMPT_HI - 3;
    assert.equal(m.model, 'claude-x');
    assert.equal(m.stop_reason, 'end_turn');
    assert.equal(m.content[0]!.type, 'text');
    assert.equal(m.usage.input_tokens + m.usage.cache_creation_input_tokens! + m.usage.cache_read_input_tokens!, prompt);
    assert.equal(m.usage.cache_read_input_tokens, 3);
    assert.equal(m.usage.cache_creation_input_tokens, 2);
    assert.equal(m.usage.output_tokens, 16);
    const seen = mock.stats().lastRequest!;
    // SDK 1.14 sends an apiKey as `authorization: Bearer`; the API accepts that and x-api-key.
    assert.equal(seen.headers.authorization, 'Bearer sk-ant');
    assert.ok(seen.headers['anthropic-version']);
  });

  it('messages.stream accumulates text and usage from message_start + message_delta', async () => {
    const stream = ai.messages.stream({ model: 'claude-x', max_tokens: 1024, messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-cached-tokens': '1' } });
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    assert.equal(countTokens(text), 16);
    assert.equal((final.content[0] as Anthropic.TextBlock).text, text);
    assert.equal(final.usage.output_tokens, 16);
    assert.equal(final.usage.input_tokens, PROMPT_HI - 1);
    assert.equal(final.usage.cache_read_input_tokens, 1);
  });

  it('thinking: the SDK accumulates the thinking block and thinking_tokens', async () => {
    const stream = ai.messages.stream({ model: 'claude-x', max_tokens: 1024, thinking: { type: 'enabled', budget_tokens: 512 }, messages: [{ role: 'user', content: 'hi' }] },
      { headers: { 'x-mock-reasoning-tokens': '5' } });
    let thought = '';
    stream.on('thinking', (d) => { thought += d; });
    const final = await stream.finalMessage();
    assert.equal(countTokens(thought), 5);
    assert.equal(final.content[0]!.type, 'thinking');
    assert.equal((final.content[0] as Anthropic.ThinkingBlock).thinking, thought);
    assert.ok((final.content[0] as Anthropic.ThinkingBlock).signature);
    assert.equal(final.usage.output_tokens, 21);
    assert.equal(final.usage.output_tokens_details!.thinking_tokens, 5);
  });

  it('countTokens, and overloaded/auth/in-stream errors as SDK errors', async () => {
    const c = await ai.messages.countTokens({ model: 'claude-x', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(c.input_tokens, PROMPT_HI);
    await assert.rejects(ai.messages.create({ model: 'c', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-status': '529' } }),
      (err: unknown) => err instanceof Anthropic.APIError && err.status === 529 && (err.error as { error: { type: string } }).error.type === 'overloaded_error');
    await assert.rejects(ai.messages.create({ model: 'c', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-require-auth': 'x-api-key=other|authorization=Bearer other' } }),
      Anthropic.AuthenticationError);
    const broken = ai.messages.stream({ model: 'c', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-mock-stream-error-after': '2' } });
    await assert.rejects(broken.finalMessage(), (err: unknown) => err instanceof Anthropic.APIError && /overloaded/.test(String(err.message)));
  });
});

describe('mock + @google/genai', () => {
  let mock: MockUpstream;
  let ai: GoogleGenAI;
  before(async () => {
    mock = await startMockUpstream({ chunks: 4 });
    ai = new GoogleGenAI({ apiKey: 'g-key', httpOptions: { baseUrl: mock.url, timeout: 20_000, retryOptions: { attempts: 1 } } });
  });
  after(() => mock.close());

  it('generateContent: text and usageMetadata with cached and thoughts counts', async () => {
    const r = await ai.models.generateContent({
      model: 'gemini-2.5-flash', contents: 'hi',
      config: { httpOptions: { headers: { 'x-mock-cached-tokens': '2', 'x-mock-reasoning-tokens': '5', 'x-mock-require-auth': 'x-goog-api-key=g-key' } } },
    });
    assert.equal(countTokens(r.text!), 16);
    assert.equal(r.modelVersion, 'gemini-2.5-flash');
    assert.equal(r.usageMetadata!.promptTokenCount, PROMPT_HI);
    assert.equal(r.usageMetadata!.cachedContentTokenCount, 2);
    assert.equal(r.usageMetadata!.candidatesTokenCount, 16);
    assert.equal(r.usageMetadata!.thoughtsTokenCount, 5);
    assert.equal(r.usageMetadata!.totalTokenCount, PROMPT_HI + 21);
    const seen = mock.stats().lastRequest!;
    assert.equal(seen.path, '/v1beta/models/gemini-2.5-flash:generateContent');
    assert.equal(seen.headers['x-goog-api-key'], 'g-key');
  });

  it('generateContentStream over alt=sse', async () => {
    const stream = await ai.models.generateContentStream({ model: 'gemini-2.5-flash', contents: [{ role: 'user', parts: [{ text: 'hi' }] }] });
    let text = '';
    let lastUsage: unknown;
    for await (const chunk of stream) {
      text += chunk.text ?? '';
      lastUsage = chunk.usageMetadata;
    }
    assert.equal(countTokens(text), 16);
    assert.equal((lastUsage as { candidatesTokenCount: number }).candidatesTokenCount, 16);
    const seen = mock.requests().at(-1)!;
    assert.equal(seen.path, '/v1beta/models/gemini-2.5-flash:streamGenerateContent');
    assert.equal(seen.query.alt, 'sse');
  });

  it('errors: 429 RESOURCE_EXHAUSTED and a mid-stream error', async () => {
    await assert.rejects(
      ai.models.generateContent({ model: 'g', contents: 'hi', config: { httpOptions: { headers: { 'x-mock-status': '429' } } } }),
      (err: unknown) => err instanceof ApiError && err.status === 429 && /RESOURCE_EXHAUSTED/.test(err.message),
    );
    const stream = await ai.models.generateContentStream({ model: 'g', contents: 'hi', config: { httpOptions: { headers: { 'x-mock-stream-error-after': '1' } } } });
    await assert.rejects(async () => { for await (const c of stream) void c; });
  });
});
