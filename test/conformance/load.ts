// A bounded load generator over a QuotaStore for failure tests: concurrent virtual clients acquire, hold
// briefly and settle, recording what was charged so tests can compare it with the totals in Redis.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { isSluiceError } from '../../src/core/errors.ts';
import type { ManualClock } from '../../src/core/clock.ts';
import type { CounterSpec, QuotaStore } from '../../src/quota/types.ts';

export interface LoadOptions {
  readonly amount: number;
  readonly actual: number;
  readonly concurrency: number;
  /** Injected time for every acquire (one window for the whole run). */
  readonly now: number;
  /** Upper bound on the run, whatever the test does. */
  readonly maxMs?: number;
}

export interface Load {
  admitted: number;
  denied: number;
  /** Rejections with SLC_QUOTA_STORE_UNAVAILABLE. */
  unavailable: number;
  otherErrors: unknown[];
  /** Tokens settled per counter id. */
  readonly charged: Map<string, number>;
  /** Slowest acquire, ms (a synchronous acquire counts as ~0). */
  maxAcquireMs: number;
  /** Requests since the last call of `mark()` (to look at one phase of a run). */
  mark(): { admitted: number; denied: number; unavailable: number };
  stop(): Promise<void>;
}

export function startLoad(store: QuotaStore, counters: readonly CounterSpec[], opts: LoadOptions): Load {
  let stopped = false;
  const started = performance.now();
  const maxMs = opts.maxMs ?? 60_000;
  let marked = { admitted: 0, denied: 0, unavailable: 0 };
  const load: Load = {
    admitted: 0, denied: 0, unavailable: 0, otherErrors: [], charged: new Map(), maxAcquireMs: 0,
    mark() {
      const now = { admitted: load.admitted, denied: load.denied, unavailable: load.unavailable };
      const delta = { admitted: now.admitted - marked.admitted, denied: now.denied - marked.denied, unavailable: now.unavailable - marked.unavailable };
      marked = now;
      return delta;
    },
    async stop() {
      stopped = true;
      await Promise.all(workers);
    },
  };
  let next = 0;
  const worker = async (): Promise<void> => {
    while (!stopped && performance.now() - started < maxMs) {
      const counter = counters[next++ % counters.length]!;
      const t0 = performance.now();
      try {
        const pending = store.acquire([{ counter, amount: opts.amount }], opts.now);
        const r = pending instanceof Promise ? await pending : pending;
        load.maxAcquireMs = Math.max(load.maxAcquireMs, performance.now() - t0);
        if (r.ok) {
          load.admitted++;
          await sleep(Math.random() * 3);
          store.settle(r, [opts.actual]);
          load.charged.set(counter.id, (load.charged.get(counter.id) ?? 0) + opts.actual);
        } else {
          load.denied++;
          await sleep(1);
        }
      } catch (err) {
        load.maxAcquireMs = Math.max(load.maxAcquireMs, performance.now() - t0);
        if (isSluiceError(err) && err.code === 'SLC_QUOTA_STORE_UNAVAILABLE') load.unavailable++;
        else load.otherErrors.push(err);
        await sleep(2);
      }
      await sleep(0);
    }
  };
  const workers = Array.from({ length: opts.concurrency }, () => worker());
  return load;
}

/** Retry `store.flush()` until Redis acknowledges everything (bounded). */
export async function flushUntilAcknowledged(store: QuotaStore, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      await store.flush();
      return;
    } catch (err) {
      if (performance.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

export async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await cond())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Make a counter "known" to a store the way steady traffic does: a few requests over a few flushes, so its
 * totals and growth rate are measured and requests far from the limit are decided locally.
 */
export async function warmUp(store: QuotaStore, counter: CounterSpec, now: number, clock?: ManualClock): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const r = await store.acquire([{ counter, amount: 1 }], now);
    if (r.ok) store.settle(r, [1]);
    await store.flush();
    if (clock !== undefined) clock.advance(10);
    else await sleep(10);
  }
}

type Call = (args: (string | number)[]) => Promise<unknown>;

/**
 * Live reservations in a holders hash (scripts.ts), judged by the Redis server's own clock, and the sum of
 * the per-process consumed fields.
 */
export async function holders(call: Call, key: string): Promise<{ reserved: number; consumed: number; fields: number }> {
  const [sec, usec] = (await call(['time'])) as [string, string];
  const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  const all = ((await call(['hgetall', key])) ?? []) as string[];
  let reserved = 0;
  let consumed = 0;
  let fields = 0;
  for (let i = 0; i + 1 < all.length; i += 2) {
    // `_c_from_holders` (and any `_` field) marks the hash; holders are the processes' fields.
    if (all[i]!.startsWith('_')) continue;
    fields++;
    const [, c, r, exp] = all[i + 1]!.split(':').map(Number) as [number, number, number, number];
    consumed += c;
    if (exp > nowMs) reserved += r;
  }
  return { reserved, consumed, fields };
}
