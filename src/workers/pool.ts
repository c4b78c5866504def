// The worker-thread pool for CPU work too big for the event loop: preparing large request bodies and
// counting long texts. Small work stays inline (a round trip costs ~20 µs; see native-bench/thread-offload).
import { Piscina } from 'piscina';
import { SluiceError } from '../core/errors.ts';
import { encodingForModel } from '../tokens/encoding.ts';
import type { PrepareFailure, PrepareOptions, PreparedRequest } from '../tokens/prepare.ts';
import { decodeResult, encodeMessage, type TaskKind, type WorkerResult, type WorkerTask } from './protocol.ts';

export interface WorkerPoolOptions {
  threads: number;
  /** Called once per task when it settles (metrics: sluice_worker_tasks_total). */
  onTask?: (kind: TaskKind, outcome: 'ok' | 'error') => void;
  /** Tasks waiting for a thread beyond this are refused with SLC_OVERLOADED. Default 4096. */
  maxQueue?: number;
}

const ENTRY = new URL('./entry.ts', import.meta.url).href;
const DEFAULT_MAX_QUEUE = 4096;

export class WorkerPool {
  readonly threads: number;
  private readonly piscina: Piscina<Uint8Array, Uint8Array>;
  private readonly onTask: ((kind: TaskKind, outcome: 'ok' | 'error') => void) | undefined;
  private readonly maxQueue: number;
  private closed = false;

  constructor(opts: WorkerPoolOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new RangeError('threads must be a positive integer');
    this.threads = opts.threads;
    this.onTask = opts.onTask;
    this.maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
    // A fixed-size pool: threads start (and load the tokenizer) now, never idle out, never grow.
    this.piscina = new Piscina<Uint8Array, Uint8Array>({
      filename: ENTRY,
      minThreads: opts.threads,
      maxThreads: opts.threads,
      idleTimeout: Infinity,
      maxQueue: this.maxQueue,
      recordTiming: false,
    });
  }

  async prepare(body: Uint8Array, opts: PrepareOptions): Promise<PreparedRequest | PrepareFailure> {
    const res = await this.run({ kind: 'prepare', body, opts });
    if (res.kind !== 'prepare') throw this.unexpected('prepare', res);
    return res.result;
  }

  async countText(text: string, model: string | undefined): Promise<number> {
    const res = await this.run({ kind: 'count-text', text, enc: encodingForModel(model) });
    if (res.kind !== 'count-text') throw this.unexpected('count-text', res);
    return res.tokens;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.piscina.close();
  }

  private async run(task: WorkerTask): Promise<WorkerResult> {
    if (this.closed) throw new SluiceError('SLC_INTERNAL', 'worker pool is closed');
    if (this.piscina.queueSize >= this.maxQueue) {
      this.onTask?.(task.kind, 'error');
      throw new SluiceError('SLC_OVERLOADED', 'worker queue is full');
    }
    const bytes = encodeMessage(task);
    let res: WorkerResult;
    try {
      res = decodeResult(await this.piscina.run(bytes, { transferList: [bytes.buffer as ArrayBuffer] }));
    } catch (err) {
      this.onTask?.(task.kind, 'error');
      if (err instanceof Error && err.message === 'Task queue is at limit') {
        throw new SluiceError('SLC_OVERLOADED', 'worker queue is full', { cause: err });
      }
      throw new SluiceError('SLC_INTERNAL', 'worker task failed', { cause: err });
    }
    this.onTask?.(task.kind, res.kind === 'error' ? 'error' : 'ok');
    return res;
  }

  private unexpected(kind: TaskKind, res: WorkerResult): SluiceError {
    const detail = res.kind === 'error' ? res.message : `got a ${res.kind} result`;
    return new SluiceError('SLC_INTERNAL', 'worker task failed', { cause: new Error(`${kind}: ${detail}`) });
  }
}
