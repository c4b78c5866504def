// The worker-thread pool for CPU work too big for the event loop: preparing large request bodies and
// counting long texts. Small work stays inline (a round trip costs ~20 µs; see native-bench/thread-offload).
//
// No task may hold up an unrelated one for long: each thread runs up to CONCURRENT_PER_THREAD tasks at once,
// interleaved in slices of a few ms (entry.ts), and tasks wait here in two lanes, small before large, with
// large ones limited to LARGE_PER_THREAD per thread, so a small task never queues behind a burst of large ones.
// Each task has a counting budget (tokens.count_budget_ms), and close() waits a bounded time, then terminates
// the threads.
import type { Piscina } from 'piscina';
import { SluiceError } from '../core/errors.ts';
import { encodingForModel } from '../tokens/encoding.ts';
import type { InstanceConfig } from '../config/types.ts';
import type { CallFailure, DecodedBody, ParseOptions, PreparedCall } from '../providers/types.ts';
import type { TaskKind, WorkerResult, WorkerTask } from './protocol.ts';

export interface WorkerPoolOptions {
  threads: number;
  /** Called once per task when it settles (metrics: sluice_worker_tasks_total). */
  onTask?: (kind: TaskKind, outcome: 'ok' | 'error') => void;
  /** Tasks waiting for a thread beyond this are refused with SLC_OVERLOADED. Default 4096. */
  maxQueue?: number;
  /** Counting time one task may spend before the rest is bounded by its UTF-8 bytes, ms. Default 2000. */
  countBudgetMs?: number;
  /** Tasks of at least this many bytes (body, or text characters) take the large lane. Default 64 KiB. */
  largeTaskBytes?: number;
  /** close() waits this long for running tasks, then terminates the threads. Default 2000 ms. */
  closeTimeoutMs?: number;
}

// Compiled (dist/) this file is pool.js next to entry.js; under tsx (tests, benches) both are .ts.
const ENTRY = new URL(import.meta.url.endsWith('.ts') ? './entry.ts' : './entry.js', import.meta.url).href;
const DEFAULT_MAX_QUEUE = 4096;
const DEFAULT_BUDGET_MS = 2000;
const DEFAULT_LARGE_TASK_BYTES = 64 * 1024;
const DEFAULT_CLOSE_TIMEOUT_MS = 2000;
/** Tasks one thread interleaves. */
export const CONCURRENT_PER_THREAD = 8;
/** Large tasks one thread runs at once; the other slots stay open for small ones. */
export const LARGE_PER_THREAD = 2;

interface Pending {
  readonly task: WorkerTask;
  readonly large: boolean;
  readonly resolve: (r: WorkerResult) => void;
  readonly reject: (e: unknown) => void;
}

/** A FIFO with O(1) shift. */
class Lane {
  private items: (Pending | undefined)[] = [];
  private head = 0;

  get size(): number {
    return this.items.length - this.head;
  }

  push(p: Pending): void {
    this.items.push(p);
  }

  shift(): Pending | undefined {
    if (this.head >= this.items.length) return undefined;
    const p = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return p;
  }

  drain(): Pending[] {
    const out = this.items.slice(this.head).filter((p): p is Pending => p !== undefined);
    this.items = [];
    this.head = 0;
    return out;
  }
}

export class WorkerPool {
  readonly threads: number;
  private piscina: Piscina<Uint8Array, Uint8Array> | undefined;
  private starting: Promise<Piscina<Uint8Array, Uint8Array>> | undefined;
  private protocol: typeof import('./protocol.ts') | undefined;
  private readonly onTask: ((kind: TaskKind, outcome: 'ok' | 'error') => void) | undefined;
  private readonly maxQueue: number;
  private readonly budgetMs: number;
  private readonly largeTaskBytes: number;
  private readonly closeTimeoutMs: number;
  private readonly small = new Lane();
  private readonly large = new Lane();
  private running = 0;
  private runningLarge = 0;
  private closed = false;

  constructor(opts: WorkerPoolOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new RangeError('threads must be a positive integer');
    this.threads = opts.threads;
    this.onTask = opts.onTask;
    this.maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
    this.budgetMs = opts.countBudgetMs ?? DEFAULT_BUDGET_MS;
    this.largeTaskBytes = opts.largeTaskBytes ?? DEFAULT_LARGE_TASK_BYTES;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
  }

  /** Tasks waiting for a slot (both lanes). */
  get queued(): number {
    return this.small.size + this.large.size;
  }

  /** Started on the first task, not at construction: an idle thread with its tokenizer table costs 100-120 MB,
   *  and a gateway whose requests stay under tokens.offload_bytes never needs one. */
  private start(): Promise<Piscina<Uint8Array, Uint8Array>> {
    this.starting ??= Promise.all([import('piscina'), import('./protocol.ts')]).then(([{ Piscina: PiscinaCtor }, protocol]) => {
      this.protocol = protocol;
      // A fixed-size pool: once started, threads never idle out and never grow. Tasks queue in the lanes
      // here, never in piscina: at most threads × CONCURRENT_PER_THREAD are handed to it.
      this.piscina = new PiscinaCtor<Uint8Array, Uint8Array>({
        filename: ENTRY,
        minThreads: this.threads,
        maxThreads: this.threads,
        idleTimeout: Infinity,
        concurrentTasksPerWorker: CONCURRENT_PER_THREAD,
        recordTiming: false,
      });
      return this.piscina;
    });
    return this.starting;
  }

  async prepare(body: Uint8Array, opts: ParseOptions): Promise<PreparedCall | CallFailure> {
    const res = await this.run({ kind: 'prepare', body, opts, budgetMs: this.budgetMs }, body.byteLength);
    if (res.kind !== 'prepare') throw this.unexpected('prepare', res);
    return res.result;
  }

  /** Tokens of a text: exact, or an upper bound when the counting budget ran out. */
  async countText(text: string, model: string | undefined): Promise<number> {
    const res = await this.run({ kind: 'count-text', text, enc: encodingForModel(model), budgetMs: this.budgetMs }, text.length);
    if (res.kind !== 'count-text') throw this.unexpected('count-text', res);
    return res.tokens;
  }

  /** A large buffered answer decoded (parsed, metered, translated) by its instance's provider on a worker thread. */
  async decode(instance: InstanceConfig, call: PreparedCall, body: Buffer, maxUsage: number): Promise<DecodedBody> {
    const res = await this.run({ kind: 'decode', instance, call, body, maxUsage }, body.byteLength);
    if (res.kind !== 'decode') throw this.unexpected('decode', res);
    // The usage's raw report (cost expressions and X-Sluice-Usage read it) as decode() made it: not enumerable.
    if (res.decoded.usage !== undefined && res.raw !== undefined) Object.defineProperty(res.decoded.usage, 'raw', { value: res.raw, enumerable: false });
    return res.decoded;
  }

  /**
   * Refuses queued tasks, waits up to closeTimeoutMs for running ones, then terminates the threads (their
   * tasks fail with SLC_INTERNAL): a shutdown never waits on a runaway task.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const p of [...this.small.drain(), ...this.large.drain()]) {
      this.onTask?.(p.task.kind, 'error');
      p.reject(new SluiceError('SLC_INTERNAL', 'worker pool is closed'));
    }
    if (this.starting === undefined) return;
    const piscina = await this.starting;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => { timer = setTimeout(() => resolve('timeout'), this.closeTimeoutMs); });
    const outcome = await Promise.race([piscina.close().then(() => 'closed' as const, () => 'closed' as const), timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') await piscina.destroy();
  }

  private run(task: WorkerTask, size: number): Promise<WorkerResult> {
    if (this.closed) return Promise.reject(new SluiceError('SLC_INTERNAL', 'worker pool is closed'));
    if (this.queued >= this.maxQueue) {
      this.onTask?.(task.kind, 'error');
      return Promise.reject(new SluiceError('SLC_OVERLOADED', 'worker queue is full'));
    }
    return new Promise<WorkerResult>((resolve, reject) => {
      const large = size >= this.largeTaskBytes;
      (large ? this.large : this.small).push({ task, large, resolve, reject });
      this.pump();
    });
  }

  /** Hands queued tasks to piscina while slots are free: small first, large within their share. */
  private pump(): void {
    const slots = this.threads * CONCURRENT_PER_THREAD;
    const largeSlots = this.threads * LARGE_PER_THREAD;
    while (this.running < slots) {
      let next = this.small.shift();
      if (next === undefined && this.runningLarge < largeSlots) next = this.large.shift();
      if (next === undefined) return;
      this.running++;
      if (next.large) this.runningLarge++;
      void this.dispatch(next);
    }
  }

  private async dispatch(p: Pending): Promise<void> {
    let res: WorkerResult;
    try {
      const piscina = this.piscina ?? await this.start();
      const { encodeMessage, decodeResult } = this.protocol!;
      const bytes = encodeMessage(p.task);
      res = decodeResult(await piscina.run(bytes, { transferList: [bytes.buffer as ArrayBuffer] }));
    } catch (err) {
      this.finished(p);
      this.onTask?.(p.task.kind, 'error');
      p.reject(new SluiceError('SLC_INTERNAL', 'worker task failed', { cause: err }));
      return;
    }
    this.finished(p);
    this.onTask?.(p.task.kind, res.kind === 'error' ? 'error' : 'ok');
    p.resolve(res);
  }

  private finished(p: Pending): void {
    this.running--;
    if (p.large) this.runningLarge--;
    if (!this.closed) this.pump();
  }

  private unexpected(kind: TaskKind, res: WorkerResult): SluiceError {
    const detail = res.kind === 'error' ? res.message : `got a ${res.kind} result`;
    return new SluiceError('SLC_INTERNAL', 'worker task failed', { cause: new Error(`${kind}: ${detail}`) });
  }
}
