// Quota store shared across replicas through Redis (standalone, Cluster or Sentinel), with pre-aggregated,
// batched, pipelined writes and reconciliation. docs/quota-design.md gives the model and its bounds.
//
// Per counter and window ("cell") this process keeps its own state as absolute numbers (own consumed and
// own reserved, the local truth) and the other processes' totals as of the last reply (others' consumed and
// live reserved). A flush writes the own state with a sequence number through one script per cell
// (scripts.ts): idempotent, so a write whose outcome is unknown is simply sent again, and the reservations
// of a process that died stop counting when their lease ends. Requests far from their limit never wait for
// Redis; a counter near its limit (against its recent global growth rate), never seen before, or whose
// view is too old is admitted synchronously by the same script, which decides on the global totals.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { RedisBatchingConfig, RedisTargetConfig } from '../../config/types.ts';
import { monotonicClock, type Clock } from '../../core/clock.ts';
import { SluiceError } from '../../core/errors.ts';
import { log } from '../../core/log.ts';
import type { StoreMetrics } from '../../metrics/registry.ts';
import { Batcher, type Batchable, type BatchSink } from '../../batcher/batcher.ts';
import type { AcquireItem, AcquireResult, CounterSpec, CounterView, Denial, Grant, QuotaStore, StoreHealth } from '../types.ts';
import { windowStartOf } from '../types.ts';
import { StoreGrant, StoreGrantEntry, TokenGuard, claimGrant, previousWeight, retryAfterMs } from '../window.ts';
import type { BreakerState } from './breaker.ts';
import { cellKeys, counterTag, hashSlot } from './keys.ts';
import { classifyError, isRedirection, type PortCommand, type RedisErrorKind } from './port.ts';
import { ReplyLanes, type RemoteOutcome } from './reply-lanes.ts';
import { READ_SHA, WRITE_SHA } from './scripts.ts';
import { acquireRedis, releaseRedis, type SharedRedis } from './shared-client.ts';
import { V_BASE_C, V_BASE_R, V_CAP_MARGIN, V_LIMIT_MARGIN, V_PREV_C, V_PREV_R, V_VALID_UNTIL, releaseLinked, type LedgerBackend, type LedgerCell } from '../shared/link.ts';

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
  /** Most counters tracked (limits.max_quota_keys). Default 100000. */
  readonly maxKeys?: number;
  /** Time for view ages, rates, leases and the flush timer. Default: the process clock. */
  readonly clock?: Clock;
}

/** Keys outlive their window by this much: late settlements of long streams and clock skew between replicas. */
const TTL_SLACK_MS = 5_000;
const DEFAULT_MAX_VIEW_AGE_MS = 5_000;
const DEFAULT_SYNC_SAFETY = 2;
const DEFAULT_LEASE_MS = 15_000;
const DEFAULT_MAX_KEYS = 100_000;
const RATE_ALPHA = 0.3;
const RATE_MIN_SAMPLE_MS = 5;
/** How long the largest recent request amount is remembered. */
const MAX_AMOUNT_PERIOD_MS = 1_000;
/** Degraded admissions assume this process gets at least this share of a counter. */
const MIN_SHARE = 0.05;
const SWEEP_EVERY_MS = 10_000;
/** Synchronous mode: how soon a failed write is retried. */
const SYNC_RETRY_MS = 50;
/** How long a closing store keeps trying to write its last deltas, unless its caller says otherwise. */
const CLOSE_FLUSH_MS = 2_000;
/** A closing store whose writes fail waits this long before it tries again (Redis restarting, failing over). */
const CLOSE_RETRY_MS = 200;
/** Key cap full and nothing evictable: how long new keys are refused before the counters are scanned again. */
const EVICT_RETRY_MS = 100;
/** At most one log line per error kind this often (the rest are counted in the line that follows). */
const LOG_EVERY_MS = 10_000;
/** Reply errors that mean the node cannot take writes right now, not that the cell's data is bad. */
const NODE_STATE = /^(READONLY|LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS|BUSY) /;
/** Sends of one synchronous admission whose write arrived after a newer one (see AdmissionReply.stale). */
const ADMISSION_ATTEMPTS = 4;

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
  /** Clock time of the last reconciliation of any of its cells. */
  seenAt = Number.NEGATIVE_INFINITY;
  known = false;
  /** Clock time of its last use (eviction picks the least recently used). */
  usedAt = 0;
  /** The limit of the last acquire (the admission script decides on it). */
  limit: number;

  constructor(spec: CounterSpec) {
    this.id = spec.id;
    this.tag = counterTag(spec.id);
    this.slot = hashSlot(this.tag);
    this.windowMs = spec.windowMs;
    this.sliding = spec.sliding;
    this.limit = spec.limit;
  }
}

class RedisCell implements Batchable, LedgerCell {
  queued = false;
  /** Serving threads (shared/ledger-host.ts): the linked ledger slot and what was folded into own* from it. */
  slot = -1;
  pulledC = 0;
  pulledR = 0;
  readonly counter: RedisCounter;
  readonly start: number;
  readonly keyC: string;
  readonly keyR: string;
  /**
   * This cell's field in the holders hash: the process id, plus a generation once counters have been evicted
   * (a counter re-created after its eviction must not take over, and so lose, the consumed of its earlier
   * incarnation's field).
   */
  readonly field: string;
  /** This process's consumed and reserved tokens in the window: the local truth, written as absolute values. */
  ownC = 0;
  ownR = 0;
  /** Reservations of synchronous admissions in flight (sent to Redis as reserved already: conservative). */
  admittingR = 0;
  /** What Redis holds for this process, as of the newest applied reply. */
  ackedC = 0;
  ackedR = 0;
  /** Clock time of the last acknowledged write (a live reservation renews its lease well before it ends). */
  ackedAt = Number.NEGATIVE_INFINITY;
  /** Others' consumed and live reserved, as of the newest applied reply. */
  othersC = 0;
  othersR = 0;
  /** The largest consumed total Redis has answered for the window: sent with every write as the window's floor. */
  seenC = 0;
  /** Send sequence of the reply the totals come from; an older reply (from another lane) is ignored. */
  appliedSeq = 0;
  /** Grants issued on this cell not yet settled or released (the cell must not be evicted meanwhile). */
  holds = 0;
  /** Totals learned from Redis (or a window of a counter whose rate is known, which starts near zero). */
  known: boolean;
  /** Its slot answered MOVED/ASK: flush it in a pipeline of its own, which ioredis can redirect whole. */
  redirected = false;
  seenAt: number;
  /** When a flush of this cell last failed (its node unreachable); -Infinity once it succeeds again. */
  failedAt = Number.NEGATIVE_INFINITY;

  constructor(counter: RedisCounter, start: number, known: boolean, seenAt: number, field: string) {
    this.counter = counter;
    this.start = start;
    this.field = field;
    const k = cellKeys(counter.tag, start);
    this.keyC = k.c;
    this.keyR = k.r;
    this.known = known;
    this.seenAt = seenAt;
  }

  consumed(): number {
    return this.othersC + this.ownC;
  }

  reserved(): number {
    return this.othersR + this.ownR + this.admittingR;
  }

  /** Own usage Redis has not acknowledged yet. */
  unflushed(): number {
    return Math.max(0, this.ownC - this.ackedC) + Math.max(0, this.ownR + this.admittingR - this.ackedR);
  }

  dirty(): boolean {
    return this.ownC !== this.ackedC || this.ownR + this.admittingR !== this.ackedR;
  }
}

interface FlushOp {
  readonly cell: RedisCell;
  readonly index: number;
  /** The write's own state (undefined for a read-only refresh). */
  readonly sent: { c: number; r: number } | undefined;
}

interface FlushGroup {
  readonly cmds: PortCommand[];
  readonly ops: FlushOp[];
  readonly readOnly: boolean;
}

/** The script's reply, decoded. */
interface ScriptReply {
  readonly c: number;
  readonly othersR: number;
  readonly storedSeq: number;
  readonly storedC: number;
  readonly storedR: number;
  readonly admitted: boolean;
  /** An admission the script did not decide (its write was older than the stored one). */
  readonly undecided: boolean;
  readonly prevC: number;
  readonly prevR: number;
}

/** A synchronous admission's reply for one cell. */
interface AdmissionReply {
  readonly failure: RedisErrorKind | undefined;
  readonly admitted: boolean;
  /**
   * The script did not decide: a newer write of this process's field was stored first, so this one (its
   * sequence older) was not applied. Happens when a command answered NOSCRIPT is sent again as EVAL after
   * later commands (a fresh or restarted Redis): such a reply is no denial, the admission is sent again.
   */
  readonly stale: boolean;
  /** Global usage the decision was made on (for Retry-After). */
  readonly used: number;
  readonly prevUsed: number;
}

function int(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') {
    const n = Number(v);
    return Number.isFinite(n) ? n : 0;
  }
  return 0;
}

function decode(v: unknown): ScriptReply | undefined {
  if (!Array.isArray(v) || v.length < 8) return undefined;
  return {
    c: int(v[0]), othersR: int(v[1]), storedSeq: int(v[2]), storedC: int(v[3]), storedR: int(v[4]),
    admitted: int(v[5]) === 1, undecided: int(v[5]) === 2, prevC: int(v[6]), prevR: int(v[7]),
  };
}

function retentionEnd(cell: RedisCell): number {
  const c = cell.counter;
  return cell.start + c.windowMs * (c.sliding ? 2 : 1);
}

function ttlSeconds(cell: RedisCell, nowMs: number): number {
  return Math.max(1, Math.ceil((retentionEnd(cell) + TTL_SLACK_MS - nowMs) / 1000));
}

const BREAKER_GAUGE: Record<BreakerState, number> = { closed: 0, 'half-open': 1, open: 2 };

/**
 * This process's stores per Redis dataset (target id). A reload that changes a store's options (timeouts,
 * credentials, allow_degradation) makes a new store while the retired one is still writing what it holds; during
 * an outage a degraded decision counts both, or every reload would hand the whole limit out again.
 */
const storesOfTarget = new Map<string, Set<RedisQuotaStore>>();

/** Which Redis data a target names, whatever the credentials and timeouts it reaches it with: its id (mode,
 *  endpoints, database) without the username. Another spelling of the same server (a host name for its address) is
 *  another dataset here. */
function datasetOf(t: RedisTargetConfig): string {
  return t.id.replace(/^([a-z]+:\/\/)[^@/]*@/, '$1');
}

export class RedisQuotaStore implements QuotaStore, BatchSink<RedisCell>, LedgerBackend {
  readonly name: string;
  /** This store's identity in the holders hashes: unique per process and store instance. */
  readonly processId: string;
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
  private readonly leaseMs: number;
  private maxKeys: number;
  private readonly clock: Clock;
  private readonly guard: TokenGuard;
  private readonly unsubscribe: () => void;
  private readonly cancelSweep: () => void;
  private readonly cancelRenew: () => void;
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
    keys: { set(v: number): void };
    evicted: { inc(n?: number): void };
    overflow: { inc(n?: number): void };
  };
  /** Replies are applied in send order per connection (see reply-lanes.ts). */
  private readonly lanes = new ReplyLanes();
  /** Numbers every pipeline sent; also the sequence of this process's writes in the holders hashes. */
  private sendSeq = 0;
  /** Round trip of recent flushes, ms (EWMA). */
  private flushLatencyMs = 1;
  /** MOVED/ASK replies in the current flush. */
  private redirections = 0;
  private closed = false;
  private closing: Promise<void> | undefined;
  /** performance.now() past which a closing store stops trying to write (a later close() may bring it closer). */
  private closeBy = 0;
  private readonly scratch: RedisCell[] = [];
  private readonly logged = new Map<string, { at: number; suppressed: number }>();
  /**
   * The client was usable at least once. Before that (first connect, slow on a loaded machine) unsent
   * flushes do not count against the breaker: the shared client opens it if the connection stays down.
   */
  private connectedOnce = false;
  /** Cells a renewal sweep found unwritten but could not queue (the backlog was full), in the counters' order;
   *  at most two per counter. Queued as acknowledged writes make room. */
  private readonly waiting = new Set<RedisCell>();
  /** After a scan that found nothing to evict, no new scan before this clock time. */
  private evictRetryAt = Number.NEGATIVE_INFINITY;
  /** Eviction rounds so far (cells created afterwards write under a new field name, see RedisCell.field). */
  private evictions = 0;
  /** Serving threads: the LedgerHost's callback for a linked cell whose view changed. */
  private ledgerChanged: ((cell: LedgerCell) => void) | undefined = undefined;
  private ledgerRelease: ((cell: LedgerCell) => boolean) | undefined = undefined;
  /** Every open or closing store of this process on the same Redis dataset, this one included. */
  private readonly siblings: Set<RedisQuotaStore>;
  private readonly targetId: string;

  constructor(target: RedisTargetConfig, opts: RedisStoreOptions) {
    this.name = opts.storeLabel;
    this.processId = `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
    this.allowDegradation = opts.allowDegradation;
    this.syncMode = opts.batching.flush_interval_ms <= 0;
    this.intervalMs = Math.max(1, opts.batching.flush_interval_ms);
    this.timeoutMs = target.timeout_ms;
    this.maxViewAgeMs = opts.maxViewAgeMs ?? DEFAULT_MAX_VIEW_AGE_MS;
    this.freshViewMs = opts.freshViewMs ?? Math.max(3 * this.intervalMs, 30);
    this.syncSafety = opts.syncSafety ?? DEFAULT_SYNC_SAFETY;
    this.leaseMs = Math.max(3 * this.intervalMs, opts.batching.reservation_lease_ms ?? DEFAULT_LEASE_MS);
    this.maxKeys = Math.max(1, opts.maxKeys ?? DEFAULT_MAX_KEYS);
    this.clock = opts.clock ?? monotonicClock;
    const mt = opts.metrics;
    const store = opts.storeLabel;
    this.guard = new TokenGuard(store, mt.quotaInvalidAmounts);
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
      keys: mt.quotaTrackedKeys.labels({ store }),
      evicted: mt.quotaKeyEvictions.labels({ store, outcome: 'evicted' }),
      overflow: mt.quotaKeyEvictions.labels({ store, outcome: 'overflow' }),
    };
    this.batcher = new Batcher<RedisCell>(this, {
      // Synchronous mode writes on the next tick after a delta; the timer only retries failed writes.
      intervalMs: this.syncMode ? SYNC_RETRY_MS : this.intervalMs,
      immediate: this.syncMode,
      maxBatchKeys: opts.batching.max_batch_keys,
      maxPendingKeys: opts.batching.max_pending_keys,
      clock: this.clock,
    });
    this.shared = acquireRedis(target);
    this.targetId = datasetOf(target);
    let siblings = storesOfTarget.get(this.targetId);
    if (siblings === undefined) storesOfTarget.set(this.targetId, siblings = new Set());
    siblings.add(this);
    this.siblings = siblings;
    this.unsubscribe = this.shared.subscribe({
      breaker: (state, cause) => {
        this.m.breaker.set(BREAKER_GAUGE[state]);
        if (state !== 'closed') this.logError('breaker', `redis circuit breaker ${state}`, cause === undefined ? undefined : new Error(cause));
        if (state === 'closed') this.batcher.kick();
      },
      dataLost: () => this.resendAcknowledged(),
      usable: () => {
        this.connectedOnce = true;
        this.batcher.kick();
      },
      probe: () => this.m.cmdProbe.inc(),
      // Logged too (at most a line per kind per interval): a replica the views are read from (`redis_role: slave`)
      // may fail without the writes, and so the breaker, ever noticing; the metric alone left the log silent.
      error: (kind, err) => {
        this.m.errors[kind].inc();
        this.logError(`${kind}:connection`, 'redis connection error', err);
      },
    });
    this.m.breaker.set(BREAKER_GAUGE[this.shared.breaker.state]);
    this.connectedOnce = this.shared.usable;
    this.m.keys.set(0);
    this.m.pending.set(0);
    this.batcher.start();
    this.cancelSweep = this.clock.every(SWEEP_EVERY_MS, () => this.sweep());
    // Live reservations are written again well within their lease; dropped or failed writes are retried.
    this.cancelRenew = this.clock.every(Math.max(this.intervalMs, Math.floor(this.leaseMs / 6)), () => this.renew());
  }

  /** Resolves true once Redis is connected and usable (false after `timeoutMs`). For startup and tests. */
  ready(timeoutMs = 5_000): Promise<boolean> {
    return this.shared.whenUsable(timeoutMs);
  }

  /** Counters tracked (for tests and the key cap). */
  get size(): number {
    return this.counters.size;
  }

  // ------------------------------------------------------------------------------------------------------
  // QuotaStore

  acquire(items: readonly AcquireItem[], now: number): AcquireResult | Promise<AcquireResult> {
    const perf = this.clock.now();
    const cells = this.scratch;
    let denied: number[] | undefined;
    let retry = 0;
    let remote = false;
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      const spec = item.counter;
      const amount = this.guard.estimate(item.amount, 'acquire');
      const counter = this.counterFor(spec, perf);
      if (counter === undefined) {
        cells.length = 0;
        this.m.overflow.inc();
        this.logError('overflow', 'quota key cap reached (limits.max_quota_keys): new key refused', undefined);
        return Promise.reject(new SluiceError('SLC_OVERLOADED', 'too many quota keys tracked'));
      }
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
      // The cell's next flush refreshes it (a read when this process has nothing to write).
      this.batcher.mark(cell);
      const used = this.usedOf(cell, prev, now);
      if (used >= spec.limit) {
        // A view spent by reservations is believed only while fresh: they may have been settled lower since, or
        // their process died and its lease ran out (Redis judges that). Consumption never shrinks in a window.
        if ((cell.known && perf - cell.seenAt <= this.freshViewMs) || this.consumedOf(cell, prev, now) >= spec.limit) {
          (denied ??= []).push(i);
          retry = Math.max(retry, retryAfterMs(now, cell.start, spec, cell.consumed() + cell.reserved(), prev === undefined ? 0 : prev.consumed() + prev.reserved()));
        } else {
          remote = true;
        }
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
      cell.holds--;
      cell.ownR = Math.max(0, cell.ownR - e.reserved);
      // A value no upstream can produce (non-finite, negative, beyond any context) is charged as the estimate.
      cell.ownC += this.guard.amount(actual[i] ?? 0, e.reserved, 'settle');
      this.batcher.mark(cell);
      this.expediteNearLimit(cell);
    }
  }

  release(grant: Grant): void {
    const g = claimGrant<RedisCell>(grant, this);
    if (g === undefined) return;
    for (const e of g.entries) {
      e.cell.holds--;
      e.cell.ownR = Math.max(0, e.cell.ownR - e.reserved);
      this.batcher.mark(e.cell);
      this.expediteNearLimit(e.cell);
    }
  }

  /**
   * A reservation Redis holds for this process was released near the limit: written on the next turn rather than
   * at the next tick, or for up to a flush interval every other replica's admission counted it (requests taking
   * turns between two replicas got 429 with most of a small limit left).
   */
  private expediteNearLimit(cell: RedisCell): void {
    if (cell.ackedR <= cell.ownR + cell.admittingR) return;
    const counter = cell.counter;
    const prev = this.prevCell(counter, cell);
    const remaining = counter.limit - this.usedOf(cell, prev, Date.now());
    if (remaining < this.syncCap(counter, 0) + Math.max(counter.maxAmount, counter.maxAmountPrev)) this.batcher.expedite();
  }

  peek(spec: CounterSpec, now: number): CounterView {
    const ws = windowStartOf(now, spec.windowMs);
    const counter = this.counterFor(spec, this.clock.now());
    if (counter === undefined) return { limit: spec.limit, consumed: 0, reserved: 0, resetMs: ws + spec.windowMs - now };
    const cell = this.roll(counter, ws);
    // The next flush refreshes the view (a read when this process has nothing to write).
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

  setMaxKeys(maxKeys: number): void {
    const n = Math.max(1, Math.floor(maxKeys));
    if (n === this.maxKeys) return;
    this.maxKeys = n;
    // A raised cap has room at once; a lowered one is reached by evicting as new keys come.
    this.evictRetryAt = Number.NEGATIVE_INFINITY;
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

  /**
   * Writes every cell's final state with this process's reservations removed (requests still running are
   * not waited for: the pipeline settles them before closing the store), retrying while Redis is away for up to
   * `flushWithinMs` (a reload retiring the store can afford minutes; a shutdown, seconds). A second call can
   * bring the deadline closer. Usage still unwritten then is logged as lost; reservations stop counting when
   * their lease ends.
   */
  close(flushWithinMs: number = CLOSE_FLUSH_MS): Promise<void> {
    const by = performance.now() + flushWithinMs;
    if (this.closing !== undefined) {
      if (by < this.closeBy) this.closeBy = by;
      return this.closing;
    }
    this.closeBy = by;
    this.closing = this.closeNow();
    return this.closing;
  }

  private async closeNow(): Promise<void> {
    this.closed = true;
    this.batcher.stop();
    this.cancelSweep();
    this.cancelRenew();
    for (const counter of this.counters.values()) {
      for (const cell of [counter.cur, counter.prev]) {
        if (cell === undefined) continue;
        cell.ownR = 0;
        if (cell.dirty()) this.batcher.mark(cell);
      }
    }
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      const check = (): void => {
        const left = this.closeBy - performance.now();
        if (left <= 0) resolve(); else timer = setTimeout(check, Math.min(left, CLOSE_RETRY_MS));
      };
      check();
    });
    await Promise.race([this.drain(), deadline]);
    clearTimeout(timer);
    this.reportUnwritten();
    this.siblings.delete(this);
    if (this.siblings.size === 0 && storesOfTarget.get(this.targetId) === this.siblings) storesOfTarget.delete(this.targetId);
    this.unsubscribe();
    await releaseRedis(this.shared);
  }

  /** Flush until nothing is dirty; a failed flush is tried again until close()'s deadline: as soon as a lost
   *  connection is back, or after a pause when the connection is up but the writes fail. */
  private async drain(): Promise<void> {
    // Only writes are worth the wait: cells queued merely to be read again (a denied request's) are not.
    while (this.unwritten().cells > 0 && performance.now() < this.closeBy) {
      if (await this.batcher.flush().catch(() => false)) continue;
      const wait = Math.min(this.closeBy - performance.now(), CLOSE_RETRY_MS);
      if (wait <= 0) return;
      if (this.shared.usable) await new Promise((r) => setTimeout(r, wait));
      else await this.shared.whenUsable(wait);
    }
  }

  /** Cells whose state Redis has not acknowledged, and the consumed tokens among it. */
  private unwritten(): { cells: number; tokens: number } {
    let cells = 0;
    let tokens = 0;
    for (const counter of this.counters.values()) {
      for (const cell of [counter.cur, counter.prev]) {
        if (cell === undefined || !cell.dirty()) continue;
        cells++;
        tokens += Math.max(0, cell.ownC - cell.ackedC);
      }
    }
    return { cells, tokens };
  }

  /** Usage this process admitted that Redis never acknowledged: said, not dropped silently. */
  private reportUnwritten(): void {
    const { cells, tokens } = this.unwritten();
    if (cells > 0) log.error('quota store closed before redis acknowledged its usage: those tokens may not be counted (a write that timed out may still be applied)', { store: this.name, counters: cells, tokens });
  }

  // ------------------------------------------------------------------------------------------------------
  // Local view

  /** The counter for a spec, created when new; undefined when the key cap is reached and nothing can be evicted. */
  private counterFor(spec: CounterSpec, perf: number): RedisCounter | undefined {
    let c = this.counters.get(spec.id);
    if (c === undefined) {
      if (this.counters.size >= this.maxKeys && !this.evict()) return undefined;
      c = new RedisCounter(spec);
      this.counters.set(spec.id, c);
      this.m.keys.set(this.counters.size);
    } else if (c.windowMs !== spec.windowMs) {
      // A new window length does not line up with the old windows: start afresh (the rate stays a hint).
      c.windowMs = spec.windowMs;
      c.cur = undefined;
      c.prev = undefined;
      c.known = false;
    }
    c.sliding = spec.sliding;
    c.limit = spec.limit;
    c.usedAt = perf;
    return c;
  }

  /**
   * A counter may be forgotten when Redis holds all of its state and no grant refers to its cells. With
   * `linked`, a cell linked to a serving threads' ledger slot does not stop it (see unlinked()).
   */
  private evictable(counter: RedisCounter, linked = false): boolean {
    for (const cell of [counter.cur, counter.prev]) {
      if (cell !== undefined && (cell.holds > 0 || cell.queued || cell.dirty() || cell.ownR > 0 || (cell.slot >= 0 && !linked))) return false;
    }
    return true;
  }

  /**
   * Take a counter's cells back from the serving threads' ledger (their usage folded in, the slots freed),
   * then check again: what a thread added since the last flush makes it dirty, and it stays.
   */
  private unlinked(counter: RedisCounter): boolean {
    const release = this.ledgerRelease;
    if (release === undefined) return false;
    return releaseLinked(release, [counter.cur, counter.prev]) && this.evictable(counter);
  }

  /**
   * Key cap reached: forget the least recently used evictable counters (1% of the cap at once, so the scan
   * is paid rarely). False when none can be evicted.
   */
  private evict(): boolean {
    // A flood of new keys while nothing can go must not rescan every counter for each of them.
    const perf = this.clock.now();
    if (perf < this.evictRetryAt) return false;
    // 1% of the cap at once; after a reload lowered the cap, down to below it (what can go without loss).
    const want = Math.max(1, Math.floor(this.maxKeys / 100), this.counters.size - this.maxKeys + 1);
    // With serving threads, most counters are linked to ledger slots: those are candidates too, taken back
    // from the ledger only when chosen (least recently used first), so the cap holds as with one thread.
    const linked = this.ledgerRelease !== undefined;
    const candidates: RedisCounter[] = [];
    for (const c of this.counters.values()) if (this.evictable(c, linked)) candidates.push(c);
    candidates.sort((a, b) => a.usedAt - b.usedAt);
    let n = 0;
    for (let i = 0; i < candidates.length && n < want; i++) {
      const c = candidates[i]!;
      if (!this.evictable(c) && !this.unlinked(c)) continue;
      this.counters.delete(c.id);
      n++;
    }
    if (n === 0) {
      this.evictRetryAt = perf + EVICT_RETRY_MS;
      return false;
    }
    this.evictions++;
    this.m.evicted.inc(n);
    this.m.keys.set(this.counters.size);
    // Still at a lowered cap (the rest holds unwritten state): the new key waits, as at any full cap.
    return this.counters.size < this.maxKeys;
  }

  /** The counter's cell for the window starting at `ws` (a `now` older than the newest window stays in it). */
  private roll(counter: RedisCounter, ws: number): RedisCell {
    const cur = counter.cur;
    if (cur !== undefined && ws <= cur.start) return cur;
    // A counter this process has reconciled before starts its next window from its last view's age: the
    // new window starts at zero everywhere, and what others added since is bounded by rate × age.
    const cell = new RedisCell(counter, ws, counter.known, counter.seenAt, this.fieldName());
    if (cur !== undefined && ws - cur.start === counter.windowMs) {
      counter.prev = cur;
      // Late settlements from other replicas land in the previous window; learn its final totals once.
      if (counter.sliding) this.batcher.mark(cur);
    } else {
      counter.prev = counter.sliding ? new RedisCell(counter, ws - counter.windowMs, false, Number.NEGATIVE_INFINITY, this.fieldName()) : undefined;
      if (counter.prev !== undefined) this.batcher.mark(counter.prev);
    }
    counter.cur = cell;
    return cell;
  }

  private fieldName(): string {
    return this.evictions === 0 ? this.processId : `${this.processId}.${this.evictions.toString(36)}`;
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

  /** Whether the local view is not enough to admit (see trusted). */
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
   * A pure function of the view and the clock.
   */
  private trusted(counter: RedisCounter, cell: RedisCell, prev: RedisCell | undefined, remaining: number, amount: number, perf: number, maxAgeMs: number): boolean {
    if (!cell.known || (prev !== undefined && !prev.known) || !counter.rateKnown) return false;
    const age = perf - cell.seenAt;
    if (age > maxAgeMs) return false;
    return remaining >= this.syncCap(counter, age) + Math.max(amount, counter.maxAmount, counter.maxAmountPrev);
  }

  /** What the other replicas may add, at the counter's global rate, before a view `ageMs` old is reconciled again
   *  (§2.3's S·G·(I + L + A)): the margin of a local decision. */
  private syncCap(counter: RedisCounter, ageMs: number): number {
    return counter.rate * (this.intervalMs + this.flushLatencyMs + ageMs) * this.syncSafety;
  }

  private reserveLocally(items: readonly AcquireItem[], cells: readonly RedisCell[]): StoreGrant<RedisCell> {
    const entries = new Array<StoreGrantEntry<RedisCell>>(items.length);
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      const cell = cells[i]!;
      const amount = this.guard.estimate(item.amount, undefined);
      cell.ownR += amount;
      cell.holds++;
      entries[i] = new StoreGrantEntry(item.counter, cell.start, amount, cell);
    }
    return new StoreGrant(this, entries);
  }

  // ------------------------------------------------------------------------------------------------------
  // Synchronous admission (near a limit, unknown counter, stale view)

  private async acquireRemote(items: readonly AcquireItem[], cells: RedisCell[], now: number): Promise<AcquireResult> {
    const n = items.length;
    const amounts = new Array<number>(n);
    // One script call per distinct cell (a counter's keys share a slot, two counters may not), carrying the
    // reservations of every item on it.
    const perCell = new Map<RedisCell, number>();
    for (let i = 0; i < n; i++) {
      const cell = cells[i]!;
      amounts[i] = this.guard.estimate(items[i]!.amount, undefined);
      perCell.set(cell, (perCell.get(cell) ?? 0) + amounts[i]!);
    }
    const nowMs = Date.now();
    const order = [...perCell.keys()];
    for (const cell of order) cell.holds++;
    const replies = await Promise.all(order.map((cell) => this.admit(cell, perCell.get(cell)!, now, nowMs)));
    for (const cell of order) cell.holds--;

    let failure: RedisErrorKind | undefined;
    let connection = false;
    for (const r of replies) {
      failure ??= r.failure;
      if (r.failure !== undefined && r.failure !== 'reply') connection = true;
    }
    if (failure !== undefined) {
      // A reservation the script applied is taken back by the next write of the cell (absolute values).
      for (const cell of order) if (cell.dirty()) this.batcher.mark(cell);
      if (connection) this.failed(failure);
      // The node of these counters is failing (a Cluster master or Sentinel failover in progress): a view
      // reconciled within maxViewAgeMs and far from its limit still decides, so failovers reach no client.
      // Not in synchronous mode, which promises that every admission is decided by Redis.
      if (!this.syncMode && this.rideOut(items, cells, now, this.clock.now())) return this.reserveLocally(items, cells);
      if (this.allowDegradation) return this.decideDegraded(items, cells, now);
      throw new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE');
    }
    this.shared.breaker.success();

    let denied: number[] | undefined;
    let retry = 0;
    for (let i = 0; i < n; i++) {
      const cell = cells[i]!;
      const r = replies[order.indexOf(cell)]!;
      if (!r.admitted) {
        (denied ??= []).push(i);
        retry = Math.max(retry, retryAfterMs(now, cell.start, items[i]!.counter, r.used, r.prevUsed));
      }
    }
    if (denied !== undefined) {
      // Cells that admitted hold the amount in Redis until their next write takes it back.
      for (const cell of order) if (cell.dirty()) this.batcher.mark(cell);
      return { ok: false, denied, retryAfterMs: retry };
    }
    this.m.sync.inc();
    const entries = new Array<StoreGrantEntry<RedisCell>>(n);
    for (let i = 0; i < n; i++) {
      const cell = cells[i]!;
      cell.ownR += amounts[i]!;
      cell.holds++;
      entries[i] = new StoreGrantEntry(items[i]!.counter, cell.start, amounts[i]!, cell);
    }
    // The script stored exactly this state when nothing changed meanwhile; otherwise the next flush does.
    for (const cell of order) if (cell.dirty()) this.batcher.mark(cell);
    return new StoreGrant(this, entries);
  }

  /** A synchronous admission, sent again (with a new sequence) while Redis answers that it did not decide it. */
  private async admit(cell: RedisCell, amount: number, now: number, nowMs: number): Promise<AdmissionReply> {
    for (let attempt = 1; ; attempt++) {
      const r = await this.sendAdmission(cell, amount, now, nowMs);
      if (!r.stale) return r;
      // Still undecided: a failure (ride-out, degraded or 503), never a denial the counter did not earn.
      if (attempt >= ADMISSION_ATTEMPTS) return { failure: 'reply', admitted: false, stale: false, used: 0, prevUsed: 0 };
    }
  }

  /**
   * The write script with an amount to admit: Redis decides on consumed + every live reservation (+ the
   * weighted previous window of a sliding counter), so decisions of all replicas are serialised.
   */
  private sendAdmission(cell: RedisCell, amount: number, now: number, nowMs: number): Promise<AdmissionReply> {
    const prev = this.prevCell(cell.counter, cell);
    const weight = prev === undefined ? 0 : previousWeight(now, cell.start, cell.counter.windowMs);
    const sentC = cell.ownC;
    const sentR = cell.ownR + cell.admittingR;
    cell.admittingR += amount;
    const seq = ++this.sendSeq;
    const keys = prev === undefined ? [cell.keyC, cell.keyR] : [cell.keyC, cell.keyR, prev.keyC, prev.keyR];
    const cmd: PortCommand = ['evalsha', WRITE_SHA, keys.length, ...keys, cell.field, seq, sentC, sentR, this.leaseMs, ttlSeconds(cell, nowMs), amount, cell.counter.limit, weight, cell.ackedC, cell.seenC, prev?.seenC ?? 0];
    this.m.cmdSync.inc();
    return this.lanes.send(this.laneOf(cell), () => this.shared.port.exec([cmd]), (out): AdmissionReply => {
      cell.admittingR -= amount;
      if (!out.ok) {
        this.m.errors[out.kind].inc();
        this.logError(out.kind, 'redis admission failed', undefined);
        return { failure: out.kind, admitted: false, stale: false, used: 0, prevUsed: 0 };
      }
      const [err, v] = out.replies[0] ?? [new Error('missing reply'), null];
      const reply = err === null ? decode(v) : undefined;
      if (reply === undefined) {
        const kind = this.replyError(cell, err);
        return { failure: kind, admitted: false, stale: false, used: 0, prevUsed: 0 };
      }
      const perf = this.clock.now();
      this.apply(cell, seq, reply, { c: sentC, r: sentR + (reply.admitted ? amount : 0) }, perf);
      if (prev !== undefined && this.fresher(prev, seq)) {
        prev.othersC = Math.max(0, reply.prevC - prev.ackedC);
        if (reply.prevC > prev.seenC) prev.seenC = reply.prevC;
        prev.othersR = Math.max(0, reply.prevR - prev.ackedR);
        prev.known = true;
        this.reconciled(prev, perf);
      }
      const used = reply.c + reply.othersR + sentR;
      return { failure: undefined, admitted: reply.admitted, stale: reply.undecided, used, prevUsed: reply.prevC + reply.prevR };
    });
  }

  /** The lane (connection) a cell's commands travel on. */
  private laneOf(cell: RedisCell): string {
    return this.shared.port.groupOf(cell.counter.slot);
  }

  /**
   * Whether a reply to the pipeline numbered `seq` may set the cell's totals: not when a reply to a later
   * pipeline was applied already (possible only across lanes, e.g. a replica read or a redirected cell's
   * own pipeline). Records `seq` as the newest applied.
   */
  private fresher(cell: RedisCell, seq: number): boolean {
    if (seq < cell.appliedSeq) return false;
    cell.appliedSeq = seq;
    return true;
  }

  /** Apply a script reply to a cell: what Redis stores for this process, and the others' totals. */
  private apply(cell: RedisCell, seq: number, reply: ScriptReply, sent: { c: number; r: number } | undefined, perf: number): void {
    if (!this.fresher(cell, seq)) return;
    // The stored own state is what this write sent when it was applied, or a newer write's (another lane).
    if (sent !== undefined && reply.storedSeq === seq) {
      cell.ackedC = sent.c;
      cell.ackedR = sent.r;
      cell.ackedAt = perf;
      // The cell may have become evictable.
      this.evictRetryAt = Number.NEGATIVE_INFINITY;
    }
    cell.othersC = Math.max(0, reply.c - reply.storedC);
    cell.othersR = reply.othersR;
    if (reply.c > cell.seenC) cell.seenC = reply.c;
    cell.known = true;
    this.reconciled(cell, perf);
  }

  private rideOut(items: readonly AcquireItem[], cells: readonly RedisCell[], now: number, perf: number): boolean {
    for (let i = 0; i < items.length; i++) {
      const cell = cells[i]!;
      const prev = this.prevCell(cell.counter, cell);
      const remaining = items[i]!.counter.limit - this.usedOf(cell, prev, now);
      if (!this.trusted(cell.counter, cell, prev, remaining, this.guard.estimate(items[i]!.amount, undefined), perf, this.maxViewAgeMs)) return false;
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
    let s = cell.counter.share;
    let base = cell.othersC + cell.othersR + cell.ackedC + cell.ackedR;
    let unflushed = cell.unflushed();
    if (this.siblings.size > 1) {
      // Each store's base is the global total as of its last reply (which counts the others' written usage);
      // what none of them could write is this process's usage on top of the newest.
      for (const other of this.siblings) {
        if (other === this) continue;
        const c = other.cellAt(cell.counter.id, cell.counter.windowMs, cell.start);
        if (c === undefined) continue;
        base = Math.max(base, c.othersC + c.othersR + c.ackedC + c.ackedR);
        unflushed += c.unflushed();
        if (s <= 0) s = c.counter.share;
      }
    }
    const share = s <= 0 ? 1 : s < MIN_SHARE ? MIN_SHARE : s;
    return Math.max(0, base + unflushed / share);
  }

  private cellAt(id: string, windowMs: number, start: number): RedisCell | undefined {
    const counter = this.counters.get(id);
    if (counter === undefined || counter.windowMs !== windowMs) return undefined;
    if (counter.cur?.start === start) return counter.cur;
    return counter.prev?.start === start ? counter.prev : undefined;
  }

  // ------------------------------------------------------------------------------------------------------
  // Flush (BatchSink)

  canWrite(): boolean {
    // A down connection is still written to: the failed attempts are what open the breaker.
    return this.shared.breaker.closed;
  }

  drop(cell: RedisCell): void {
    // The state is absolute, so nothing is lost: the renewal timer queues the cell again later.
    if (cell.dirty()) this.m.dropped.inc();
  }

  async write(batch: readonly RedisCell[]): Promise<boolean> {
    if (!this.shared.usable) {
      // Nothing was sent: keep every cell queued; a down connection counts against the breaker.
      const perf = this.clock.now();
      for (const cell of batch) {
        cell.failedAt = perf;
        this.batcher.mark(cell);
      }
      this.m.flushError.inc();
      this.m.errors.not_sent.inc();
      this.m.pending.set(this.batcher.backlog - batch.length + this.waiting.size);
      if (this.connectedOnce) this.failed('not_sent');
      return false;
    }
    const nowMs = Date.now();
    const seq = ++this.sendSeq;
    const groups = new Map<string, FlushGroup>();
    let keys = 0;
    for (const cell of batch) {
      if (retentionEnd(cell) + TTL_SLACK_MS < nowMs) {
        // The window and its keys are gone; nobody reads this state any more.
        cell.ackedC = cell.ownC;
        cell.ackedR = cell.ownR + cell.admittingR;
        continue;
      }
      const write = cell.dirty() || (cell.ownR > 0 && this.leaseDue(cell));
      // Keys only read are refreshed with the read script; with a replica reader they go there.
      const readOnly = !write && this.shared.port.readsFromReplica;
      const gk = (cell.redirected ? `slot:${cell.counter.slot}` : this.shared.port.groupOf(cell.counter.slot)) + (readOnly ? '/ro' : '');
      cell.redirected = false;
      let g = groups.get(gk);
      if (g === undefined) {
        g = { cmds: [], ops: [], readOnly };
        groups.set(gk, g);
      }
      if (write) {
        const sent = { c: cell.ownC, r: cell.ownR + cell.admittingR };
        const index = g.cmds.push(['evalsha', WRITE_SHA, 2, cell.keyC, cell.keyR, cell.field, seq, sent.c, sent.r, this.leaseMs, ttlSeconds(cell, nowMs), 0, 0, 0, cell.ackedC, cell.seenC, 0]) - 1;
        g.ops.push({ cell, index, sent });
      } else {
        const index = g.cmds.push(['evalsha', READ_SHA, 2, cell.keyC, cell.keyR, cell.field, cell.seenC]) - 1;
        g.ops.push({ cell, index, sent: undefined });
      }
      keys++;
    }
    if (keys === 0) return true;
    let commands = 0;
    for (const g of groups.values()) commands += g.cmds.length;
    const started = this.clock.now();
    this.redirections = 0;
    // Each group's replies are applied as soon as they (and everything sent before on its connection) are in.
    const failures = await Promise.all([...groups].map(([lane, g]) => this.lanes.send(lane, () => this.shared.port.exec(g.cmds, g.readOnly), (out) => this.applyGroup(g, out, seq))));
    const latency = this.clock.now() - started;
    this.flushLatencyMs = this.flushLatencyMs * (1 - RATE_ALPHA) + latency * RATE_ALPHA;
    // Connection faults (the pipeline as a whole failed) count for the breaker; a reply error on one cell
    // (bad data in its keys, a redirection, a node refusing writes) affects only that cell.
    let connection: RedisErrorKind | undefined;
    let replyFailed = false;
    for (const f of failures) {
      if (f === undefined) continue;
      if (f === 'reply') replyFailed = true;
      else connection ??= f;
    }
    this.m.cmdFlush.inc(commands);
    this.m.flushKeys.observe(keys);
    this.m.flushCommands.observe(commands);
    this.m.flushDuration.observe(latency / 1000);
    // The batcher counts this batch in flight until write() returns; cells not acknowledged are marked dirty again.
    this.m.pending.set(Math.max(0, this.batcher.backlog - batch.length) + this.waiting.size);
    if (this.redirections > 0) this.shared.port.slotsMoved();
    if (connection !== undefined) {
      this.m.flushError.inc();
      this.failed(connection);
      return false;
    }
    this.shared.breaker.success();
    if (replyFailed) {
      this.m.flushError.inc();
      return false;
    }
    this.m.flushOk.inc();
    return true;
  }

  private leaseDue(cell: RedisCell): boolean {
    return this.clock.now() - cell.ackedAt >= this.leaseMs / 3;
  }

  /** Apply one group's outcome to its cells; returns the error kind when some of it failed (queued again). */
  private applyGroup(g: FlushGroup, out: RemoteOutcome, seq: number): RedisErrorKind | undefined {
    const perf = this.clock.now();
    if (!out.ok) {
      this.m.errors[out.kind].inc();
      this.logError(out.kind, 'redis flush failed', undefined);
      for (const op of g.ops) {
        op.cell.failedAt = perf;
        this.batcher.mark(op.cell);
      }
      return out.kind;
    }
    let failure: RedisErrorKind | undefined;
    for (const op of g.ops) {
      const [err, v] = out.replies[op.index] ?? [new Error('missing reply'), null];
      const reply = err === null ? decode(v) : undefined;
      if (reply === undefined) {
        this.batcher.mark(op.cell);
        failure ??= this.replyError(op.cell, err);
        continue;
      }
      this.apply(op.cell, seq, reply, op.sent, perf);
      if (op.cell.dirty()) this.batcher.mark(op.cell);
    }
    return failure;
  }

  /** A reply error for one cell: logged and counted; never a connection fault. */
  private replyError(cell: RedisCell, err: Error | null): RedisErrorKind {
    const kind = err === null ? 'reply' : classifyError(err);
    this.m.errors[kind].inc();
    if (isRedirection(err)) {
      cell.redirected = true;
      this.redirections++;
      return kind;
    }
    // The node did not answer in time, or refused the write (READONLY while a Sentinel failover demotes it,
    // LOADING, ...): treat the cell's node as unreachable, so its recent view keeps admitting far from the
    // limit meanwhile. A key holding bad data fails the same way, for that counter only.
    cell.failedAt = this.clock.now();
    if (kind !== 'reply') {
      this.logError(kind, 'redis command failed', err ?? undefined);
      return kind;
    }
    const nodeState = err !== null && NODE_STATE.test(err.message);
    this.logError(`reply:${err?.message.slice(0, 40) ?? 'malformed'}`, nodeState ? 'redis node refused a quota write' : 'redis refused a quota write (bad data in the counter keys?)', err ?? undefined);
    return 'reply';
  }

  /** Fresh global totals for a cell: update the view age and, for the current window, rate and share. */
  private reconciled(cell: RedisCell, perf: number): void {
    this.reconcileView(cell, perf);
    if (this.ledgerChanged !== undefined) this.republish(cell);
  }

  private reconcileView(cell: RedisCell, perf: number): void {
    cell.seenAt = perf;
    cell.failedAt = Number.NEGATIVE_INFINITY;
    const counter = cell.counter;
    if (cell !== counter.cur) return;
    counter.known = true;
    counter.seenAt = perf;
    const own = cell.ackedC + cell.ackedR;
    const total = cell.othersC + cell.othersR + own;
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
    // Fast attack, slow decay: a burst counts at once, a lull only gradually. A spent window is no lull: its growth
    // is what the limit let through, not what was asked; decayed there, the rate let every replica trust its own
    // view at the next window's start and admit most of the limit alone (3 replicas: up to 2.1× a 2 s window).
    const spent = total + Math.max(1, counter.maxAmount) >= counter.limit;
    counter.rate = !counter.rateKnown ? sample
      : spent ? Math.max(sample, counter.rate)
      : Math.max(sample, counter.rate * (1 - RATE_ALPHA) + sample * RATE_ALPHA);
    counter.rateKnown = true;
    if (grew > 0) {
      const mine = Math.min(1, Math.max(0, (own - counter.rateOwn) / grew));
      counter.share = counter.share <= 0 ? mine : counter.share * (1 - RATE_ALPHA) + mine * RATE_ALPHA;
    }
    counter.rateTotal = total;
    counter.rateOwn = own;
    counter.rateAt = perf;
  }

  // ------------------------------------------------------------------------------------------------------
  // Serving threads (shared/ledger-host.ts): slots hold the threads' usage; ownC/ownR include what was
  // pulled from them, so every write carries this process's absolute state, every thread's included.

  ledgerClaim(grant: Grant): boolean {
    const g = claimGrant<RedisCell>(grant, this);
    if (g === undefined) return false;
    for (const e of g.entries) e.cell.holds--;
    return true;
  }

  ledgerApply(cell: LedgerCell, dC: number, dR: number): void {
    const c = cell as RedisCell;
    c.ownC += dC;
    c.ownR = Math.max(0, c.ownR + dR);
    // Threads' admissions never reach counterFor: their use is seen here, for the key cap's LRU order.
    c.counter.usedAt = this.clock.now();
    this.batcher.mark(c);
    if (dR < 0) this.expediteNearLimit(c);
  }

  /**
   * The thread rule is never looser than trusted(): with h = interval + flush latency + freshViewMs (the
   * oldest view it may admit on), used < limit − (S·G·h + a_max) and used + amount ≤ limit − S·G·h imply
   * remaining ≥ S·G·h + max(amount, a_max). Valid while the view is younger than freshViewMs, and never in
   * synchronous mode, with the breaker open, or before the counter is known.
   */
  ledgerView(_id: string, cell: LedgerCell, out: Float64Array): void {
    const c = cell as RedisCell;
    const counter = c.counter;
    const prev = this.prevCell(counter, c);
    out[V_BASE_C] = c.consumed() - c.pulledC;
    out[V_BASE_R] = c.reserved() - c.pulledR;
    out[V_PREV_C] = prev === undefined ? 0 : prev.consumed() - prev.pulledC;
    out[V_PREV_R] = prev === undefined ? 0 : prev.reserved() - prev.pulledR;
    const cap = this.syncCap(counter, this.freshViewMs);
    out[V_CAP_MARGIN] = cap;
    out[V_LIMIT_MARGIN] = cap + Math.max(counter.maxAmount, counter.maxAmountPrev);
    const trustworthy = !this.syncMode && this.shared.breaker.closed && c.known && (prev === undefined || prev.known) && counter.rateKnown;
    const left = c.seenAt + this.freshViewMs - this.clock.now();
    out[V_VALID_UNTIL] = trustworthy && left > 0 ? Date.now() + left : 0;
  }

  ledgerCellOf(spec: CounterSpec, now: number): LedgerCell | undefined {
    const counter = this.counters.get(spec.id);
    const cur = counter?.cur;
    if (counter === undefined || cur === undefined || counter.windowMs !== spec.windowMs) return undefined;
    return cur.start === windowStartOf(now, spec.windowMs) ? cur : undefined;
  }

  ledgerTouch(cell: LedgerCell): void {
    this.batcher.mark(cell as RedisCell);
  }

  ledgerFull(): void {
    this.m.overflow.inc();
  }

  ledgerBind(changed: ((cell: LedgerCell) => void) | undefined, release?: (cell: LedgerCell) => boolean): void {
    this.ledgerChanged = changed;
    this.ledgerRelease = changed === undefined ? undefined : release;
  }

  /** A reconciled cell's slot (and the current window's, whose previous-window fields it feeds). */
  private republish(cell: RedisCell): void {
    const fn = this.ledgerChanged!;
    if (cell.slot >= 0) fn(cell);
    const cur = cell.counter.cur;
    if (cur !== undefined && cur !== cell && cur.slot >= 0) fn(cur);
  }

  private failed(kind: RedisErrorKind): void {
    this.shared.breaker.failure(kind === 'timeout');
  }

  /** Rate-limited error log: one line per key per LOG_EVERY_MS, with how many were suppressed. No secrets. */
  private logError(key: string, msg: string, err: Error | undefined): void {
    const now = this.clock.now();
    const e = this.logged.get(key);
    if (e !== undefined && now - e.at < LOG_EVERY_MS) {
      e.suppressed++;
      return;
    }
    log.warn(msg, { store: this.name, kind: key.split(':')[0], error: err?.message, suppressed: e?.suppressed ?? 0 });
    this.logged.set(key, { at: now, suppressed: 0 });
  }

  /** Redis lost its data (restarted empty): write again this process's state in every live window. */
  private resendAcknowledged(): void {
    for (const counter of this.counters.values()) {
      for (const cell of [counter.cur, counter.prev]) {
        if (cell === undefined) continue;
        cell.ackedC = 0;
        cell.ackedR = 0;
        cell.ackedAt = Number.NEGATIVE_INFINITY;
      }
    }
    this.renew();
  }

  /**
   * Queue live reservations whose lease needs renewing, and state not yet written (dropped, failed, lost by an
   * empty restart). What the backlog has no room for waits, counted in the pending gauge, and is queued as soon as
   * a write is acknowledged, not a renewal period later: a resend larger than the backlog reaches Redis batch after
   * batch, in the counters' order (route-wide counters, made first, go first).
   */
  private renew(): void {
    if (this.closed) return;
    for (const counter of this.counters.values()) {
      for (const cell of [counter.cur, counter.prev]) {
        if (cell === undefined || cell.queued) continue;
        if (this.needsWrite(cell) && !this.batcher.offer(cell)) this.waiting.add(cell);
      }
    }
    this.m.pending.set(this.batcher.backlog + this.waiting.size);
  }

  private needsWrite(cell: RedisCell): boolean {
    return cell.dirty() || (cell.ownR > 0 && this.leaseDue(cell));
  }

  /** BatchSink: cells the backlog had no room for go next, not a renewal period later. */
  room(): void {
    for (const cell of this.waiting) {
      if (this.needsWrite(cell) && !this.batcher.offer(cell)) break;
      this.waiting.delete(cell);
    }
    this.m.pending.set(this.batcher.backlog + this.waiting.size);
  }

  /** Forget counters whose windows are over and that hold nothing unwritten. */
  private sweep(): void {
    const nowMs = Date.now();
    for (const [id, counter] of this.counters) {
      const cur = counter.cur;
      if (cur === undefined) continue;
      if (cur.start + 2 * counter.windowMs + TTL_SLACK_MS > nowMs) continue;
      if (!this.evictable(counter)) continue;
      this.counters.delete(id);
    }
    this.m.keys.set(this.counters.size);
  }
}
