// The Redis store's synchronous mode (redis_batching.flush_interval_ms: 0): every admission is an INCRBY of
// the reservation decided on Redis's reply, and settlements are written on the next tick. Checked here with
// three stores (three clients, as three replicas) on one standalone Redis under concurrent load: exact
// accounting (one request over the limit at most, whatever the replica count), every admission counted as
// synchronous, nothing lost or leaked in Redis, and settlements visible to another replica within a tick.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { validateConfig } from '../../src/config/validate.ts';
import type { Metrics } from '../../src/metrics/registry.ts';
import type { RedisQuotaStore } from '../../src/quota/redis/redis-store.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec } from '../../src/quota/types.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';
import { holders } from '../conformance/load.ts';

const WINDOW_MS = 10 * 60_000;
const SYNC = { flush_interval_ms: 0, max_batch_keys: 1000, max_pending_keys: 100_000 };
const run = randomBytes(3).toString('hex');
let n = 0;
const spec = (limit: number): CounterSpec => ({ id: `sync-${run}-${++n}`, limit, windowMs: WINDOW_MS, sliding: false });

async function metricSum(m: Metrics['syncAdmissions'] | Metrics['redisFlushes']): Promise<number> {
  return (await m.get()).values.reduce((a, v) => a + v.value, 0);
}

describe('RedisQuotaStore in synchronous mode (flush_interval_ms 0)', () => {
  let redis: RedisServerHandle;
  const call = (...args: (string | number)[]) => redisCall(redis, args, { password: redis.password });
  before(async () => {
    redis = await startRedis({ password: 'sync-secret' });
  });
  after(async () => {
    await redis?.stop();
  });

  it('is accepted by the configuration', () => {
    assert.equal(validateConfig({ redis_batching: { flush_interval_ms: 0 } }, {}).redis_batching.flush_interval_ms, 0);
  });

  it('three replicas under concurrent load: within one request of the limit, every admission asked Redis, no usage lost', async () => {
    const stores = [0, 1, 2].map(() => redisStore(standaloneTarget(redis), { batching: SYNC }));
    try {
      for (const s of stores) assert.equal(await s.store.ready(5_000), true);
      const limit = 20_000;
      const c = spec(limit);
      const now = Date.now();
      let admittedActual = 0;
      let admittedCount = 0;
      let maxAmount = 0;
      // 12 concurrent clients per replica; each request reserves 20–60 tokens and uses at most that, after a
      // hold of 0–3 ms; the loop ends when every client saw a denial (the window is spent), bounded in time.
      const deadline = performance.now() + 15_000;
      const client = async (store: RedisQuotaStore): Promise<void> => {
        while (performance.now() < deadline) {
          const amount = 20 + Math.floor(Math.random() * 41);
          maxAmount = Math.max(maxAmount, amount);
          const r = await store.acquire([{ counter: c, amount }], now);
          if (!r.ok) return;
          admittedCount++;
          await sleep(Math.random() * 3);
          const actual = Math.ceil(amount * (0.5 + Math.random() / 2));
          store.settle(r, [actual]);
          admittedActual += actual;
        }
      };
      await Promise.all(stores.flatMap(({ store }) => Array.from({ length: 12 }, () => client(store))));
      assert.ok(performance.now() < deadline, 'the window was not spent in time');
      for (const { store } of stores) await store.flush();
      // Reservations exceed actual usage, so admissions stop at the limit of consumed + reserved: the last
      // admitted request is the only one that may cross it.
      assert.ok(admittedActual <= limit + maxAmount, `consumed ${admittedActual} > ${limit} + ${maxAmount}`);
      // Clients stop at their first denial, while the 36 requests in flight may still settle below their
      // reservations: at most 36 requests' worth of quota goes unused.
      assert.ok(admittedActual >= limit - 36 * maxAmount, `only ${admittedActual} consumed`);
      const keys = cellKeys(counterTag(c.id), windowStartOf(now, WINDOW_MS));
      assert.equal(Number(await call('get', keys.c)), admittedActual, 'Redis holds every settled token');
      assert.equal((await holders((a) => call(...a), keys.r)).reserved, 0, 'no reservation left behind (denials undone)');
      let sync = 0;
      for (const { metrics } of stores) sync += await metricSum(metrics.syncAdmissions);
      assert.equal(sync, admittedCount, 'every admission was a synchronous round trip');
    } finally {
      await Promise.all(stores.map(({ store }) => store.close()));
    }
  });

  it('writes a settlement on the next tick, so another replica admits on it at once', async () => {
    const a = redisStore(standaloneTarget(redis), { batching: SYNC });
    const b = redisStore(standaloneTarget(redis), { batching: SYNC });
    try {
      assert.equal(await a.store.ready(5_000), true);
      assert.equal(await b.store.ready(5_000), true);
      const c = spec(1_000);
      const now = Date.now();
      const g = await a.store.acquire([{ counter: c, amount: 100 }], now);
      assert.ok(g.ok);
      a.store.settle(g, [1_000]);
      const keys = cellKeys(counterTag(c.id), windowStartOf(now, WINDOW_MS));
      // No timer involved: the write goes out on the next turn of the event loop.
      for (let i = 0; i < 50 && (await call('get', keys.c)) !== '1000'; i++) await new Promise((r) => setImmediate(r));
      assert.equal(await call('get', keys.c), '1000');
      assert.equal((await b.store.acquire([{ counter: c, amount: 1 }], now)).ok, false);
      // Once a process has seen the consumption alone spend the window, it denies without a round trip.
      const before = await metricSum(b.metrics.redisFlushes);
      const r = b.store.acquire([{ counter: c, amount: 1 }], now);
      assert.equal(r instanceof Promise, false);
      assert.equal((r as { ok: boolean }).ok, false);
      assert.equal(await metricSum(b.metrics.redisFlushes), before);
    } finally {
      await Promise.all([a.store.close(), b.store.close()]);
    }
  });
});
