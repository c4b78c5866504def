// Short fixed windows under demand far above the limit, three replicas (stores with clients of their own) on one
// Redis, batched (flush every 100 ms). While a window is spent, the counter's growth is what the limit lets through,
// not what is asked: the rate estimate decayed there, so at the next window's start every replica trusted its own
// view and admitted most of the limit alone (a probe with three gateways: windows of 2 s and a limit of 2,000 reached
// 2,262–4,176). Each window now stays within about one request per replica of the limit.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec } from '../../src/quota/types.ts';
import type { RedisQuotaStore } from '../../src/quota/redis/redis-store.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';

const WINDOW_MS = 1_000;
const LIMIT = 2_000;
const AMOUNT = 40;
const REPLICAS = 3;
const RUN_MS = 6_500;

describe('fixed windows under saturating demand, three replicas', () => {
  let redis: RedisServerHandle;
  before(async () => { redis = await startRedis(); });
  after(async () => { await redis?.stop(); });

  it('every window stays within one request per replica of the limit', async () => {
    const counter: CounterSpec = { id: `edge-${randomBytes(3).toString('hex')}`, limit: LIMIT, windowMs: WINDOW_MS, sliding: false };
    const stores: RedisQuotaStore[] = [];
    for (let i = 0; i < REPLICAS; i++) {
      stores.push(redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 100_000 } }).store);
    }
    const totals = new Map<number, number>();
    let stop = false;
    try {
      for (const s of stores) assert.ok(await s.ready(10_000));
      const started = Date.now();
      // Eight clients per replica, each asking again at once when admitted or denied.
      const client = async (store: RedisQuotaStore): Promise<void> => {
        while (!stop && Date.now() - started < RUN_MS) {
          let r;
          try {
            const p = store.acquire([{ counter, amount: AMOUNT }], Date.now());
            r = p instanceof Promise ? await p : p;
          } catch {
            await sleep(5);
            continue;
          }
          if (r.ok) {
            await sleep(2);
            store.settle(r, [AMOUNT]);
          } else await sleep(1);
        }
      };
      const clients = stores.flatMap((s) => Array.from({ length: 8 }, () => client(s)));
      // Each window's total, read while its key lives (a window's keys expire 5 s after it ends).
      const sampler = (async () => {
        while (!stop && Date.now() - started < RUN_MS + 1_000) {
          const now = Date.now();
          for (const ws of [windowStartOf(now, WINDOW_MS) - WINDOW_MS, windowStartOf(now, WINDOW_MS)]) {
            const v = await redisCall(redis, ['get', cellKeys(counterTag(counter.id), ws).c]);
            if (v !== null) totals.set(ws, Math.max(totals.get(ws) ?? 0, Number(v)));
          }
          await sleep(100);
        }
      })();
      await Promise.all(clients);
      for (const s of stores) await s.flush().catch(() => undefined);
      await sleep(300);
      stop = true;
      await sampler;
    } finally {
      stop = true;
      await Promise.all(stores.map((s) => s.close()));
    }
    const full = [...totals].filter(([, c]) => c >= LIMIT / 2);
    assert.ok(full.length >= 4, `windows filled: ${JSON.stringify([...totals])}`);
    for (const [ws, c] of full) assert.ok(c <= LIMIT + REPLICAS * AMOUNT, `window ${ws}: ${c} consumed against a limit of ${LIMIT} (${JSON.stringify([...totals.values()])})`);
  });
});
