// Composition root: the one place that names concrete implementations (uWS front end, undici client,
// piscina pool, local or Redis quota stores) and wires them into a running gateway.
import type { SluiceConfig } from './config/types.ts';
import { log } from './core/log.ts';
import { configWarnings, reloadConflicts, reloadWarnings, restartOnlyChanges } from './config/warnings.ts';
import { ConfigError } from './config/issues.ts';
import { startAdmin, startFrontend, type Listening } from './frontend/server.ts';
import { aggregateMetrics, metricsJson, metricsText, type MetricsJson } from './metrics/aggregate.ts';
// A taken listen/admin port rejects startSluice with this (message names the address and the errno code).
export { ListenError } from './frontend/server.ts';
import { createMetrics, removeStoreSeries, type Metrics } from './metrics/registry.ts';
import { Gateway } from './pipeline/gateway.ts';
import { buildSnapshot, type QuotaSource, type Snapshot, type StoreResolver } from './pipeline/snapshot.ts';
import { createQuotaStore } from './quota/index.ts';
import type { QuotaStore } from './quota/types.ts';
import { createServingParts } from './threads/serving-parts.ts';
import { warmTokenizers } from './tokens/encoding.ts';
import { LedgerHost, ledgerSlotsFor } from './quota/shared/ledger-host.ts';
import { ThreadSupervisor, type MainSnapshot } from './threads/supervisor.ts';
import { LOCAL_STORE_KEY, quotaSources, quotaStoreKey } from './threads/store-key.ts';

export interface SluiceHandle {
  readonly port: number;
  readonly adminPort: number;
  /** The main thread's metrics (with workers > 1: not the serving threads'; /metrics sums them all). */
  readonly metrics: Metrics;
  /** The gateway serving on the main thread. With workers > 1 there is none (reading it throws). */
  readonly gateway: Gateway;
  /** With workers > 1: the serving threads. */
  readonly threads?: ServingThreads;
  /** Swap in a new validated config; the old one stays when building the new snapshot fails. With workers > 1
   *  the swap on the threads completes asynchronously (reloadFrom's log line and metric say when). */
  reload(config: SluiceConfig): void;
  /** Load a config and swap it in; a failure to load or to build is logged and counted, and the old config stays. */
  reloadFrom(load: () => SluiceConfig): boolean;
  /**
   * Stop accepting, let in-flight requests finish for up to `drainMs` (default shutdown.drain_timeout_ms),
   * then cut what still runs and settle it, and only then flush and close the quota stores.
   */
  close(opts?: { drainMs?: number }): Promise<void>;
}

export interface ServingThreads {
  readonly count: number;
  /** Each serving thread's own registry as JSON, in thread order (tests check that every thread served). */
  perThreadMetrics(): Promise<MetricsJson[]>;
  /** Resolves once the last reload has been answered by every thread. */
  settled(): Promise<void>;
  /**
   * Make serving thread `index` throw an uncaught error, as a bug in it would: the process then fails as on
   * any thread crash (onThreadFailure; by default it logs and exits 1). For tests of that path; not reachable
   * from the network or the config.
   */
  crash(index: number): void;
  /** Block serving thread `index`'s loop for `ms`, as a long computation would (tests of late answers). */
  stall(index: number, ms: number): void;
}

export interface StartOptions {
  /** Override listen/admin ports (tests pass 0 for ephemeral ports). */
  readonly port?: number;
  readonly adminPort?: number;
  readonly defaultMetrics?: boolean;
  /** workers > 1: a serving thread died. Default: log it and exit the process with status 1 (never serve on
   *  fewer threads than configured). */
  readonly onThreadFailure?: (err: Error) => void;
  /** Tests only, never from the config: shorter waits to reach timeout paths. */
  readonly testHooks?: { readonly swapTimeoutMs?: number };
}

/** After a cut at shutdown, how long settling (counting the streamed text) may take before stores close anyway. */
const SETTLE_AFTER_CUT_MS = 10_000;
/** How long shutdown waits for the HTTP/1.x guard to pass on the last bytes of answers that have ended. */
const QUIESCE_MS = 2_000;
/** At shutdown, how long a Redis store keeps trying to write its last usage while Redis is away (restarting,
 *  failing over) before that usage is logged as lost. */
const SHUTDOWN_FLUSH_MS = 5_000;
/** A store a reload retired, in a process that goes on: how long it keeps trying to write what it holds. */
const RETIRED_FLUSH_MS = 10 * 60_000;
/** workers > 1: after a serving thread failed, how long the stores' final flush may take before the exit. */
const FATAL_FLUSH_MS = 10_000;

/**
 * A reload applied: said once, with the settings it could not apply (against `started`, the config the process
 * runs them from), what it changed from `prev` (the config served until now) that counters feel, and the new
 * config's warnings.
 */
function logReloaded(started: SluiceConfig, prev: SluiceConfig, next: SluiceConfig, fields: Record<string, unknown>): void {
  log.info('config reloaded', { routes: next.routes.length, ...fields });
  const later = restartOnlyChanges(started, next);
  if (later.length > 0) log.warn('config reloaded without these changed settings; they apply at restart', { settings: later });
  for (const w of reloadWarnings(prev, next)) log.warn('config reload warning', { path: w.path, message: w.message });
  for (const w of configWarnings(next)) log.warn('config warning', { path: w.path, message: w.message });
}

async function waitUntil(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

/**
 * Quota stores, keyed by Redis target and degradation mode, shared by every snapshot that names the same
 * key, so a reload keeps every counter. Each snapshot holds a reference on the stores it uses from when it is
 * built until the gateway retires it (swapped out and its last request finished); a store no snapshot
 * references any more is closed then (its close() flushes its deltas).
 */
class StoreRegistry implements StoreResolver {
  /** `ledgerKey`: the store's name in the threads' ledger, new for each store made, so a store made again under
   *  a key (a reload away from a Redis target and back) never meets the slots its predecessor's threads charged. */
  private readonly stores = new Map<string, { store: QuotaStore; refs: number; ledgerKey: string }>();
  private readonly keysOf = new WeakMap<Snapshot, readonly string[]>();
  private readonly closing = new Map<Promise<void>, QuotaStore>();
  /** Keys used by the snapshot being built. */
  private building: Set<string> | undefined;
  private created = 0;
  private made = 0;
  private config: SluiceConfig;
  private readonly metrics: Metrics;
  private readonly ledger: LedgerHost | undefined;

  /** `ledger` (workers > 1): every store is attached to it while it exists, for the serving threads' views. */
  constructor(config: SluiceConfig, metrics: Metrics, ledger?: LedgerHost) {
    this.config = config;
    this.metrics = metrics;
    this.ledger = ledger;
  }

  /** Build a snapshot of `config` holding references on its stores; throws (closing stores made for it) on failure. */
  build(config: SluiceConfig): Snapshot {
    const previous = this.config;
    this.config = config;
    const keys = new Set<string>();
    this.building = keys;
    try {
      const snap = buildSnapshot(config, this);
      for (const k of keys) this.stores.get(k)!.refs++;
      this.keysOf.set(snap, [...keys]);
      return snap;
    } catch (err) {
      this.config = previous;
      this.closeUnreferenced();
      throw err;
    } finally {
      this.building = undefined;
    }
  }

  /** The snapshot is out of use: drop its references and close stores nobody references. */
  retire(snap: Snapshot): void {
    const keys = this.keysOf.get(snap);
    if (keys === undefined) return;
    this.keysOf.delete(snap);
    for (const k of keys) {
      const e = this.stores.get(k);
      if (e !== undefined) e.refs--;
    }
    this.closeUnreferenced();
  }

  private closeUnreferenced(): void {
    for (const [k, e] of this.stores) {
      // The local store's counters live only here: it stays for the process's life, so a reload that drops every
      // local quota and a later one that brings them back do not hand the spent tokens out again.
      if (e.refs > 0 || k === LOCAL_STORE_KEY) continue;
      this.stores.delete(k);
      // What the threads charged to it is folded in before its final flush (its snapshots' requests have ended).
      this.ledger?.poll();
      this.ledger?.detach(e.ledgerKey);
      log.info('quota store no longer used; closing it', { store: e.store.name });
      const name = e.store.name;
      // The process goes on: a Redis away for now gets minutes to come back before the store's usage is lost.
      const p = e.store.close(RETIRED_FLUSH_MS).catch((err: unknown) => log.error('closing a quota store failed', { store: name, err }))
        // Its series go once it is closed (nothing updates them any more), unless a live store took the label.
        .then(() => (this.all().some((s) => s.name === name) ? undefined : removeStoreSeries(this.metrics, name)))
        .catch((err: unknown) => log.error('removing the metrics of a closed quota store failed', { store: name, err }));
      this.closing.set(p, e.store);
      void p.then(() => this.closing.delete(p));
    }
  }

  /** Stores closing after a reload dropped them, now given at most `withinMs` more to write what they hold. */
  pendingCloses(withinMs: number): Promise<void>[] {
    for (const store of this.closing.values()) void store.close(withinMs).catch(() => undefined);
    return [...this.closing.keys()];
  }

  /** Every store closes (flushing what it holds, for at most `withinMs` while Redis is away), retired ones too. */
  closeAll(withinMs: number): Promise<PromiseSettledResult<void>[]> {
    return Promise.allSettled([...this.all().map((s) => s.close(withinMs)), ...this.pendingCloses(withinMs)]);
  }

  storeFor(source: QuotaSource): QuotaStore {
    const target = source.redis;
    const key = quotaStoreKey(source);
    this.building?.add(key);
    const known = this.stores.get(key);
    if (known !== undefined) {
      // A reload's key cap applies to the stores it keeps.
      known.store.setMaxKeys(this.config.limits.max_quota_keys);
      return known.store;
    }
    const store = createQuotaStore(target, {
      batching: this.config.redis_batching,
      metrics: this.metrics,
      allowDegradation: source.allow_degradation,
      // A fresh number per store: a store closed by a reload never shares its metric label with a new one.
      storeLabel: target === undefined ? 'local' : `${target.mode}-${this.created++}`,
      maxKeys: this.config.limits.max_quota_keys,
    });
    const ledgerKey = `${key}#${this.made++}`;
    this.stores.set(key, { store, refs: 0, ledgerKey });
    this.ledger?.attach(ledgerKey, store);
    return store;
  }

  all(): QuotaStore[] {
    return [...this.stores.values()].map((e) => e.store);
  }

  /** Key → ledger key and metric label of every store. */
  names(): Record<string, { ledgerKey: string; label: string }> {
    const out: Record<string, { ledgerKey: string; label: string }> = {};
    for (const [k, e] of this.stores) out[k] = { ledgerKey: e.ledgerKey, label: e.store.name };
    return out;
  }
}

/** Load a config and swap it in; a failure to load or to build is logged and counted, and the old config stays. */
function reloadFrom(load: () => SluiceConfig, reload: (next: SluiceConfig) => void, metrics: Metrics): boolean {
  let next: SluiceConfig;
  try {
    next = load();
  } catch (err) {
    metrics.configReloads.inc({ outcome: 'error' });
    // A ConfigError's message lists every issue with its path; config values are never quoted in it.
    log.error('config reload failed; keeping the previous config', { err: err instanceof Error ? err.message : String(err) });
    return false;
  }
  try {
    reload(next);
    return true;
  } catch {
    return false;
  }
}

export async function startSluice(config: SluiceConfig, opts: StartOptions = {}): Promise<SluiceHandle> {
  if (config.workers > 1) return startThreaded(config, opts);
  // Load the tokenizer tables now, not on the first request (130–330 ms).
  warmTokenizers();
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics });
  const stores = new StoreRegistry(config, metrics);
  const { upstream, pool } = createServingParts(config, metrics);
  const gateway = new Gateway(stores.build(config), { metrics, upstream, pool, onSnapshotRetired: (snap) => stores.retire(snap) });
  let front: Listening | undefined;
  let admin: Listening | undefined;
  let closed = false;
  try {
    front = await startFrontend(gateway, { host: config.listen.host, port: opts.port ?? config.listen.port, limits: config.limits, metrics, http1Guard: config.listen.http1_guard });
    admin = await startAdmin({
      metrics: () => metricsText(metrics.registry),
      // Not ready once shutdown starts: the port no longer accepts, so load balancers must stop sending at once.
      ready: () => !closed && stores.all().every((s) => s.health() !== 'unavailable'),
    }, config.admin.host, opts.adminPort ?? config.admin.port);
  } catch (err) {
    front?.close();
    await Promise.allSettled([pool.close(), upstream.close(), ...stores.all().map((s) => s.close())]);
    throw err;
  }
  for (const w of configWarnings(config)) log.warn('config warning', { path: w.path, message: w.message });
  log.info('sluice listening', { host: config.listen.host, port: front.port, admin_port: admin.port, workers: config.workers, routes: config.routes.length });

  const frontL = front;
  const adminL = admin;
  const reload = (next: SluiceConfig): void => {
    try {
      const conflicts = reloadConflicts(config, next);
      if (conflicts.length > 0) throw new ConfigError(conflicts);
      const prev = gateway.current.config;
      // Requests already running keep the old snapshot (and its stores) until they end.
      gateway.swap(stores.build(next));
      metrics.configReloads.inc({ outcome: 'ok' });
      logReloaded(config, prev, next, {});
    } catch (err) {
      metrics.configReloads.inc({ outcome: 'error' });
      log.error('config reload failed; keeping the previous config', { err: err instanceof Error ? err.message : String(err) });
      throw err;
    }
  };
  return {
    port: front.port,
    adminPort: admin.port,
    metrics,
    gateway,
    reload,
    reloadFrom: (load: () => SluiceConfig) => reloadFrom(load, reload, metrics),
    async close(closeOpts = {}) {
      if (closed) return;
      closed = true;
      frontL.stopListening();
      gateway.draining = true;
      const drainMs = closeOpts.drainMs ?? gateway.current.config.shutdown.drain_timeout_ms;
      // Uploads still arriving are in flight too: they get the drain time to finish and reach the gateway.
      await waitUntil(() => gateway.inFlight === 0 && (frontL.receiving?.() ?? 0) === 0, drainMs);
      const uploads = frontL.cutReceiving?.() ?? 0;
      if (uploads > 0) log.warn('drain time over; answering 503 to requests whose body was still arriving', { requests: uploads });
      if (gateway.inFlight > 0) {
        // Cut and settle before the stores close: their final flush must carry these charges, and every
        // reservation must be released, not left to expire.
        const cut = gateway.cutAll();
        log.warn('drain time over; cutting requests still running and charging what they produced', { cut, drain_timeout_ms: drainMs });
        await waitUntil(() => gateway.inFlight === 0, SETTLE_AFTER_CUT_MS);
        if (gateway.inFlight > 0) log.error('requests still unsettled when the stores close', { in_flight: gateway.inFlight });
      }
      // A request that ended may still have its last bytes on the way through the HTTP/1.x guard.
      await frontL.quiesce?.(QUIESCE_MS);
      frontL.close();
      adminL.close();
      await stores.closeAll(SHUTDOWN_FLUSH_MS);
      await Promise.allSettled([pool.close(), upstream.close()]);
    },
  };
}

/**
 * workers > 1: the serving threads (src/threads/) each run a uWS App and a Gateway; this thread holds the quota
 * backends (attached to the shared ledger), the HTTP/1.x guard when on, the admin listener, reloads and signals.
 * Every config is validated and built here first, so one that fails to build never reaches a thread.
 */
async function startThreaded(config: SluiceConfig, opts: StartOptions): Promise<SluiceHandle> {
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics });
  // Sized once (every thread maps the buffer): a reload that raises max_quota_keys keeps this size (see reload).
  const ledger = new LedgerHost({ maxSlots: ledgerSlotsFor(config.limits.max_quota_keys) });
  const stores = new StoreRegistry(config, metrics, ledger);
  const mainSnapshot = (cfg: SluiceConfig): MainSnapshot => {
    const snap = stores.build(cfg);
    const names = stores.names();
    const map: Record<string, { key: string; label: string }> = {};
    for (const [path, source] of quotaSources(cfg)) {
      const n = names[quotaStoreKey(source)]!;
      map[path] = { key: n.ledgerKey, label: n.label };
    }
    return { stores: map, retire: () => stores.retire(snap) };
  };
  const closeStores = async (): Promise<void> => {
    // The ledger folds what the threads charged into the backends, whose final flush then carries it.
    ledger.close();
    await stores.closeAll(SHUTDOWN_FLUSH_MS);
  };
  let first: MainSnapshot;
  try {
    first = mainSnapshot(config);
  } catch (err) {
    await closeStores();
    throw err;
  }
  const onFatal = opts.onThreadFailure ?? ((err: Error) => {
    log.error('a serving thread failed; exiting (Sluice does not serve on fewer threads than configured)', { err });
    // The threads are closed by now: what was charged (the ledger, the stores' unflushed deltas) still goes to the
    // backends first, bounded so an unreachable Redis cannot hold the exit.
    const bound = new Promise<void>((r) => setTimeout(r, FATAL_FLUSH_MS));
    void Promise.race([closeStores(), bound]).finally(() => process.exit(1));
  });
  let threads: ThreadSupervisor | undefined;
  let admin: Listening | undefined;
  try {
    threads = await ThreadSupervisor.start({
      threads: config.workers, config, first, ledger, onFatal,
      host: config.listen.host, port: opts.port ?? config.listen.port, guard: config.listen.http1_guard,
      swapTimeoutMs: opts.testHooks?.swapTimeoutMs,
    });
    const sup = threads;
    admin = await startAdmin({
      metrics: async () => aggregateMetrics([await metricsJson(metrics.registry), ...await sup.scrape()]),
      ready: () => sup.ready() && stores.all().every((s) => s.health() !== 'unavailable'),
    }, config.admin.host, opts.adminPort ?? config.admin.port);
  } catch (err) {
    await threads?.close();
    await closeStores();
    throw err;
  }
  const sup = threads;
  const adminL = admin;
  for (const w of configWarnings(config)) log.warn('config warning', { path: w.path, message: w.message });
  log.info('sluice listening', { host: config.listen.host, port: sup.port, admin_port: adminL.port, workers: config.workers, routes: config.routes.length });

  let current = config;
  let closed = false;
  // Reloads reach the threads in order, one at a time.
  let lastReload: Promise<void> = Promise.resolve();
  const reload = (next: SluiceConfig): void => {
    let main: MainSnapshot;
    try {
      const conflicts = reloadConflicts(config, next);
      if (conflicts.length > 0) throw new ConfigError(conflicts);
      main = mainSnapshot(next);
    } catch (err) {
      metrics.configReloads.inc({ outcome: 'error' });
      log.error('config reload failed; keeping the previous config', { err: err instanceof Error ? err.message : String(err) });
      throw err;
    }
    const prev = current;
    if (ledgerSlotsFor(next.limits.max_quota_keys) > ledger.table.slots) {
      log.warn('limits.max_quota_keys grew; the quota ledger of the serving threads keeps its size until restart (when full, new quota keys get 503 SLC_OVERLOADED)', { ledger_slots: ledger.table.slots });
    }
    lastReload = lastReload.then(() => sup.reload(next, main)).then((failed) => {
      if (failed.length === 0) {
        current = next;
        metrics.configReloads.inc({ outcome: 'ok' });
        logReloaded(config, prev, next, { threads: sup.count });
      } else {
        metrics.configReloads.inc({ outcome: 'error' });
        log.error('config reload failed on some serving threads; they keep the previous config, the others serve the new one', { failed });
      }
    }).catch((err: unknown) => {
      // The chain must stay usable: a rejected link would skip every later reload and fail close() before the flush.
      metrics.configReloads.inc({ outcome: 'error' });
      log.error('config reload failed; keeping the previous config', { err: err instanceof Error ? err.message : String(err) });
    });
  };
  return {
    port: sup.port,
    adminPort: adminL.port,
    metrics,
    get gateway(): Gateway {
      throw new Error('with workers > 1 the gateways run on the serving threads');
    },
    threads: {
      count: sup.count,
      perThreadMetrics: () => sup.metrics(),
      settled: () => lastReload,
      crash: (index) => sup.crash(index, `crash requested through SluiceHandle.threads.crash(${index})`),
      stall: (index, ms) => sup.stall(index, ms),
    },
    reload,
    reloadFrom: (load: () => SluiceConfig) => reloadFrom(load, reload, metrics),
    async close(closeOpts = {}) {
      if (closed) return;
      closed = true;
      await sup.stopListening();
      await lastReload;
      const drainMs = closeOpts.drainMs ?? current.shutdown.drain_timeout_ms;
      const { cut, left } = await sup.drain(drainMs, SETTLE_AFTER_CUT_MS);
      if (cut > 0) log.warn('drain time over; requests still running were cut and charged what they produced', { cut, drain_timeout_ms: drainMs });
      if (left > 0) log.error('requests still unsettled when the stores close', { in_flight: left });
      // A request that ended may still have its last bytes on the way through the HTTP/1.x guard.
      await sup.quiesce(QUIESCE_MS);
      await sup.close();
      adminL.close();
      await closeStores();
    },
  };
}
