// Store-level benchmark of the Redis quota design, against a real redis-server started here.
//
// 1. Commands and round trips per request, far from the limit, at a fixed request rate: the batched store
//    (pre-aggregated INCRBY flushed every I ms) against a per-request baseline (one synchronous round trip
//    to reserve, one to settle). Plus the closed-loop ops/s of each.
// 2. Overshoot with 4 replicas (4 child processes) sharing one quota under saturating load: tokens admitted
//    divided by the limit, for the batched store at several flush intervals, the synchronous baseline, and
//    per-replica local counters (the seed's "quota multiplied by the replica count").
//
// Usage: node --import tsx native-bench/redis-batching.bench.ts [--quick]
// Bounded: about a minute (a hard stop aborts at 150 s). Every child and redis-server is stopped on exit.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RedisTargetConfig } from '../src/config/types.ts';
import { createMetrics, type Metrics } from '../src/metrics/registry.ts';
import { LocalQuotaStore } from '../src/quota/local-store.ts';
import { RedisQuotaStore } from '../src/quota/redis/redis-store.ts';
import { cellKeys, counterTag } from '../src/quota/redis/keys.ts';
import { createPort, type RedisPort } from '../src/quota/redis/port.ts';
import { windowStartOf, type AcquireItem, type AcquireResult, type CounterSpec, type Grant, type QuotaStore } from '../src/quota/types.ts';
import { parseInfo, redisCall, startRedis, type RedisServerHandle } from '../test/helpers/redis-topology.ts';
import { stopChild, track } from './lib/proc.ts';
import { fmt, table } from './lib/stats.ts';

const SELF = fileURLToPath(import.meta.url);
const HARD_STOP_MS = 150_000;
const WINDOW_MS = 10 * 60_000;
const QUICK = process.argv.includes('--quick');
const INTERVALS = QUICK ? [50] : [10, 25, 50, 100];

// ---------------------------------------------------------------------------------------------------------
// Stores

type Mode = 'batched' | 'per-request' | 'local';

function target(port: number): RedisTargetConfig {
  return {
    mode: 'standalone', host: '127.0.0.1', port, username: undefined, password: undefined, database: 0,
    timeout_ms: 1000, connect_timeout_ms: 1000, cluster_nodes: [], cluster_name: undefined, sentinels: [],
    master_name: undefined, role: undefined, sentinel_username: undefined, sentinel_password: undefined,
    id: `bench://127.0.0.1:${port}#${process.pid}`,
  };
}

/**
 * The baseline: every admission is an INCRBY of the reservation (with the consumed total read alongside)
 * decided on the reply, every settlement an INCRBY/DECRBY pair. Exact, and one round trip each way.
 */
class PerRequestStore implements QuotaStore {
  readonly name = 'per-request';
  roundTrips = 0;
  private readonly expired = new Set<string>();

  constructor(private readonly port: RedisPort) {}

  async acquire(items: readonly AcquireItem[], now: number): Promise<AcquireResult> {
    const { counter, amount } = items[0]!;
    const ws = windowStartOf(now, counter.windowMs);
    const k = cellKeys(counterTag(counter.id), ws);
    const cmds: [string, ...(string | number)[]][] = [['incrby', k.r, amount], ['get', k.c]];
    if (!this.expired.has(k.r)) {
      this.expired.add(k.r);
      cmds.push(['expire', k.r, 700, 'NX'], ['expire', k.c, 700, 'NX']);
    }
    this.roundTrips++;
    const replies = await this.port.exec(cmds);
    const r = Number(replies[0]![1]);
    const c = Number(replies[1]![1] ?? 0);
    if (c + r - amount >= counter.limit) {
      this.roundTrips++;
      await this.port.exec([['decrby', k.r, amount]]);
      return { ok: false, denied: [0], retryAfterMs: ws + counter.windowMs - now };
    }
    return { ok: true, entries: [{ counter, windowStart: ws, reserved: amount }] };
  }

  settle(grant: Grant, actual: readonly number[]): void {
    const e = grant.entries[0]!;
    const k = cellKeys(counterTag(e.counter.id), e.windowStart);
    this.roundTrips++;
    void this.port.exec([['incrby', k.c, actual[0]!], ['decrby', k.r, e.reserved]]);
  }

  release(grant: Grant): void {
    this.settle(grant, [0]);
  }

  peek(counter: CounterSpec, now: number) {
    return { limit: counter.limit, consumed: 0, reserved: 0, resetMs: windowStartOf(now, counter.windowMs) + counter.windowMs - now };
  }

  health() {
    return 'ok' as const;
  }

  setMaxKeys(): void {}

  async flush(): Promise<void> {
    // Settlements are fire-and-forget; a PING behind them on the same connection waits for them all.
    await this.port.exec([['ping']]);
  }

  async close(): Promise<void> {
    await this.flush();
    await this.port.quit();
  }
}

interface Built {
  readonly store: QuotaStore;
  readonly metrics: Metrics;
  roundTrips(): Promise<number>;
}

async function build(mode: Mode, redisPort: number, intervalMs: number): Promise<Built> {
  const metrics = createMetrics({ defaultMetrics: false });
  if (mode === 'local') return { store: new LocalQuotaStore(), metrics, roundTrips: async () => 0 };
  if (mode === 'per-request') {
    const port = createPort(target(redisPort));
    for (let i = 0; i < 200 && !port.ready; i++) await sleep(10);
    const store = new PerRequestStore(port);
    return { store, metrics, roundTrips: async () => store.roundTrips };
  }
  const store = new RedisQuotaStore(target(redisPort), {
    batching: { flush_interval_ms: intervalMs, max_batch_keys: 1000, max_pending_keys: 100_000 },
    metrics, allowDegradation: false, storeLabel: 'bench',
  });
  if (!(await store.ready(5_000))) throw new Error('redis store not ready');
  // Pipelines: one per flush (standalone) plus one per synchronous admission.
  const sum = async (m: Metrics['redisFlushes'] | Metrics['syncAdmissions']) => (await m.get()).values.reduce((a, v) => a + v.value, 0);
  return { store, metrics, roundTrips: async () => (await sum(metrics.redisFlushes)) + (await sum(metrics.syncAdmissions)) };
}

async function commandsProcessed(redis: RedisServerHandle): Promise<number> {
  return Number(parseInfo(await redisCall(redis, ['info', 'stats'])).total_commands_processed ?? Number.NaN);
}

// ---------------------------------------------------------------------------------------------------------
// Part 1: commands per request far from limits

interface RateResult { requests: number; commands: number; roundTrips: number; seconds: number }

/** Open-loop load: `rate` requests/s over `counters`, each held `holdMs` (a short stream) then settled. */
async function fixedRate(b: Built, redis: RedisServerHandle, counters: readonly CounterSpec[], rate: number, durationMs: number, holdMs: number): Promise<RateResult> {
  const now = Date.now();
  // A counter's first requests in a process are synchronous (nothing known yet, then its growth rate is not
  // measured yet); warm up over a few flushes so the run measures the steady state.
  for (let round = 0; round < 3; round++) {
    for (const c of counters) {
      const r = await b.store.acquire([{ counter: c, amount: 1 }], now);
      if (r.ok) b.store.settle(r, [1]);
    }
    await b.store.flush();
    await sleep(20);
  }
  const cmd0 = await commandsProcessed(redis);
  const rt0 = await b.roundTrips();
  let issued = 0;
  let inflight = 0;
  const one = async (counter: CounterSpec): Promise<void> => {
    inflight++;
    try {
      const r = await b.store.acquire([{ counter, amount: 500 }], now);
      if (!r.ok) return;
      await sleep(holdMs);
      b.store.settle(r, [300]);
    } finally {
      inflight--;
    }
  };
  const t0 = performance.now();
  while (performance.now() - t0 < durationMs) {
    const due = Math.floor(((performance.now() - t0) / 1000) * rate);
    while (issued < due) void one(counters[issued++ % counters.length]!);
    await sleep(1);
  }
  for (let i = 0; i < 1000 && inflight > 0; i++) await sleep(5);
  await b.store.flush();
  const seconds = (performance.now() - t0) / 1000;
  // The two INFO calls are commands too.
  const commands = (await commandsProcessed(redis)) - cmd0 - 1;
  return { requests: issued, commands, roundTrips: (await b.roundTrips()) - rt0, seconds };
}

/** Closed loop: `concurrency` virtual clients acquire and settle back to back. */
async function opsPerSecond(b: Built, counters: readonly CounterSpec[], concurrency: number, durationMs: number): Promise<number> {
  const now = Date.now();
  let done = 0;
  const t0 = performance.now();
  const client = async (k: number): Promise<void> => {
    let i = k;
    while (performance.now() - t0 < durationMs) {
      const p = b.store.acquire([{ counter: counters[i++ % counters.length]!, amount: 500 }], now);
      const r = p instanceof Promise ? await p : p;
      if (r.ok) b.store.settle(r, [300]);
      done++;
      // Yield now and then so timers (the flush) run while the loop stays synchronous and hot.
      if ((done & 255) === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, k) => client(k)));
  const secs = (performance.now() - t0) / 1000;
  await b.store.flush();
  return done / secs;
}

// ---------------------------------------------------------------------------------------------------------
// Part 2: four replicas, one quota (child processes)

interface ReplicaJob {
  readonly mode: Mode;
  readonly redisPort: number;
  readonly intervalMs: number;
  readonly counter: CounterSpec;
  readonly now: number;
  readonly amount: number;
  readonly concurrency: number;
  readonly durationMs: number;
  readonly maxHoldMs: number;
}

interface ReplicaResult {
  readonly admittedTokens: number;
  readonly requests: number;
  readonly denied: number;
  readonly errors: number;
  readonly syncAdmissions: number;
}

async function replicaMain(): Promise<void> {
  const job = await new Promise<ReplicaJob>((resolve) => process.once('message', (m) => resolve(m as ReplicaJob)));
  const b = await build(job.mode, job.redisPort, job.intervalMs);
  process.send!({ ready: true });
  await new Promise<void>((resolve) => process.once('message', () => resolve()));
  let admitted = 0;
  let requests = 0;
  let denied = 0;
  let errors = 0;
  const t0 = performance.now();
  const client = async (): Promise<void> => {
    while (performance.now() - t0 < job.durationMs) {
      requests++;
      try {
        const p = b.store.acquire([{ counter: job.counter, amount: job.amount }], job.now);
        const r = p instanceof Promise ? await p : p;
        if (!r.ok) {
          denied++;
          await sleep(1);
          continue;
        }
        await sleep(Math.random() * job.maxHoldMs);
        b.store.settle(r, [job.amount]);
        admitted += job.amount;
      } catch {
        errors++;
        await sleep(1);
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, () => client()));
  await b.store.close();
  const sync = (await b.metrics.syncAdmissions.get()).values.reduce((a, v) => a + v.value, 0);
  const result: ReplicaResult = { admittedTokens: admitted, requests, denied, errors, syncAdmissions: sync };
  process.send!({ result });
}

async function replicas(job: ReplicaJob, n: number): Promise<ReplicaResult[]> {
  const children: ChildProcess[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const child = fork(SELF, ['--replica'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      track(child);
      children.push(child);
    }
    const message = <T>(child: ChildProcess, key: string): Promise<T> => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`replica gave no ${key}`)), job.durationMs + 20_000);
      child.on('message', (m: Record<string, unknown>) => {
        if (key in m) { clearTimeout(timer); resolve(m[key] as T); }
      });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`replica exited (${code}) before ${key}`)); });
    });
    const ready = children.map((c) => message<boolean>(c, 'ready'));
    for (const c of children) c.send(job);
    await Promise.all(ready);
    const results = children.map((c) => message<ReplicaResult>(c, 'result'));
    for (const c of children) c.send('go');
    return await Promise.all(results);
  } finally {
    await Promise.all(children.map((c) => stopChild(c)));
  }
}

// ---------------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const hardStop = setTimeout(() => {
    process.stderr.write('redis-batching bench: hard time limit reached, aborting\n');
    process.exit(1);
  }, HARD_STOP_MS);
  hardStop.unref();
  const redis = await startRedis();
  try {
    const rate = 20_000;
    const rateMs = QUICK ? 1_500 : 2_500;
    const holdMs = 20;
    const counters: CounterSpec[] = [0, 1].map((i) => ({ id: `bench-far-${process.pid}-${i}`, limit: 1e15, windowMs: WINDOW_MS, sliding: false }));
    console.log(`\n## 1. Redis commands per request, far from the limit (${fmt(rate, 0)} req/s open loop over ${counters.length} counters, ${holdMs} ms hold, ${rateMs / 1000} s)\n`);
    const rows: string[][] = [['store', 'requests', 'Redis commands', 'commands / request', 'round trips / request', 'closed-loop ops/s']];
    const firstRow: Record<string, number> = {};
    for (const interval of INTERVALS) {
      const b = await build('batched', redis.port, interval);
      const r = await fixedRate(b, redis, counters, rate, rateMs, holdMs);
      const ops = interval === 50 ? await opsPerSecond(b, counters, 256, QUICK ? 1_000 : 1_500) : Number.NaN;
      await b.store.close();
      rows.push([`batched, flush every ${interval} ms`, fmt(r.requests, 0), fmt(r.commands, 0), fmt(r.commands / r.requests, 4), fmt(r.roundTrips / r.requests, 4), fmt(ops, 0)]);
      if (interval === 50) Object.assign(firstRow, { cmd: r.commands / r.requests, ops });
    }
    const base = await build('per-request', redis.port, 0);
    const rb = await fixedRate(base, redis, counters, rate, rateMs, holdMs);
    const baseOps = await opsPerSecond(base, counters, 256, QUICK ? 1_000 : 1_500);
    await base.store.close();
    rows.push(['per-request INCRBY (baseline)', fmt(rb.requests, 0), fmt(rb.commands, 0), fmt(rb.commands / rb.requests, 4), fmt(rb.roundTrips / rb.requests, 4), fmt(baseOps, 0)]);
    console.log(table(rows));
    console.log(`\nbatched (50 ms): ${fmt(firstRow.cmd!, 4)} commands/request (target ≤ 0.01), ${fmt(firstRow.ops! / baseOps, 1)}× the baseline's ops/s`);

    const limit = 400_000;
    const amount = 300;
    const concurrency = 32;
    const durationMs = QUICK ? 2_000 : 3_000;
    console.log(`\n## 2. Overshoot: 4 replica processes, one quota of ${fmt(limit, 0)} tokens, ${concurrency} concurrent requests each of ${amount} tokens held 0–20 ms, ${durationMs / 1000} s\n`);
    const orows: string[][] = [['store', 'tokens admitted', 'admitted / limit', 'requests', 'denied', 'sync admissions', 'errors']];
    const cases: { label: string; mode: Mode; interval: number }[] = [
      ...INTERVALS.map((i) => ({ label: `batched, flush every ${i} ms`, mode: 'batched' as Mode, interval: i })),
      { label: 'per-request INCRBY (synchronous baseline)', mode: 'per-request', interval: 0 },
      { label: 'per-replica local counters', mode: 'local', interval: 0 },
    ];
    let batchedRatio = Number.NaN;
    for (const c of cases) {
      const counter: CounterSpec = { id: `bench-shared-${process.pid}-${c.mode}-${c.interval}`, limit, windowMs: WINDOW_MS, sliding: false };
      const now = Date.now();
      const res = await replicas({ mode: c.mode, redisPort: redis.port, intervalMs: c.interval, counter, now, amount, concurrency, durationMs, maxHoldMs: 20 }, 4);
      const admitted = res.reduce((a, r) => a + r.admittedTokens, 0);
      const ratio = admitted / limit;
      if (c.mode === 'batched' && c.interval === 50) batchedRatio = ratio;
      orows.push([c.label, fmt(admitted, 0), fmt(ratio, 4), fmt(res.reduce((a, r) => a + r.requests, 0), 0), fmt(res.reduce((a, r) => a + r.denied, 0), 0), fmt(res.reduce((a, r) => a + r.syncAdmissions, 0), 0), fmt(res.reduce((a, r) => a + r.errors, 0), 0)]);
      if (c.mode !== 'local') {
        // Cross-check against Redis itself: the consumed total written by the 4 replicas.
        // The window the replicas charged (`now` is injected), even if the clock crossed into the next one.
        const key = cellKeys(counterTag(counter.id), windowStartOf(now, WINDOW_MS)).c;
        const stored = Number((await redisCall(redis, ['get', key])) ?? 0);
        if (stored !== admitted) console.log(`note: ${c.label}: Redis holds ${stored} consumed, replicas counted ${admitted}`);
      }
    }
    console.log(table(orows));
    console.log(`\nbatched (50 ms) overshoot ratio: ${fmt(batchedRatio, 4)} (target ≤ 1.05, stretch 1.01)`);
  } finally {
    clearTimeout(hardStop);
    await redis.stop();
  }
}

if (process.argv.includes('--replica')) {
  await replicaMain();
  process.exit(0);
} else {
  await main();
  process.exit(0);
}
