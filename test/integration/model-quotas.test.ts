// Token kinds and model-aware quotas through a real gateway, the mock upstream and the real `openai` SDK:
// cached reads charged at a tenth of their weight (exactly), reasoning tokens inside completion, the
// X-Sluice-Usage header, sluice_tokens_total kinds, `${model}` keys, model_limits, and fallback to another
// model when one model's quota is spent.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, avoidWindowEdge, type TestGateway } from '../helpers/gateway.ts';

const MESSAGES = [
  { role: 'system' as const, content: 'You are a careful assistant who answers with long, well-structured explanations.' },
  { role: 'user' as const, content: 'Explain in detail how ocean tides arise from the gravity of the moon and the sun, and why there are two a day.' },
];
const CACHED_EXPR = 'prompt_tokens - cached_prompt_tokens + cached_prompt_tokens * 0.1 + completion_tokens';

async function metricSum(gw: TestGateway, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Metrics are updated just before the answer goes out; poll with a generous deadline rather than assume. */
async function expectMetric(gw: TestGateway, name: string, labels: Record<string, string>, want: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  let got = NaN;
  while (Date.now() < deadline) {
    got = await metricSum(gw, name, labels);
    if (got === want) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(got, want, `${name}${JSON.stringify(labels)}`);
}

function parseUsageHeader(v: string | null): Record<string, number | true> {
  assert.ok(v !== null, 'X-Sluice-Usage present');
  const out: Record<string, number | true> = {};
  for (const member of v.split(',')) {
    const [k, val] = member.trim().split('=');
    out[k!] = val === undefined ? true : Number(val);
  }
  return out;
}

function client(gw: TestGateway, apiKey = 'anything'): OpenAI {
  return new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 });
}

describe('token kinds and model-aware quotas (openai SDK, mock upstream)', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ completionTokens: 12, chunks: 4 }); });
  after(async () => { await mock?.close(); });

  it('cached reads at a tenth of the weight are charged exactly, buffered and streamed; X-Sluice-Usage and metrics report the kinds', async () => {
    await avoidWindowEdge(60);
    const limit = 1_000_000;
    const gw = await startGateway({ routes: [{
      id: 'cached', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': { instances: [mockInstance('inst', mock.url, { options: { model: 'gpt-4o' } })] },
        'ai-rate-limiting': { limit, time_window: 60, limit_strategy: 'expression', cost_expr: CACHED_EXPR },
      },
    }] });
    try {
      const sdk = client(gw);
      const { data, response } = await sdk.chat.completions
        .create({ model: 'gpt-4o', messages: MESSAGES, max_tokens: 9 }, { headers: { 'x-mock-cached-tokens': '20', 'x-mock-reasoning-tokens': '4' } })
        .withResponse();
      const u = data.usage!;
      assert.equal(u.prompt_tokens_details?.cached_tokens, 20);
      assert.equal(u.completion_tokens, 9, 'reasoning is inside the 9 completion tokens');
      assert.equal(u.completion_tokens_details?.reasoning_tokens, 4);
      const cost = Math.ceil(u.prompt_tokens - 20 + 2 + u.completion_tokens);
      // A buffered answer is settled before its headers: Remaining already includes its own charge.
      assert.equal(Number(response.headers.get('x-ai-ratelimit-remaining-inst')), limit - cost);
      assert.deepEqual(parseUsageHeader(response.headers.get('x-sluice-usage')), {
        prompt: u.prompt_tokens, completion: 9, total: u.prompt_tokens + 9, cached_prompt: 20, cache_write: 0, reasoning: 4,
      });
      await expectMetric(gw, 'sluice_quota_tokens_charged_total', { route: 'cached' }, cost);

      // Streamed: no X-Sluice-Usage (headers leave before the usage); the charge and metrics still follow the usage.
      const stream = await sdk.chat.completions
        .create({ model: 'gpt-4o', messages: MESSAGES, max_tokens: 7, stream: true, stream_options: { include_usage: true } }, { headers: { 'x-mock-cached-tokens': '30' } })
        .withResponse();
      assert.equal(stream.response.headers.get('x-sluice-usage'), null);
      let su: OpenAI.CompletionUsage | undefined;
      for await (const chunk of stream.data) if (chunk.usage) su = chunk.usage;
      assert.equal(su?.prompt_tokens_details?.cached_tokens, 30);
      const streamCost = Math.ceil(su!.prompt_tokens - 30 + 3 + su!.completion_tokens);
      await expectMetric(gw, 'sluice_quota_tokens_charged_total', { route: 'cached' }, cost + streamCost);

      await expectMetric(gw, 'sluice_tokens_total', { route: 'cached', kind: 'cached_prompt' }, 50);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'cached', kind: 'reasoning' }, 4);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'cached', kind: 'cache_write' }, 0);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'cached', kind: 'prompt' }, u.prompt_tokens + su!.prompt_tokens);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'cached', kind: 'completion' }, 9 + su!.completion_tokens);
    } finally { await gw.close(); }
  });

  it('a total above prompt + completion is charged whole and sluice_tokens_total shows the excess as kind other', async () => {
    // Embeddings keep a reported total above their parts (some servers count extra tokens in it).
    const upstream = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const body = JSON.stringify({ object: 'list', model: 'e', data: [{ object: 'embedding', index: 0, embedding: [0.5, 0.25] }], usage: { prompt_tokens: 8, total_tokens: 20 } });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [{
      id: 'other', uri: '/v1/*',
      plugins: {
        'ai-proxy-multi': { instances: [mockInstance('inst', url)] },
        'ai-rate-limiting': { limit: 1000, time_window: 60 },
      },
    }] });
    try {
      const r = await client(gw).embeddings.create({ model: 'e', input: 'hello there' });
      assert.equal(r.usage.total_tokens, 20);
      await expectMetric(gw, 'sluice_quota_tokens_charged_total', { route: 'other' }, 20);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'other', kind: 'prompt' }, 8);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'other', kind: 'completion' }, 0);
      await expectMetric(gw, 'sluice_tokens_total', { route: 'other', kind: 'other' }, 12);
    } finally {
      await gw.close();
      upstream.closeAllConnections();
      await new Promise<void>((r) => upstream.close(() => r()));
    }
  });

  it('reasoning stays inside completion: completion_tokens charges it once, reasoning_tokens charges only it', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [{
      id: 'reason', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': { instances: [mockInstance('inst', mock.url, { options: { model: 'o3-mini' } })] },
        'ai-rate-limiting': { limit: 10_000, time_window: 60, limit_strategy: 'completion_tokens' },
        'ai-token-ratelimit': { rule_name: 'think', global_threshold: { token_per_minute: 10_000 }, limit_strategy: 'reasoning_tokens' },
      },
    }] });
    try {
      const { data, response } = await client(gw).chat.completions
        .create({ model: 'o3-mini', messages: MESSAGES, max_tokens: 30 }, { headers: { 'x-mock-reasoning-tokens': '25' } })
        .withResponse();
      assert.equal(data.usage!.completion_tokens, 30);
      assert.equal(data.usage!.completion_tokens_details?.reasoning_tokens, 25);
      assert.equal(data.usage!.total_tokens, data.usage!.prompt_tokens + 30, 'total counts reasoning once');
      assert.equal(Number(response.headers.get('x-ai-ratelimit-remaining-inst')), 10_000 - 30);
      assert.equal(Number(response.headers.get('x-ai-think-ratelimit-remaining')), 10_000 - 25);
      await expectMetric(gw, 'sluice_quota_tokens_charged_total', { route: 'reason', rule: 'think' }, 25);
      await expectMetric(gw, 'sluice_quota_tokens_charged_total', { route: 'reason', rule: 'route' }, 30);
    } finally { await gw.close(); }
  });

  it('${model} in a rule key gives each requested model its own counter', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({
      consumers: [{ username: 'alice', plugins: { 'key-auth': { key: 'alice-key-0123' } } }],
      routes: [{
        id: 'bymodel', uri: '/v1/chat/completions',
        plugins: {
          'key-auth': {},
          // No options.model: the instance sends the requested model.
          'ai-proxy-multi': { instances: [mockInstance('inst', mock.url, { options: {} })] },
          'ai-rate-limiting': { rules: [{ key: '${consumer_name}:${model}', count: 1, time_window: 60 }] },
        },
      }],
    });
    try {
      const sdk = client(gw, 'alice-key-0123');
      const ask = (model: string) => sdk.chat.completions.create({ model, messages: MESSAGES, max_tokens: 3 }).withResponse();
      const first = await ask('model-one');
      assert.equal(first.data.model, 'model-one');
      // model-one's counter is spent (limit 1): its next request is refused; model-two has a counter of its own.
      await assert.rejects(ask('model-one'), (e: unknown) => e instanceof OpenAI.APIError && e.status === 429);
      const other = await ask('model-two');
      assert.equal(other.data.model, 'model-two');
      assert.equal(Number(other.response.headers.get('x-ai-1-ratelimit-remaining')), 0);
      await expectMetric(gw, 'sluice_quota_rejected_total', { route: 'bymodel', rule: 'rule-1' }, 1);
    } finally { await gw.close(); }
  });

  it('model_limits: each model has its own counter; a spent model falls back to the next instance (another model), then 429', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [{
      id: 'permodel', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': {
          fallback_strategy: ['rate_limiting'],
          instances: [
            mockInstance('big', mock.url, { priority: 2, options: { model: 'gpt-4o' } }),
            mockInstance('small', mock.url, { priority: 1, options: { model: 'gpt-4o-mini' } }),
          ],
        },
        'ai-rate-limiting': { model_limits: [{ model: 'gpt-4o*', limit: 1, time_window: 60 }] },
      },
    }] });
    try {
      const sdk = client(gw);
      const ask = () => sdk.chat.completions.create({ model: 'client-choice', messages: MESSAGES, max_tokens: 3 }).withResponse();
      const one = await ask();
      assert.equal(one.data.model, 'gpt-4o', 'the higher-priority instance first');
      assert.ok(one.response.headers.get('x-ai-model-ratelimit-limit') === '1');
      const two = await ask();
      assert.equal(two.data.model, 'gpt-4o-mini', 'gpt-4o spent: fallback to the other model');
      await expectMetric(gw, 'sluice_fallbacks_total', { route: 'permodel', from_instance: 'big', reason: 'rate_limiting' }, 1);
      // Both models spent: refused, with the model quota's headers.
      await assert.rejects(ask(), (e: unknown) => e instanceof OpenAI.APIError && e.status === 429 && e.headers?.get('x-ai-model-ratelimit-remaining') === '0');
      await expectMetric(gw, 'sluice_quota_rejected_total', { route: 'permodel', rule: 'model-1' }, 2);
    } finally { await gw.close(); }
  });

  it('a quota keyed by ${upstream_model} is instance-scoped: spent on one model, the request moves to the next', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({
      consumers: [{ username: 'bob', plugins: { 'key-auth': { key: 'bob-key-012345' } } }],
      routes: [{
        id: 'upmodel', uri: '/v1/chat/completions',
        plugins: {
          'key-auth': {},
          'ai-proxy-multi': {
            fallback_strategy: ['rate_limiting'],
            instances: [
              mockInstance('primary', mock.url, { priority: 2, options: { model: 'model-a' } }),
              // No options.model: ${upstream_model} is the requested model.
              mockInstance('secondary', mock.url, { priority: 1, options: {} }),
            ],
          },
          'ai-rate-limiting': { rules: [{ key: '${consumer_name}/${upstream_model}', count: 1, time_window: 60 }] },
        },
      }],
    });
    try {
      const sdk = client(gw, 'bob-key-012345');
      const ask = (model: string) => sdk.chat.completions.create({ model, messages: MESSAGES, max_tokens: 3 });
      assert.equal((await ask('requested')).model, 'model-a');
      assert.equal((await ask('requested')).model, 'requested', 'model-a spent for bob: the secondary sends the requested model');
      await assert.rejects(ask('requested'), (e: unknown) => e instanceof OpenAI.APIError && e.status === 429);
      // Another requested model is another counter on the secondary.
      assert.equal((await ask('another')).model, 'another');
    } finally { await gw.close(); }
  });

  it('without rate_limiting fallback a spent model quota is a 429; a request naming no model fails closed on model_limits', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [{
      id: 'strict', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': { instances: [mockInstance('only', mock.url, { options: {} })] },
        'ai-rate-limiting': { model_limits: [{ model: '*', limit: 1, time_window: 60 }], missing_key_code: 403 },
      },
    }] });
    try {
      const sdk = client(gw);
      await sdk.chat.completions.create({ model: 'm1', messages: MESSAGES, max_tokens: 3 });
      await assert.rejects(sdk.chat.completions.create({ model: 'm1', messages: MESSAGES, max_tokens: 3 }), (e: unknown) => e instanceof OpenAI.APIError && e.status === 429);
      // No model in the body, none on the instance: the model quota cannot apply, so the request is refused.
      const r = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: MESSAGES, max_tokens: 3 }),
      });
      const body = await r.json() as { error: { code: string; message: string } };
      assert.equal(r.status, 403);
      assert.equal(body.error.code, 'SLC_RULE_KEY_MISSING');
      assert.match(body.error.message, /model_limits/);
    } finally { await gw.close(); }
  });

  it('a 429 whose wait is longer than a minute tells SDKs not to retry (the default maxRetries raises at once, no hour-long sleep); shorter ones keep the retry', { timeout: 60_000 }, async () => {
    for (const [window, told] of [[3600, true], [60, false]] as const) {
      const gw = await startGateway({ routes: [{
        id: 'wait', uri: '/v1/chat/completions',
        plugins: { 'ai-proxy-multi': { instances: [mockInstance('inst', mock.url)] }, 'ai-rate-limiting': { limit: 1, time_window: window } },
      }] });
      try {
        const first = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: MESSAGES, max_tokens: 3 }) });
        assert.equal(first.status, 200);
        const raw = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: MESSAGES, max_tokens: 3 }) });
        assert.equal(raw.status, 429);
        assert.equal(raw.headers.get('x-should-retry'), told ? 'false' : null, `window ${window}: Retry-After ${raw.headers.get('retry-after')}`);
        if (told) {
          // The SDK's defaults (maxRetries 2): RateLimitError, not a sleep of Retry-After seconds.
          const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'anything' });
          await assert.rejects(sdk.chat.completions.create({ model: 'm', messages: MESSAGES, max_tokens: 3 }), (e: unknown) => e instanceof OpenAI.RateLimitError);
        }
      } finally { await gw.close(); }
    }
  });

  it('X-Sluice-Usage is on every buffered answer of a route with quotas, one that no quota charged too', async () => {
    const gw = await startGateway({ routes: [{
      id: 'partial', uri: '/v1/chat/completions',
      plugins: {
        // Only instance "a" has a quota; "b" serves once "a" is spent. The rule key is skipped when missing.
        'ai-proxy-multi': { instances: [mockInstance('a', mock.url, { priority: 1 }), mockInstance('b', mock.url, { priority: 0 })] },
        'ai-rate-limiting': {
          instances: [{ name: 'a', limit: 1, time_window: 60 }],
          rules: [{ key: '${http_x_team}', count: 1_000_000, time_window: 60 }], on_missing_key: 'skip',
        },
      },
    }] });
    try {
      const sdk = client(gw);
      for (let i = 0; i < 3; i++) {
        const { data, response } = await sdk.chat.completions.create({ model: 'gpt-4o', messages: MESSAGES, max_tokens: 5 }).withResponse();
        const u = data.usage!;
        assert.deepEqual(parseUsageHeader(response.headers.get('x-sluice-usage')), {
          prompt: u.prompt_tokens, completion: u.completion_tokens, total: u.total_tokens, cached_prompt: 0, cache_write: 0, reasoning: 0,
        }, `request ${i}`);
      }
    } finally { await gw.close(); }
  });
});
