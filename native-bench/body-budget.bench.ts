// limits.max_inflight_body_bytes: ns per reserve+release (with the gauge update the front end does) for the
// one-loop budget (workers: 1, a plain counter) against the process-wide budget of serving threads (one
// SharedArrayBuffer cell, compare-and-swap; an Int32 cell up to 2 GiB − 1, BigInt64 above), on one thread and
// with two threads on one cell. Ratios within one run.
//
// Usage: node --import tsx native-bench/body-budget.bench.ts [--quick]
// Bounded: a few seconds; the worker threads end by themselves (and are terminated at the end).
import { LocalByteBudget, SharedByteBudget, byteBudgetCell, type ByteBudget } from '../src/core/byte-budget.ts';
import { createMetrics } from '../src/metrics/registry.ts';
import { fmt, median, table } from './lib/stats.ts';
import { runTogether, tsWorker } from './lib/together.ts';

const QUICK = process.argv.includes('--quick');
const OPS = QUICK ? 1_000_000 : 5_000_000;
const ROUNDS = QUICK ? 3 : 7;
const MAX = 64 * 1024 * 1024;
const BIG_MAX = 4 * 1024 * 1024 * 1024;
const WORKER = new URL('./lib/body-budget-worker.ts', import.meta.url);

function loop(b: ByteBudget, ops: number): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < ops; i++) {
    const n = 1000 + (i & 1023);
    if (b.tryReserve(n)) b.release(n);
  }
  return Number(process.hrtime.bigint() - t0) / ops;
}

/** Mean ns per op of each of `n` threads running at once on one cell. */
async function threads(n: number, max: number): Promise<{ ns: number; refused: number }> {
  const cell = byteBudgetCell();
  const rs = await runTogether<{ ns: number; refused: number }>(n, (_i, barrier) => tsWorker(WORKER, { workerData: { cell, max, ops: OPS, barrier } }));
  const left = new SharedByteBudget(cell, max, undefined).total();
  if (left !== 0) throw new Error(`the shared budget holds ${left} bytes after the run`);
  return { ns: rs.reduce((a, r) => a + r.ns / OPS, 0) / n, refused: rs.reduce((a, r) => a + r.refused, 0) };
}

async function main(): Promise<void> {
  const gauge = createMetrics({ defaultMetrics: false }).bodyBytesInFlight;
  const budgets: [string, ByteBudget][] = [
    ['local counter (workers: 1)', new LocalByteBudget(MAX, gauge)],
    ['shared Int32 cell, CAS (serving threads)', new SharedByteBudget(byteBudgetCell(), MAX, gauge)],
    ['shared BigInt64 cell (limit > 2 GiB − 1)', new SharedByteBudget(byteBudgetCell(), BIG_MAX, gauge)],
  ];
  for (const [, b] of budgets) loop(b, 200_000);
  const ns = budgets.map(() => [] as number[]);
  for (let r = 0; r < ROUNDS; r++) budgets.forEach(([, b], i) => ns[i]!.push(loop(b, OPS)));
  const one = await threads(1, MAX);
  const two = await threads(2, MAX);
  const base = median(ns[0]!);
  const rows: string[][] = [['budget', 'ns/op', '× local']];
  budgets.forEach(([name], i) => rows.push([name, fmt(median(ns[i]!), 1), fmt(median(ns[i]!) / base, 2)]));
  rows.push(['shared Int32 cell, 1 worker thread', fmt(one.ns, 1), fmt(one.ns / base, 2)]);
  rows.push(['shared Int32 cell, 2 worker threads on one cell (per thread)', fmt(two.ns, 1), fmt(two.ns / base, 2)]);
  console.log(`reserve+release with the gauge update, ${OPS} ops × ${ROUNDS} rounds (median), ns/op:`);
  console.log(table(rows));
  console.log(`refused during the thread runs (expect 0): ${one.refused + two.refused}`);
}

await main();
