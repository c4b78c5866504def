// APISIX `ai-proxy` / `ai-proxy-multi` on consumers (issue 8): a consumer authenticated on a route is served by
// its own upstreams and credentials (the consumer's plugin config overrides the route's same-named plugin, as
// APISIX merges consumer plugins over route plugins), and its quota is counted apart from other consumers'.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig, ConfigError } from '../../src/config/validate.ts';
import { configWarnings } from '../../src/config/warnings.ts';
import { startGateway, post, avoidWindowEdge, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { startFixedUsageUpstream, type FixedUsageUpstream } from '../helpers/fixed-usage-upstream.ts';

const ASK = { model: 'client-model', messages: [{ role: 'user', content: 'What is 1+1?' }], max_tokens: 16 };

describe('APISIX consumer ai-proxy compatibility', () => {
  let routeMock: MockUpstream;
  let aliceMock: MockUpstream;
  let routeUp: FixedUsageUpstream;
  let aliceUp: FixedUsageUpstream;
  const gateways: TestGateway[] = [];
  before(async () => {
    routeMock = await startMockUpstream({ name: 'route-upstream' });
    aliceMock = await startMockUpstream({ name: 'alice-upstream' });
    routeUp = await startFixedUsageUpstream({ prompt_tokens: 20, completion_tokens: 10, total_tokens: 30 });
    aliceUp = await startFixedUsageUpstream({ prompt_tokens: 20, completion_tokens: 10, total_tokens: 30 });
  });
  after(async () => {
    for (const g of gateways) await g.close();
    await Promise.allSettled([routeMock?.close(), aliceMock?.close(), routeUp?.close(), aliceUp?.close()]);
  });

  it("an authenticated consumer's ai-proxy-multi replaces the route's: its upstream, credentials and options; others keep the route's", async () => {
    const g = await startGateway({
      consumers: [
        {
          username: 'alice',
          plugins: {
            'key-auth': { key: 'alice-key' },
            'ai-proxy-multi': { instances: [mockInstance('alice-openai', aliceMock.url, { auth: { header: { Authorization: 'Bearer sk-alice' } }, options: { model: 'alice-model' } })] },
          },
        },
        { username: 'bob', plugins: { 'key-auth': { key: 'bob-key' } } },
      ],
      routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('route-openai', routeMock.url)] } } }],
    });
    gateways.push(g);
    routeMock.reset();
    aliceMock.reset();
    const a = await post(`${g.url}/v1/chat/completions`, ASK, { apikey: 'alice-key' });
    assert.equal(a.status, 200, a.text);
    assert.equal(a.headers.get('x-mock-name'), 'alice-upstream');
    const seen = aliceMock.stats().lastRequest!;
    assert.equal(seen.headers.authorization, 'Bearer sk-alice');
    assert.equal((seen.body as { model: string }).model, 'alice-model');
    const b = await post(`${g.url}/v1/chat/completions`, ASK, { apikey: 'bob-key' });
    assert.equal(b.status, 200, b.text);
    assert.equal(b.headers.get('x-mock-name'), 'route-upstream');
    assert.equal(routeMock.stats().lastRequest!.headers.authorization, 'Bearer sk-route-openai');
    assert.equal(aliceMock.stats().requests, 1);
    assert.equal(routeMock.stats().requests, 1);
  });

  it("the route's ai-rate-limiting counts a consumer with its own ai-proxy apart from everyone else, even under the same instance name", async () => {
    await avoidWindowEdge(60);
    const same = (url: string) => ({ name: 'shared', provider: 'openai-compatible', override: { endpoint: `${url}/v1/chat/completions` } });
    const g = await startGateway({
      consumers: [
        { username: 'alice', plugins: { 'key-auth': { key: 'alice-key' }, 'ai-proxy-multi': { instances: [same(aliceUp.url)] } } },
        { username: 'bob', plugins: { 'key-auth': { key: 'bob-key' } } },
        { username: 'carol', plugins: { 'key-auth': { key: 'carol-key' } } },
      ],
      routes: [{
        id: 'r', uri: '/v1/chat/completions',
        plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [same(routeUp.url)] }, 'ai-rate-limiting': { limit: 50, time_window: 60 } },
      }],
    });
    gateways.push(g);
    // Bob spends the route's counter of instance "shared" (30 tokens a request; the second crosses 50).
    const statuses: number[] = [];
    for (let i = 0; i < 5 && statuses.at(-1) !== 429; i++) statuses.push((await post(`${g.url}/v1/chat/completions`, ASK, { apikey: 'bob-key' })).status);
    assert.deepEqual(statuses, [200, 200, 429]);
    // Carol shares the route's upstream, so she shares its counter.
    assert.equal((await post(`${g.url}/v1/chat/completions`, ASK, { apikey: 'carol-key' })).status, 429);
    // Alice's own instance has its own counter of the route's limit.
    const a = await post(`${g.url}/v1/chat/completions`, ASK, { apikey: 'alice-key' });
    assert.equal(a.status, 200, a.text);
    assert.equal(a.headers.get('x-ai-ratelimit-limit-shared'), '50');
    assert.equal(a.headers.get('x-ai-ratelimit-remaining-shared'), '20');
    assert.equal(aliceUp.requests, 1);
  });

  it("a consumer's ai-rate-limiting may name its own instances; ai-proxy and ai-proxy-multi together are an error", () => {
    const route = { uri: '/v1/chat/completions', plugins: { 'key-auth': {}, 'ai-proxy': { provider: 'openai' } } };
    const c = validateConfig({
      routes: [route],
      consumers: [{
        username: 'alice',
        plugins: {
          'key-auth': { key: 'k' },
          'ai-proxy': { provider: 'deepseek', auth: { header: { Authorization: 'Bearer d' } } },
          'ai-rate-limiting': { instances: [{ name: 'ai-proxy-deepseek', limit: 10, time_window: 60 }] },
        },
      }],
    }, {});
    assert.equal(c.consumers[0]!.ai_proxy!.instances[0]!.name, 'ai-proxy-deepseek');
    const unreachable = validateConfig({ routes: [route], consumers: [{ username: 'y', plugins: { 'ai-proxy': { provider: 'openai' } } }] }, {});
    assert.ok(configWarnings(unreachable).some((w) => w.path === 'consumers[0].plugins' && /never authenticated/.test(w.message)));
    assert.throws(() => validateConfig({
      routes: [route],
      consumers: [{ username: 'x', plugins: { 'key-auth': { key: 'k' }, 'ai-proxy': { provider: 'openai' }, 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai' }] } } }],
    }, {}), (err: unknown) => err instanceof ConfigError && err.issues.some((i) => i.path === 'consumers[0].plugins' && /at most one of ai-proxy or ai-proxy-multi/.test(i.message)));
  });
});
