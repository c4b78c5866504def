// A serving thread that releases a reservation near a counter's limit asks the main thread to fold its slots in now
// (the backend then writes what is near a limit on its next turn): that counter alone reaches Redis, well before the
// flush interval. Before, the thread asked for a whole flush, which re-read every counter of the store: one settle
// cost 501 script calls with 500 idle counters (a review).
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { LedgerHost } from '../../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec, type QuotaStore } from '../../src/quota/types.ts';
import { redisCall, startRedis, type HostPort } from '../helpers/redis-topology.ts';
import { holders } from '../conformance/load.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';

async function evalshaCalls(redis: HostPort): Promise<number> {
  const m = /cmdstat_evalsha:calls=(\d+)/.exec(String(await redisCall(redis, ['info', 'commandstats'])));
  return m === null ? 0 : Number(m[1]);
}

it('a thread releasing a reservation near the limit gets that counter written, and only it', async () => {
  const redis = await startRedis();
  // A minute between flushes: only the poke can write the release in time.
  const { store: backend } = redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 60_000, max_batch_keys: 1000, max_pending_keys: 100_000 } });
  const host = new LedgerHost({ maxSlots: 4096, pollMs: 60_000 });
  host.attach('r', backend as QuotaStore);
  const store = new LedgerClient(host.descriptor(), (req) => host.handle(req)).storeFor('r', 'redis');
  const run = randomBytes(3).toString('hex');
  try {
    assert.ok(await backend.ready(10_000));
    for (let i = 0; i < 500; i++) {
      const c: CounterSpec = { id: `cold-${run}-${i}`, limit: 1_000_000, windowMs: 3_600_000, sliding: false };
      const p = store.acquire([{ counter: c, amount: 1 }], Date.now());
      const r = p instanceof Promise ? await p : p;
      assert.ok(r.ok);
      store.settle(r, [1]);
    }
    await store.flush();
    const hot: CounterSpec = { id: `hot-${run}`, limit: 100, windowMs: 3_600_000, sliding: false };
    const p = store.acquire([{ counter: hot, amount: 90 }], Date.now());
    const g = p instanceof Promise ? await p : p;
    assert.ok(g.ok, 'admitted by Redis (a new counter), which now holds its reservation');
    const r = cellKeys(counterTag(hot.id), windowStartOf(Date.now(), hot.windowMs)).r;
    assert.equal((await holders((a) => redisCall(redis, a), r)).reserved, 90);
    const before = await evalshaCalls(redis);
    store.settle(g, [50]);
    const deadline = Date.now() + 20_000;
    while ((await holders((a) => redisCall(redis, a), r)).reserved !== 0) {
      assert.ok(Date.now() < deadline, 'the released reservation reaches Redis long before the flush interval');
      await sleep(20);
    }
    await sleep(200);
    assert.ok((await evalshaCalls(redis)) - before <= 2, `script calls for one settle: ${(await evalshaCalls(redis)) - before}`);
  } finally {
    host.close();
    await backend.close();
    await redis.stop();
  }
});
