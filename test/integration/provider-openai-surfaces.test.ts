// The OpenAI Responses and Embeddings surfaces through the real gateway and the mock, with the real openai SDK:
// responses.create (buffered, streamed, usage missing, cut by the upstream, aborted by the client) and
// embeddings.create (string, strings, token ids, usage missing), on an openai-compatible and an azure-openai
// instance. After each call the route's charged total (sluice_quota_tokens_charged_total) equals the usage the
// mock reported, or the prompt count plus the counted text when there was none. litellm#27738: a spent quota
// rejects both surfaces with 429 and the quota headers (neither bypasses token limits).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { charged, expectCharged, mockTotal, waitMoved } from '../helpers/metrics.ts';
import { readAll } from '../helpers/sse.ts';
import { responsesPromptParts } from '../../src/providers/openai/responses.ts';
import { embeddingsPromptParts } from '../../src/providers/openai/embeddings.ts';
import { countPromptParts, countText, type PromptParts } from '../../src/tokens/count.ts';

function config(route: string, instance: Record<string, unknown>, limit = 100_000_000): Record<string, unknown> {
  return {
    routes: [{
      id: route, uri: '/v1/*',
      plugins: { 'ai-proxy-multi': { instances: [instance] }, 'ai-rate-limiting': { limit, time_window: 3600 } },
    }],
  };
}

const MODEL = 'gpt-4o';
const INSTRUCTIONS = 'You are a concise physicist.';
const INPUT = 'Why is the sky blue? Answer briefly.';

/** The gateway's prompt count of a body: the same parts, the same tokenizer. */
function promptOf(parts: PromptParts, enc: 'o200k_base' | 'cl100k_base'): number {
  return countPromptParts(parts, enc);
}

/** Output-text deltas in raw SSE bytes, complete events only (a cut last event is not counted: it never parsed). */
function deltasIn(raw: string): string {
  let text = '';
  const events = raw.split('\n\n');
  events.pop();
  for (const e of events) {
    const line = e.split('\n').find((l) => l.startsWith('data: '));
    if (line === undefined) continue;
    const ev = JSON.parse(line.slice(6)) as { type: string; delta?: string };
    if (ev.type === 'response.output_text.delta') text += ev.delta ?? '';
  }
  return text;
}

describe('openai responses and embeddings through the gateway (openai-compatible instance)', () => {
  const ROUTE = 'oai';
  let mock: MockUpstream;
  let gw: TestGateway;
  let client: OpenAI;

  before(async () => {
    mock = await startMockUpstream({ completionTokens: 24, chunks: 6 });
    gw = await startGateway(config(ROUTE, mockInstance('inst', mock.url)));
    client = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('responses (buffered): the SDK gets the response; usage with cached and reasoning kinds; charged = usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await client.responses.create(
      { model: MODEL, instructions: INSTRUCTIONS, input: INPUT, max_output_tokens: 40 },
      { headers: { 'x-mock-cached-tokens': '4', 'x-mock-reasoning-tokens': '6' } },
    );
    assert.equal(r.object, 'response');
    assert.ok(r.output_text.length > 0);
    const u = r.usage!;
    assert.equal(u.input_tokens_details.cached_tokens, 4);
    assert.equal(u.output_tokens_details.reasoning_tokens, 6);
    assert.equal(mockTotal(mock) - u0, u.total_tokens);
    await expectCharged(gw, ROUTE, c0, u.total_tokens);
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1/responses');
    assert.equal((last.body as { model: string }).model, 'inst-model');
    assert.equal(last.headers.authorization, 'Bearer sk-inst', 'the client key never goes upstream');
  });

  it('responses (stream): typed events pass through to the SDK; charged = the usage of response.completed', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await client.responses.create({ model: MODEL, input: INPUT, max_output_tokens: 30, stream: true }, { headers: { 'x-mock-cached-tokens': '2' } });
    let text = '';
    let usage: OpenAI.Responses.ResponseUsage | undefined;
    const types = new Set<string>();
    for await (const ev of stream) {
      types.add(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') usage = ev.response.usage ?? undefined;
    }
    assert.ok(text.length > 0);
    assert.ok(types.has('response.created') && types.has('response.output_text.done'));
    assert.ok(usage !== undefined);
    assert.equal(usage.input_tokens_details.cached_tokens, 2);
    assert.equal(mockTotal(mock) - u0, usage.total_tokens);
    await expectCharged(gw, ROUTE, c0, usage.total_tokens);
  });

  it('responses (stream ended at response.incomplete by max_output_tokens): charged = its usage', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const stream = await client.responses.create({ model: MODEL, input: INPUT, max_output_tokens: 5, stream: true });
    let usage: OpenAI.Responses.ResponseUsage | undefined;
    let last = '';
    for await (const ev of stream) {
      last = ev.type;
      if (ev.type === 'response.incomplete') usage = ev.response.usage ?? undefined;
    }
    assert.equal(last, 'response.incomplete');
    assert.ok(usage !== undefined);
    assert.equal(usage.output_tokens, 5);
    assert.equal(mockTotal(mock) - u0, usage.total_tokens);
    await expectCharged(gw, ROUTE, c0, usage.total_tokens);
  });

  it('responses without usage (buffered and stream): charged = the prompt count + the counted output text', async () => {
    const body = { model: MODEL, instructions: INSTRUCTIONS, input: INPUT, max_output_tokens: 30 };
    const prompt = promptOf(responsesPromptParts(body), 'o200k_base');
    let c0 = await charged(gw, ROUTE);
    const r = await client.responses.create(body, { headers: { 'x-mock-usage': 'off' } });
    assert.equal(r.usage, undefined);
    await expectCharged(gw, ROUTE, c0, prompt + countText(r.output_text, 'o200k_base'));

    c0 = await charged(gw, ROUTE);
    const stream = await client.responses.create({ ...body, stream: true }, { headers: { 'x-mock-usage': 'off' } });
    let text = '';
    for await (const ev of stream) if (ev.type === 'response.output_text.delta') text += ev.delta;
    assert.ok(text.length > 0);
    await expectCharged(gw, ROUTE, c0, prompt + countText(text, 'o200k_base'));
  });

  it('responses (stream cut by the upstream): charged = the prompt count + the counted text received', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { model: MODEL, input: INPUT, max_output_tokens: 40, stream: true };
    const r = await fetch(`${gw.url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-mock-disconnect-after': '3' },
      body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    const raw = await readAll(r);
    const seen = deltasIn(raw);
    assert.ok(seen.length > 0, 'the deltas before the cut reached the client');
    assert.ok(!raw.includes('response.completed'));
    const c1 = await waitMoved(gw, ROUTE, c0);
    assert.equal(c1 - c0, promptOf(responsesPromptParts(body), 'o200k_base') + countText(seen, 'o200k_base'));
  });

  it('responses (stream aborted by the client, SDK): charged = the prompt + the text so far, not the reservation', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { model: MODEL, input: INPUT, max_output_tokens: 24, stream: true as const };
    const stream = await client.responses.create(body, { headers: { 'x-mock-chunk-delay-ms': '1000', 'x-mock-chunks': '8' } });
    for await (const ev of stream) {
      if (ev.type === 'response.output_text.delta') break;
    }
    const prompt = promptOf(responsesPromptParts(body), 'o200k_base');
    const produced = (await waitMoved(gw, ROUTE, c0)) - c0 - prompt;
    assert.ok(produced > 0 && produced < 24, `charged the prompt ${prompt} + ${produced} tokens of text, not the whole answer`);
  });

  it('embeddings (string): charged = usage.prompt_tokens = the mock\'s; the SDK decodes its base64 vectors', async () => {
    const c0 = await charged(gw, ROUTE);
    const u0 = mockTotal(mock);
    const r = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'The quick brown fox jumps over the lazy dog.' });
    assert.equal(r.data.length, 1);
    assert.ok(r.data[0]!.embedding.length > 0);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens);
    assert.equal(mockTotal(mock) - u0, r.usage.prompt_tokens);
    await expectCharged(gw, ROUTE, c0, r.usage.prompt_tokens);
    const last = mock.requests().at(-1)!;
    assert.equal(last.path, '/v1/embeddings');
    assert.equal((last.body as { model: string }).model, 'inst-model');
  });

  it('embeddings (array of strings, token-id arrays, float format): charged = usage; every input counted', async () => {
    const inputs = ['first document about tides', 'second document, a little longer, about the Moon', '三つ目の文書'];
    let c0 = await charged(gw, ROUTE);
    let u0 = mockTotal(mock);
    const r = await client.embeddings.create({ model: 'text-embedding-3-small', input: inputs, encoding_format: 'float', dimensions: 16 });
    assert.equal(r.data.length, 3);
    assert.equal(r.data[2]!.embedding.length, 16);
    assert.equal(mockTotal(mock) - u0, r.usage.prompt_tokens);
    await expectCharged(gw, ROUTE, c0, r.usage.prompt_tokens);

    c0 = await charged(gw, ROUTE);
    u0 = mockTotal(mock);
    const ids = await client.embeddings.create({ model: 'text-embedding-3-small', input: [[1, 2, 3, 4], [5, 6]] });
    assert.equal(ids.data.length, 2);
    assert.equal(mockTotal(mock) - u0, ids.usage.prompt_tokens);
    await expectCharged(gw, ROUTE, c0, ids.usage.prompt_tokens);
  });

  it('embeddings without usage: charged = the prompt count of every input', async () => {
    const input = ['alpha beta gamma', 'delta epsilon'];
    const c0 = await charged(gw, ROUTE);
    const r = await client.embeddings.create({ model: 'text-embedding-3-small', input }, { headers: { 'x-mock-usage': 'off' } });
    assert.equal(r.data.length, 2);
    const parts = embeddingsPromptParts(input);
    assert.ok(typeof parts !== 'string');
    await expectCharged(gw, ROUTE, c0, promptOf(parts, 'cl100k_base'));
  });

  it('embeddings whose answer breaks off: 502, charged the prompt alone (the vector bytes are no completion)', async () => {
    const input = Array.from({ length: 50 }, (_, i) => `sentence number ${i} about the quick brown fox`);
    const c0 = await charged(gw, ROUTE);
    const r = await fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-disconnect-after': '3000' },
      body: JSON.stringify({ model: 'text-embedding-3-small', input, encoding_format: 'float', dimensions: 64 }),
    });
    assert.equal(r.status, 502);
    await r.text();
    const parts = embeddingsPromptParts(input);
    assert.ok(typeof parts !== 'string');
    await expectCharged(gw, ROUTE, c0, promptOf(parts, 'cl100k_base'));
  });

  it('responses (stream) reporting output_tokens 0 with a total that holds the text: charged that total once, not the text on top', async () => {
    const c0 = await charged(gw, ROUTE);
    const body = { model: MODEL, input: INPUT, max_output_tokens: 16, stream: true };
    const r = await fetch(`${gw.url}/v1/responses`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-lie-completion-tokens': '0' }, body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    const raw = await readAll(r);
    const total = Number([...raw.matchAll(/"total_tokens":(\d+)/g)].at(-1)?.[1]);
    const text = countText(deltasIn(raw), 'o200k_base');
    assert.ok(text > 0 && total > text, `total ${total}, text ${text}`);
    const c1 = await waitMoved(gw, ROUTE, c0);
    assert.equal(c1 - c0, total);
  });

  it('large bodies (prepared on a worker thread): charged = usage on both surfaces', async () => {
    let c0 = await charged(gw, ROUTE);
    const long = 'Rayleigh scattering makes shorter wavelengths scatter more strongly than longer ones. '.repeat(300);
    const r = await client.responses.create({ model: MODEL, input: [{ role: 'user', content: [{ type: 'input_text', text: long }] }], max_output_tokens: 20 });
    assert.ok(r.usage!.input_tokens > 1000);
    assert.ok(promptOf(responsesPromptParts({ input: [{ role: 'user', content: [{ type: 'input_text', text: long }] }] }), 'o200k_base') >= r.usage!.input_tokens, 'the reservation bounds the prompt');
    await expectCharged(gw, ROUTE, c0, r.usage!.total_tokens);

    c0 = await charged(gw, ROUTE);
    const e = await client.embeddings.create({ model: 'text-embedding-3-small', input: Array.from({ length: 200 }, (_, i) => `document ${i}: ${long.slice(0, 120)}`) });
    assert.equal(e.data.length, 200);
    await expectCharged(gw, ROUTE, c0, e.usage.prompt_tokens);
  });

  it('bad requests get a 400 with the param at fault; nothing reaches the upstream, nothing is charged', async () => {
    const c0 = await charged(gw, ROUTE);
    const n0 = mock.stats().requests;
    await assert.rejects(client.responses.create({ model: MODEL, input: INPUT, max_output_tokens: 0 }), (e: unknown) => {
      const err = e as { status: number; param: string | null; type: string };
      assert.equal(err.status, 400);
      assert.equal(err.param, 'max_output_tokens');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    });
    await assert.rejects(client.responses.create({ model: MODEL, input: INPUT, background: true }), (e: unknown) => (e as { param: string }).param === 'background');
    await assert.rejects(client.embeddings.create({ model: 'text-embedding-3-small', input: '' }), (e: unknown) => {
      const err = e as { status: number; param: string | null };
      return err.status === 400 && err.param === 'input';
    });
    await assert.rejects(client.embeddings.create({ model: 'e', input: Array.from({ length: 2049 }, () => 'x') }), (e: unknown) => (e as { status: number }).status === 400);
    assert.equal(mock.stats().requests, n0);
    assert.equal(await charged(gw, ROUTE), c0);
  });
});

describe('openai responses and embeddings through an azure-openai instance', () => {
  const ROUTE = 'az';
  let mock: MockUpstream;
  let gw: TestGateway;
  let client: OpenAI;

  before(async () => {
    mock = await startMockUpstream({ completionTokens: 12, chunks: 4 });
    gw = await startGateway(config(ROUTE, {
      name: 'azure', provider: 'azure-openai',
      auth: { header: { 'api-key': 'az-key' } },
      override: { endpoint: `${mock.url}/openai/deployments/dep1/chat/completions?api-version=2024-10-21` },
      forward_headers: ['x-mock-*'],
    }));
    client = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('responses go to /openai/responses?api-version, embeddings to the deployment; charged = usage', async () => {
    let c0 = await charged(gw, ROUTE);
    const r = await client.responses.create({ model: 'gpt-4o', input: INPUT, max_output_tokens: 20 }, { headers: { 'x-mock-reasoning-tokens': '3' } });
    assert.equal(r.usage!.output_tokens_details.reasoning_tokens, 3);
    await expectCharged(gw, ROUTE, c0, r.usage!.total_tokens);
    let last = mock.requests().at(-1)!;
    assert.equal(last.path, '/openai/responses');
    assert.equal(last.headers['api-key'], 'az-key');

    c0 = await charged(gw, ROUTE);
    const stream = await client.responses.create({ model: 'gpt-4o', input: INPUT, stream: true });
    let total = 0;
    for await (const ev of stream) if (ev.type === 'response.completed') total = ev.response.usage!.total_tokens;
    assert.ok(total > 0);
    await expectCharged(gw, ROUTE, c0, total);

    c0 = await charged(gw, ROUTE);
    const e = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['one', 'two three'] });
    await expectCharged(gw, ROUTE, c0, e.usage.prompt_tokens);
    last = mock.requests().at(-1)!;
    assert.equal(last.path, '/openai/deployments/dep1/embeddings');
  });
});

describe('a spent quota rejects /v1/responses and /v1/embeddings (litellm#27738)', () => {
  const ROUTE = 'spent';
  let mock: MockUpstream;
  let gw: TestGateway;
  let client: OpenAI;

  before(async () => {
    mock = await startMockUpstream({ completionTokens: 16, chunks: 2 });
    gw = await startGateway(config(ROUTE, mockInstance('inst', mock.url), 200));
    client = new OpenAI({ apiKey: 'sk-client', baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  function assertQuotaHeaders(h: Headers): void {
    assert.equal(h.get('x-ai-ratelimit-limit-inst'), '200');
    assert.ok(Number(h.get('x-ai-ratelimit-remaining-inst')) < 200);
    assert.ok(h.get('x-ai-ratelimit-reset-inst') !== null);
  }

  it('both surfaces get 429 with the quota headers once the tokens are spent; nothing more is charged', async () => {
    let rejected: { status: number; headers: Headers } | undefined;
    for (let i = 0; i < 30 && rejected === undefined; i++) {
      try {
        await client.responses.create({ model: MODEL, input: INPUT, max_output_tokens: 16 });
      } catch (e) {
        rejected = e as { status: number; headers: Headers };
      }
    }
    assert.ok(rejected !== undefined, 'the quota ran out');
    assert.equal(rejected.status, 429);
    assertQuotaHeaders(rejected.headers);
    const remaining = Number(rejected.headers.get('x-ai-ratelimit-remaining-inst'));
    const spent = await charged(gw, ROUTE);
    // Admission lets at most one request cross the limit (docs/quota-design.md); the headers say what is left.
    assert.ok(spent >= 200 - remaining && spent <= 200 + 40, `spent ${spent}, remaining ${remaining}`);
    const n0 = mock.stats().requests;

    // Streams are refused the same way, before any upstream call.
    const s = await fetch(`${gw.url}/v1/responses`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, input: INPUT, max_output_tokens: 16, stream: true }) });
    assert.equal(s.status, 429);
    assertQuotaHeaders(s.headers);
    const body = (await s.json()) as { error: { type: string; code: string } };
    assert.equal(body.error.type, 'rate_limit_error');

    // An embeddings prompt larger than what is left: 429 too (embeddings reserve their prompt).
    const input = 'Embeddings are metered like any other call: every input token counts against the same quota. '.repeat(4);
    await assert.rejects(client.embeddings.create({ model: 'text-embedding-3-small', input }), (e: unknown) => {
      const err = e as { status: number; headers: Headers };
      assert.equal(err.status, 429);
      assertQuotaHeaders(err.headers);
      return true;
    });
    assert.equal(mock.stats().requests, n0, 'no rejected call reached the upstream');
    assert.equal(await charged(gw, ROUTE), spent, 'rejected calls charge nothing');
  });
});
