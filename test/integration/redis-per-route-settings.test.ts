// Per-route Redis settings (APISIX allows them): two routes naming the same Redis with different
// `redis_timeout` (and passwords) validate, both work against a real redis-server, and against a hung Redis
// each route times out after its own timeout.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { startFaultServer, type FaultServer } from '../helpers/resp-fault-server.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import { eventually } from '../helpers/sluice-process.ts';

const BODY = { model: 'm', messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 };

function redisRoute(id: string, mockUrl: string, redis: Record<string, unknown>): Record<string, unknown> {
  return {
    id,
    uri: `/${id}`,
    plugins: {
      'ai-proxy-multi': { instances: [mockInstance(`${id}-i`, mockUrl)] },
      'ai-rate-limiting': { limit: 1_000_000, time_window: 600, policy: 'redis', ...redis },
    },
  };
}

describe('per-route Redis settings on one Redis', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  let fault: FaultServer;
  before(async () => {
    mock = await startMockUpstream({ name: 'per-route' });
    redis = await startRedis({ password: 'per-route-secret' });
    fault = await startFaultServer('hang');
  });
  after(async () => {
    await Promise.allSettled([mock?.close(), redis?.stop(), fault?.close()]);
  });

  it('two routes with different redis_timeout both validate and both charge the shared Redis', async () => {
    const common = { redis_host: '127.0.0.1', redis_port: redis.port, redis_password: 'per-route-secret' };
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway({
        redis_batching: { flush_interval_ms: 20 },
        routes: [
          redisRoute('fast', mock.url, { ...common, redis_timeout: 300 }),
          redisRoute('slow', mock.url, { ...common, redis_timeout: 4000, redis_connect_timeout: 3000 }),
        ],
      });
      for (const id of ['fast', 'slow']) {
        for (let i = 0; i < 3; i++) {
          const r = await post(`${gw.url}/${id}`, BODY);
          assert.equal(r.status, 200, `${id}: ${r.text}`);
        }
      }
      for (const id of ['fast', 'slow']) {
        await eventually(`route ${id}'s usage in Redis`, async () => {
          const t = await redisTotals(redis, `r/${id}/`);
          return t.consumed > 0 && t.reserved === 0;
        });
      }
    } finally {
      await gw?.close();
    }
  });

  it('a hung Redis: each route answers 503 after its own redis_timeout', async () => {
    const common = { redis_host: '127.0.0.1', redis_port: fault.port };
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway({
        routes: [
          redisRoute('short', mock.url, { ...common, redis_timeout: 200 }),
          redisRoute('long', mock.url, { ...common, redis_timeout: 5000 }),
        ],
      });
      const started = performance.now();
      let longDone: number | undefined;
      const long = post(`${gw.url}/long`, BODY).then((r) => {
        longDone = performance.now() - started;
        return r;
      });
      const short = await post(`${gw.url}/short`, BODY);
      const shortMs = performance.now() - started;
      assert.equal(short.status, 503, short.text);
      assert.equal(short.body?.error?.code, 'SLC_QUOTA_STORE_UNAVAILABLE');
      assert.equal(short.headers.get('retry-after'), '1', 'a 503 says when to retry');
      // 200 ms expected; generous for a loaded machine, far below the other route's 5 s.
      assert.ok(shortMs < 4000, `short route answered after ${shortMs} ms`);
      assert.equal(longDone, undefined, 'the long-timeout route still waits for Redis');
      const lr = await long;
      assert.equal(lr.status, 503, lr.text);
      // Timers never fire early: the long route waited at least its own 5 s timeout.
      assert.ok(longDone! >= 4500, `long route answered after ${longDone} ms`);
      assert.ok(longDone! < 60_000);
    } finally {
      await gw?.close();
    }
  });
});
