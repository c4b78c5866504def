// The examples of the APISIX/API7 ai-rate-limiting document (seed 001), with their route and consumer
// configs as written there, driven over HTTP against mock instances. Differences from the document are
// deliberate and listed in the README (Remaining counts settled tokens, so the first answer shows
// limit − actual instead of limit − 1).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, post } from '../helpers/gateway.ts';
import { avoidWindowEdge } from '../helpers/gateway.ts';

const MATH = { messages: [{ role: 'system', content: 'You are a mathematician' }, { role: 'user', content: 'What is 1+1?' }] };
const NEWTON = { messages: [{ role: 'system', content: 'You are a mathematician' }, { role: 'user', content: 'Explain Newtons laws' }] };

function instance(name: string, provider: string, model: string, mock: MockUpstream, extra: Record<string, unknown> = {}) {
  return {
    name, provider, weight: 0,
    auth: { header: { Authorization: 'Bearer sk-test' } },
    options: { model },
    override: { endpoint: `${mock.url}/v1/chat/completions` },
    ...extra,
  };
}

describe('seed 001: APISIX ai-rate-limiting examples', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ completionTokens: 40 }); });
  after(async () => { await mock?.close(); });

  it('Rate Limit One Instance: once deepseek-instance-1 spent its 100 tokens, traffic goes to deepseek-instance-2', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      routes: [{
        id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { instances: [
            instance('deepseek-instance-1', 'deepseek', 'deepseek-chat-1', mock, { weight: 8 }),
            instance('deepseek-instance-2', 'deepseek', 'deepseek-chat-2', mock, { weight: 2 }),
          ] },
          'ai-rate-limiting': { policy: 'local', instances: [{ name: 'deepseek-instance-1', limit_strategy: 'total_tokens', limit: 100, time_window: 30 }] },
        },
      }],
    });
    try {
      const models: string[] = [];
      for (let i = 0; i < 10; i++) {
        const r = await post(`${gw.url}/anything`, MATH);
        assert.equal(r.status, 200);
        models.push(r.body.model);
      }
      const first2 = models.indexOf('deepseek-chat-1') >= 0 ? models.lastIndexOf('deepseek-chat-1') : -1;
      // Each answer costs ~60 tokens: instance 1 admits while consumed < 100, i.e. at most 2 answers.
      assert.ok(models.filter((m) => m === 'deepseek-chat-1').length <= 2, models.join(','));
      assert.ok(models.slice(first2 + 1).every((m) => m === 'deepseek-chat-2'), models.join(','));
      assert.ok(models.slice(-5).every((m) => m === 'deepseek-chat-2'));
    } finally { await gw.close(); }
  });

  it('Apply the Same Quota to All Instances: each instance gets 100 tokens, then 429 with every instance header', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      routes: [{
        id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { instances: [instance('openai-instance', 'openai', 'gpt-4', mock), instance('deepseek-instance', 'deepseek', 'deepseek-chat', mock)] },
          'ai-rate-limiting': { policy: 'local', limit: 100, time_window: 60, rejected_code: 429, limit_strategy: 'total_tokens' },
        },
      }],
    });
    try {
      const big = { ...NEWTON, max_tokens: 256 };
      const r1 = await post(`${gw.url}/anything`, big);
      assert.equal(r1.status, 200);
      assert.ok(r1.body.usage.total_tokens > 100);
      const r2 = await post(`${gw.url}/anything`, big);
      assert.equal(r2.status, 200);
      assert.notEqual(r2.body.model, r1.body.model, 'the second request goes to the other instance');
      const r3 = await post(`${gw.url}/anything`, big);
      assert.equal(r3.status, 429);
      for (const name of ['openai-instance', 'deepseek-instance']) {
        assert.equal(r3.headers.get(`x-ai-ratelimit-limit-${name}`), '100');
        assert.equal(r3.headers.get(`x-ai-ratelimit-remaining-${name}`), '0');
        assert.match(r3.headers.get(`x-ai-ratelimit-reset-${name}`) ?? '', /^\d+$/);
      }
      assert.match(r3.headers.get('retry-after') ?? '', /^[1-9]\d*$/);
      assert.equal(r3.body.error.type, 'rate_limit_error');
    } finally { await gw.close(); }
  });

  it('Configure Instance Priority and Rate Limiting: the high-priority instance until its 10 tokens are spent, then the other', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      routes: [{
        id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { fallback_strategy: ['rate_limiting'], instances: [
            instance('openai-instance', 'openai', 'gpt-4', mock, { priority: 1 }),
            instance('deepseek-instance', 'deepseek', 'deepseek-chat', mock, { priority: 0 }),
          ] },
          'ai-rate-limiting': { policy: 'local', instances: [{ name: 'openai-instance', limit: 10, time_window: 60 }], limit_strategy: 'total_tokens' },
        },
      }],
    });
    try {
      const r1 = await post(`${gw.url}/anything`, MATH);
      assert.equal(r1.body.model, 'gpt-4');
      assert.equal(r1.headers.get('x-ai-ratelimit-limit-openai-instance'), '10');
      assert.equal(r1.headers.get('x-ai-ratelimit-remaining-openai-instance'), '0');
      for (let i = 0; i < 3; i++) {
        const r = await post(`${gw.url}/anything`, MATH);
        assert.equal(r.status, 200);
        assert.equal(r.body.model, 'deepseek-chat');
      }
    } finally { await gw.close(); }
  });

  it('Load Balance and Rate Limit by Consumers: each consumer has its own instance quota', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      consumers: [
        { username: 'johndoe', plugins: { 'key-auth': { key: 'john-key' }, 'ai-rate-limiting': { policy: 'local', instances: [{ name: 'openai-instance', limit: 10, time_window: 60 }], rejected_code: 429, limit_strategy: 'total_tokens' } } },
        { username: 'janedoe', plugins: { 'key-auth': { key: 'jane-key' }, 'ai-rate-limiting': { policy: 'local', instances: [{ name: 'deepseek-instance', limit: 10, time_window: 60 }], rejected_code: 429, limit_strategy: 'total_tokens' } } },
      ],
      routes: [{
        id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
        plugins: {
          'key-auth': {},
          'ai-proxy-multi': { fallback_strategy: ['rate_limiting'], instances: [instance('openai-instance', 'openai', 'gpt-4', mock), instance('deepseek-instance', 'deepseek', 'deepseek-chat', mock)] },
        },
      }],
    });
    try {
      assert.equal((await post(`${gw.url}/anything`, MATH)).status, 401);
      const john: string[] = [];
      const jane: string[] = [];
      for (let i = 0; i < 6; i++) {
        john.push((await post(`${gw.url}/anything`, MATH, { apikey: 'john-key' })).body.model);
        jane.push((await post(`${gw.url}/anything`, MATH, { apikey: 'jane-key' })).body.model);
      }
      assert.ok(john.filter((m) => m === 'gpt-4').length <= 1, `john: ${john}`);
      assert.ok(jane.filter((m) => m === 'deepseek-chat').length <= 1, `jane: ${jane}`);
      assert.deepEqual(john.slice(-3), ['deepseek-chat', 'deepseek-chat', 'deepseek-chat']);
      assert.deepEqual(jane.slice(-3), ['gpt-4', 'gpt-4', 'gpt-4']);
    } finally { await gw.close(); }
  });

  it('Rate Limit by Rules: X-AI-1 / X-AI-2 headers, ${http_x_custom_count ?? 500}, a rule without its key skipped, none applying refused', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      routes: [{
        id: 'ai-rate-limiting-route', uri: '/anything', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { instances: [instance('openai-instance', 'openai', 'gpt-4', mock, { priority: 1 }), instance('deepseek-instance', 'deepseek', 'deepseek-chat', mock, { priority: 0 })] },
          'ai-rate-limiting': { policy: 'local', rejected_code: 429, rules: [
            { key: '${http_x_subscription_id}', count: '${http_x_custom_count ?? 500}', time_window: 60 },
            { key: '${http_x_trial_id}', count: 50, time_window: 60 },
          ] },
        },
      }],
    });
    try {
      // First rule, default count 500: Remaining falls by each answer's tokens until the quota is spent.
      let last = 500;
      let rejected = false;
      for (let i = 0; i < 20 && !rejected; i++) {
        const r = await post(`${gw.url}/anything`, MATH, { 'x-subscription-id': 'sub-123456789' });
        assert.equal(r.headers.get('x-ai-1-ratelimit-limit'), '500');
        const remaining = Number(r.headers.get('x-ai-1-ratelimit-remaining'));
        if (r.status === 429) { rejected = true; assert.equal(remaining, 0); break; }
        assert.equal(r.status, 200);
        assert.equal(remaining, Math.max(0, last - r.body.usage.total_tokens));
        assert.ok(Number(r.headers.get('x-ai-1-ratelimit-reset')) <= 60);
        last = remaining;
      }
      assert.ok(rejected, 'the 500-token quota ends in a 429');
      // A different subscription is counted apart; X-Custom-Count sets its limit.
      const r10 = await post(`${gw.url}/anything`, MATH, { 'x-subscription-id': 'sub-other', 'x-custom-count': '10' });
      assert.equal(r10.status, 200);
      assert.equal(r10.headers.get('x-ai-1-ratelimit-limit'), '10');
      const r10b = await post(`${gw.url}/anything`, MATH, { 'x-subscription-id': 'sub-other', 'x-custom-count': '10' });
      assert.equal(r10b.status, 429);
      // Second rule only: the first rule is skipped because its key is absent.
      const t1 = await post(`${gw.url}/anything`, MATH, { 'x-trial-id': 'trial-123456789' });
      assert.equal(t1.status, 200);
      assert.equal(t1.headers.get('x-ai-2-ratelimit-limit'), '50');
      assert.equal(t1.headers.get('x-ai-1-ratelimit-limit'), null);
      // No rule applies: refused as APISIX does (issue 8 item 5; before, it passed unmetered), naming the variables.
      const none = await post(`${gw.url}/anything`, MATH);
      assert.equal(none.status, 400);
      assert.equal(none.body.error.code, 'SLC_RULE_KEY_MISSING');
      assert.match(none.body.error.message, /"http_x_subscription_id" is missing.*"http_x_trial_id" is missing/);
    } finally { await gw.close(); }
  });

  it('charges streamed responses, also through the openai SDK, and Remaining never increases', async () => {
    await avoidWindowEdge(30);
    const gw = await startGateway({
      routes: [{
        id: 'stream', uri: '/v1/chat/completions', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { instances: [instance('openai-instance', 'openai', 'gpt-4', mock)] },
          'ai-rate-limiting': { limit: 1000, time_window: 60 },
        },
      }],
    });
    try {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const seen: number[] = [];
      for (let i = 0; i < 3; i++) {
        const { data, response } = await client.chat.completions.create({ model: 'x', messages: MATH.messages as never, stream: true, max_tokens: 20 }).withResponse();
        for await (const _ of data) { /* drain */ }
        seen.push(Number(response.headers.get('x-ai-ratelimit-remaining-openai-instance')));
      }
      const r = await post(`${gw.url}/v1/chat/completions`, MATH);
      const after = Number(r.headers.get('x-ai-ratelimit-remaining-openai-instance'));
      seen.push(after);
      for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! < seen[i - 1]!, `remaining must fall: ${seen}`);
      // 3 streams of 20 completion tokens each plus their prompts were charged before the last answer.
      assert.ok(1000 - after >= 3 * 20 + r.body.usage.total_tokens, `charged ${1000 - after}`);
    } finally { await gw.close(); }
  });
});
