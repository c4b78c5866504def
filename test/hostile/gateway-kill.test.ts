// Hostile fault: a gateway killed with SIGKILL while it holds reservations on a shared Redis quota. Its
// reservation must stop counting within one lease (redis_batching.reservation_lease_ms), so a second gateway
// on the same quota can use what the dead one had reserved; nothing it had already charged is lost.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { mockInstance, avoidWindowEdge } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import { startSluiceProcess, eventually } from '../helpers/sluice-process.ts';

const WINDOW = 3600;
const LEASE_MS = 2000;
const LIMIT = 2000;
const MESSAGES = [{ role: 'user', content: 'Count to a thousand' }];
/** Reserves ~2,010 tokens, past the 2,000 limit (admission needs consumed + reserved below it), and streams for
 *  60 s: still running when its gateway is killed. */
const HOG = { model: 'gpt-4o-mini', messages: MESSAGES, stream: true, max_tokens: 2000 };
/** Admitted only once the dead gateway's ~2,010 reserved tokens stop counting. */
const NEXT = { model: 'gpt-4o-mini', messages: MESSAGES, max_tokens: 20 };

function config(mockUrl: string, redisPort: number) {
  return {
    redis_batching: { flush_interval_ms: 50, reservation_lease_ms: LEASE_MS },
    routes: [{ id: 'kill', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] },
      'ai-rate-limiting': { limit: LIMIT, time_window: WINDOW, policy: 'redis', redis_host: '127.0.0.1', redis_port: redisPort, redis_database: 3 },
    } }],
  };
}

function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
}

describe('a gateway killed with SIGKILL while holding reservations', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  before(async () => { mock = await startMockUpstream(); redis = await startRedis(); });
  after(async () => { await redis?.stop(); await mock?.close(); });

  it('its reservation stops counting within a lease and the other gateway can use the quota', async (t) => {
    await avoidWindowEdge(WINDOW, 60_000);
    const a = await startSluiceProcess(config(mock.url, redis.port));
    const b = await startSluiceProcess(config(mock.url, redis.port));
    try {
      const hog = await post(a.url, HOG, { 'x-mock-chunks': '600', 'x-mock-chunk-delay-ms': '100' });
      assert.equal(hog.status, 200);
      const reader = (hog.body as ReadableStream<Uint8Array>).getReader();
      await reader.read();
      await eventually('gateway A\'s reservation reaches Redis', async () => (await redisTotals({ ...redis, database: 3 }, 'r/kill/')).reserved >= 2000);

      const denied = await post(b.url, NEXT);
      assert.equal(denied.status, 429, 'while A is alive its reservation counts on B');
      await denied.arrayBuffer();

      const killedAt = Date.now();
      a.signal('SIGKILL');
      await a.exited;
      reader.cancel().catch(() => {});

      let admittedAfter = -1;
      await eventually('B admits once the dead reservation\'s lease ends', async () => {
        const r = await post(b.url, NEXT);
        await r.arrayBuffer();
        if (r.status === 200) { admittedAfter = Date.now() - killedAt; return true; }
        assert.equal(r.status, 429);
        return false;
      }, 30_000);
      assert.ok(admittedAfter >= 0);
      t.diagnostic(`admitted on B ${admittedAfter} ms after SIGKILL of A (lease ${LEASE_MS} ms)`);

      await eventually('B\'s answer is charged in Redis', async () => (await redisTotals({ ...redis, database: 3 }, 'r/kill/')).consumed > 0);
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
