// Flush scheduling for pre-aggregated deltas, independent of what they are written to.
//
// Items (e.g. one counter key in one window) are marked dirty on the request path; the batcher hands them
// to the sink in batches: every `intervalMs`, or early when `maxBatchKeys` items are dirty, or (`immediate`)
// on the next turn of the event loop after an item is marked, so that one batch carries what a burst of
// requests marked in the same turn (the timer then only retries failed writes). At most one
// write is in flight at a time, so a slow store sees one batch, not a pile of them. Items the sink fails to
// write are marked again by the sink and go out with a later batch. The backlog (dirty + in flight) is
// bounded by `maxPendingKeys`: beyond it `mark` hands the oldest dirty item to `sink.drop`, while `offer` declines.

import { monotonicClock, type Clock } from '../core/clock.ts';

export interface Batchable {
  /** Owned by the batcher: true while the item waits in the dirty set. */
  queued: boolean;
}

export interface BatchSink<T extends Batchable> {
  /**
   * Write one batch. Must not reject: resolve true when every item was acknowledged, false otherwise (after
   * marking the items to retry again with `batcher.mark`).
   */
  write(batch: readonly T[]): Promise<boolean>;
  /** The backlog is full: forget this item's deltas. */
  drop(item: T): void;
  /** Whether timer-driven writes should be attempted now (e.g. false while a circuit breaker is open). */
  canWrite(): boolean;
  /** A batch was acknowledged and the backlog has room again: items that `offer` declined may be offered now. */
  room?(): void;
}

export interface BatcherOptions {
  readonly intervalMs: number;
  readonly maxBatchKeys: number;
  readonly maxPendingKeys: number;
  /** Write on the next event-loop turn after a mark instead of waiting for the timer. Default false. */
  readonly immediate?: boolean;
  /** Drives the flush timer. Default: the process clock. */
  readonly clock?: Clock;
}

export class Batcher<T extends Batchable> {
  private readonly sink: BatchSink<T>;
  private readonly opts: BatcherOptions;
  private readonly clock: Clock;
  private readonly dirty = new Set<T>();
  private inflight = 0;
  private running: Promise<boolean> | undefined;
  private cancelTimer: (() => void) | undefined;
  private scheduled = false;
  /** The last write failed: immediate mode leaves retries to the timer rather than spin on a failing sink. */
  private lastFailed = false;
  /** expedite() was called while a batch was in flight: the next batch goes as soon as that one is done. */
  private urgent = false;

  constructor(sink: BatchSink<T>, opts: BatcherOptions) {
    this.sink = sink;
    this.clock = opts.clock ?? monotonicClock;
    this.opts = {
      intervalMs: Math.max(1, opts.intervalMs),
      maxBatchKeys: Math.max(1, opts.maxBatchKeys),
      maxPendingKeys: Math.max(1, opts.maxPendingKeys),
      immediate: opts.immediate === true,
    };
  }

  start(): void {
    if (this.cancelTimer !== undefined) return;
    this.cancelTimer = this.clock.every(this.opts.intervalMs, () => this.tick());
  }

  stop(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  /** Queue an item for the next batch (no-op when already queued). */
  mark(item: T): void {
    if (item.queued) return;
    if (this.dirty.size + this.inflight >= this.opts.maxPendingKeys) this.evictOldest();
    item.queued = true;
    this.dirty.add(item);
    if (this.running !== undefined || this.scheduled) return;
    if (this.dirty.size >= this.opts.maxBatchKeys || (this.opts.immediate === true && !this.lastFailed)) this.schedule();
  }

  /** Write what is dirty on the next turn of the event loop, as immediate mode does, this once (not while writes
   *  fail: the timer retries them). */
  expedite(): void {
    if (this.lastFailed || this.cancelTimer === undefined) return;
    if (this.running !== undefined) this.urgent = true;
    else if (!this.scheduled) this.schedule();
  }

  /**
   * Queue an item when the backlog has room, evicting nothing; false when it is full. For sweeps that re-queue
   * state their items keep (a resend, a renewal): what does not fit waits for a later sweep instead of pushing
   * out what is already queued, which would leave the earliest items last every time.
   */
  offer(item: T): boolean {
    if (item.queued) return true;
    if (this.dirty.size + this.inflight >= this.opts.maxPendingKeys) return false;
    this.mark(item);
    return true;
  }

  /** Items not yet acknowledged: dirty plus in flight. */
  get backlog(): number {
    return this.dirty.size + this.inflight;
  }

  get queuedCount(): number {
    return this.dirty.size;
  }

  /** Start a timer-style flush now if one is due and allowed (e.g. when a breaker closes). */
  kick(): void {
    this.tick();
  }

  /**
   * Write everything dirty now, whatever `canWrite` says. Resolves true when every batch was acknowledged,
   * false at the first failed batch (its items stay queued).
   */
  async flush(): Promise<boolean> {
    if (this.running !== undefined) await this.running;
    // Bounded: items dirtied while flushing wait for the next round rather than keep this call alive.
    let rounds = Math.ceil(this.dirty.size / this.opts.maxBatchKeys);
    while (rounds-- > 0 && this.dirty.size > 0) {
      if (!(await this.runOnce())) return false;
    }
    return true;
  }

  private tick(): void {
    if (this.cancelTimer === undefined || this.running !== undefined || this.dirty.size === 0 || !this.sink.canWrite()) return;
    void this.runOnce();
  }

  private schedule(): void {
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.tick();
    });
  }

  private runOnce(): Promise<boolean> {
    if (this.running !== undefined) return this.running;
    const batch = this.take();
    if (batch.length === 0) return Promise.resolve(true);
    this.inflight = batch.length;
    const run = this.sink.write(batch).then(
      (ok) => ok,
      () => false,
    ).then((ok) => {
      this.inflight = 0;
      this.running = undefined;
      this.lastFailed = !ok;
      if (ok) this.sink.room?.();
      // Items marked while this batch was in flight: a full batch, or (immediate) anything after a success.
      const more = this.dirty.size >= this.opts.maxBatchKeys || ((this.opts.immediate === true || this.urgent) && ok && this.dirty.size > 0);
      this.urgent = false;
      if (more && !this.scheduled) this.schedule();
      return ok;
    });
    this.running = run;
    return run;
  }

  private take(): T[] {
    const n = Math.min(this.dirty.size, this.opts.maxBatchKeys);
    const batch = new Array<T>(n);
    let i = 0;
    for (const item of this.dirty) {
      if (i === n) break;
      batch[i++] = item;
      item.queued = false;
      this.dirty.delete(item);
    }
    return batch;
  }

  private evictOldest(): void {
    for (const item of this.dirty) {
      this.dirty.delete(item);
      item.queued = false;
      this.sink.drop(item);
      return;
    }
  }
}
