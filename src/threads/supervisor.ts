// The main thread of a multi-threaded gateway (workers > 1): starts the serving threads (serving.ts), shares
// the listen port between them, answers their delegated quota requests with the LedgerHost, sends reloads,
// collects metrics, and drains and closes them. It serves no client request itself.
//
// Listening: with the HTTP/1.x guard (default) the first thread binds the public port exclusively and every
// other thread serves on its own descriptor of that socket (frontend/listener-share.ts), so each thread's guard
// serves its connections itself; without it the threads' uWS Apps share the public port with SO_REUSEPORT after
// this thread took an abstract-socket lock on the address, so a second Sluice there is still refused.
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { createServer } from 'node:net';
import type { Worker } from 'node:worker_threads';
import { MAX_TIMER_MS } from '../config/section.ts';
import type { SluiceConfig } from '../config/types.ts';
import { log } from '../core/log.ts';
import { siblingEntry, spawnModuleThread } from '../core/module-thread.ts';
import { byteBudgetCell } from '../core/byte-budget.ts';
import { ListenError, lockListenAddress } from '../frontend/server.ts';
import type { MetricsJson } from '../metrics/aggregate.ts';
import type { LedgerHost } from '../quota/shared/ledger-host.ts';
import type { FromThread, ListenSpec, ThreadInit, ThreadReply, ToThread } from './protocol.ts';
import type { StoreMap } from './store-key.ts';

// Compiled (dist/) this file is supervisor.js next to serving.js; under tsx (tests, benches) both are .ts.
const ENTRY = siblingEntry(import.meta.url, 'serving');

function spawn(options: { workerData: ThreadInit; name: string }): Worker {
  return spawnModuleThread(ENTRY, options);
}

/** Loading a thread (modules, tokenizer table) on a busy 2-core machine can take seconds. */
const START_TIMEOUT_MS = 120_000;
const CALL_TIMEOUT_MS = 30_000;
const METRICS_TIMEOUT_MS = 10_000;
/** /metrics waits this long for each thread (under Prometheus' default 10 s scrape timeout). */
const SCRAPE_TIMEOUT_MS = 3_000;
const CLOSE_TIMEOUT_MS = 15_000;
/** After a thread closed its App it ends by itself; terminate() is the last resort (see end()). */
const EXIT_TIMEOUT_MS = 5_000;
/** Attempts at a free port for the first thread when another process takes the one picked first. */
const PORT_ATTEMPTS = 5;

/** A port free on `host` right now. uWS sets SO_REUSEPORT only when asked for a non-zero port (a port-0 listener is
 *  exclusive, so a second App could not join it): every thread then listens on the port picked here. */
function pickPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ host, port: 0, exclusive: true }, () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** The main thread's own snapshot of one config version: holds the backend stores the threads' views use. */
export interface MainSnapshot {
  /** The backend store of every quota plugin of the config. */
  readonly stores: StoreMap;
  /** Every thread has retired this version: drop the snapshot's store references. */
  retire(): void;
}

export interface SupervisorOptions {
  readonly threads: number;
  readonly config: SluiceConfig;
  /** The first config's main-thread snapshot, built (and its stores attached to the ledger) before any thread starts. */
  readonly first: MainSnapshot;
  readonly host: string;
  readonly port: number;
  readonly guard: boolean;
  readonly ledger: LedgerHost;
  /** Tests only (StartOptions.testHooks): how long a thread may take to answer a config swap. */
  readonly swapTimeoutMs?: number;
  /** A serving thread died or failed after start-up: the process cannot go on with fewer threads. */
  readonly onFatal: (err: Error) => void;
}

type Outgoing = ToThread extends infer T ? T extends { id: number } ? Omit<T, 'id'> : never : never;

interface Thread {
  readonly index: number;
  readonly worker: Worker;
  readonly calls: Map<number, { resolve: (r: ThreadReply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>;
  listening: boolean;
  exited: boolean;
}

/** Versions of the config in use: which threads hold each, and the main snapshot to retire when none does. */
interface Version {
  readonly main: MainSnapshot;
  /** Threads that hold this version or may still take it: a thread is added when the swap is sent (an answer
   *  after the call's timeout still swaps the thread) and leaves on `retired`, `swap-failed` or its exit. */
  readonly holders: Set<number>;
  /** A swap to this version is still being answered. */
  pending: boolean;
}

export class ThreadSupervisor {
  readonly count: number;
  private readonly opts: SupervisorOptions;
  private readonly threads: Thread[] = [];
  private readonly versions = new Map<number, Version>();
  /** Each thread's last registry JSON, for a scrape it does not answer in time. */
  private readonly lastMetrics: (MetricsJson | undefined)[] = [];
  private version = 0;
  private nextId = 1;
  private closing = false;
  private failed: Error | undefined;
  private lock: { release(): void } | undefined;
  /** The public port. */
  port = 0;
  /** Rule key values are HMAC'ed into counter ids: every thread must use the same key, also when the config
   *  gives none (quota/plan.ts would draw a random one per thread). One per process, kept across reloads. */
  private readonly processSecret = randomBytes(32).toString('base64');

  private constructor(opts: SupervisorOptions) {
    this.opts = opts;
    this.count = opts.threads;
  }

  static async start(opts: SupervisorOptions): Promise<ThreadSupervisor> {
    const s = new ThreadSupervisor(opts);
    try {
      await s.boot();
    } catch (err) {
      await s.abort();
      throw err;
    }
    return s;
  }

  private forThreads(config: SluiceConfig): SluiceConfig {
    return config.key_hash_secret !== undefined ? config : { ...config, key_hash_secret: this.processSecret };
  }

  private async boot(): Promise<void> {
    const o = this.opts;
    this.versions.set(0, { main: o.first, holders: new Set(Array.from({ length: o.threads }, (_, i) => i)), pending: false });
    const config = this.forThreads(o.config);
    const bodyBudget = byteBudgetCell();
    const answerBudget = byteBudgetCell();
    const ready: Promise<void>[] = [];
    for (let i = 0; i < o.threads; i++) {
      const init: ThreadInit = { index: i, config, version: 0, stores: o.first.stores, ledger: o.ledger.descriptor(), bodyBudget, answerBudget };
      const worker = spawn({ workerData: init, name: `sluice-serving-${i}` });
      const t: Thread = { index: i, worker, calls: new Map(), listening: false, exited: false };
      this.threads.push(t);
      ready.push(this.wire(t));
    }
    await Promise.all(ready);

    if (o.guard) {
      // The first thread binds the public port exclusively; the others serve on their own descriptors of it.
      const first = await this.listen(this.threads[0]!, { host: o.host, port: o.port, guard: true });
      if (first.fd === undefined) throw new Error('serving thread 0 did not report its listening socket');
      await Promise.all(this.threads.slice(1).map((t) => this.listen(t, { host: o.host, port: first.port, guard: true, shareFd: first.fd })));
      this.port = first.port;
      return;
    }
    let shared = 0;
    for (let attempt = 1; shared === 0; attempt++) {
      const port = o.port !== 0 ? o.port : await pickPort(o.host);
      try {
        // The address lock before any thread binds: SO_REUSEPORT would let another Sluice join the port.
        this.lock = await lockListenAddress(o.host, port);
        shared = (await this.listen(this.threads[0]!, { host: o.host, port, guard: false })).port;
      } catch (err) {
        this.lock?.release();
        this.lock = undefined;
        const taken = err instanceof ListenError && err.code === 'EADDRINUSE';
        if (o.port !== 0 || !taken || attempt >= PORT_ATTEMPTS) throw err;
      }
    }
    await Promise.all(this.threads.slice(1).map((t) => this.listen(t, { host: o.host, port: shared, guard: false })));
    this.port = shared;
  }

  /** Resolves when the thread is ready; afterwards its death is fatal. */
  private wire(t: Thread): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let started = false;
      const timer = setTimeout(() => reject(new Error(`serving thread ${t.index} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      /** `gone`: the thread has ended (otherwise it is alive but useless: failed or crashed). */
      const die = (err: Error, gone: boolean): void => {
        if (gone) {
          t.exited = true;
          for (const c of t.calls.values()) { clearTimeout(c.timer); c.reject(err); }
          t.calls.clear();
          // Its requests are gone with it: it holds no version any more (at shutdown the stores close anyway).
          if (!this.closing) for (const [version, v] of this.versions) { v.holders.delete(t.index); this.maybeRetire(version); }
        }
        if (!started) { clearTimeout(timer); reject(err); return; }
        if (this.closing) return;
        this.failed ??= err;
        this.closing = true;
        // The other threads close their Apps first: a process ending with a live uWS App in a thread aborts.
        void this.closeThreads(EXIT_TIMEOUT_MS).finally(() => this.opts.onFatal(err));
      };
      t.worker.on('message', (m: FromThread) => {
        switch (m.kind) {
          case 'ready': started = true; clearTimeout(timer); resolve(); return;
          case 'failed': die(new Error(`serving thread ${t.index} failed to start: ${m.message}`), false); return;
          case 'crashed':
            log.error('serving thread crashed', { thread: t.index, err: m.message });
            die(new Error(`serving thread ${t.index} crashed: ${m.message}`), false);
            return;
          case 'ledger': this.ledger(t, m.id, m); return;
          case 'retired': this.retired(t.index, m.version); return;
          default: {
            const c = t.calls.get(m.id);
            if (c === undefined) {
              if (m.kind === 'swapped' || m.kind === 'swap-failed') this.lateSwap(t.index, m);
              return;
            }
            t.calls.delete(m.id);
            clearTimeout(c.timer);
            c.resolve(m as ThreadReply);
          }
        }
      });
      t.worker.on('error', (err) => {
        log.error('serving thread crashed', { thread: t.index, err });
        die(err, true);
      });
      t.worker.on('exit', (code) => {
        if (t.exited) return;
        if (!this.closing) log.error('serving thread exited', { thread: t.index, code });
        die(new Error(`serving thread ${t.index} exited with code ${code}`), true);
      });
    });
  }

  private ledger(t: Thread, id: number, m: Extract<FromThread, { kind: 'ledger' }>): void {
    this.opts.ledger.handle(m.req).then(
      (reply) => { if (!t.exited) t.worker.postMessage({ kind: 'ledger-reply', id, reply } satisfies ToThread); },
      (err: unknown) => {
        if (!t.exited) t.worker.postMessage({ kind: 'ledger-reply', id, reply: { kind: 'error', code: 'SLC_INTERNAL', message: err instanceof Error ? err.message : String(err) } } satisfies ToThread);
      },
    );
  }

  /** A swap answered after its call timed out: the thread took the version (it holds it already), or not. */
  private lateSwap(index: number, m: Extract<FromThread, { kind: 'swapped' | 'swap-failed' }>): void {
    if (m.kind === 'swapped') {
      log.warn('serving thread answered a config swap late; it serves that version', { thread: index, version: m.version });
      return;
    }
    log.warn('serving thread answered a config swap late: it failed and keeps its previous config', { thread: index, version: m.version, err: m.message });
    this.versions.get(m.version)?.holders.delete(index);
    this.maybeRetire(m.version);
  }

  private retired(index: number, version: number): void {
    const v = this.versions.get(version);
    if (v === undefined) return;
    v.holders.delete(index);
    this.maybeRetire(version);
  }

  /** Only a version no thread holds or may still take is retired (its stores may close then); the current one
   *  too once no thread took it. */
  private maybeRetire(version: number): void {
    const v = this.versions.get(version);
    if (v === undefined || v.pending || v.holders.size > 0) return;
    this.versions.delete(version);
    v.main.retire();
  }

  private call(t: Thread, msg: Outgoing, ms: number): Promise<ThreadReply> {
    if (t.exited) return Promise.reject(new Error(`serving thread ${t.index} is gone`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        t.calls.delete(id);
        reject(new Error(`serving thread ${t.index} did not answer '${msg.kind}' within ${ms} ms`));
      }, ms);
      t.calls.set(id, { resolve, reject, timer });
      t.worker.postMessage({ ...msg, id } as ToThread);
    });
  }

  private async listen(t: Thread, spec: ListenSpec): Promise<{ port: number; fd: number | undefined }> {
    const r = await this.call(t, { kind: 'listen', spec }, CALL_TIMEOUT_MS);
    if (r.kind === 'listening') { t.listening = true; return { port: r.port, fd: r.fd }; }
    if (r.kind === 'listen-failed' && r.code === 'UNKNOWN' && spec.shareFd !== undefined) throw new Error(`serving thread ${t.index}: ${r.message}`);
    throw new ListenError('listen', spec.host, spec.port, r.kind === 'listen-failed' ? r.code : 'UNKNOWN');
  }

  /** Every thread is up and listening. */
  ready(): boolean {
    return !this.closing && this.failed === undefined && this.threads.every((t) => t.listening && !t.exited);
  }

  /**
   * Sends a config whose main-thread snapshot was built (so its stores exist and are attached to the ledger) to
   * every thread. Resolves with the threads that could not swap (they keep the previous config).
   */
  async reload(config: SluiceConfig, main: MainSnapshot): Promise<{ index: number; message: string }[]> {
    const version = ++this.version;
    const v: Version = { main, holders: new Set(), pending: true };
    this.versions.set(version, v);
    const forThreads = this.forThreads(config);
    const timeoutMs = this.opts.swapTimeoutMs ?? CALL_TIMEOUT_MS;
    const swapOne = async (t: Thread): Promise<{ index: number; message: string } | undefined> => {
      // Held from the moment it is sent: a thread that answers after the timeout still swaps to it.
      if (!t.exited) v.holders.add(t.index);
      try {
        const r = await this.call(t, { kind: 'swap', version, config: forThreads, stores: main.stores }, timeoutMs);
        if (r.kind === 'swapped') return undefined;
        v.holders.delete(t.index);
        return { index: t.index, message: r.kind === 'swap-failed' ? r.message : `unexpected answer ${r.kind}` };
      } catch (err) {
        if (t.exited) v.holders.delete(t.index);
        else log.warn('serving thread did not answer a config swap in time; the stores of that version and the previous one stay open until it answers or ends', { thread: t.index, version, timeout_ms: timeoutMs });
        return { index: t.index, message: err instanceof Error ? err.message : String(err) };
      }
    };
    // A thread rebuilding its snapshot holds its requests meanwhile (~0.5 s for 5,000 routes). All at once, the
    // builds share the cores with the threads still serving and each takes longer (a probe: 1.05–1.32 s with two
    // threads on two cores, 0.67 s with one): so at most half the cores' worth of threads swap at a time.
    const batch = Math.max(1, Math.floor(availableParallelism() / 2));
    const results: ({ index: number; message: string } | undefined)[] = [];
    for (let i = 0; i < this.threads.length; i += batch) {
      results.push(...await Promise.all(this.threads.slice(i, i + batch).map(swapOne)));
    }
    v.pending = false;
    // Versions no thread holds (or may still take) any more can go: earlier ones, and this one if none took it.
    for (const k of [...this.versions.keys()]) this.maybeRetire(k);
    return results.filter((x): x is { index: number; message: string } => x !== undefined);
  }

  /** Make serving thread `index` throw an uncaught error (the crash path, end to end: for tests). */
  crash(index: number, message: string): void {
    const t = this.threads[index];
    if (t !== undefined && !t.exited) t.worker.postMessage({ kind: 'crash', message } satisfies ToThread);
  }

  /** Block serving thread `index` for `ms` (a busy or wedged thread: for tests). */
  stall(index: number, ms: number): void {
    const t = this.threads[index];
    if (t !== undefined && !t.exited) t.worker.postMessage({ kind: 'stall', ms } satisfies ToThread);
  }

  /** Every serving thread's registry as JSON (a thread that does not answer in time fails the call). */
  async metrics(): Promise<MetricsJson[]> {
    return Promise.all(this.threads.map(async (t) => {
      const r = await this.call(t, { kind: 'metrics' }, METRICS_TIMEOUT_MS);
      if (r.kind !== 'metrics-reply') throw new Error(`unexpected answer ${r.kind}`);
      this.lastMetrics[t.index] = r.metrics;
      return r.metrics;
    }));
  }

  /**
   * The parts of a /metrics answer: every thread's registry, or the last one it sent when it does not answer
   * within SCRAPE_TIMEOUT_MS (busy, or gone). The scrape still answers in bounded time, and the sums of its
   * counters never go down (a missing part would look like a counter reset to Prometheus).
   */
  async scrape(): Promise<MetricsJson[]> {
    const replies = await Promise.allSettled(this.threads.map(async (t) => {
      const r = await this.call(t, { kind: 'metrics' }, SCRAPE_TIMEOUT_MS);
      if (r.kind !== 'metrics-reply') throw new Error(`unexpected answer ${r.kind}`);
      return r.metrics;
    }));
    const parts: MetricsJson[] = [];
    const stale: number[] = [];
    replies.forEach((r, i) => {
      if (r.status === 'fulfilled') this.lastMetrics[i] = r.value;
      else stale.push(i);
      const m = this.lastMetrics[i];
      if (m !== undefined) parts.push(m);
    });
    if (stale.length > 0) log.warn('serving threads did not answer the metrics scrape; using their last answer', { threads: stale });
    return parts;
  }

  /** Stop accepting connections: every thread's listener (the socket closes with the last), then the lock. */
  async stopListening(): Promise<void> {
    this.closing = true;
    await Promise.allSettled(this.threads.map((t) => this.call(t, { kind: 'stop-listening' }, CALL_TIMEOUT_MS)));
    this.lock?.release();
  }

  /** Every thread refuses new requests, waits up to drainMs for in-flight ones, then cuts and settles the rest. */
  async drain(drainMs: number, settleMs: number): Promise<{ cut: number; left: number }> {
    this.closing = true;
    // A timer past 2^31-1 ms fires after 1 ms: a drain time near the longest allowed must not cut at once.
    const waitMs = Math.min(drainMs + settleMs + CALL_TIMEOUT_MS, MAX_TIMER_MS);
    const replies = await Promise.allSettled(this.threads.map((t) => this.call(t, { kind: 'drain', drainMs, settleMs }, waitMs)));
    let cut = 0;
    let left = 0;
    replies.forEach((r, i) => {
      if (r.status === 'fulfilled' && r.value.kind === 'drained') { cut += r.value.cut; left += r.value.left; }
      else log.error('serving thread did not drain', { thread: i, err: r.status === 'rejected' ? r.reason : undefined });
    });
    return { cut, left };
  }

  /** Waits (at most graceMs) for every thread's guard to write the last bytes of answers that have ended. */
  async quiesce(graceMs: number): Promise<void> {
    await Promise.allSettled(this.threads.map((t) => this.call(t, { kind: 'quiesce', graceMs }, graceMs + CALL_TIMEOUT_MS)));
  }

  /** Closes every thread (its listener, tokenizer pool, upstream client). */
  async close(): Promise<void> {
    this.closing = true;
    await this.closeThreads(CLOSE_TIMEOUT_MS);
    this.lock?.release();
  }

  private async closeThreads(ms: number): Promise<void> {
    await Promise.allSettled(this.threads.map(async (t) => {
      if (t.exited) return;
      try {
        await this.call(t, { kind: 'close' }, ms);
      } catch (err) {
        if (!t.exited) log.warn('serving thread did not close in time', { thread: t.index, err });
      }
      await this.end(t);
    }));
  }

  /**
   * Waits for a closed thread to end by itself. terminate() is the last resort only: a thread ending while its uWS
   * App is open (it did not answer 'close') aborts the whole process in uWS's loop teardown (uWS 20.30, Node 20).
   */
  private async end(t: Thread): Promise<void> {
    if (t.exited) return;
    const gone = new Promise<void>((r) => t.worker.once('exit', () => r()));
    const ended = await Promise.race([gone.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), EXIT_TIMEOUT_MS).unref())]);
    if (!ended && !t.exited) {
      log.warn('serving thread did not end after closing; terminating it', { thread: t.index });
      await t.worker.terminate();
    }
    t.exited = true;
  }

  /** Start-up failed: end every thread and free what was bound. */
  private async abort(): Promise<void> {
    this.closing = true;
    this.lock?.release();
    await this.closeThreads(EXIT_TIMEOUT_MS);
  }
}
