// The process ledger with real worker_threads: two serving threads hammer one counter through their own
// LedgerQuotaStore while the main thread's LedgerHost answers their delegations (over MessagePorts, as the
// threads runtime does) and folds their usage into the backend. Local and Redis backends.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { MessageChannel, Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import { LedgerHost } from '../../src/quota/shared/ledger-host.ts';
import { F_HOLDS, F_TR, F_WMS, SLOT_FIELDS } from '../../src/quota/shared/ledger.ts';
import type { LedgerReply, LedgerRequest } from '../../src/quota/shared/protocol.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import type { CounterSpec, QuotaStore } from '../../src/quota/types.ts';
import { windowStartOf } from '../../src/quota/types.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';
import { avoidWindowEdge } from '../helpers/gateway.ts';

const WORKER = new URL('../helpers/ledger-worker.ts', import.meta.url);

/** A worker's entry does not go through `--import tsx`'s hooks (Node 20): register tsx in the thread first. */
export function tsWorker(url: URL, options: ConstructorParameters<typeof Worker>[1]): Worker {
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  return new Worker(`import(${api}).then((t) => { t.register(); return import(${JSON.stringify(url.href)}); })`, { ...options, eval: true });
}

interface HammerResult {
  settled: Record<string, number>;
  admitted: number;
  admittedTokens: number;
  denied: number;
  delegated: number;
  maxAmountSeen: number;
}

/** Run `threads` hammering workers against `host` and wait for their results (bounded). */
async function hammer(host: LedgerHost, store: string, counter: CounterSpec, opts: { threads?: number; iterations: number; maxAmount: number; actuals: 'exact' | 'random'; hold: number }): Promise<HammerResult[]> {
  const barrier = new Int32Array(new SharedArrayBuffer(4));
  const runs: Promise<HammerResult>[] = [];
  const workers: Worker[] = [];
  for (let i = 0; i < (opts.threads ?? 2); i++) {
    const { port1, port2 } = new MessageChannel();
    port1.on('message', (m: { id: number; req: LedgerRequest }) => {
      void host.handle(m.req).then((reply: LedgerReply) => port1.postMessage({ id: m.id, reply }));
    });
    const w = tsWorker(WORKER, {
      workerData: { mode: 'hammer', desc: host.descriptor(), port: port2, store, counter, iterations: opts.iterations, maxAmount: opts.maxAmount, actuals: opts.actuals, hold: opts.hold, barrier },
      transferList: [port2],
    });
    workers.push(w);
    runs.push(new Promise<HammerResult>((resolve, reject) => {
      w.once('message', (m: HammerResult) => {
        port1.close();
        resolve(m);
      });
      w.once('error', reject);
      w.once('exit', (code) => reject(new Error(`worker exited ${code}`)));
    }));
  }
  // Let both threads reach the barrier, then start them together.
  await sleep(50);
  Atomics.store(barrier, 0, 1);
  Atomics.notify(barrier, 0);
  const deadline = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('hammer took over 120 s')), 120_000).unref());
  try {
    return await Promise.race([Promise.all(runs), deadline]);
  } finally {
    for (const w of workers) await w.terminate();
  }
}

function sum(rs: HammerResult[], f: (r: HammerResult) => number): number {
  return rs.reduce((a, r) => a + f(r), 0);
}

function settledByWindow(rs: HammerResult[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const r of rs) for (const [ws, v] of Object.entries(r.settled)) m.set(Number(ws), (m.get(Number(ws)) ?? 0) + v);
  return m;
}

/** Every slot of the table: no grant held, nothing reserved. */
function assertNoHolds(host: LedgerHost): void {
  const f = host.table.f64;
  for (let s = 0; s < host.table.slots; s++) {
    if (!host.table.isUsed(s)) continue;
    assert.equal(f[s * SLOT_FIELDS + F_HOLDS], 0, `slot ${s} holds`);
    assert.equal(f[s * SLOT_FIELDS + F_TR], 0, `slot ${s} reserved`);
  }
}

/** Slots in use for counters of this window length. */
function slotsOf(host: LedgerHost, windowMs: number): number {
  let n = 0;
  for (let s = 0; s < host.table.slots; s++) if (host.table.isUsed(s) && host.table.f64[s * SLOT_FIELDS + F_WMS] === windowMs) n++;
  return n;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const run = randomBytes(4).toString('hex');

describe('ledger across two worker_threads, local backend', () => {
  let host: LedgerHost;
  let backend: LocalQuotaStore;
  before(() => {
    host = new LedgerHost({ maxSlots: 1024, pollMs: 5 });
    backend = new LocalQuotaStore('local');
    host.attach('local', backend);
  });
  after(async () => {
    host.close();
    await backend.close();
  });

  it('2 × 2000 acquires on one counter overshoot by at most one request', async (t) => {
    const limit = 60_000;
    const counter: CounterSpec = { id: `ledger-${run}-exact`, limit, windowMs: 600_000, sliding: false };
    // The limit must be reached in one window: a window edge mid-run would start a fresh quota.
    await avoidWindowEdge(600, 30_000);
    const rs = await hammer(host, 'local', counter, { iterations: 2000, maxAmount: 100, actuals: 'exact', hold: 4 });
    host.poll();
    const total = sum(rs, (r) => r.admittedTokens);
    t.diagnostic(`admitted ${total} for ${limit}; delegated ${sum(rs, (r) => r.delegated)} of 4000 acquires`);
    assert.ok(sum(rs, (r) => r.denied) > 0, 'the limit was reached');
    assert.ok(total >= limit && total < limit + 100, `admitted ${total} tokens for a limit of ${limit}`);
    const v = backend.peek(counter, Date.now());
    assert.equal(v.consumed, total);
    assert.equal(v.reserved, 0);
    assertNoHolds(host);
    // Most admissions took the fast path (no message): the first ones of a window are delegated.
    assert.ok(sum(rs, (r) => r.delegated) < 4000 / 2, `delegated ${sum(rs, (r) => r.delegated)} of 4000`);
  });

  it('random actuals and releases: consumed equals the tokens settled, nothing stays reserved', async () => {
    const counter: CounterSpec = { id: `ledger-${run}-random`, limit: 1e12, windowMs: 600_000, sliding: true };
    const rs = await hammer(host, 'local', counter, { iterations: 2000, maxAmount: 500, actuals: 'random', hold: 16 });
    host.poll();
    const settled = [...settledByWindow(rs).values()].reduce((a, b) => a + b, 0);
    const v = backend.peek(counter, Date.now());
    assert.equal(v.reserved, 0);
    assert.ok(Math.abs(v.consumed - settled) < 1e-6 * settled + 1e-6 || windowsCrossed(counter), `consumed ${v.consumed}, settled ${settled}`);
    assertNoHolds(host);
  });

  it('short windows: usage rolls over and slots are freed once their windows are over', async () => {
    const counter: CounterSpec = { id: `ledger-${run}-short`, limit: 1e12, windowMs: 300, sliding: false };
    await hammer(host, 'local', counter, { iterations: 2000, maxAmount: 50, actuals: 'random', hold: 8 });
    host.poll();
    assertNoHolds(host);
    const before = slotsOf(host, counter.windowMs);
    assert.ok(before > 0);
    await until(() => {
      host.poll();
      return slotsOf(host, counter.windowMs) === 0;
    }, 'the slots to be freed');
    // The table is usable again after the frees.
    const client = await import('../../src/quota/shared/ledger-store.ts');
    const store: QuotaStore = new client.LedgerClient(host.descriptor(), (req) => host.handle(req)).storeFor('local', 'x');
    const g = await store.acquire([{ counter, amount: 5 }], Date.now());
    assert.equal(g.ok, true);
    if (g.ok) store.settle(g, [5]);
    host.poll();
    assert.equal(backend.peek(counter, Date.now()).consumed >= 0, true);
  });
});

/** A 600 s window could in theory be crossed mid-test; then totals are split across windows. */
function windowsCrossed(c: CounterSpec): boolean {
  const now = Date.now();
  return windowStartOf(now, c.windowMs) !== windowStartOf(now - 120_000, c.windowMs);
}

describe('ledger across two worker_threads, Redis backend', () => {
  let redis: RedisServerHandle;
  let host: LedgerHost;
  let backend: ReturnType<typeof redisStore>['store'];
  before(async () => {
    redis = await startRedis({ password: 'ledger-secret' });
    backend = redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 20, max_batch_keys: 1000, max_pending_keys: 100_000 } }).store;
    assert.ok(await backend.ready(10_000));
    host = new LedgerHost({ maxSlots: 1024, pollMs: 5 });
    host.attach('redis', backend);
  });
  after(async () => {
    host?.close();
    await backend?.close();
    await redis?.stop();
  });

  async function redisTotals(counter: CounterSpec, ws: number): Promise<{ c: number; reserved: number }> {
    const k = cellKeys(counterTag(counter.id), ws);
    const c = Number(await redisCall(redis, ['GET', k.c], { password: redis.password }) ?? 0);
    const fields = (await redisCall(redis, ['HGETALL', k.r], { password: redis.password })) as string[];
    let reserved = 0;
    for (let i = 1; i < fields.length; i += 2) reserved += Number(String(fields[i]).split(':')[2] ?? 0);
    return { c, reserved };
  }

  it('2 × 2000 acquires with random actuals over short windows: Redis totals equal the tokens settled', async (t) => {
    const counter: CounterSpec = { id: `ledger-${run}-redis`, limit: 1e12, windowMs: 200, sliding: false };
    const rs = await hammer(host, 'redis', counter, { iterations: 2000, maxAmount: 200, actuals: 'random', hold: 8 });
    host.poll();
    const flushed = await host.handle({ kind: 'flush', store: 'redis' });
    assert.equal(flushed.kind, 'flushed');
    const byWindow = settledByWindow(rs);
    t.diagnostic(`${byWindow.size} windows; delegated ${sum(rs, (r) => r.delegated)} of 4000 acquires`);
    assert.ok(byWindow.size >= 1);
    for (const [ws, tokens] of byWindow) {
      const totals = await redisTotals(counter, ws);
      assert.equal(totals.c, tokens, `window ${ws}`);
      assert.equal(totals.reserved, 0, `window ${ws} reserved`);
    }
    assertNoHolds(host);
    await until(() => {
      host.poll();
      return host.table.used === 0;
    }, 'the slots to be freed');
  });

  it('2 × 2000 acquires near a limit stay within one request (exact actuals)', async (t) => {
    const limit = 40_000;
    const counter: CounterSpec = { id: `ledger-${run}-redis-limit`, limit, windowMs: 600_000, sliding: false };
    // The limit must be reached in one window (as in the local case above).
    await avoidWindowEdge(600, 30_000);
    const rs = await hammer(host, 'redis', counter, { iterations: 2000, maxAmount: 100, actuals: 'exact', hold: 4 });
    host.poll();
    assert.equal((await host.handle({ kind: 'flush', store: 'redis' })).kind, 'flushed');
    const total = sum(rs, (r) => r.admittedTokens);
    t.diagnostic(`admitted ${total} for ${limit}; delegated ${sum(rs, (r) => r.delegated)} of 4000 acquires`);
    assert.ok(sum(rs, (r) => r.denied) > 0, 'the limit was reached');
    assert.ok(total >= limit && total < limit + 100, `admitted ${total} tokens for a limit of ${limit}`);
    const ws = windowStartOf(Date.now(), counter.windowMs);
    const totals = await redisTotals(counter, ws);
    if (!windowsCrossed(counter)) assert.equal(totals.c, total);
    assertNoHolds(host);
  });
});
