// A worker_thread for native-bench/ledger.bench.ts: `ops` acquire+settle pairs on one counter through a
// LedgerQuotaStore over the shared ledger (delegations go to the main thread through `port`). Starts when
// the barrier is released; posts the elapsed nanoseconds and how many acquires were delegated.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import type { LedgerDescriptor, LedgerReply, LedgerRequest } from '../../src/quota/shared/protocol.ts';
import type { CounterSpec } from '../../src/quota/types.ts';

const d = workerData as { desc: LedgerDescriptor; port: MessagePort; store: string; counter: CounterSpec; ops: number; barrier: Int32Array };
let seq = 0;
const waiting = new Map<number, (r: LedgerReply) => void>();
d.port.on('message', (m: { id: number; reply: LedgerReply }) => {
  waiting.get(m.id)?.(m.reply);
  waiting.delete(m.id);
});
const store = new LedgerClient(d.desc, (req: LedgerRequest) => new Promise<LedgerReply>((resolve) => {
  const id = ++seq;
  waiting.set(id, resolve);
  d.port.postMessage({ id, req });
})).storeFor(d.store, 'bench');
const items = [{ counter: d.counter, amount: 10 }];
// Warm up (and create the slot through one delegation).
for (let i = 0; i < 20_000; i++) {
  const r = await store.acquire(items, Date.now());
  if (r.ok) store.settle(r, [7]);
}
parentPort!.postMessage({ ready: true });
Atomics.wait(d.barrier, 0, 0, 60_000);
let delegated = 0;
const t0 = process.hrtime.bigint();
for (let i = 0; i < d.ops; i++) {
  let r = store.acquire(items, Date.now());
  if (r instanceof Promise) {
    delegated++;
    r = await r;
  }
  if (r.ok) store.settle(r, [7]);
}
const ns = Number(process.hrtime.bigint() - t0);
parentPort!.postMessage({ ns, delegated });
d.port.close();
