// Quota store shared across replicas through Redis (standalone, Cluster or Sentinel), with pre-aggregated,
// batched, pipelined INCRBY and reconciliation. docs/quota-design.md gives the model and its bounds.
//
// Per counter and window ("cell") the store keeps
//   base      global totals (consumed c, reserved r) last returned by Redis, this process's acknowledged
//             deltas included
//   inflight  deltas in the flush currently in flight
//   pending   deltas since
// and decides on used = base + inflight + pending. Requests far from their limit never wait for Redis; a
// counter near its limit (against its recent global growth rate), never seen before, or whose view is too
// old is admitted synchronously: INCRBY of the reservation, decided on the returned totals.
import { performance } from 'node:perf_hooks';
import type { RedisBatchingConfig, RedisTargetConfig } from '../../config/types.ts';
import { SluiceError } from '../../core/errors.ts';
import type { StoreMetrics } from '../../metrics/registry.ts';
import { Batcher, type Batchable, type BatchSink } from '../../batcher/batcher.ts';
import type { AcquireItem, AcquireResult, CounterSpec, CounterView, Denial, Grant, QuotaStore, StoreHealth } from '../types.ts';
import { windowStartOf } from '../types.ts';
import { StoreGrant, StoreGrantEntry, claimGrant, previousWeight, retryAfterMs, tokens } from '../window.ts';
import type { BreakerState } from './breaker.ts';
import { cellKeys, counterTag, hashSlot } from './keys.ts';
import { classifyError, isRedirection, type PortCommand, type PortReply, type RedisErrorKind } from './port.ts';
import { ReplyLanes, type RemoteOutcome } from './reply-lanes.ts';
import { acquireRedis, releaseRedis, type SharedRedis } from './shared-client.ts';

export interface RedisStoreOptions {
  readonly batching: RedisBatchingConfig;
  readonly metrics: StoreMetrics;
  readonly allowDegradation: boolean;
  readonly storeLabel: string;
  /**
   * While Redis answers, a counter's view not reconciled for this long is refreshed synchronously before it
   * admits: another replica may have spent the quota meanwhile. Default 3 flush intervals (at least 30 ms).
   * A counter in steady use is reconciled every interval, so only idle counters pay the round trip.
   */
  readonly freshViewMs?: number;
  /** While Redis is unreachable, views up to this old still admit far from their limit (rides out failovers). Default 5000. */
  readonly maxViewAgeMs?: number;
  /** Safety factor on the unseen-consumption estimate that switches a counter to synchronous admission. Default 2. */
  readonly syncSafety?: number;
}

/** Keys outlive their window by this much: late settlements of long streams and clock skew between replicas. */
const TTL_SLACK_MS = 5_000;
const DEFAULT_MAX_VIEW_AGE_MS = 5_000;
const DEFAULT_SYNC_SAFETY = 2;
const RATE_ALPHA = 0.3;
const RATE_MIN_SAMPLE_MS = 5;
/** How long the largest recent request amount is remembered. */
const MAX_AMOUNT_PERIOD_MS = 1_000;
/** Degraded admissions assume this process gets at least this share of a counter. */
const MIN_SHARE = 0.05;
const SWEEP_EVERY_MS = 10_000;
/** Synchronous mode: how soon a failed write is retried. */
const SYNC_RETRY_MS = 50;
const CLOSE_FLUSH_MS = 2_000;

class RedisCounter {
  readonly id: string;
  readonly tag: string;
  readonly slot: number;
  windowMs: number;
  sliding: boolean;
  cur: RedisCell | undefined = undefined;
  prev: RedisCell | undefined = undefined;
  /** Global growth of consumed + reserved, tokens per ms (EWMA over reconciliations). */
  rate = 0;
  rateKnown = false;
  rateCell: RedisCell | undefined = undefined;
  rateTotal = 0;
  rateOwn = 0;
  rateAt = 0;
  /** This process's fraction of the counter's global growth (EWMA), 0 while unknown. */
  share = 0;
  maxAmount = 0;
  maxAmountPrev = 0;
  maxAmountAt = 0;
  /** performance.now() of the last reconciliation of any of its cells. */
  seenAt = Number.NEGATIVE_INFINITY;
  known = false;

  constructor(spec: CounterSpec) {
    this.id = spec.id;
    this.tag = counterTag(spec.id);
    this.slot = hashSlot(this.tag);
    this.windowMs = spec.windowMs;
    this.sliding = spec.sliding;
  }
}

class RedisCell implements Batchable {
  queued = false;
  readonly counter: RedisCounter;
  readonly start: number;
  readonly keyC: string;
  readonly keyR: string;
  baseC = 0;
  baseR = 0;
  inflightC = 0;
  inflightR = 0;
  pendingC = 0;
  pendingR = 0;
  /** Reservations taken back with DECRBY whose reply has not been applied yet. */
  undoingR = 0;
  /** Send sequence of the reply the base totals come from; an older reply (from another lane) is ignored. */
  appliedSeq = 0;
  /** This process's deltas acknowledged by Redis in this window (re-sent if Redis loses its data). */
  ackedC = 0;
  ackedR = 0;
  /** EXPIRE NX done for the key (TTL is set once per window, never refreshed). */
  expC = false;
  expR = false;
  /** Totals learned from Redis (or a window of a counter whose rate is known, which starts near zero). */
  known: boolean;
  /** Its slot answered MOVED/ASK: flush it in a pipeline of its own, which ioredis can redirect whole. */
  redirected = false;
  seenAt: number;
  /** When a flush of this cell last failed (its node unreachable); -Infinity once it succeeds again. */
  failedAt = Number.NEGATIVE_INFINITY;

  constructor(counter: RedisCounter, start: number, known: boolean, seenAt: number) {
    this.counter = counter;
    this.start = start;
    const k = cellKeys(counter.tag, start);
    this.keyC = k.c;
    this.keyR = k.r;
    this.known = known;
    this.seenAt = seenAt;
  }

  consumed(): number {
    const v = this.baseC + this.inflightC + this.pendingC;
    return v > 0 ? v : 0;
  }

  reserved(): number {
    const v = this.baseR + this.inflightR + this.pendingR - this.undoingR;
    return v > 0 ? v : 0;
  }

  /** Deltas of this process not yet in Redis. */
  unflushed(): number {
    return this.inflightC + this.inflightR + this.pendingC + this.pendingR;
  }

  dirty(): boolean {
    return this.pendingC !== 0 || this.pendingR !== 0 || this.inflightC !== 0 || this.inflightR !== 0;
  }
}

interface FlushOp {
  readonly cell: RedisCell;
  /** Reply index of the c and r commands, or of the MGET (c = r = index, mget = true). */
  readonly iC: number;
  readonly iR: number;
  readonly iExpC: number;
  readonly iExpR: number;
  readonly mget: boolean;
  readonly dc: number;
  readonly dr: number;
}

interface FlushGroup {
  readonly cmds: PortCommand[];
  readonly ops: FlushOp[];
  readonly readOnly: boolean;
}

/** A synchronous admission's reply for one cell, applied in send order. */
interface AdmissionReply {
  readonly failure: RedisErrorKind | undefined;
  /** The reservation's INCRBY was applied (it must be taken back if the request is not admitted). */
  readonly applied: boolean;
  /** Redis's total before this reservation plus this process's deltas Redis had not seen at that point. */
  readonly before: number;
}

function int(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    const n = Number(v);
    return Number.isFinite(n) ? n : 0;
  }
  return 0;
}

function retentionEnd(cell: RedisCell): number {
  const c = cell.counter;
  return cell.start + c.windowMs * (c.sliding ? 2 : 1);
}

function ttlSeconds(cell: RedisCell, nowMs: number): number {
  return Math.max(1, Math.ceil((retentionEnd(cell) + TTL_SLACK_MS - nowMs) / 1000));
}

const BREAKER_GAUGE: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 };

export class RedisQuotaStore implements QuotaStore, BatchSink<RedisCell> {
  readonly name: string;
  private readonly shared: SharedRedis;
  private readonly batcher: Batcher<RedisCell>;
  private readonly counters = new Map<string, RedisCounter>();
  private readonly allowDegradation: boolean;
  private readonly intervalMs: number;
  /** flush_interval_ms 0: every admission is decided by a Redis round trip, deltas are written every tick. */
  private readonly syncMode: boolean;
  private readonly timeoutMs: number;
  private readonly maxViewAgeMs: number;
  private readonly freshViewMs: number;
  private readonly syncSafety: number;
  private readonly unsubscribe: () => void;
  private readonly sweepTimer: NodeJS.Timeout;
  private readonly m: {
    flushOk: { inc(n?: number): void };
    flushError: { inc(n?: number): void };
    flushKeys: { observe(v: number): void };
    flushCommands: { observe(v: number): void };
    flushDuration: { observe(v: number): void };
    cmdFlush: { inc(n?: number): void };
    cmdSync: { inc(n?: number): void };
    cmdProbe: { inc(n?: number): void };
    errors: Record<RedisErrorKind, { inc(n?: number): void }>;
    breaker: { set(v: number): void };
    pending: { set(v: number): void };
    dropped: { inc(n?: number): void };
    sync: { inc(n?: number): void };
    degraded: { inc(n?: number): void };
  };
  /** Replies are applied in send order per connection (see reply-lanes.ts). */
  private readonly lanes = new ReplyLanes();
  /** Numbers every pipeline sent, so a cell can tell an older reply from a newer one across lanes. */
  private sendSeq = 0;
  /** Round trip of recent flushes, ms (EWMA). */
  private flushLatencyMs = 1;
  /** MOVED/ASK replies in the current flush. */
  private redirections = 0;
  private closed = false;
  private readonly scratch: RedisCell[] = [];

  constructor(target: RedisTargetConfig, opts: RedisStoreOptions) {
    this.name = opts.storeLabel;
    this.allowDegradation = opts.allowDegradation;
    this.syncMode = opts.batching.flush_interval_ms <= 0;
    this.intervalMs = Math.max(1, opts.batching.flush_interval_ms);
    this.timeoutMs = target.timeout_ms;
    this.maxViewAgeMs = opts.maxViewAgeMs ?? DEFAULT_MAX_VIEW_AGE_MS;
    this.freshViewMs = opts.freshViewMs ?? Math.max(3 * this.intervalMs, 30);
    this.syncSafety = opts.syncSafety ?? DEFAULT_SYNC_SAFETY;
    const mt = opts.metrics;
    const store = opts.storeLabel;
    this.m = {
      flushOk: mt.redisFlushes.labels({ store, outcome: 'ok' }),
      flushError: mt.redisFlushes.labels({ store, outcome: 'error' }),
      flushKeys: mt.redisFlushKeys.labels({ store }),
      flushCommands: mt.redisFlushCommands.labels({ store }),
      flushDuration: mt.redisFlushDuration.labels({ store }),
      cmdFlush: mt.redisCommands.labels({ store, path: 'flush' }),
      cmdSync: mt.redisCommands.labels({ store, path: 'sync_admission' }),
      cmdProbe: mt.redisCommands.labels({ store, path: 'probe' }),
      errors: {
        timeout: mt.redisErrors.labels({ store, kind: 'timeout' }),
        connection: mt.redisErrors.labels({ store, kind: 'connection' }),
        not_sent: mt.redisErrors.labels({ store, kind: 'not_sent' }),
        reply: mt.redisErrors.labels({ store, kind: 'reply' }),
      },
      breaker: mt.redisBreakerState.labels({ store }),
      pending: mt.redisPendingDeltas.labels({ store }),
      dropped: mt.redisDroppedDeltas.labels({ store }),
      sync: mt.syncAdmissions.labels({ store }),
      degraded: mt.degradedAdmissions.labels({ store }),
    };
    this.batcher = new Batcher<RedisCell>(this, {
      // Synchronous mode writes on the next tick after a delta; the timer only retries failed writes.
      intervalMs: this.syncMode ? SYNC_RETRY_MS : this.intervalMs,
      immediate: this.syncMode,
      maxBatchKeys: opts.batching.max_batch_keys,
      maxPendingKeys: opts.batching.max_pending_keys,
    });
    this.shared = acquireRedis(target);
    this.unsubscribe = this.shared.subscribe({
      breaker: (state) => {
        this.m.breaker.set(BREAKER_GAUGE[state]);
        if (state === 'closed') this.batcher.kick();
      },
      dataLost: () => this.resendAcknowledged(),
      usable: () => this.batcher.kick(),
      probe: () => this.m.cmdProbe.inc(),
      error: (kind) => this.m.errors[kind].inc(),
    });
    this.m.breaker.set(BREAKER_GAUGE[this.shared.breaker.state]);
    this.batcher.start();
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_EVERY_MS);
    this.sweepTimer.unref();
  }

  /** Resolves true once Redis is connected and usable (false after `timeoutMs`). For startup and tests. */
  ready(timeoutMs = 5_000): Promise<boolean> {
    return this.shared.whenUsable(timeoutMs);
  }

  // ------------------------------------------------------------------------------------------------------
  // QuotaStore

  acquire(items: readonly AcquireItem[], now: number): AcquireResult | Promise<AcquireResult> {
    const perf = performance.now();
    const cells = this.scratch;
    let denied: number[] | undefined;
    let retry = 0;
    let remote = false;
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      const spec = item.counter;
      const amount = tokens(item.amount);
      const counter = this.counterFor(spec);
      const cell = this.roll(counter, windowStartOf(now, spec.windowMs));
      cells[i] = cell;
      this.noteAmount(counter, amount, perf);
      const prev = this.prevCell(counter, cell);
      if (this.syncMode) {
        // Redis decides every admission. Consumption never shrinks within a window, so a view whose
        // consumption alone is spent denies without asking; reservations may have been settled lower since.
        const spent = this.consumedOf(cell, prev, now);
        if (spent >= spec.limit) {
          (denied ??= []).push(i);
          retry = Math.max(retry, retryAfterMs(now, cell.start, spec, cell.consumed(), prev === undefined ? 0 : prev.consumed()));
        }
        remote = true;
        continue;
      }
      // The cell's next flush refreshes it (an MGET when this process has no delta for it).
      this.batcher.mark(cell);
      const used = this.usedOf(cell, prev, now);
      if (used >= spec.limit) {
        (denied ??= []).push(i);
        retry = Math.max(retry, retryAfterMs(now, cell.start, spec, cell.consumed() + cell.reserved(), prev === undefined ? 0 : prev.consumed() + prev.reserved()));
      } else if (!remote && this.needsRedis(counter, cell, prev, spec.limit - used, amount, perf)) {
        remote = true;
      }
    }
    if (denied !== undefined) {
      cells.length = 0;
      const d: Denial = { ok: false, denied, retryAfterMs: retry };
      return d;
    }
    if (!remote) {
      const grant = this.reserveLocally(items, cells);
      cells.length = 0;
      return grant;
    }
    const own = cells.slice(0, items.length);
    cells.length = 0;
    if (!this.shared.breaker.closed) return this.unavailable(items, own, now);
    if (this.shared.usable) return this.acquireRemote(items, own, now);
    // Reconnecting (a failover, or a restart the breaker has not judged yet): a recent view far from the
    // limit rides it out at once, as when a command fails.
    if (!this.syncMode && this.rideOut(items, own, now, perf)) return this.reserveLocally(items, own);
    // Connecting (startup, or no recent view): wait, bounded by the command timeout.
    return this.shared.whenUsable(this.timeoutMs).then((up) => (up && this.shared.breaker.closed ? this.acquireRemote(items, own, now) : this.unavailable(items, own, now)));
  }

  settle(grant: Grant, actual: readonly number[]): void {
    const g = claimGrant<RedisCell>(grant, this);
    if (g === undefined) return;
    const entries = g.entries;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const cell = e.cell;
      cell.pendingR -= e.reserved;
      cell.pendingC += tokens(actual[i] ?? 0);
      this.batcher.mark(cell);
    }
  }

  release(grant: Grant): void {
    const g = claimGrant<RedisCell>(grant, this);
    if (g === undefined) return;
    for (const e of g.entries) {
      e.cell.pendingR -= e.reserved;
      this.batcher.mark(e.cell);
    }
  }

  peek(spec: CounterSpec, now: number): CounterView {
    const counter = this.counterFor(spec);
    const cell = this.roll(counter, windowStartOf(now, spec.windowMs));
    // The next flush refreshes the view (an MGET when this process has no delta for it).
    this.batcher.mark(cell);
    let consumed = cell.consumed();
    let reserved = cell.reserved();
    const prev = this.prevCell(counter, cell);
    if (prev !== undefined) {
      const w = previousWeight(now, cell.start, spec.windowMs);
      consumed += prev.consumed() * w;
      reserved += prev.reserved() * w;
    }
    return { limit: spec.limit, consumed, reserved, resetMs: cell.start + spec.windowMs - now };
  }

  health(): StoreHealth {
    if (this.shared.breaker.closed) return 'ok';
    return this.allowDegradation ? 'degraded' : 'unavailable';
  }

  async flush(): Promise<void> {
    const ok = await this.batcher.flush();
    this.m.pending.set(this.batcher.backlog);
    if (!ok) throw new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE', 'quota deltas were not acknowledged by redis');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.batcher.stop();
    clearInterval(this.sweepTimer);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.batcher.flush().catch(() => false),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, CLOSE_FLUSH_MS); }),
    ]);
    clearTimeout(timer);
    this.unsubscribe();
    await releaseRedis(this.shared);
  }

  // ------------------------------------------------------------------------------------------------------
  // Local view

  private counterFor(spec: CounterSpec): RedisCounter {
    let c = this.counters.get(spec.id);
    if (c === undefined) {
      c = new RedisCounter(spec);
      this.counters.set(spec.id, c);
    } else if (c.windowMs !== spec.windowMs) {
      // A new window length does not line up with the old windows: start afresh (the rate stays a hint).
      c.windowMs = spec.windowMs;
      c.cur = undefined;
      c.prev = undefined;
      c.known = false;
    }
    c.sliding = spec.sliding;
    return c;
  }

  /** The counter's cell for the window starting at `ws` (a `now` older than the newest window stays in it). */
  private roll(counter: RedisCounter, ws: number): RedisCell {
    const cur = counter.cur;
    if (cur !== undefined && ws <= cur.start) return cur;
    // A counter this process has reconciled before starts its next window from its last view's age: the
    // new window starts at zero everywhere, and what others added since is bounded by rate × age.
    const cell = new RedisCell(counter, ws, counter.known, counter.seenAt);
    if (cur !== undefined && ws - cur.start === counter.windowMs) {
      counter.prev = cur;
      // Late settlements from other replicas land in the previous window; learn its final totals once.
      if (counter.sliding) this.batcher.mark(cur);
    } else {
      counter.prev = counter.sliding ? new RedisCell(counter, ws - counter.windowMs, false, Number.NEGATIVE_INFINITY) : undefined;
      if (counter.prev !== undefined) this.batcher.mark(counter.prev);
    }
    counter.cur = cell;
    return cell;
  }

  private prevCell(counter: RedisCounter, cell: RedisCell): RedisCell | undefined {
    return counter.sliding && cell === counter.cur ? counter.prev : undefined;
  }

  private usedOf(cell: RedisCell, prev: RedisCell | undefined, now: number): number {
    const cur = cell.consumed() + cell.reserved();
    if (prev === undefined) return cur;
    return cur + (prev.consumed() + prev.reserved()) * previousWeight(now, cell.start, cell.counter.windowMs);
  }

  private consumedOf(cell: RedisCell, prev: RedisCell | undefined, now: number): number {
    if (prev === undefined) return cell.consumed();
    return cell.consumed() + prev.consumed() * previousWeight(now, cell.start, cell.counter.windowMs);
  }

  private noteAmount(counter: RedisCounter, amount: number, perf: number): void {
    if (perf - counter.maxAmountAt > MAX_AMOUNT_PERIOD_MS) {
      counter.maxAmountPrev = counter.maxAmount;
      counter.maxAmount = 0;
      counter.maxAmountAt = perf;
    }
    if (amount > counter.maxAmount) counter.maxAmount = amount;
  }

  /**
   * Whether the local view is not enough to admit: the counter (or the previous window of a sliding one)
   * was never learned from Redis or its growth rate is not measured yet, the view is too old, or the
   * remaining quota is within reach of what other replicas may have added unseen:
   * rate × (flush interval + flush latency + view age) × safety, plus the largest recent request.
   */
  private needsRedis(counter: RedisCounter, cell: RedisCell, prev: RedisCell | undefined, remaining: number, amount: number, perf: number): boolean {
    // While its node is unreachable (breaker open, or this cell's last flush failed, e.g. a Cluster master
    // failing over) an older view still admits far from the limit; otherwise it must be fresh.
    const unreachable = !this.shared.breaker.closed || perf - cell.failedAt < this.maxViewAgeMs;
    return !this.trusted(counter, cell, prev, remaining, amount, perf, unreachable ? this.maxViewAgeMs : this.freshViewMs);
  }

  /**
   * Whether the local view alone may admit: the counter (and the previous window of a sliding one) was
   * learned from Redis, its growth rate is measured, the view is at most `maxAgeMs` old, and the remaining
   * quota is beyond what other replicas may have added unseen:
   * rate × (flush interval + flush latency + view age) × safety, plus the largest recent request.
   */
  private trusted(counter: RedisCounter, cell: RedisCell, prev: RedisCell | undefined, remaining: number, amount: number, perf: number, maxAgeMs: number): boolean {
    if (!cell.known || (prev !== undefined && !prev.known) || !counter.rateKnown) return false;
    const age = perf - cell.seenAt;
    if (age > maxAgeMs) return false;
    const horizon = this.intervalMs + this.flushLatencyMs + age;
    const biggest = Math.max(amount, counter.maxAmount, counter.maxAmountPrev);
    return remaining >= counter.rate * horizon * this.syncSafety + biggest;
  }

  private reserveLocally(items: readonly AcquireItem[], cells: readonly RedisCell[]): StoreGrant<RedisCell> {
    const entries = new Array<StoreGrantEntry<RedisCell>>(items.length);
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      const cell = cells[i]!;
      const amount = tokens(item.amount);
      cell.pendingR += amount;
      entries[i] = new StoreGrantEntry(item.counter, cell.start, amount, cell);
    }
    return new StoreGrant(this, entries);
  }

  // ------------------------------------------------------------------------------------------------------
  // Synchronous admission (near a limit, unknown counter, stale view)

  private async acquireRemote(items: readonly AcquireItem[], cells: RedisCell[], now: number): Promise<AcquireResult> {
    const n = items.length;
    const amounts = new Array<number>(n);
    // One pipeline per distinct cell (a counter's keys share a slot, two counters may not), carrying the
    // reservations of every item on it.
    const perCell = new Map<RedisCell, number>();
    for (let i = 0; i < n; i++) {
      const cell = cells[i]!;
      amounts[i] = tokens(items[i]!.amount);
      perCell.set(cell, (perCell.get(cell) ?? 0) + amounts[i]!);
    }
    const nowMs = Date.now();
    const order = [...perCell.keys()];
    const replies = await Promise.all(order.map((cell) => this.sendAdmission(cell, perCell.get(cell)!, nowMs)));

    let failure: RedisErrorKind | undefined;
    for (const r of replies) failure ??= r.failure;
    if (failure !== undefined) {
      this.m.errors[failure].inc();
      this.failed(failure);
      order.forEach((cell, k) => {
        if (replies[k]!.applied) this.undoRemote(cell, perCell.get(cell)!);
      });
      // The node of these counters is failing (a Cluster master or Sentinel failover in progress): a view
      // reconciled within maxViewAgeMs and far from its limit still decides, so failovers reach no client.
      // Not in synchronous mode, which promises that every admission is decided by Redis.
      if (!this.syncMode && this.rideOut(items, cells, now, performance.now())) return this.reserveLocally(items, cells);
      if (this.allowDegradation) return this.decideDegraded(items, cells, now);
      throw new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE');
    }
    this.shared.breaker.success();

    let denied: number[] | undefined;
    let retry = 0;
    for (let i = 0; i < n; i++) {
      const cell = cells[i]!;
      const spec = items[i]!.counter;
      const prev = this.prevCell(cell.counter, cell);
      const prevTotal = prev === undefined ? 0 : prev.consumed() + prev.reserved();
      const cur = replies[order.indexOf(cell)]!.before;
      if (cur + prevTotal * previousWeight(now, cell.start, spec.windowMs) >= spec.limit) {
        (denied ??= []).push(i);
        retry = Math.max(retry, retryAfterMs(now, cell.start, spec, cur, prevTotal));
      }
    }
    if (denied !== undefined) {
      for (const cell of order) this.undoRemote(cell, perCell.get(cell)!);
      return { ok: false, denied, retryAfterMs: retry };
    }
    this.m.sync.inc();
    const entries = new Array<StoreGrantEntry<RedisCell>>(n);
    for (let i = 0; i < n; i++) entries[i] = new StoreGrantEntry(items[i]!.counter, cells[i]!.start, amounts[i]!, cells[i]!);
    return new StoreGrant(this, entries);
  }

  /**
   * INCRBY of the reservation with the consumed total read alongside. The reply is applied in send order
   * (reply-lanes.ts), so at that moment this process's flushes and undos sent before it are already in
   * the base totals, and the ones sent after it are exactly what is still in flight.
   */
  private sendAdmission(cell: RedisCell, amount: number, nowMs: number): Promise<AdmissionReply> {
    const cmds: PortCommand[] = [['incrby', cell.keyR, amount], ['get', cell.keyC]];
    if (!cell.expR) cmds.push(['expire', cell.keyR, ttlSeconds(cell, nowMs), 'NX']);
    const prev = this.prevCell(cell.counter, cell);
    if (prev !== undefined) cmds.push(['mget', prev.keyC, prev.keyR]);
    this.m.cmdSync.inc(cmds.length);
    const seq = ++this.sendSeq;
    return this.lanes.send(this.laneOf(cell), () => this.shared.port.exec(cmds), (out): AdmissionReply => {
      if (!out.ok) return { failure: out.kind, applied: false, before: 0 };
      const [[errR, r], [errC, c], ...rest] = out.replies as [PortReply, PortReply, ...PortReply[]];
      if (errR !== null) return { failure: classifyError(errR), applied: false, before: 0 };
      cell.ackedR += amount;
      if (errC !== null) return { failure: classifyError(errC), applied: true, before: 0 };
      const perf = performance.now();
      const total = int(c) + int(r);
      if (this.fresher(cell, seq)) {
        cell.baseR = int(r);
        cell.baseC = Math.max(cell.baseC, int(c));
      }
      cell.known = true;
      let at = 0;
      if (!cell.expR) {
        const [errE] = rest[at++] ?? [null];
        if (errE === null) cell.expR = true;
      }
      if (prev !== undefined) {
        const [errP, pv] = rest[at] ?? [new Error('missing reply'), null];
        if (errP === null && Array.isArray(pv) && this.fresher(prev, seq)) this.learn(prev, int(pv[0]), int(pv[1]), perf);
      }
      this.reconciled(cell, perf);
      // What Redis had before this request, plus what this process added that Redis had not applied when it
      // answered (everything sent later is still in flight now, since replies are applied in send order).
      const unseen = cell.pendingC + cell.pendingR + cell.inflightC + cell.inflightR - cell.undoingR;
      return { failure: undefined, applied: true, before: total - amount + unseen };
    });
  }

  /** Take back a reservation Redis applied for a request that is not admitted after all. */
  private undoRemote(cell: RedisCell, amount: number): void {
    this.m.cmdSync.inc();
    cell.undoingR += amount;
    const seq = ++this.sendSeq;
    void this.lanes.send(this.laneOf(cell), () => this.shared.port.exec([['decrby', cell.keyR, amount]]), (out) => {
      cell.undoingR -= amount;
      if (!out.ok) {
        this.m.errors[out.kind].inc();
        // Re-send only what surely did not reach Redis: a double undo would hide reservations.
        if (out.kind === 'not_sent') this.undoLater(cell, amount);
        return;
      }
      const [err, v] = out.replies[0] ?? [new Error('no reply'), null];
      if (err === null) {
        if (this.fresher(cell, seq)) cell.baseR = int(v);
        cell.ackedR -= amount;
      } else {
        this.m.errors[classifyError(err)].inc();
        this.undoLater(cell, amount);
      }
    });
  }

  /** The lane (connection) a cell's commands travel on. */
  private laneOf(cell: RedisCell): string {
    return this.shared.port.groupOf(cell.counter.slot);
  }

  /**
   * Whether a reply to the pipeline numbered `seq` may set the cell's base totals: not when a reply to a
   * later pipeline was applied already (possible only across lanes, e.g. a replica read or a redirected
   * cell's own pipeline). Records `seq` as the newest applied.
   */
  private fresher(cell: RedisCell, seq: number): boolean {
    if (seq < cell.appliedSeq) return false;
    cell.appliedSeq = seq;
    return true;
  }

  private undoLater(cell: RedisCell, amount: number): void {
    cell.pendingR -= amount;
    this.batcher.mark(cell);
  }

  private rideOut(items: readonly AcquireItem[], cells: readonly RedisCell[], now: number, perf: number): boolean {
    for (let i = 0; i < items.length; i++) {
      const cell = cells[i]!;
      const prev = this.prevCell(cell.counter, cell);
      const remaining = items[i]!.counter.limit - this.usedOf(cell, prev, now);
      if (!this.trusted(cell.counter, cell, prev, remaining, tokens(items[i]!.amount), perf, this.maxViewAgeMs)) return false;
    }
    return true;
  }

  /** Redis is needed and not reachable: local decision on this process's share, or 503. */
  private unavailable(items: readonly AcquireItem[], cells: RedisCell[], now: number): AcquireResult | Promise<AcquireResult> {
    if (this.allowDegradation) return this.decideDegraded(items, cells, now);
    return Promise.reject(new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE'));
  }

  /**
   * Degraded admission: the global total is estimated as the last known global total plus this process's
   * own unacknowledged usage divided by its share of the counter's recent global growth (other replicas
   * are assumed to keep consuming in the same proportion). Share unknown: 1 (alone).
   */
  private decideDegraded(items: readonly AcquireItem[], cells: readonly RedisCell[], now: number): AcquireResult {
    let denied: number[] | undefined;
    let retry = 0;
    for (let i = 0; i < items.length; i++) {
      const spec = items[i]!.counter;
      const cell = cells[i]!;
      const prev = this.prevCell(cell.counter, cell);
      const est = this.degradedEstimate(cell) + (prev === undefined ? 0 : this.degradedEstimate(prev) * previousWeight(now, cell.start, spec.windowMs));
      if (est >= spec.limit) {
        (denied ??= []).push(i);
        retry = Math.max(retry, retryAfterMs(now, cell.start, spec, est, 0));
      }
    }
    if (denied !== undefined) return { ok: false, denied, retryAfterMs: retry };
    this.m.degraded.inc();
    return this.reserveLocally(items, cells);
  }

  private degradedEstimate(cell: RedisCell): number {
    const s = cell.counter.share;
    const share = s <= 0 ? 1 : s < MIN_SHARE ? MIN_SHARE : s;
    const base = Math.max(0, cell.baseC) + Math.max(0, cell.baseR);
    return Math.max(0, base + cell.unflushed() / share);
  }

  // ------------------------------------------------------------------------------------------------------
  // Flush (BatchSink)

  canWrite(): boolean {
    // A down connection is still written to: the failed attempts are what open the breaker.
    return this.shared.breaker.closed;
  }

  drop(cell: RedisCell): void {
    if (cell.pendingC === 0 && cell.pendingR === 0) return;
    cell.pendingC = 0;
    cell.pendingR = 0;
    this.m.dropped.inc();
  }

  async write(batch: readonly RedisCell[]): Promise<boolean> {
    if (!this.shared.usable) {
      // Nothing was sent: keep every delta queued; a down connection counts against the breaker.
      const perf = performance.now();
      for (const cell of batch) {
        cell.failedAt = perf;
        this.batcher.mark(cell);
      }
      this.m.flushError.inc();
      this.m.errors.not_sent.inc();
      this.failed('not_sent');
      return false;
    }
    const nowMs = Date.now();
    const groups = new Map<string, FlushGroup>();
    let keys = 0;
    let commands = 0;
    for (const cell of batch) {
      if (retentionEnd(cell) + TTL_SLACK_MS < nowMs) {
        // The window and its keys are gone; nobody reads these deltas any more.
        cell.pendingC = 0;
        cell.pendingR = 0;
        continue;
      }
      const dc = cell.pendingC;
      const dr = cell.pendingR;
      cell.inflightC = dc;
      cell.inflightR = dr;
      cell.pendingC = 0;
      cell.pendingR = 0;
      // Keys only read (no delta) are refreshed with one MGET; with a replica reader they go there.
      const readOnly = dc === 0 && dr === 0 && this.shared.port.readsFromReplica;
      const gk = (cell.redirected ? `slot:${cell.counter.slot}` : this.shared.port.groupOf(cell.counter.slot)) + (readOnly ? '/ro' : '');
      cell.redirected = false;
      let g = groups.get(gk);
      if (g === undefined) {
        g = { cmds: [], ops: [], readOnly };
        groups.set(gk, g);
      }
      const cmds = g.cmds;
      if (dc === 0 && dr === 0) {
        const at = cmds.push(['mget', cell.keyC, cell.keyR]) - 1;
        g.ops.push({ cell, iC: at, iR: at, iExpC: -1, iExpR: -1, mget: true, dc, dr });
      } else {
        const ttl = ttlSeconds(cell, nowMs);
        const iC = cmds.push(dc !== 0 ? ['incrby', cell.keyC, dc] : ['get', cell.keyC]) - 1;
        // The TTL goes with this process's first write of the key in its window (and again after a loss).
        const iExpC = cell.expC || dc === 0 ? -1 : cmds.push(['expire', cell.keyC, ttl, 'NX']) - 1;
        const iR = cmds.push(dr !== 0 ? ['incrby', cell.keyR, dr] : ['get', cell.keyR]) - 1;
        const iExpR = cell.expR || dr === 0 ? -1 : cmds.push(['expire', cell.keyR, ttl, 'NX']) - 1;
        g.ops.push({ cell, iC, iR, iExpC, iExpR, mget: false, dc, dr });
      }
      keys++;
    }
    if (keys === 0) return true;
    for (const g of groups.values()) commands += g.cmds.length;
    const seq = ++this.sendSeq;
    const started = performance.now();
    this.redirections = 0;
    // Each group's replies are applied as soon as they (and everything sent before on its connection) are in.
    const failures = await Promise.all([...groups].map(([lane, g]) => this.lanes.send(lane, () => this.shared.port.exec(g.cmds, g.readOnly), (out) => this.applyGroup(g, out, seq))));
    const latency = performance.now() - started;
    this.flushLatencyMs = this.flushLatencyMs * (1 - RATE_ALPHA) + latency * RATE_ALPHA;
    let failure: RedisErrorKind | undefined;
    for (const f of failures) failure ??= f;
    this.m.cmdFlush.inc(commands);
    this.m.flushKeys.observe(keys);
    this.m.flushCommands.observe(commands);
    this.m.flushDuration.observe(latency / 1000);
    this.m.pending.set(this.batcher.backlog);
    if (this.redirections > 0) this.shared.port.slotsMoved();
    if (failure !== undefined) {
      this.m.flushError.inc();
      // A resharding is not an outage: redirected keys are retried, the breaker is not told.
      if (this.redirections === 0) this.failed(failure);
      return false;
    }
    this.m.flushOk.inc();
    this.shared.breaker.success();
    return true;
  }

  /** Apply one group's outcome to its cells; returns the error kind when some of it failed (queued again). */
  private applyGroup(g: FlushGroup, out: RemoteOutcome, seq: number): RedisErrorKind | undefined {
    const perf = performance.now();
    if (!out.ok) {
      this.m.errors[out.kind].inc();
      for (const op of g.ops) {
        op.cell.failedAt = perf;
        this.restore(op.cell, true, true);
      }
      return out.kind;
    }
    let failure: RedisErrorKind | undefined;
    for (const op of g.ops) {
      const kind = this.reconcileOp(op, out.replies, perf, seq);
      if (kind !== undefined) failure ??= kind;
    }
    return failure;
  }

  /** Apply one cell's replies; returns the error kind when part of it failed (that part is queued again). */
  private reconcileOp(op: FlushOp, replies: PortReply[], perf: number, seq: number): RedisErrorKind | undefined {
    const cell = op.cell;
    if (op.mget) {
      const [err, v] = replies[op.iC]!;
      if (err !== null || !Array.isArray(v)) {
        this.restore(cell, true, true);
        return this.replyError(cell, err);
      }
      if (this.fresher(cell, seq)) this.learn(cell, int(v[0]), int(v[1]), perf);
      return undefined;
    }
    let failure: RedisErrorKind | undefined;
    const [errC, c] = replies[op.iC]!;
    const [errR, r] = replies[op.iR]!;
    const fresh = (errC === null || errR === null) && this.fresher(cell, seq);
    if (errC === null) {
      const reply = int(c);
      // A key that comes back at exactly our delta was created by it: if we had set its TTL before, the
      // key was lost in between, so the next write sets the TTL again.
      if (op.dc !== 0 && reply === op.dc && cell.expC && cell.ackedC > 0) cell.expC = false;
      cell.ackedC += cell.inflightC;
      cell.inflightC = 0;
      if (fresh) cell.baseC = Math.max(cell.baseC, reply);
      if (op.iExpC >= 0 && replies[op.iExpC]![0] === null) cell.expC = true;
    } else {
      this.restore(cell, true, false);
      failure = this.replyError(cell, errC);
    }
    if (errR === null) {
      const reply = int(r);
      if (op.dr !== 0 && reply === op.dr && cell.expR && cell.ackedR > 0) cell.expR = false;
      cell.ackedR += cell.inflightR;
      cell.inflightR = 0;
      if (fresh) cell.baseR = reply;
      if (op.iExpR >= 0 && replies[op.iExpR]![0] === null) cell.expR = true;
    } else {
      this.restore(cell, false, true);
      failure ??= this.replyError(cell, errR);
    }
    if (failure === undefined) {
      cell.known = true;
      if (fresh) this.reconciled(cell, perf);
    }
    return failure;
  }

  private replyError(cell: RedisCell, err: Error | null): RedisErrorKind {
    const kind = err === null ? 'reply' : classifyError(err);
    this.m.errors[kind].inc();
    if (isRedirection(err)) {
      cell.redirected = true;
      this.redirections++;
    } else {
      // The node refused the write (READONLY while a Sentinel failover demotes it, LOADING, ...): treat the
      // cell's node as unreachable, so its recent view keeps admitting far from the limit meanwhile.
      cell.failedAt = performance.now();
    }
    return kind;
  }

  /** A failed write: its deltas go back to pending (at least once: a timeout may hide an applied INCRBY). */
  private restore(cell: RedisCell, c: boolean, r: boolean): void {
    if (c) {
      cell.pendingC += cell.inflightC;
      cell.inflightC = 0;
    }
    if (r) {
      cell.pendingR += cell.inflightR;
      cell.inflightR = 0;
    }
    this.batcher.mark(cell);
  }

  private learn(cell: RedisCell, c: number, r: number, perf: number): void {
    cell.baseC = Math.max(cell.baseC, c);
    cell.baseR = r;
    cell.known = true;
    this.reconciled(cell, perf);
  }

  /** Fresh global totals for a cell: update the view age and, for the current window, rate and share. */
  private reconciled(cell: RedisCell, perf: number): void {
    cell.seenAt = perf;
    cell.failedAt = Number.NEGATIVE_INFINITY;
    const counter = cell.counter;
    if (cell !== counter.cur) return;
    counter.known = true;
    counter.seenAt = perf;
    const total = cell.baseC + cell.baseR;
    const own = cell.ackedC + cell.ackedR;
    if (counter.rateCell !== cell) {
      counter.rateCell = cell;
      counter.rateTotal = total;
      counter.rateOwn = own;
      counter.rateAt = perf;
      return;
    }
    const dt = perf - counter.rateAt;
    if (dt < RATE_MIN_SAMPLE_MS) return;
    const grew = Math.max(0, total - counter.rateTotal);
    const sample = grew / dt;
    // Fast attack, slow decay: a burst counts at once, a lull only gradually.
    counter.rate = counter.rateKnown ? Math.max(sample, counter.rate * (1 - RATE_ALPHA) + sample * RATE_ALPHA) : sample;
    counter.rateKnown = true;
    if (grew > 0) {
      const mine = Math.min(1, Math.max(0, (own - counter.rateOwn) / grew));
      counter.share = counter.share <= 0 ? mine : counter.share * (1 - RATE_ALPHA) + mine * RATE_ALPHA;
    }
    counter.rateTotal = total;
    counter.rateOwn = own;
    counter.rateAt = perf;
  }

  private failed(kind: RedisErrorKind): void {
    this.shared.breaker.failure(kind === 'timeout');
  }

  /** Redis lost its data (restarted empty): write again everything this process had written in live windows. */
  private resendAcknowledged(): void {
    for (const counter of this.counters.values()) {
      for (const cell of [counter.cur, counter.prev]) {
        if (cell === undefined) continue;
        cell.pendingC += cell.ackedC;
        cell.pendingR += cell.ackedR;
        cell.ackedC = 0;
        cell.ackedR = 0;
        cell.expC = false;
        cell.expR = false;
        this.batcher.mark(cell);
      }
    }
  }

  /** Forget counters whose windows are over and that hold no unwritten deltas. */
  private sweep(): void {
    const nowMs = Date.now();
    for (const [id, counter] of this.counters) {
      const cur = counter.cur;
      if (cur === undefined) continue;
      if (cur.start + 2 * counter.windowMs + TTL_SLACK_MS > nowMs) continue;
      if (cur.dirty() || cur.queued || (counter.prev !== undefined && (counter.prev.dirty() || counter.prev.queued))) continue;
      this.counters.delete(id);
    }
  }
}
