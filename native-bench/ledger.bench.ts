// The serving-thread quota ledger (issue 11): µs per acquire+settle on one counter for the plain
// LocalQuotaStore (one thread, no ledger) against a LedgerQuotaStore's fast path (slot in the shared table,
// one Atomics lock, no message), on one thread and with two threads contending for the same counter; and
// the RSS the table costs (sized for limits.max_quota_keys, pages untouched until used). Ratios within one run.
//
// Usage: node --import tsx native-bench/ledger.bench.ts [--quick]
// Bounded: a few seconds per section; the worker threads are terminated at the end.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { LocalQuotaStore } from '../src/quota/local-store.ts';
import { LedgerHost } from '../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../src/quota/shared/ledger-store.ts';
import type { LedgerRequest } from '../src/quota/shared/protocol.ts';
import type { CounterSpec, QuotaStore } from '../src/quota/types.ts';
import { fmt, median, table } from './lib/stats.ts';
import { runTogether, tsWorker } from './lib/together.ts';

const QUICK = process.argv.includes('--quick');
const OPS = QUICK ? 100_000 : 500_000;
const ROUNDS = QUICK ? 3 : 5;
const WORKER = new URL('./lib/ledger-bench-worker.ts', import.meta.url);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const counter: CounterSpec = { id: 'route-1/arl/c/consumer-000001/', limit: 1e15, windowMs: 3_600_000, sliding: false };

function loop(store: QuotaStore, ops: number): number {
  const items = [{ counter, amount: 10 }];
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) {
    const r = store.acquire(items, Date.now());
    if (r instanceof Promise) throw new Error('not on the fast path');
    if (r.ok) store.settle(r, [7]);
  }
  return Number(process.hrtime.bigint() - t0) / ops / 1000;
}

/** A worker with tsx registered (a worker's entry does not go through `--import tsx`'s hooks on Node 20). */

async function threads(host: LedgerHost, n: number, ops: number): Promise<{ usPerOp: number; delegated: number }> {
  const ports: MessagePort[] = [];
  const rs = await runTogether<{ ns: number; delegated: number }>(n, (_i, barrier) => {
    const { port1, port2 } = new MessageChannel();
    ports.push(port1);
    port1.on('message', (m: { id: number; req: LedgerRequest }) => {
      void host.handle(m.req).then((reply) => port1.postMessage({ id: m.id, reply }));
    });
    return tsWorker(WORKER, { workerData: { desc: host.descriptor(), port: port2, store: 'bench', counter, ops, barrier }, transferList: [port2] });
  });
  for (const p of ports) p.close();
  // Per thread: the mean time per op of each thread (they run concurrently).
  return { usPerOp: rs.reduce((a, r) => a + r.ns / ops / 1000, 0) / n, delegated: rs.reduce((a, r) => a + r.delegated, 0) };
}

async function main(): Promise<void> {
  const local = new LocalQuotaStore('local');
  const backend = new LocalQuotaStore('ledger-backend');
  const host = new LedgerHost({ maxSlots: 1024 });
  host.attach('bench', backend);
  const ledger = new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('bench', 'bench');
  const g = await ledger.acquire([{ counter, amount: 1 }], Date.now());
  if (g.ok) ledger.settle(g, [1]);
  // Warm up both.
  loop(local, 50_000);
  loop(ledger, 50_000);
  const localUs: number[] = [];
  const ledgerUs: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    gc();
    localUs.push(loop(local, OPS));
    gc();
    ledgerUs.push(loop(ledger, OPS));
    host.poll();
  }
  const one = await threads(host, 1, OPS);
  const two = await threads(host, 2, OPS);
  host.poll();
  const l = median(localUs);
  const f = median(ledgerUs);
  console.log(`acquire+settle on one counter, ${OPS} ops × ${ROUNDS} rounds (median), µs/op:`);
  console.log(table([
    ['store', 'µs/op', '× local'],
    ['LocalQuotaStore (main thread, no ledger)', fmt(l, 3), '1.00'],
    ['LedgerQuotaStore fast path (main thread)', fmt(f, 3), fmt(f / l, 2)],
    ['LedgerQuotaStore, 1 worker thread', fmt(one.usPerOp, 3), fmt(one.usPerOp / l, 2)],
    ['LedgerQuotaStore, 2 worker threads contending (per thread)', fmt(two.usPerOp, 3), fmt(two.usPerOp / l, 2)],
  ]));
  console.log(`delegated acquires during the timed loops: 1 thread ${one.delegated}, 2 threads ${two.delegated}`);
  console.log(`2 threads: ${fmt(2 / two.usPerOp, 2)} M ops/s together vs ${fmt(1 / one.usPerOp, 2)} M ops/s for one (× ${fmt(one.usPerOp * 2 / two.usPerOp, 2)})`);
  const v = backend.peek(counter, Date.now());
  console.log(`backend after the run: reserved ${v.reserved} (expect 0), lock takeovers ${host.table.steals}`);
  host.close();
  await backend.close();
  await local.close();

  // RSS of the table: sized for 200,000 slots (2 × limits.max_quota_keys default), then filled in part.
  gc();
  const r0 = process.memoryUsage().rss;
  const big = new LedgerHost({ maxSlots: 200_000 });
  gc();
  const r1 = process.memoryUsage().rss;
  const b = new LocalQuotaStore('rss', { maxKeys: 200_000 });
  big.attach('rss', b);
  const st = new LedgerClient(big.descriptor(), (r) => big.handle(r)).storeFor('rss', 'rss');
  const rows: string[][] = [['state', 'RSS MB', 'Δ MB']];
  rows.push(['table for 200,000 slots created', fmt(r1 / 1048576), fmt((r1 - r0) / 1048576)]);
  const now = Date.now();
  let done = 0;
  for (const n of [10_000, 100_000]) {
    for (; done < n; done++) {
      const r = await st.acquire([{ counter: { ...counter, id: `k-${done}` }, amount: 1 }], now);
      if (r.ok) st.settle(r, [1]);
    }
    big.poll();
    gc();
    const r = process.memoryUsage().rss;
    rows.push([`${n} slots in use (local backend counters included)`, fmt(r / 1048576), fmt((r - r0) / 1048576)]);
  }
  console.log(`\nshared table: ${fmt(big.descriptor().sab.byteLength / 1048576)} MB reserved (SharedArrayBuffer)`);
  console.log(table(rows));
  big.close();
  await b.close();
}

await main();
