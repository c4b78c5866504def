// In-process quota store (policy: local). Everything is synchronous. Each counter keeps its current and
// previous window (the previous one weighs into sliding counts and receives late settlements of requests
// that started in it). Counters whose windows have both passed are swept lazily. At most `maxKeys`
// counters are tracked: beyond it counters that carry nothing (windows over, or nothing consumed or
// reserved) are evicted, least recently used first; a counter holding usage in a live window is never
// forgotten (that would hand its quota out again), so a new key then gets 503 SLC_OVERLOADED.
import { SluiceError } from '../core/errors.ts';
import type { StoreMetrics } from '../metrics/registry.ts';
import type { AcquireItem, AcquireResult, CounterSpec, CounterView, Denial, Grant, QuotaStore, StoreHealth } from './types.ts';
import { windowStartOf } from './types.ts';
import { StoreGrant, StoreGrantEntry, TokenGuard, claimGrant, previousWeight, retryAfterMs } from './window.ts';
import { V_BASE_C, V_BASE_R, V_CAP_MARGIN, V_LIMIT_MARGIN, V_PREV_C, V_PREV_R, V_VALID_UNTIL, releaseLinked, type LedgerBackend, type LedgerCell } from './shared/link.ts';

export interface LocalStoreOptions {
  /** Most counters tracked (limits.max_quota_keys). Default 100000. */
  readonly maxKeys?: number;
  readonly metrics?: Pick<StoreMetrics, 'quotaInvalidAmounts' | 'quotaTrackedKeys' | 'quotaKeyEvictions'>;
}

const DEFAULT_MAX_KEYS = 100_000;
/** Key cap full and nothing evictable: how long new keys are refused before the counters are scanned again. */
const EVICT_RETRY_MS = 100;

class LocalCell implements LedgerCell {
  readonly start: number;
  consumed = 0;
  reserved = 0;
  /** Grants not yet settled or released. */
  holds = 0;
  /** Serving threads (shared/ledger-host.ts): the linked ledger slot and what was folded in from it. */
  slot = -1;
  pulledC = 0;
  pulledR = 0;

  constructor(start: number) {
    this.start = start;
  }
}

class LocalCounter {
  readonly windowMs: number;
  cur: LocalCell;
  prev: LocalCell | undefined = undefined;
  /** `now` of its last use (eviction picks the least recently used). */
  usedAt = 0;

  constructor(windowMs: number, start: number) {
    this.windowMs = windowMs;
    this.cur = new LocalCell(start);
  }

  /** Move to the window starting at `ws`. A `now` older than the newest window seen stays in that window. */
  roll(ws: number): LocalCell {
    const cur = this.cur;
    if (ws <= cur.start) return cur;
    // A new cell per window: grants hold their cell, so a late settlement lands in its own window.
    this.prev = ws - cur.start === this.windowMs ? cur : undefined;
    this.cur = new LocalCell(ws);
    return this.cur;
  }
}

const SWEEP_EVERY_MS = 10_000;

export class LocalQuotaStore implements QuotaStore, LedgerBackend {
  readonly name: string;
  private readonly counters = new Map<string, LocalCounter>();
  private nextSweep = 0;
  /** Scratch for acquire: the cells of the current call (no allocation on the admit path). */
  private readonly scratch: LocalCell[] = [];
  private maxKeys: number;
  private readonly guard: TokenGuard;
  /** After a scan that found nothing to evict, no new scan before this `now` (callers' time may jump). */
  private evictRetryAt = Number.NEGATIVE_INFINITY;
  /** Serving threads' ledger host, taking a linked cell back (shared/ledger-host.ts). */
  private ledgerRelease: ((cell: LedgerCell) => boolean) | undefined = undefined;
  private readonly m: { keys?: { set(v: number): void }; evicted?: { inc(n?: number): void }; overflow?: { inc(n?: number): void } };

  constructor(name = 'local', opts: LocalStoreOptions = {}) {
    this.name = name;
    this.maxKeys = Math.max(1, opts.maxKeys ?? DEFAULT_MAX_KEYS);
    const mt = opts.metrics;
    this.guard = new TokenGuard(name, mt?.quotaInvalidAmounts);
    this.m = {
      keys: mt?.quotaTrackedKeys.labels({ store: name }),
      evicted: mt?.quotaKeyEvictions.labels({ store: name, outcome: 'evicted' }),
      overflow: mt?.quotaKeyEvictions.labels({ store: name, outcome: 'overflow' }),
    };
    this.m.keys?.set(0);
  }

  acquire(items: readonly AcquireItem[], now: number): AcquireResult | Promise<AcquireResult> {
    if (now >= this.nextSweep) this.sweep(now);
    const cells = this.scratch;
    let denied: number[] | undefined;
    let retry = 0;
    for (let i = 0; i < items.length; i++) {
      const spec = items[i]!.counter;
      const counter = this.counterFor(spec, now);
      if (counter === undefined) {
        cells.length = 0;
        this.m.overflow?.inc();
        return Promise.reject(new SluiceError('SLC_OVERLOADED', 'too many quota keys tracked'));
      }
      const cell = counter.roll(windowStartOf(now, spec.windowMs));
      cells[i] = cell;
      const cur = cell.consumed + cell.reserved;
      const prev = this.prevTotal(counter, cell, spec);
      const used = prev === 0 ? cur : cur + prev * previousWeight(now, cell.start, spec.windowMs);
      if (used >= spec.limit) {
        (denied ??= []).push(i);
        retry = Math.max(retry, retryAfterMs(now, cell.start, spec, cur, prev));
      }
    }
    if (denied !== undefined) {
      cells.length = 0;
      const d: Denial = { ok: false, denied, retryAfterMs: retry };
      return d;
    }
    const entries = new Array<StoreGrantEntry<LocalCell>>(items.length);
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!;
      const cell = cells[i]!;
      const amount = this.guard.estimate(item.amount, 'acquire');
      cell.reserved += amount;
      cell.holds++;
      entries[i] = new StoreGrantEntry(item.counter, cell.start, amount, cell);
    }
    cells.length = 0;
    return new StoreGrant(this, entries);
  }

  settle(grant: Grant, actual: readonly number[]): void {
    const g = claimGrant<LocalCell>(grant, this);
    if (g === undefined) return;
    const entries = g.entries;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const cell = e.cell;
      cell.holds--;
      cell.reserved = Math.max(0, cell.reserved - e.reserved);
      // A value no upstream can produce (non-finite, negative, beyond any context) is charged as the estimate.
      cell.consumed += this.guard.amount(actual[i] ?? 0, e.reserved, 'settle');
    }
  }

  release(grant: Grant): void {
    const g = claimGrant<LocalCell>(grant, this);
    if (g === undefined) return;
    this.evictRetryAt = Number.NEGATIVE_INFINITY;
    for (const e of g.entries) {
      e.cell.holds--;
      e.cell.reserved = Math.max(0, e.cell.reserved - e.reserved);
    }
  }

  peek(counter: CounterSpec, now: number): CounterView {
    const ws = windowStartOf(now, counter.windowMs);
    const resetMs = ws + counter.windowMs - now;
    const state = this.counters.get(counter.id);
    if (state === undefined || state.windowMs !== counter.windowMs) {
      return { limit: counter.limit, consumed: 0, reserved: 0, resetMs };
    }
    const cell = state.roll(ws);
    let consumed = cell.consumed;
    let reserved = cell.reserved;
    const prev = counter.sliding ? state.prev : undefined;
    if (prev !== undefined) {
      const w = previousWeight(now, cell.start, counter.windowMs);
      consumed += prev.consumed * w;
      reserved += prev.reserved * w;
    }
    return { limit: counter.limit, consumed, reserved, resetMs };
  }

  setMaxKeys(maxKeys: number): void {
    const n = Math.max(1, Math.floor(maxKeys));
    if (n === this.maxKeys) return;
    this.maxKeys = n;
    // A raised cap has room at once; a lowered one is reached by evicting as new keys come.
    this.evictRetryAt = Number.NEGATIVE_INFINITY;
  }

  health(): StoreHealth {
    return 'ok';
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.counters.clear();
    this.m.keys?.set(0);
    return Promise.resolve();
  }

  // ------------------------------------------------------------------------------------------------------
  // Serving threads (shared/ledger-host.ts): slots hold the threads' usage; the cells count it as their own.

  ledgerClaim(grant: Grant): boolean {
    const g = claimGrant<LocalCell>(grant, this);
    if (g === undefined) return false;
    for (const e of g.entries) e.cell.holds--;
    return true;
  }

  ledgerApply(cell: LedgerCell, dC: number, dR: number): void {
    const c = cell as LocalCell;
    c.consumed += dC;
    c.reserved = Math.max(0, c.reserved + dR);
  }

  /** Exact: a thread decides `consumed + reserved < limit` on the same totals this store would. */
  ledgerView(id: string, cell: LedgerCell, out: Float64Array): void {
    const c = cell as LocalCell;
    out[V_BASE_C] = c.consumed - c.pulledC;
    out[V_BASE_R] = c.reserved - c.pulledR;
    const counter = this.counters.get(id);
    const prev = counter !== undefined && counter.cur === c ? counter.prev : undefined;
    out[V_PREV_C] = prev === undefined ? 0 : prev.consumed - prev.pulledC;
    out[V_PREV_R] = prev === undefined ? 0 : prev.reserved - prev.pulledR;
    out[V_LIMIT_MARGIN] = 0;
    out[V_CAP_MARGIN] = Number.NEGATIVE_INFINITY;
    out[V_VALID_UNTIL] = Number.POSITIVE_INFINITY;
  }

  ledgerCellOf(counter: CounterSpec, now: number): LedgerCell | undefined {
    const c = this.counters.get(counter.id);
    if (c === undefined || c.windowMs !== counter.windowMs) return undefined;
    return c.cur.start === windowStartOf(now, counter.windowMs) ? c.cur : undefined;
  }

  ledgerTouch(): void {}

  ledgerFull(): void {
    this.m.overflow?.inc();
  }

  ledgerBind(changed: ((cell: LedgerCell) => void) | undefined, release?: (cell: LedgerCell) => boolean): void {
    this.ledgerRelease = changed === undefined ? undefined : release;
  }

  /** Counters held (for tests of the sweep). */
  get size(): number {
    return this.counters.size;
  }

  private counterFor(spec: CounterSpec, now: number): LocalCounter | undefined {
    let c = this.counters.get(spec.id);
    if (c === undefined && this.counters.size >= this.maxKeys && !this.evict(now)) return undefined;
    // Same id, new window length: the old windows do not line up with the new ones, so start afresh.
    if (c === undefined || c.windowMs !== spec.windowMs) {
      c = new LocalCounter(spec.windowMs, windowStartOf(now, spec.windowMs));
      this.counters.set(spec.id, c);
      this.m.keys?.set(this.counters.size);
    }
    c.usedAt = now;
    return c;
  }

  /**
   * Nothing is lost by forgetting it: its windows are over, or no grant refers to it and it holds no usage.
   * With `linked`, a cell linked to a serving threads' ledger slot does not stop it (see unlinked()).
   */
  private evictable(c: LocalCounter, now: number, linked = false): boolean {
    const cur = c.cur;
    const prev = c.prev;
    // Windows over: a late settlement would land in a window nobody reads any more.
    if (cur.start + 2 * c.windowMs <= now) return true;
    if (cur.holds > 0 || (prev !== undefined && prev.holds > 0)) return false;
    // Linked to a ledger slot: serving threads may hold usage in it.
    if (!linked && (cur.slot >= 0 || (prev !== undefined && prev.slot >= 0))) return false;
    return cur.consumed === 0 && cur.reserved === 0 && (prev === undefined || (prev.consumed === 0 && prev.reserved === 0));
  }

  /** Take a counter's cells back from the ledger (the threads' usage folded in), then check again. */
  private unlinked(c: LocalCounter, now: number): boolean {
    const release = this.ledgerRelease;
    if (release === undefined) return false;
    return releaseLinked(release, [c.cur, c.prev]) && this.evictable(c, now);
  }

  /** Key cap reached: evict the least recently used evictable counters (1% of the cap at once). */
  private evict(now: number): boolean {
    // A flood of new keys while nothing can go must not rescan every counter for each of them.
    if (now >= this.evictRetryAt - EVICT_RETRY_MS && now < this.evictRetryAt) return false;
    const linked = this.ledgerRelease !== undefined;
    const candidates: [string, LocalCounter][] = [];
    for (const e of this.counters) if (this.evictable(e[1], now, linked)) candidates.push(e);
    candidates.sort((a, b) => a[1].usedAt - b[1].usedAt);
    // 1% of the cap at once; after a reload lowered the cap, down to below it (what can go without loss).
    const want = Math.max(1, Math.floor(this.maxKeys / 100), this.counters.size - this.maxKeys + 1);
    let n = 0;
    for (let i = 0; i < candidates.length && n < want; i++) {
      const [id, c] = candidates[i]!;
      if (!this.evictable(c, now) && !this.unlinked(c, now)) continue;
      this.counters.delete(id);
      n++;
    }
    if (n === 0) {
      this.evictRetryAt = now + EVICT_RETRY_MS;
      return false;
    }
    this.m.evicted?.inc(n);
    this.m.keys?.set(this.counters.size);
    // Still at a lowered cap (the rest holds usage): the new key waits, as at any full cap.
    return this.counters.size < this.maxKeys;
  }

  private prevTotal(counter: LocalCounter, cell: LocalCell, spec: CounterSpec): number {
    if (!spec.sliding || cell !== counter.cur) return 0;
    const p = counter.prev;
    return p === undefined ? 0 : p.consumed + p.reserved;
  }

  /** Drop counters whose current window (and, for sliding use, the one after it) has ended. */
  private sweep(now: number): void {
    this.nextSweep = now + SWEEP_EVERY_MS;
    for (const [id, c] of this.counters) {
      if (c.cur.start + 2 * c.windowMs <= now) this.counters.delete(id);
    }
    this.m.keys?.set(this.counters.size);
  }
}
