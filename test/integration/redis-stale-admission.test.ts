// A synchronous admission whose write reaches Redis after a newer write of the same process (an EVALSHA
// answered NOSCRIPT on a fresh Redis is sent again as EVAL after later commands) is not decided by the script:
// it must not come back as a denial. Seen as 1-3 spurious 429s (remaining 0, limit 1,000,000) right after
// start with workers: 2 (serving-threads.test.ts). Reproduced deterministically here by storing a newer
// sequence for the store's holders field before an admission.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { SluiceError } from '../../src/core/errors.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import type { RedisQuotaStore } from '../../src/quota/redis/redis-store.ts';
import { windowStartOf, type CounterSpec } from '../../src/quota/types.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { holders } from '../conformance/load.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';

const run = randomBytes(3).toString('hex');
let n = 0;
const spec = (): CounterSpec => ({ id: `stale-${run}-${++n}`, limit: 1_000_000, windowMs: 60_000, sliding: false });
/** No timer flush during a test: the sequence numbers the store sends are then known, and no reconciliation
 *  measures the counter's growth rate (so every acquire goes to Redis). */
const QUIET = { batching: { flush_interval_ms: 60_000, max_batch_keys: 1000, max_pending_keys: 100_000 } };

/** The sequence the store's next command will carry (private: the test places a write just ahead of it). */
const nextSeq = (store: RedisQuotaStore): number => (store as unknown as { sendSeq: number }).sendSeq + 1;

describe('Redis store: an admission whose write arrived after a newer one', () => {
  let redis: RedisServerHandle;
  const call = (...args: (string | number)[]) => redisCall(redis, args, { password: redis.password });
  before(async () => { redis = await startRedis({ password: 'stale-secret' }); });
  after(async () => { await redis?.stop(); });

  /** After one granted admission, the holders field of this store, with its stored state. */
  async function field(c: CounterSpec, now: number): Promise<{ key: string; name: string; c: number; r: number; exp: number }> {
    const key = cellKeys(counterTag(c.id), windowStartOf(now, c.windowMs)).r;
    const all = ((await call('hgetall', key)) as string[]).filter((_, i, a) => !a[i - (i % 2)]!.startsWith('_'));
    assert.equal(all.length, 2, 'one holder field');
    const [, fc, fr, exp] = all[1]!.split(':').map(Number) as [number, number, number, number];
    return { key, name: all[0]!, c: fc, r: fr, exp };
  }

  it('is sent again and granted, not denied (limit 1,000,000, 20 reserved)', async () => {
    const { store } = redisStore(standaloneTarget(redis), QUIET);
    try {
      assert.ok(await store.ready(10_000));
      const c = spec();
      const now = Date.now();
      const g1 = await store.acquire([{ counter: c, amount: 10 }], now);
      assert.ok(g1.ok);
      // The counter's growth rate is not known yet: the next acquire is decided by Redis too. A newer write
      // of this field is stored first, as when the admission's EVALSHA went out again after later commands.
      const f = await field(c, now);
      await call('hset', f.key, f.name, `${nextSeq(store)}:${f.c}:${f.r}:${f.exp}`);
      const pending = store.acquire([{ counter: c, amount: 10 }], now);
      assert.ok(pending instanceof Promise, 'decided by Redis (the growth rate is not measured yet)');
      const g2 = await pending;
      assert.equal(g2.ok, true, `denied although 20 of 1,000,000 are used: ${JSON.stringify(g2)}`);
      store.settle(g1, [7]);
      if (g2.ok) store.settle(g2, [5]);
      await store.flush();
      assert.deepEqual(await holders((a) => call(...a), f.key), { reserved: 0, consumed: 12, fields: 1 });
    } finally {
      await store.close();
    }
  });

  it('never decided after repeated sends: a failure (ride-out or 503), not a denial', async () => {
    const { store } = redisStore(standaloneTarget(redis), QUIET);
    try {
      assert.ok(await store.ready(10_000));
      const c = spec();
      const now = Date.now();
      const g1 = await store.acquire([{ counter: c, amount: 10 }], now);
      assert.ok(g1.ok);
      const f = await field(c, now);
      await call('hset', f.key, f.name, `${nextSeq(store) + 1_000}:${f.c}:${f.r}:${f.exp}`);
      const pending = store.acquire([{ counter: c, amount: 10 }], now);
      assert.ok(pending instanceof Promise, 'decided by Redis (the growth rate is not measured yet)');
      // Undecided 4 times: handled like a failing node. The view those replies refreshed may ride it out (a
      // fresh view far from the limit) or the request gets 503; a denial would be one the counter did not earn.
      const out = await pending.then(
        (r) => { if (r.ok) { store.release(r); return 'granted (ride-out)'; } return `denied ${JSON.stringify(r)}`; },
        (e: unknown) => (e instanceof SluiceError ? e.code : String(e)));
      assert.ok(out === 'SLC_QUOTA_STORE_UNAVAILABLE' || out === 'granted (ride-out)', out);
      store.release(g1);
    } finally {
      await store.close();
    }
  });
});
