// Two gateway replicas sharing quotas through one real redis-server (with a password): consumption on one
// replica shows in the other's headers and fallback decisions, and Redis outages behave as configured.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, post, mockInstance } from '../helpers/gateway.ts';
import { startRedis, redisCall, type RedisServerHandle } from '../helpers/redis-topology.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'What is 1+1?' }], max_tokens: 10 };
const PASSWORD = 'p@ssw0rd-replicas';

function replicaConfig(mockUrl: string, redis: RedisServerHandle, allowDegradation: boolean, limit = 100) {
  return {
    redis_batching: { flush_interval_ms: 20, max_batch_keys: 1000, max_pending_keys: 100000 },
    routes: [{
      id: 'shared', uri: '/anything', methods: ['POST'],
      plugins: {
        'ai-proxy-multi': { fallback_strategy: ['rate_limiting'], instances: [
          { ...mockInstance('openai-instance', mockUrl, { priority: 1 }), options: { model: 'gpt-4' } },
          { ...mockInstance('deepseek-instance', mockUrl, { priority: 0 }), options: { model: 'deepseek-chat' } },
        ] },
        'ai-rate-limiting': {
          policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_password: PASSWORD,
          redis_timeout: 300, redis_connect_timeout: 300, allow_degradation: allowDegradation,
          instances: [{ name: 'openai-instance', limit, time_window: 60 }],
        },
      },
    }],
  };
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('two gateway replicas on one Redis', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 10 });
    redis = await startRedis({ password: PASSWORD });
  });
  after(async () => {
    await mock?.close();
    await redis?.stop();
  });

  it('consumption on one replica shows in the other replica\'s headers and fallback decision', async () => {
    const a = await startGateway(replicaConfig(mock.url, redis, false));
    const b = await startGateway(replicaConfig(mock.url, redis, false));
    try {
      const r1 = await post(`${a.url}/anything`, MSG);
      assert.equal(r1.status, 200);
      assert.equal(r1.body.model, 'gpt-4');
      const used = r1.body.usage.total_tokens;
      assert.equal(r1.headers.get('x-ai-ratelimit-remaining-openai-instance'), String(100 - used));
      await a.handle.gateway.current.storeOf.get(a.handle.gateway.current.config.routes[0]!.plugins['ai-rate-limiting']!)!.flush();

      // Replica B has never seen the counter: it must learn the global total, not start from 0.
      const r2 = await post(`${b.url}/anything`, MSG);
      assert.equal(r2.status, 200);
      assert.equal(r2.body.model, 'gpt-4', 'still room: 100 - used > 0');
      assert.equal(Number(r2.headers.get('x-ai-ratelimit-remaining-openai-instance')), 100 - used - r2.body.usage.total_tokens);

      // Spend the rest on A; B must fall back to deepseek, as A does.
      for (let i = 0; i < 10; i++) {
        const r = await post(`${a.url}/anything`, MSG);
        if (r.body.model === 'deepseek-chat') break;
      }
      await wait(150);
      const rb = await post(`${b.url}/anything`, MSG);
      assert.equal(rb.body.model, 'deepseek-chat', 'B sees the quota A spent');
      const ra = await post(`${a.url}/anything`, MSG);
      assert.equal(ra.body.model, 'deepseek-chat');

      // Redis holds every token charged on both replicas (consumed counter of the current window).
      await wait(100);
      const keys = await redisCall(redis, ['KEYS', 'sluice:v2:*:c'], { password: PASSWORD }) as string[];
      assert.ok(keys.length >= 1, 'a consumed counter exists');
      const total = Number(await redisCall(redis, ['GET', keys[0]!], { password: PASSWORD }));
      assert.ok(total >= 100, `global consumed ${total}`);
      const ttl = Number(await redisCall(redis, ['TTL', keys[0]!], { password: PASSWORD }));
      assert.ok(ttl > 0 && ttl <= 130, `expiry set once per window: ${ttl}`);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('allow_degradation false: a clear 503 while Redis is down, service again when it returns, no usage lost', async () => {
    const gw = await startGateway(replicaConfig(mock.url, redis, false, 1_000_000));
    try {
      const ok = await post(`${gw.url}/anything`, MSG);
      assert.equal(ok.status, 200);
      await redis.kill();
      // A view reconciled within the last 5 s and far from its limit still admits (the failover ride-out), so the
      // 503s start only after that: poll well past it.
      let saw503 = false;
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline && !saw503) {
        const t0 = performance.now();
        const r = await post(`${gw.url}/anything`, MSG);
        assert.ok(performance.now() - t0 < 2000, 'a dead Redis must not hold requests');
        if (r.status === 503) {
          saw503 = true;
          assert.equal(r.body.error.code, 'SLC_QUOTA_STORE_UNAVAILABLE');
        }
      }
      assert.ok(saw503, 'requests are rejected with 503 while Redis is unreachable');
      assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 503);
      await redis.restart();
      let back = false;
      const until = Date.now() + 20_000;
      while (Date.now() < until && !back) {
        back = (await post(`${gw.url}/anything`, MSG)).status === 200;
        if (!back) await wait(200);
      }
      assert.ok(back, 'service resumes after Redis returns');
    } finally { await gw.close(); }
  });

  it('allow_degradation true: served on local counters while Redis is down; deltas written when it returns', async () => {
    const gw = await startGateway(replicaConfig(mock.url, redis, true, 1_000_000));
    try {
      await redisCall(redis, ['FLUSHALL'], { password: PASSWORD });
      const first = await post(`${gw.url}/anything`, MSG);
      assert.equal(first.status, 200);
      await redis.kill();
      let charged = first.body.usage.total_tokens;
      for (let i = 0; i < 5; i++) {
        const r = await post(`${gw.url}/anything`, MSG);
        assert.equal(r.status, 200, 'degraded mode serves');
        charged += r.body.usage.total_tokens;
      }
      await redis.restart();
      // The restarted Redis is empty; pending deltas are written back once it answers.
      let total = 0;
      const until = Date.now() + 20_000;
      while (Date.now() < until) {
        const keys = await redisCall(redis, ['KEYS', 'sluice:v2:*:c'], { password: PASSWORD }).catch(() => []) as string[];
        total = 0;
        for (const k of keys) total += Number(await redisCall(redis, ['GET', k], { password: PASSWORD }));
        if (total >= charged - first.body.usage.total_tokens) break;
        await wait(200);
      }
      assert.ok(total >= charged - first.body.usage.total_tokens, `usage served while Redis was down reached Redis: ${total} of ${charged}`);
    } finally { await gw.close(); }
  });
});
