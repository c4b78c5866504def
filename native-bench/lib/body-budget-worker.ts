// A worker_thread for native-bench/body-budget.bench.ts: `ops` reserve+release pairs on the process-wide body
// budget (one shared cell). Starts when the barrier is released; posts the elapsed nanoseconds.
import { parentPort, workerData } from 'node:worker_threads';
import { SharedByteBudget } from '../../src/core/byte-budget.ts';
import { createMetrics } from '../../src/metrics/registry.ts';

const d = workerData as { cell: SharedArrayBuffer; max: number; ops: number; barrier: Int32Array };
const budget = new SharedByteBudget(d.cell, d.max, createMetrics({ defaultMetrics: false }).bodyBytesInFlight);
let refused = 0;
const run = (ops: number): void => {
  for (let i = 0; i < ops; i++) {
    const n = 1000 + (i & 1023);
    if (budget.tryReserve(n)) budget.release(n);
    else refused++;
  }
};
run(200_000);
parentPort!.postMessage({ ready: true });
Atomics.wait(d.barrier, 0, 0, 60_000);
const t0 = process.hrtime.bigint();
run(d.ops);
parentPort!.postMessage({ ns: Number(process.hrtime.bigint() - t0), refused });
