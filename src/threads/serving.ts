// A serving thread (workers > 1): its own uWS App, Gateway, upstream client, metrics registry and lazily
// started tokenizer pool, serving requests with a snapshot built from the config the main thread sends. Quota
// stores are views of the process ledger (src/quota/shared/): admissions are decided here on shared memory;
// what the ledger cannot decide locally goes to the main thread's backends as a `ledger` message.
import { parentPort, workerData } from 'node:worker_threads';
import { log } from '../core/log.ts';
import { SluiceError } from '../core/errors.ts';
import { startFrontend, ListenError, type Listening } from '../frontend/server.ts';
import { createMetrics } from '../metrics/registry.ts';
import { metricsJson } from '../metrics/aggregate.ts';
import { Gateway } from '../pipeline/gateway.ts';
import type { SluiceConfig } from '../config/types.ts';
import { buildSnapshot, type QuotaSource, type Snapshot, type StoreResolver } from '../pipeline/snapshot.ts';
import { LedgerClient } from '../quota/shared/ledger-store.ts';
import type { LedgerReply, LedgerRequest } from '../quota/shared/protocol.ts';
import type { QuotaStore } from '../quota/types.ts';
import { warmTokenizers } from '../tokens/encoding.ts';
import { createServingParts } from './serving-parts.ts';
import type { FromThread, ThreadInit, ToThread } from './protocol.ts';
import { quotaSources, type StoreMap } from './store-key.ts';

/** A delegated quota decision the main thread has not answered by then fails the request with 503. */
const LEDGER_TIMEOUT_MS = 30_000;
/**
 * The request itself gives up after LEDGER_TIMEOUT_MS (LedgerClient), which still takes a later answer (a late
 * grant is released at once). A reply still missing after this long is dropped, so the pending map stays bounded.
 */
const LEDGER_FORGET_MS = 4 * LEDGER_TIMEOUT_MS;

if (parentPort === null) throw new Error('src/threads/serving.ts runs as a worker thread only');
const port = parentPort;
const init = workerData as ThreadInit;
const post = (m: FromThread): void => port.postMessage(m);

async function waitUntil(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

const pendingLedger = new Map<number, { resolve: (r: LedgerReply) => void; timer: NodeJS.Timeout }>();
let nextLedgerId = 1;

function delegate(req: LedgerRequest): Promise<LedgerReply> {
  return new Promise((resolve) => {
    const id = nextLedgerId++;
    const timer = setTimeout(() => {
      pendingLedger.delete(id);
      resolve({ kind: 'error', code: 'SLC_QUOTA_STORE_UNAVAILABLE', message: `the main thread did not answer a quota request within ${LEDGER_FORGET_MS} ms` });
    }, LEDGER_FORGET_MS);
    pendingLedger.set(id, { resolve, timer });
    post({ kind: 'ledger', id, req });
  });
}

function start(): void {
  const config = init.config;
  warmTokenizers();
  const metrics = createMetrics({ defaultMetrics: false });
  const { upstream, pool } = createServingParts(config, metrics, init.answerBudget);
  const ledger = new LedgerClient(init.ledger, delegate, { timeoutMs: LEDGER_TIMEOUT_MS });
  // Quota plugins are found by their path in the config the thread built from (see store-key.ts).
  let stores = init.stores;
  let pathOf = new Map<QuotaSource, string>();
  const views = new Map<string, QuotaStore>();
  const resolver: StoreResolver = {
    storeFor(source) {
      const s = stores[pathOf.get(source) ?? ''];
      if (s === undefined) throw new Error('quota plugin without a store from the main thread');
      const k = `${s.key}\n${s.label}`;
      let v = views.get(k);
      if (v === undefined) {
        v = ledger.storeFor(s.key, s.label);
        views.set(k, v);
      }
      return v;
    },
  };
  const build = (cfg: SluiceConfig, map: StoreMap): Snapshot => {
    stores = map;
    pathOf = new Map(quotaSources(cfg).map(([path, source]) => [source, path]));
    const snap = buildSnapshot(cfg, resolver);
    // Views of stores the new config no longer names stay with the snapshots holding them, not in the cache.
    const live = new Set(Object.values(map).map((s) => `${s.key}\n${s.label}`));
    for (const k of views.keys()) if (!live.has(k)) views.delete(k);
    return snap;
  };
  const versionOf = new WeakMap<Snapshot, number>();
  let first: Snapshot;
  try {
    first = build(config, init.stores);
  } catch (err) {
    post({ kind: 'failed', message: err instanceof Error ? err.message : String(err) });
    return;
  }
  versionOf.set(first, init.version);
  const gateway = new Gateway(first, {
    metrics, upstream, pool,
    onSnapshotRetired: (snap) => {
      const version = versionOf.get(snap);
      if (version !== undefined) post({ kind: 'retired', version });
    },
  });
  let front: Listening | undefined;

  const onMessage = async (msg: ToThread): Promise<void> => {
    switch (msg.kind) {
      case 'ledger-reply': {
        const p = pendingLedger.get(msg.id);
        if (p === undefined) return;
        pendingLedger.delete(msg.id);
        clearTimeout(p.timer);
        p.resolve(msg.reply);
        return;
      }
      case 'listen': {
        try {
          front = await startFrontend(gateway, {
            host: msg.spec.host, port: msg.spec.port, limits: config.limits, metrics,
            http1Guard: msg.spec.guard, reusePort: !msg.spec.guard, bodyBudget: init.bodyBudget,
            ...(msg.spec.shareFd !== undefined ? { shareFd: msg.spec.shareFd } : {}),
          });
          // The first guarded thread's socket is what the others share (ListenSpec.shareFd).
          const fd = msg.spec.guard && msg.spec.shareFd === undefined ? front.shareableFd?.() : undefined;
          post({ kind: 'listening', id: msg.id, port: front.port, ...(fd !== undefined ? { fd } : {}) });
        } catch (err) {
          post({ kind: 'listen-failed', id: msg.id, code: err instanceof ListenError ? err.code : 'UNKNOWN', message: err instanceof Error ? err.message : String(err) });
        }
        return;
      }
      case 'swap': {
        try {
          const snap = build(msg.config, msg.stores);
          versionOf.set(snap, msg.version);
          gateway.swap(snap);
          post({ kind: 'swapped', id: msg.id, version: msg.version });
        } catch (err) {
          post({ kind: 'swap-failed', id: msg.id, version: msg.version, message: err instanceof Error ? err.message : String(err) });
        }
        return;
      }
      case 'metrics':
        post({ kind: 'metrics-reply', id: msg.id, metrics: await metricsJson(metrics.registry) });
        return;
      case 'stop-listening':
        front?.stopListening();
        post({ kind: 'stopped-listening', id: msg.id });
        return;
      case 'quiesce':
        await front?.quiesce?.(msg.graceMs);
        post({ kind: 'quiesced', id: msg.id });
        return;
      case 'drain': {
        gateway.draining = true;
        // Uploads still arriving are in flight too: they get the drain time to finish and reach the gateway.
        await waitUntil(() => gateway.inFlight === 0 && (front?.receiving?.() ?? 0) === 0, msg.drainMs);
        const uploads = front?.cutReceiving?.() ?? 0;
        if (uploads > 0) log.warn('drain time over; answering 503 to requests whose body was still arriving', { thread: init.index, requests: uploads });
        let cut = 0;
        if (gateway.inFlight > 0) {
          // Cut and settle before the main thread flushes the stores: the flush must carry these charges.
          cut = gateway.cutAll();
          log.warn('drain time over; cutting requests still running and charging what they produced', { thread: init.index, cut, drain_timeout_ms: msg.drainMs });
          await waitUntil(() => gateway.inFlight === 0, msg.settleMs);
        }
        post({ kind: 'drained', id: msg.id, cut, left: gateway.inFlight });
        return;
      }
      case 'stall':
        // Synchronously, as a thread stuck in a long computation would be: messages after it wait their turn.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, msg.ms);
        return;
      case 'crash':
        // Outside this handler, so it reaches the thread's uncaughtException handler as a real fault would.
        setImmediate(() => { throw new Error(msg.message); });
        return;
      case 'close': {
        front?.close();
        await Promise.allSettled([pool.close(), upstream.close()]);
        for (const p of pendingLedger.values()) {
          clearTimeout(p.timer);
          p.resolve({ kind: 'error', code: 'SLC_SHUTTING_DOWN', message: new SluiceError('SLC_SHUTTING_DOWN').message });
        }
        pendingLedger.clear();
        post({ kind: 'closed', id: msg.id });
        port.close();
        return;
      }
    }
  };
  // A thread must not end with its uWS App open (uWS's loop teardown aborts the whole process), so an uncaught
  // error closes the App and reports it; the main thread then ends the process (exit status 1).
  let crashed = false;
  const crash = (err: unknown): void => {
    if (crashed) return;
    crashed = true;
    try { front?.close(); } catch { /* closing what is left */ }
    gateway.draining = true;
    post({ kind: 'crashed', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) });
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
  port.on('message', (msg: ToThread) => {
    onMessage(msg).catch(crash);
  });
  post({ kind: 'ready' });
}

start();
