// An Anthropic instance through the real gateway and the mock, with the real SDKs: @anthropic-ai/sdk against
// /v1/messages (buffered, streamed, aborted) and count_tokens, and the openai SDK against the same instance
// through translation. After each call the route's charged total (sluice_quota_tokens_charged_total) must equal
// the usage the mock reported, or the prompt estimate plus the counted text when the stream was cut.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { charged, expectCharged, mockTotal, waitMoved } from '../helpers/metrics.ts';
import { readAll, readChatStream } from '../helpers/sse.ts';
import { ANTHROPIC_PROMPT_SCALE, anthropicPromptParts } from '../../src/providers/anthropic/estimate.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';

const ROUTE = 'anth';

function config(mockUrl: string): Record<string, unknown> {
  return {
    routes: [{
      id: ROUTE, uri: '/v1/*',
      plugins: {
        'ai-proxy-multi': {
          instances: [{
            name: 'claude', provider: 'anthropic',
            auth: { header: { 'x-api-key': 'sk-ant-instance' } },
            options: { model: 'claude-inst' },
            override: { endpoint: mockUrl },
            forward_headers: ['x-mock-*'],
          }],
        },
        'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 },
      },
    }],
  };
}

const MESSAGES = [{ role: 'user' as const, content: 'Tell me about the tides, briefly.' }];
const SYSTEM = 'You are a concise oceanographer.';

/** Claude output Sluice had to count: o200k × the module's scale (no public tokenizer), at most max_tokens. */
function counted(text: string, maxTokens: number): number {
  return Math.min(Math.ceil(countText(text, 'o200k_base') * ANTHROPIC_PROMPT_SCALE), maxTokens);
}

/** The prompt message_start reported in a raw Anthropic stream: input plus cache reads and writes. */
function startPrompt(raw: string): number {
  const line = raw.split('\n').find((l) => l.startsWith('data: ') && l.includes('"message_start"'));
  assert.ok(line !== undefined, 'message_start reached the client');
  const u = (JSON.parse(line.slice(6)) as { message: { usage: Record<string, number | undefined> } }).message.usage;
  return (u.input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);
}

describe('provider anthropic through the gateway', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let claude: Anthropic;
  let openai: OpenAI;

  before(async () => {
    mock = await startMockUpstream({ completionTokens: 24, chunks: 6 });
    gw = await startGateway(config(mock.url));
    claude = new Anthropic({ apiKey: 'sk-client', baseURL: gw.url, maxRetries: 0 });
    openai = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('messages (buffered): the SDK gets the mock\'s message; upstream auth and version are the instance\'s; charged = usage incl. cache', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const msg = await claude.messages.create(
      { model: 'claude-client', max_tokens: 40, system: SYSTEM, messages: MESSAGES },
      { headers: { 'x-mock-cached-tokens': '5', 'x-mock-cache-write-tokens': '3' } },
    );
    assert.equal(msg.type, 'message');
    assert.equal(msg.usage.cache_read_input_tokens, 5);
    assert.equal(msg.usage.cache_creation_input_tokens, 3);
    const total = msg.usage.input_tokens + 5 + 3 + msg.usage.output_tokens;
    assert.equal(mockTotal(mock) - u0, total);
    await expectCharged(gw, ROUTE, c0, total);
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1/messages');
    assert.equal(last.headers['x-api-key'], 'sk-ant-instance', 'the client\'s key never goes upstream');
    assert.equal(last.headers['anthropic-version'], '2023-06-01');
    assert.equal((last.body as { model: string }).model, 'claude-inst');
  });

  it('messages (stream): events pass through to the SDK; charged = message_start + message_delta usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = claude.messages.stream(
      { model: 'claude-client', max_tokens: 40, system: SYSTEM, messages: MESSAGES },
      { headers: { 'x-mock-cached-tokens': '4' } },
    );
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    assert.ok(text.length > 0);
    assert.equal(final.usage.cache_read_input_tokens, 4);
    const total = final.usage.input_tokens + 4 + (final.usage.cache_creation_input_tokens ?? 0) + final.usage.output_tokens;
    assert.equal(mockTotal(mock) - u0, total);
    await expectCharged(gw, ROUTE, c0, total);
  });

  it('messages (stream cut by the upstream): charged = message_start\'s prompt + the counted text', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { model: 'claude-client', max_tokens: 40, system: SYSTEM, messages: MESSAGES, stream: true };
    const r = await fetch(`${gw.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-mock-disconnect-after': '3' },
      body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    // Read in pieces: the gateway destroys a stream the upstream broke, and what arrived before must be kept.
    const raw = await readAll(r);
    // The text the gateway received is what the mock wrote before dropping: 3 frames of its deterministic slice.
    // The prompt is the upstream's own count from message_start, not the gateway's estimate.
    const prompt = startPrompt(raw);
    const estimate = Math.ceil(countPromptParts(anthropicPromptParts(body), 'o200k_base') * ANTHROPIC_PROMPT_SCALE);
    assert.notEqual(prompt, estimate, 'the mock counts the prompt its own way');
    const seen = [...raw.matchAll(/"text":"((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string).join('');
    const c1 = await waitMoved(gw, ROUTE, c0);
    const produced = c1 - c0 - prompt;
    assert.ok(seen.length > 0, 'the frames before the cut reached the client');
    assert.equal(produced, counted(seen, 40), `charged ${c1 - c0} = reported prompt ${prompt} + counted text`);
  });

  it('messages (stream aborted by the client, SDK): charged = message_start\'s prompt + the text received so far', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { model: 'claude-client', max_tokens: 24, system: SYSTEM, messages: MESSAGES };
    const stream = claude.messages.stream(body, { headers: { 'x-mock-chunk-delay-ms': '1000', 'x-mock-chunks': '8', 'x-mock-cached-tokens': '6' } });
    let prompt = 0;
    stream.on('streamEvent', (e) => {
      if (e.type === 'message_start') prompt = e.message.usage.input_tokens + (e.message.usage.cache_read_input_tokens ?? 0) + (e.message.usage.cache_creation_input_tokens ?? 0);
    });
    await new Promise<void>((resolve) => stream.on('text', () => resolve()));
    stream.abort();
    await stream.done().catch(() => undefined);
    assert.ok(prompt > 6, 'message_start reported the prompt');
    const produced = (await waitMoved(gw, ROUTE, c0)) - c0 - prompt;
    assert.ok(produced > 0 && produced < 24, `charged the reported prompt ${prompt} + ${produced} tokens of text, not the whole answer`);
  });

  it('messages without usage (buffered and stream): charged = the prompt estimate + the counted text', async () => {
    const body = { model: 'claude-client', max_tokens: 40, system: SYSTEM, messages: MESSAGES };
    const estimate = Math.ceil(countPromptParts(anthropicPromptParts(body), 'o200k_base') * ANTHROPIC_PROMPT_SCALE);
    const c0 = await charged(gw, ROUTE);
    const msg = await claude.messages.create(body, { headers: { 'x-mock-usage': 'off' } });
    const text = msg.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
    assert.ok(text.length > 0);
    await expectCharged(gw, ROUTE, c0, estimate + counted(text, 40));
    const c1 = await charged(gw, ROUTE);
    // Raw HTTP: the SDK's stream helper itself needs the usage this stream lacks.
    const r = await fetch(`${gw.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-usage': 'off' }, body: JSON.stringify({ ...body, stream: true }) });
    const raw = await r.text();
    assert.ok(raw.includes('event: message_stop'));
    const streamed = [...raw.matchAll(/"text":"((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string).join('');
    assert.ok(streamed.length > 0);
    await expectCharged(gw, ROUTE, c1, estimate + counted(streamed, 40));
  });

  it('estimate: the reservation bounds the mock\'s prompt count on every kind of text (sluice_quota_estimate_error_tokens ≥ 0)', async (t) => {
    const prompts: [string, Anthropic.MessageCreateParamsNonStreaming][] = [
      ['short', { model: 'c', max_tokens: 24, messages: [{ role: 'user', content: 'Hi' }] }],
      ['english', { model: 'c', max_tokens: 24, system: SYSTEM, messages: [{ role: 'user', content: 'The tide is the rise and fall of sea levels caused by the gravity of the Moon and the Sun. '.repeat(20) }] }],
      ['code', { model: 'c', max_tokens: 24, messages: [{ role: 'user', content: 'function f(a: number[]): number { return a.reduce((s, x) => s + x * x, 0); }\n'.repeat(20) }] }],
      ['cjk', { model: 'c', max_tokens: 24, messages: [{ role: 'user', content: '潮汐是海平面因月球和太阳引力而周期性升降的现象。'.repeat(20) }] }],
      ['multi-turn', { model: 'c', max_tokens: 24, messages: [{ role: 'user', content: 'One?' }, { role: 'assistant', content: 'One.' }, { role: 'user', content: [{ type: 'text', text: 'Two?' }] }] }],
    ];
    const ratios: string[] = [];
    for (const [name, req] of prompts) {
      const msg = await claude.messages.create(req);
      const actual = msg.usage.input_tokens + (msg.usage.cache_read_input_tokens ?? 0) + (msg.usage.cache_creation_input_tokens ?? 0);
      const estimate = Math.ceil(countPromptParts(anthropicPromptParts(req as unknown as Record<string, unknown>), 'o200k_base') * ANTHROPIC_PROMPT_SCALE);
      assert.ok(estimate >= actual, `${name}: estimate ${estimate} < mock ${actual}`);
      ratios.push(`${name} ${estimate}/${actual}=${(estimate / actual).toFixed(2)}`);
    }
    t.diagnostic(`estimate/mock prompt: ${ratios.join('; ')}`);
    const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    const under = metrics.split('\n').find((l) => l.startsWith(`sluice_quota_estimate_error_tokens_bucket{le="-1",route="${ROUTE}"}`) || l.startsWith(`sluice_quota_estimate_error_tokens_bucket{route="${ROUTE}",le="-1"}`));
    assert.ok(under !== undefined, 'the estimate-error histogram has the route');
    assert.equal(Number(under.slice(under.lastIndexOf(' ') + 1)), 0, 'no settled request used more than it reserved');
  });

  it('count_tokens: passed through with the instance model, nothing charged', async () => {
    const c0 = await charged(gw, ROUTE);
    const r = await claude.messages.countTokens({ model: 'claude-client', system: SYSTEM, messages: MESSAGES });
    assert.ok(r.input_tokens > 0);
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1/messages/count_tokens');
    assert.equal((last.body as { model: string }).model, 'claude-inst');
    assert.equal(await charged(gw, ROUTE), c0);
  });

  it('errors: a bad request gets Anthropic\'s error shape', async () => {
    await assert.rejects(
      claude.messages.create({ model: 'claude-client', max_tokens: 0, messages: MESSAGES }),
      (e: unknown) => {
        const err = e as { status: number; error: { type: string; error: { type: string } } };
        assert.equal(err.status, 400);
        assert.equal(err.error.type, 'error');
        assert.equal(err.error.error.type, 'invalid_request_error');
        return true;
      },
    );
    const r = await fetch(`${gw.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-status': '529' }, body: JSON.stringify({ model: 'm', max_tokens: 5, messages: MESSAGES }) });
    assert.equal(r.status, 529);
    assert.equal(r.statusText, 'Overloaded', 'a code beyond node\'s table gets a reason phrase, not "Unknown"');
    assert.equal(((await r.json()) as { error: { type: string } }).error.type, 'overloaded_error');
  });

  it('openai SDK → anthropic instance (buffered): a chat.completion with usage mapped; charged = that usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await openai.chat.completions.create(
      { model: 'gpt-client', max_tokens: 30, messages: [{ role: 'system', content: SYSTEM }, ...MESSAGES] },
      { headers: { 'x-mock-cached-tokens': '6' } },
    );
    assert.equal(r.object, 'chat.completion');
    assert.ok((r.choices[0]!.message.content ?? '').length > 0);
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    assert.equal(r.usage!.prompt_tokens_details!.cached_tokens, 6);
    assert.equal(r.usage!.total_tokens, r.usage!.prompt_tokens + r.usage!.completion_tokens);
    assert.equal(mockTotal(mock) - u0, r.usage!.total_tokens);
    await expectCharged(gw, ROUTE, c0, r.usage!.total_tokens);
    const up = mock.requests().at(-1)!;
    assert.equal(up.path, '/v1/messages');
    const ub = up.body as Record<string, unknown>;
    assert.equal(ub.model, 'claude-inst');
    assert.equal(ub.system, SYSTEM);
    assert.equal(ub.max_tokens, 30);
  });

  it('openai SDK → anthropic instance (buffered) whose usage says output_tokens 0 beside text: the reported prompt stands, the text is counted', async () => {
    const c0 = await charged(gw, ROUTE);
    const r = await openai.chat.completions.create(
      { model: 'gpt-client', max_tokens: 30, messages: MESSAGES },
      { headers: { 'x-mock-lie-completion-tokens': '0' } },
    );
    const text = r.choices[0]!.message.content ?? '';
    assert.ok(text.length > 0);
    const reportedPrompt = r.usage!.prompt_tokens;
    await expectCharged(gw, ROUTE, c0, reportedPrompt + counted(text, 30));
  });

  it('openai SDK → anthropic instance (stream, include_usage): chunks, a usage chunk, charged = that usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await openai.chat.completions.create({ model: 'gpt-client', max_tokens: 30, messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
    const { text, finish, usage } = await readChatStream(stream);
    assert.ok(text.length > 0);
    assert.equal(finish, 'stop');
    assert.ok(usage !== undefined);
    assert.equal(mockTotal(mock) - u0, usage.total_tokens);
    await expectCharged(gw, ROUTE, c0, usage.total_tokens);
  });

  it('openai SDK → anthropic instance (stream, no include_usage): no usage chunk, still charged the mock\'s usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await openai.chat.completions.create({ model: 'gpt-client', max_tokens: 30, messages: MESSAGES, stream: true });
    const { text, usage } = await readChatStream(stream);
    assert.equal(usage, undefined);
    assert.ok(text.length > 0);
    await expectCharged(gw, ROUTE, c0, mockTotal(mock) - u0);
  });

  it('openai SDK → anthropic instance: an upstream error reaches the client in OpenAI\'s shape', async () => {
    await assert.rejects(
      openai.chat.completions.create({ model: 'gpt-client', messages: MESSAGES }, { headers: { 'x-mock-status': '429' } }),
      (e: unknown) => {
        const err = e as { status: number; error: { type: string } };
        assert.equal(err.status, 429);
        assert.equal(err.error.type, 'rate_limit_error');
        return true;
      },
    );
  });
});

describe('provider anthropic: fallback across providers on the OpenAI chat surface', () => {
  it('an Anthropic 529 falls back to an openai-compatible instance; charged = the answering instance\'s usage', async () => {
    const mock = await startMockUpstream({ completionTokens: 12 });
    const gw = await startGateway({
      routes: [{
        id: ROUTE, uri: '/v1/*',
        plugins: {
          'ai-proxy-multi': {
            fallback_strategy: ['http_429', 'http_5xx'],
            instances: [
              { name: 'claude', provider: 'anthropic', priority: 1, auth: { header: { 'x-api-key': 'k' } }, options: { model: 'claude-inst' }, override: { endpoint: mock.url }, forward_headers: ['x-mock-*'] },
              // Without x-mock-* forwarded, this one answers normally.
              { name: 'oa', provider: 'openai-compatible', priority: 0, auth: { header: { Authorization: 'Bearer k' } }, options: { model: 'oa-model' }, override: { endpoint: `${mock.url}/v1/chat/completions` } },
            ],
          },
          'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 },
        },
      }],
    });
    try {
      const openai = new OpenAI({ apiKey: 'x', baseURL: `${gw.url}/v1`, maxRetries: 0 });
      const c0 = await charged(gw, ROUTE);
      const r = await openai.chat.completions.create({ model: 'any', messages: MESSAGES }, { headers: { 'x-mock-status': '529' } });
      assert.equal(r.model, 'oa-model');
      const paths = mock.requests().map((q) => q.path);
      assert.deepEqual(paths.slice(-2), ['/v1/messages', '/v1/chat/completions']);
      await expectCharged(gw, ROUTE, c0, r.usage!.total_tokens);
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});

