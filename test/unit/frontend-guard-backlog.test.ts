// limits.listen_backlog: connections the kernel holds accepted for the guard while its thread is busy. A burst past
// node's default (511) used to have its SYNs dropped, each client waiting a 1 s retransmit. Here the guard's thread
// is blocked (Atomics.wait) while a worker thread opens a burst of connections: the kernel completes the handshakes
// of those the accept queue can hold and drops the others', so the worker's count of connected sockets is the
// queue's size, whatever the machine's speed.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';
import { okGuard } from '../helpers/ok-guard.ts';
import { startGateway } from '../helpers/gateway.ts';

const T = { timeout: 90_000 };
const BURST = 1200;

/** The kernel caps every backlog at net.core.somaxconn (4096 on Linux 5.4 and later). */
function somaxconn(): number {
  try { return Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim()); } catch { return 0; }
}
/** This process's descriptor limit (node raises the soft limit to the hard one at start). */
function openFiles(): number {
  try { return Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? 0); } catch { return 0; }
}
// The burst's sockets and the guard's accepted ends all live in this process.
const SKIP = somaxconn() < BURST + 100 ? `net.core.somaxconn (${somaxconn()}) is below the burst of ${BURST}`
  : openFiles() < 3 * BURST ? `the descriptor limit (${openFiles()}) is below ${3 * BURST}` : false;

// Opens `n` connections, counts those that connect, and reports once all have or `waitMs` has passed.
const BURST_WORKER = `
const { connect } = require('node:net');
const { workerData } = require('node:worker_threads');
const { port, n, waitMs, shared } = workerData;
const cell = new Int32Array(shared);
const sockets = [];
let connected = 0;
let done = false;
const report = () => {
  if (done) return;
  done = true;
  clearTimeout(timer);
  Atomics.store(cell, 1, connected);
  Atomics.store(cell, 0, 1);
  Atomics.notify(cell, 0);
  for (const s of sockets) s.destroy();
};
const timer = setTimeout(report, waitMs);
for (let i = 0; i < n; i++) {
  const s = connect(port, '127.0.0.1', () => { if (++connected === n) report(); });
  s.on('error', () => {});
  sockets.push(s);
}
`;

/**
 * Blocks this thread (and so the guard listening in it) while a worker opens `n` connections to `port`; resolves
 * with how many connected before this thread could accept any.
 */
async function burstWhileBlocked(port: number, n: number, waitMs: number): Promise<number> {
  const shared = new SharedArrayBuffer(8);
  const cell = new Int32Array(shared);
  const worker = new Worker(BURST_WORKER, { eval: true, workerData: { port, n, waitMs, shared } });
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  // The worker needs nothing from this thread to run; waitMs bounds it, and this wait bounds everything.
  const woke = Atomics.wait(cell, 0, 0, waitMs + 60_000);
  const connected = Atomics.load(cell, 1);
  await exited;
  assert.notEqual(woke, 'timed-out', 'the burst worker reported');
  return connected;
}

it(`the default backlog (4096) queues a burst of ${BURST} connections made while the guard's thread is busy`, { ...T, skip: SKIP }, async () => {
  const guard = okGuard(GUARD_LIMITS);
  try {
    const port = await guard.listen('127.0.0.1', 0);
    // Every one connects: none waits for a SYN retransmit. Node's default of 511 held 512 of them.
    assert.equal(await burstWhileBlocked(port, BURST, 30_000), BURST);
  } finally {
    guard.close();
  }
});

it('a small backlog holds only that many: the setting reaches listen(2)', { ...T, skip: SKIP }, async () => {
  const guard = okGuard({ ...GUARD_LIMITS, listen_backlog: 64 });
  try {
    const port = await guard.listen('127.0.0.1', 0);
    const connected = await burstWhileBlocked(port, BURST, 3_000);
    assert.ok(connected > 0 && connected <= 2 * 64, `${connected} connected with a backlog of 64`);
  } finally {
    guard.close();
  }
});

it('the gateway takes limits.listen_backlog from its config', { ...T, skip: SKIP }, async () => {
  const small = await startGateway({ limits: { listen_backlog: 64 } });
  try {
    const connected = await burstWhileBlocked(Number(new URL(small.url).port), BURST, 3_000);
    assert.ok(connected > 0 && connected <= 2 * 64, `${connected} connected with a backlog of 64`);
  } finally {
    await small.close();
  }
  const dflt = await startGateway({});
  try {
    assert.equal(await burstWhileBlocked(Number(new URL(dflt.url).port), BURST, 30_000), BURST);
  } finally {
    await dflt.close();
  }
});
