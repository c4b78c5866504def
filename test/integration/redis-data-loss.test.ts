// Redis loses a spent window's data (FLUSHALL, or a restart without persistence) while three replicas keep asking.
// Consumption never shrinks in a window: before, each replica's view dropped to what was rebuilt (its own rewrite)
// and, until the epoch check had everyone write again, the replicas admitted another 8–34% of the limit (a probe
// with three gateways; on Cluster, which has no epoch marker, more). Now a write carries the largest total its
// replica saw, Redis keeps it as the window's floor until the rewrites pass it, and no replica's view goes back.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec } from '../../src/quota/types.ts';
import type { RedisQuotaStore } from '../../src/quota/redis/redis-store.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';

const LIMIT = 2_000;
const AMOUNT = 40;
const REPLICAS = 3;

describe('Redis loses a spent window while three replicas keep asking', () => {
  let redis: RedisServerHandle;
  before(async () => { redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  it('a replica whose field was lost sees the floor, then its own usage once, not twice', async () => {
    if (!redis.running) await redis.restart();
    const slow = { batching: { flush_interval_ms: 60_000, max_batch_keys: 1000, max_pending_keys: 100_000 } };
    const a = redisStore(standaloneTarget(redis), slow).store;
    const b = redisStore(standaloneTarget(redis), slow).store;
    const counter: CounterSpec = { id: `own-${randomBytes(3).toString('hex')}`, limit: 1_200, windowMs: 3_600_000, sliding: false };
    const now = Date.now();
    const take = async (s: RedisQuotaStore, n: number): Promise<void> => {
      const p = s.acquire([{ counter, amount: n }], now);
      const r = p instanceof Promise ? await p : p;
      assert.ok(r.ok);
      s.settle(r, [n]);
      await s.flush();
    };
    try {
      assert.ok(await a.ready(10_000));
      assert.ok(await b.ready(10_000));
      await take(a, 500);
      await take(b, 500);
      a.peek(counter, now);
      await a.flush();
      await redisCall(redis, ['flushall']);
      await take(b, 10);
      // A's cell is clean: its refresh is a read, its field gone; the floor keeps its view at what it saw.
      a.peek(counter, now);
      await a.flush();
      assert.ok(a.peek(counter, now).consumed >= 1_000, 'no view below what was seen');
      // Once every replica has written again (the epoch check), A counts its own usage once (before a fix it kept
      // it among the others' too: 1,500, and refused 100 tokens with 190 left).
      const key = cellKeys(counterTag(counter.id), windowStartOf(now, counter.windowMs)).c;
      const deadline = Date.now() + 20_000;
      while (Number(await redisCall(redis, ['get', key]) ?? 0) !== 1_010) {
        assert.ok(Date.now() < deadline, 'the total is rebuilt');
        await sleep(100);
        await a.flush();
        await b.flush();
      }
      a.peek(counter, now);
      await a.flush();
      assert.equal(a.peek(counter, now).consumed, 1_010);
      const p = a.acquire([{ counter, amount: 100 }], now);
      assert.ok((p instanceof Promise ? await p : p).ok, '100 tokens of the 190 left are admitted');
    } finally {
      await a.close();
      await b.close();
    }
  });

  for (const loss of ['flushall', 'restart'] as const) {
    it(`${loss}: nothing more is admitted, and the total comes back`, async () => {
      if (!redis.running) await redis.restart();
      const counter: CounterSpec = { id: `loss-${randomBytes(3).toString('hex')}`, limit: LIMIT, windowMs: 3_600_000, sliding: false };
      const stores: RedisQuotaStore[] = [];
      for (let i = 0; i < REPLICAS; i++) {
        stores.push(redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 100_000 } }).store);
      }
      let charged = 0;
      let afterLoss = false;
      let admittedAfter = 0;
      let stop = false;
      const now = Date.now();
      try {
        for (const s of stores) assert.ok(await s.ready(10_000));
        const client = async (store: RedisQuotaStore): Promise<void> => {
          const started = Date.now();
          while (!stop && Date.now() - started < 30_000) {
            let r;
            try {
              const p = store.acquire([{ counter, amount: AMOUNT }], now);
              r = p instanceof Promise ? await p : p;
            } catch {
              await sleep(5);
              continue;
            }
            if (r.ok) {
              if (afterLoss) admittedAfter++;
              await sleep(1);
              store.settle(r, [AMOUNT]);
              charged += AMOUNT;
            } else await sleep(2);
          }
        };
        const clients = stores.flatMap((s) => Array.from({ length: 4 }, () => client(s)));
        const key = cellKeys(counterTag(counter.id), windowStartOf(now, counter.windowMs)).c;
        const deadline = Date.now() + 20_000;
        while (Number(await redisCall(redis, ['get', key]) ?? 0) < LIMIT) {
          assert.ok(Date.now() < deadline, 'the quota is spent');
          await sleep(20);
        }
        // Every replica has seen the spent total.
        await sleep(400);
        const before = charged;
        afterLoss = true;
        if (loss === 'flushall') await redisCall(redis, ['flushall']);
        else {
          await redis.kill();
          await redis.restart();
        }
        await sleep(2_000);
        stop = true;
        await Promise.all(clients);
        for (const s of stores) await s.flush().catch(() => undefined);
        assert.ok(admittedAfter <= REPLICAS, `${admittedAfter} admitted after the loss (${before} charged before it, limit ${LIMIT})`);
        // Every replica wrote its state again: the total is back, none of it counted twice.
        const end = Date.now() + 20_000;
        let total = 0;
        while ((total = Number(await redisCall(redis, ['get', key]) ?? 0)) !== charged) {
          assert.ok(Date.now() < end, `Redis holds ${total}, ${charged} charged`);
          await sleep(100);
          for (const s of stores) await s.flush().catch(() => undefined);
        }
      } finally {
        stop = true;
        await Promise.all(stores.map((s) => s.close()));
      }
    });
  }
});
