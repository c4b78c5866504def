// A worker_thread for the ledger tests and bench. workerData.mode:
//  - 'hammer': a LedgerQuotaStore over the shared ledger (delegating through `port`) runs `iterations`
//    acquires of random amounts on one counter, keeping up to `hold` grants open and settling them with
//    random actuals (or releasing some); posts its totals per window.
//  - 'lock': `iterations` lock/unlock pairs, each incrementing a plain (non-atomic) shared counter.
//  - 'lock-and-exit': takes the lock and exits without releasing it.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { LedgerTable, F_BASE_C, SLOT_FIELDS } from '../../src/quota/shared/ledger.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import type { LedgerDescriptor, LedgerReply, LedgerRequest } from '../../src/quota/shared/protocol.ts';
import type { CounterSpec, Grant } from '../../src/quota/types.ts';

interface HammerData {
  mode: 'hammer';
  desc: LedgerDescriptor;
  port: MessagePort;
  store: string;
  counter: CounterSpec;
  iterations: number;
  maxAmount: number;
  /** 'exact': actual = reserved, never released; 'random': actual in [0, 2·amount], 1 in 5 released. */
  actuals: 'exact' | 'random';
  hold: number;
  /** Wait for a 'go' message before starting (so threads start together). */
  barrier: Int32Array;
}

interface LockData {
  mode: 'lock' | 'lock-and-exit';
  desc: LedgerDescriptor;
  iterations: number;
  slot: number;
}

const data = workerData as HammerData | LockData;

if (data.mode === 'lock' || data.mode === 'lock-and-exit') {
  const t = new LedgerTable(data.desc);
  if (data.mode === 'lock-and-exit') {
    t.lock();
    parentPort!.postMessage({ locked: true });
  } else {
    const o = data.slot * SLOT_FIELDS + F_BASE_C;
    for (let i = 0; i < data.iterations; i++) {
      t.lock();
      t.f64[o] = t.f64[o]! + 1;
      t.unlock();
    }
    parentPort!.postMessage({ done: true });
  }
} else {
  await hammer(data as HammerData);
}

async function hammer(d: HammerData): Promise<void> {
  let seq = 0;
  const waiting = new Map<number, (r: LedgerReply) => void>();
  d.port.on('message', (m: { id: number; reply: LedgerReply }) => {
    waiting.get(m.id)?.(m.reply);
    waiting.delete(m.id);
  });
  const delegate = (req: LedgerRequest): Promise<LedgerReply> => new Promise((resolve) => {
    const id = ++seq;
    waiting.set(id, resolve);
    d.port.postMessage({ id, req });
  });
  const client = new LedgerClient(d.desc, delegate);
  const store = client.storeFor(d.store, 'ledger');
  Atomics.wait(d.barrier, 0, 0, 10_000);
  const open: Grant[] = [];
  /** Per window start: tokens settled (actuals), reserved by admissions. */
  const settled: Record<string, number> = {};
  let admitted = 0;
  let admittedTokens = 0;
  let denied = 0;
  let delegated = 0;
  let maxAmountSeen = 0;
  const finish = (g: Grant): void => {
    const e = g.entries[0]!;
    if (d.actuals === 'random' && Math.random() < 0.2) {
      store.release(g);
      return;
    }
    const actual = d.actuals === 'exact' ? e.reserved : Math.floor(Math.random() * 2 * e.reserved);
    store.settle(g, [actual]);
    settled[e.windowStart] = (settled[e.windowStart] ?? 0) + actual;
  };
  for (let i = 0; i < d.iterations; i++) {
    const amount = 1 + Math.floor(Math.random() * d.maxAmount);
    maxAmountSeen = Math.max(maxAmountSeen, amount);
    const r0 = store.acquire([{ counter: d.counter, amount }], Date.now());
    if (r0 instanceof Promise) delegated++;
    const r = await r0;
    if (r.ok) {
      admitted++;
      admittedTokens += amount;
      open.push(r);
      if (open.length > d.hold) finish(open.splice(Math.floor(Math.random() * open.length), 1)[0]!);
    } else {
      denied++;
    }
  }
  for (const g of open) finish(g);
  parentPort!.postMessage({ settled, admitted, admittedTokens, denied, delegated, maxAmountSeen });
  d.port.close();
}
