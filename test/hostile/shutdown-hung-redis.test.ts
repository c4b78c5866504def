// Shutdown while Redis hangs (SIGSTOP) with a long redis_timeout: a request waiting on its quota admission gets its
// 503 SLC_SHUTTING_DOWN at the cut, not a connection closed under it when the stores close; and closing does not
// wait for QUIT behind the hung commands (it waited out redis_timeout: 38 s for a 1 s drain in a probe).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { eventually, metric } from '../helpers/metrics.ts';

const REDIS_TIMEOUT_MS = 60_000;

describe('shutdown while Redis hangs', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;

  before(async () => {
    mock = await startMockUpstream();
    redis = await startRedis();
  });

  after(async () => {
    redis?.resume();
    await redis?.stop();
    await mock?.close();
  });

  it('answers a request waiting on its admission at the cut, and closes without waiting out redis_timeout', { timeout: 120_000 }, async () => {
    const gw = await startGateway({
      redis_batching: { flush_interval_ms: 0 },
      shutdown: { drain_timeout_ms: 300 },
      routes: [{ id: 'h', uri: '/v1/chat/completions', plugins: {
        'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] },
        'ai-rate-limiting': { limit: 1_000_000, time_window: 3600, policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_timeout: REDIS_TIMEOUT_MS },
      } }],
    });
    let closed = false;
    try {
      // Admitted once with Redis up (the store is connected), then Redis hangs.
      const first = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }] }) });
      assert.equal(first.status, 200);
      redis.pause();
      const t0 = Date.now();
      const waiting = fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }] }) })
        .then(async (r) => ({ status: r.status, body: await r.json() as { error?: { code: string } }, at: Date.now() - t0 }));
      await eventually('the request waits on its admission', async () => (await metric(gw, /^sluice_requests_in_flight/)) >= 1);
      const closing = gw.handle.close({ drainMs: 300 }).then(() => { closed = true; return Date.now() - t0; });
      const r = await waiting;
      assert.equal(r.status, 503);
      assert.equal(r.body.error?.code, 'SLC_SHUTTING_DOWN');
      assert.ok(r.at < REDIS_TIMEOUT_MS / 2, `answered ${r.at} ms after it was sent`);
      const took = await closing;
      assert.ok(took < REDIS_TIMEOUT_MS / 2, `closed ${took} ms after the request (redis_timeout ${REDIS_TIMEOUT_MS} ms)`);
    } finally {
      redis.resume();
      if (!closed) await gw.close();
    }
  });
});
