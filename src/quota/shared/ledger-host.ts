// Main-thread side of the process ledger: owns the backend stores' links to the shared slots. A serving
// thread asks it (LedgerRequest) when its own rule cannot decide; the host runs the backend's acquire,
// moves the grant's reservations into slots and publishes the backend's view into them. It folds the
// threads' slot usage into the backends (dirty ring, polled) and frees slots whose windows are over.
import { SluiceError } from '../../core/errors.ts';
import { log } from '../../core/log.ts';
import type { AcquireItem, AcquireResult, CounterSpec, QuotaStore } from '../types.ts';
import type { StoreGrantEntry } from '../window.ts';
import {
  F_BASE_C, F_BASE_R, F_CAP_MARGIN, F_HOLDS, F_LIMIT_MARGIN, F_PREV_C, F_PREV_R, F_TC, F_TR, F_VALID_UNTIL, F_WMS, F_WS,
  HEALTH_DEGRADED, HEALTH_OK, HEALTH_UNAVAILABLE, LedgerTable, SLOT_FIELDS, counterKey, createLedger, hash3, storeDirKey,
} from './ledger.ts';
import {
  V_BASE_C, V_BASE_R, V_CAP_MARGIN, V_LIMIT_MARGIN, V_PREV_C, V_PREV_R, V_VALID_UNTIL, VIEW_FIELDS,
  isLedgerBackend, type LedgerBackend, type LedgerCell,
} from './link.ts';
import type { LedgerDescriptor, LedgerReply, LedgerRequest } from './protocol.ts';

/** Two windows for each of limits.max_quota_keys' default 100,000 counters. */
const DEFAULT_MAX_SLOTS = 200_000;
const FULL_LOG_EVERY_MS = 10_000;
/** Bounds of `ledgerSlotsFor`: a small key cap still gets a useful table; a huge one no multi-GB buffer. */
export const MIN_LEDGER_SLOTS = 4_096;
export const MAX_LEDGER_SLOTS = 4_000_000;

/**
 * Slots for a table serving `limits.max_quota_keys` counters: two windows each (the current and the previous
 * one, kept for sliding counts and late settlements), within [MIN_LEDGER_SLOTS, MAX_LEDGER_SLOTS]. Beyond the
 * maximum (~141–144 B of address space per slot: 562 MB) a full table answers new counters SLC_OVERLOADED, as the
 * key cap does.
 */
export function ledgerSlotsFor(maxQuotaKeys: number): number {
  const want = 2 * Math.floor(maxQuotaKeys);
  return Math.min(MAX_LEDGER_SLOTS, Math.max(MIN_LEDGER_SLOTS, Number.isFinite(want) ? want : MAX_LEDGER_SLOTS));
}
const DEFAULT_POLL_MS = 10;
const EVICT_EVERY_MS = 1_000;
/**
 * A slot still held this long after its windows ended is freed anyway: its grant's thread is gone (a
 * terminated thread never settles). A settle that comes later finds the slot reused and charges nothing.
 */
const DEFAULT_HOLD_GRACE_MS = 3_600_000;

interface Attached {
  readonly key: string;
  readonly backend: QuotaStore & LedgerBackend;
  readonly dir: number;
  health: number;
}

export interface LedgerHostOptions {
  /** Slots (counter windows) in the shared table, across every store. Default 200,000. */
  readonly maxSlots?: number;
  /** How often the dirty ring is folded into the backends and health is published, ms. Default 10. */
  readonly pollMs?: number;
  /** Lock takeover after a holder kept it this long (a thread terminated inside its critical section). */
  readonly stealMs?: number;
  /** A slot still held this long after its windows ended is freed anyway. Default 1 h. */
  readonly holdGraceMs?: number;
}

function errorReply(err: unknown): LedgerReply {
  if (err instanceof SluiceError) return { kind: 'error', code: err.code, message: err.message };
  return { kind: 'error', code: 'SLC_QUOTA_STORE_UNAVAILABLE', message: 'quota store failed' };
}

const HEALTH_CODE = { ok: HEALTH_OK, degraded: HEALTH_DEGRADED, unavailable: HEALTH_UNAVAILABLE } as const;

export class LedgerHost {
  readonly table: LedgerTable;
  private readonly desc: LedgerDescriptor;
  private readonly stores = new Map<string, Attached>();
  /** Per slot: the backend cell it is linked to, its counter id and its store. */
  private readonly cells: (LedgerCell | undefined)[];
  private readonly ids: (string | undefined)[];
  private readonly owners: (Attached | undefined)[];
  private readonly drained: Int32Array;
  private readonly view = new Float64Array(VIEW_FIELDS);
  private readonly kbuf = new Int32Array(3);
  private readonly cancelPoll: () => void;
  private readonly holdGraceMs: number;
  private readonly maxSlots: number;
  /** When the full ledger was last logged (at most once per FULL_LOG_EVERY_MS). */
  private fullLoggedAt = Number.NEGATIVE_INFINITY;
  private depth = 0;
  private nextEvict = 0;
  private closed = false;

  constructor(opts: LedgerHostOptions = {}) {
    this.maxSlots = opts.maxSlots ?? DEFAULT_MAX_SLOTS;
    this.desc = createLedger({ slots: this.maxSlots });
    this.table = new LedgerTable(this.desc, { stealMs: opts.stealMs, fresh: true });
    this.holdGraceMs = opts.holdGraceMs ?? DEFAULT_HOLD_GRACE_MS;
    // Grown as slots are used (lowest first), so a table sized for the key cap costs little until it fills.
    this.cells = [];
    this.ids = [];
    this.owners = [];
    this.drained = new Int32Array(this.desc.slots);
    const t = setInterval(() => this.poll(), Math.max(1, opts.pollMs ?? DEFAULT_POLL_MS));
    t.unref();
    this.cancelPoll = () => clearInterval(t);
  }

  /** Register a backend store under its StoreRegistry key (before any thread uses it). */
  attach(store: string, backend: QuotaStore): void {
    if (!isLedgerBackend(backend)) throw new Error(`quota store ${backend.name} cannot serve threads`);
    if (this.stores.has(store)) this.detach(store);
    storeDirKey(store, this.kbuf);
    const dir = this.table.attachStore(this.kbuf);
    if (dir < 0) throw new Error(`too many quota stores for the serving threads' ledger (${this.desc.stores}: distinct Redis targets and option sets, the old config's and the new one's during a reload)`);
    const a: Attached = { key: store, backend, dir, health: HEALTH_OK };
    this.stores.set(store, a);
    backend.ledgerBind((cell) => this.publish(cell), (cell) => this.release(cell));
    this.updateHealth(a);
  }

  /** Stop serving a store. Its slots stay until their grants are settled and their windows are over. */
  detach(store: string): void {
    const a = this.stores.get(store);
    if (a === undefined) return;
    this.stores.delete(store);
    a.backend.ledgerBind(undefined);
    this.table.detachStore(a.dir);
    // Threads still holding its counters ask the main thread, which answers that the store is gone.
    this.lock();
    try {
      const f = this.table.f64;
      for (let s = 0, high = this.table.high; s < high; s++) if (this.owners[s] === a) f[s * SLOT_FIELDS + F_VALID_UNTIL] = 0;
    } finally {
      this.unlock();
    }
  }

  descriptor(): LedgerDescriptor {
    return this.desc;
  }

  /** Answer a serving thread. Never rejects: failures become { kind: 'error' }. */
  async handle(req: LedgerRequest): Promise<LedgerReply> {
    try {
      const a = this.stores.get(req.store);
      if (a === undefined || this.closed) return { kind: 'error', code: 'SLC_QUOTA_STORE_UNAVAILABLE', message: 'quota store not available' };
      if (req.kind === 'flush') return await this.flush(a);
      if (req.kind === 'poke') {
        // What the pull folds in is written as its backend decides (a Redis store: released reservations near the
        // limit on the next turn, the rest at its interval).
        this.poll();
        return { kind: 'poked' };
      }
      return await this.acquire(a, req.items, req.now);
    } catch (err) {
      return errorReply(err);
    }
  }

  /** Stop polling after folding in what the threads left; the backends are closed by their owner. */
  close(): void {
    if (this.closed) return;
    this.poll();
    this.closed = true;
    this.cancelPoll();
    for (const a of this.stores.values()) a.backend.ledgerBind(undefined);
  }

  /** Fold the threads' usage into the backends and refresh health now (tests; the timer does it otherwise). */
  poll(): void {
    if (this.closed) return;
    this.lock();
    try {
      this.pullLocked();
      const now = Date.now();
      if (now >= this.nextEvict || this.table.used * 8 >= this.table.slots * 7) {
        this.nextEvict = now + EVICT_EVERY_MS;
        this.evictLocked(now);
      }
    } finally {
      this.unlock();
    }
    for (const a of this.stores.values()) this.updateHealth(a);
  }

  // ------------------------------------------------------------------------------------------------------

  private async acquire(a: Attached, raw: readonly { id: string; limit: number; windowMs: number; sliding: boolean; amount: number }[], now: number): Promise<LedgerReply> {
    const items: AcquireItem[] = raw.map((i) => ({ counter: { id: i.id, limit: i.limit, windowMs: i.windowMs, sliding: i.sliding }, amount: i.amount }));
    let pending: Promise<AcquireResult>;
    // A synchronous decision is made, and exported, under the lock: no thread admits on a slot in between.
    this.lock();
    try {
      this.pullLocked();
      const r = a.backend.acquire(items, now);
      if (!(r instanceof Promise)) return this.finishLocked(a, items, r, now);
      pending = r;
    } finally {
      this.unlock();
    }
    const r = await pending;
    this.lock();
    try {
      this.pullLocked();
      return this.finishLocked(a, items, r, now);
    } finally {
      this.unlock();
    }
  }

  private finishLocked(a: Attached, items: readonly AcquireItem[], r: AcquireResult, now: number): LedgerReply {
    if (!r.ok) {
      this.bindLocked(a, items, now);
      return { kind: 'denied', denied: [...r.denied], retryAfterMs: r.retryAfterMs };
    }
    const entries = r.entries as readonly StoreGrantEntry<LedgerCell>[];
    for (const e of entries) {
      if (this.linkLocked(a, e.counter, e.cell, entries) < 0) {
        a.backend.release(r);
        a.backend.ledgerFull();
        const now = Date.now();
        if (now - this.fullLoggedAt >= FULL_LOG_EVERY_MS) {
          this.fullLoggedAt = now;
          log.warn('serving threads\' quota ledger full of running requests: new counters refused with 503; it is sized 2 × limits.max_quota_keys at start, for every store of the process', { slots: this.maxSlots });
        }
        return { kind: 'error', code: 'SLC_OVERLOADED', message: 'too many quota keys tracked' };
      }
    }
    if (!a.backend.ledgerClaim(r)) return { kind: 'error', code: 'SLC_QUOTA_STORE_UNAVAILABLE', message: 'grant already settled' };
    const f = this.table.f64;
    const out = new Array<{ slot: number; windowStart: number; reserved: number }>(entries.length);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const cell = e.cell;
      const o = cell.slot * SLOT_FIELDS;
      f[o + F_TR] += e.reserved;
      f[o + F_HOLDS] += 1;
      cell.pulledR += e.reserved;
      out[i] = { slot: cell.slot, windowStart: e.windowStart, reserved: e.reserved };
    }
    for (const e of entries) this.publishLocked(e.cell.slot);
    return { kind: 'granted', entries: out };
  }

  /**
   * A denial binds (and publishes) a slot for every counter of the request too, so a serving thread denies
   * a spent counter on its own (`used ≥ limit` on a valid view) instead of sending every request for it
   * here. All or none: a thread delegates while any counter of a request lacks a slot. A full table binds
   * nothing (the thread keeps delegating).
   */
  private bindLocked(a: Attached, items: readonly AcquireItem[], now: number): void {
    const cells: LedgerCell[] = [];
    for (const item of items) {
      const cell = a.backend.ledgerCellOf(item.counter, now);
      if (cell === undefined) return;
      cells.push(cell);
    }
    for (let i = 0; i < items.length; i++) {
      const s = this.linkLocked(a, items[i]!.counter, cells[i]!, undefined, cells);
      if (s < 0) return;
      this.publishLocked(s);
    }
  }

  /**
   * The slot of a counter's backend cell, linking (or relinking) one; −1 when the table is full of slots threads
   * hold grants on. The other cells of the same request (`entries` or `cells`) are never taken back to make room.
   */
  private linkLocked(a: Attached, counter: CounterSpec, cell: LedgerCell,
    entries?: readonly StoreGrantEntry<LedgerCell>[], cells?: readonly LedgerCell[]): number {
    if (cell.slot >= 0 && this.cells[cell.slot] === cell) return cell.slot;
    const k = this.kbuf;
    hash3(counterKey(a.key, counter.id, counter.windowMs), k);
    let s = this.table.findLocked(k, cell.start);
    if (s >= 0) {
      // The slot outlived its cell (a counter forgotten and created again, a store attached again).
      const old = this.cells[s];
      if (old !== undefined) this.unlinkCell(s, old);
    } else {
      s = this.table.insertLocked(k, cell.start, counter.windowMs, a.dir);
      if (s < 0) {
        this.evictLocked(Date.now());
        s = this.table.insertLocked(k, cell.start, counter.windowMs, a.dir);
      }
      if (s < 0) {
        this.makeRoomLocked(entries, cells);
        // Taking cells back hashed their keys into kbuf.
        hash3(counterKey(a.key, counter.id, counter.windowMs), k);
        s = this.table.insertLocked(k, cell.start, counter.windowMs, a.dir);
        if (s < 0) return -1;
      }
    }
    this.cells[s] = cell;
    this.ids[s] = counter.id;
    this.owners[s] = a;
    cell.slot = s;
    cell.pulledC = 0;
    cell.pulledR = 0;
    const f = this.table.f64;
    const tC = f[s * SLOT_FIELDS + F_TC]!;
    const tR = f[s * SLOT_FIELDS + F_TR]!;
    if (tC !== 0 || tR !== 0) {
      a.backend.ledgerApply(cell, tC, tR);
      cell.pulledC = tC;
      cell.pulledR = tR;
    }
    return s;
  }

  /**
   * A table full of slots in live windows: take linked cells back that no thread holds a grant on, as the key cap
   * does (their usage folds into their backends, which go on counting it; threads then ask here for them, as for a
   * new counter). Without this, one route's new keys filled the table and every other route's new counters got
   * 503 until windows ended, although each store had room. A 64th of the table at a time, cells no thread wrote
   * since the last drain first, so a full table costs one scan per that many new counters.
   */
  private makeRoomLocked(entries: readonly StoreGrantEntry<LedgerCell>[] | undefined, cells: readonly LedgerCell[] | undefined): void {
    const t = this.table;
    const f = t.f64;
    const batch = Math.max(1, Math.floor(this.maxSlots / 64));
    let freed = 0;
    for (let pass = 0; pass < 2 && freed === 0; pass++) {
      for (let s = 0, high = t.high; s < high && freed < batch; s++) {
        const cell = this.cells[s];
        if (cell === undefined || f[s * SLOT_FIELDS + F_HOLDS]! > 0 || (pass === 0 && t.isDirty(s))) continue;
        if (entries !== undefined && entries.some((e) => e.cell === cell)) continue;
        if (cells !== undefined && cells.includes(cell)) continue;
        if (this.release(cell)) freed++;
      }
    }
  }

  private unlinkCell(s: number, cell: LedgerCell): void {
    this.pullSlot(s);
    cell.slot = -1;
    cell.pulledC = 0;
    cell.pulledR = 0;
    this.cells[s] = undefined;
    this.ids[s] = undefined;
    this.owners[s] = undefined;
  }

  private async flush(a: Attached): Promise<LedgerReply> {
    this.lock();
    try {
      this.pullLocked();
      // Threads' peeks never reach the backend: refresh every linked cell of the store.
      for (let s = 0, high = this.table.high; s < high; s++) {
        const cell = this.cells[s];
        if (cell !== undefined && this.owners[s] === a) a.backend.ledgerTouch(cell);
      }
    } finally {
      this.unlock();
    }
    await a.backend.flush();
    return { kind: 'flushed' };
  }

  /** Fold the dirty slots' thread usage into their backend cells. */
  private pullLocked(): void {
    const n = this.table.drainLocked(this.drained);
    for (let i = 0; i < n; i++) this.pullSlot(this.drained[i]!, true);
  }

  /** `touch`: a slot dirty with nothing to fold in was marked by a denial on a thread; refresh its view. */
  private pullSlot(s: number, touch = false): void {
    const cell = this.cells[s];
    const a = this.owners[s];
    if (cell === undefined || a === undefined) return;
    const f = this.table.f64;
    const dC = f[s * SLOT_FIELDS + F_TC]! - cell.pulledC;
    const dR = f[s * SLOT_FIELDS + F_TR]! - cell.pulledR;
    if (dC === 0 && dR === 0) {
      if (touch) a.backend.ledgerTouch(cell);
      return;
    }
    a.backend.ledgerApply(cell, dC, dR);
    cell.pulledC += dC;
    cell.pulledR += dR;
  }

  /** A backend's view of a linked cell changed (a reconciliation): publish it. */
  private publish(cell: LedgerCell): void {
    const s = cell.slot;
    if (s < 0 || this.cells[s] !== cell) return;
    this.lock();
    try {
      this.publishLocked(s);
    } finally {
      this.unlock();
    }
  }

  /**
   * The backend's key cap wants a linked cell back: fold the threads' usage in, free the slot and unlink the
   * cell, unless a serving thread holds a grant on it. Threads then find no slot and ask here again (a new
   * slot, relinked) if the counter is used again.
   */
  private release(cell: LedgerCell): boolean {
    const s = cell.slot;
    if (s < 0 || this.cells[s] !== cell) return true;
    this.lock();
    try {
      this.pullSlot(s);
      const f = this.table.f64;
      if (f[s * SLOT_FIELDS + F_HOLDS]! > 0) return false;
      const a = this.owners[s]!;
      const id = this.ids[s]!;
      const windowMs = f[s * SLOT_FIELDS + F_WMS]!;
      this.unlinkCell(s, cell);
      this.table.removeLocked(s);
      // The next window's slot published this one's usage minus what was pulled from it, which threads
      // read from this slot: now that it is gone, the next window's view must count all of it.
      hash3(counterKey(a.key, id, windowMs), this.kbuf);
      const next = this.table.findLocked(this.kbuf, cell.start + windowMs);
      if (next >= 0) this.publishLocked(next);
      return true;
    } finally {
      this.unlock();
    }
  }

  private publishLocked(s: number): void {
    const cell = this.cells[s];
    const a = this.owners[s];
    if (cell === undefined || a === undefined) return;
    const v = this.view;
    a.backend.ledgerView(this.ids[s]!, cell, v);
    const f = this.table.f64;
    const o = s * SLOT_FIELDS;
    f[o + F_BASE_C] = v[V_BASE_C]!;
    f[o + F_BASE_R] = v[V_BASE_R]!;
    f[o + F_PREV_C] = v[V_PREV_C]!;
    f[o + F_PREV_R] = v[V_PREV_R]!;
    f[o + F_LIMIT_MARGIN] = v[V_LIMIT_MARGIN]!;
    f[o + F_CAP_MARGIN] = v[V_CAP_MARGIN]!;
    // A store that is not attached any more admits nothing on its own.
    f[o + F_VALID_UNTIL] = this.stores.get(a.key) === a ? v[V_VALID_UNTIL]! : 0;
  }

  /**
   * Free slots whose windows (and the window after, for sliding counts) are over and that hold no grant
   * (or whose grants are older than HOLD_GRACE_MS), and the idle slots of detached stores.
   */
  private evictLocked(now: number): void {
    const t = this.table;
    const f = t.f64;
    for (let s = 0, high = t.high; s < high; s++) {
      if (this.owners[s] === undefined || t.isDirty(s)) continue;
      const o = s * SLOT_FIELDS;
      const over = f[o + F_WS]! + 2 * f[o + F_WMS]!;
      if (f[o + F_HOLDS]! > 0 && over + this.holdGraceMs > now) continue;
      const a = this.owners[s];
      const gone = a === undefined || this.stores.get(a.key) !== a;
      if (!gone && over > now) continue;
      const cell = this.cells[s];
      if (cell !== undefined) this.unlinkCell(s, cell);
      t.removeLocked(s);
    }
  }

  private updateHealth(a: Attached): void {
    const h = HEALTH_CODE[a.backend.health()];
    if (h === a.health && this.table.health(a.dir) === h) return;
    const changed = h !== a.health;
    a.health = h;
    this.table.setHealth(a.dir, h);
    if (!changed) return;
    // The view's validity depends on the store's state (a Redis breaker): publish every slot again.
    this.lock();
    try {
      for (let s = 0, high = this.table.high; s < high; s++) if (this.owners[s] === a) this.publishLocked(s);
    } finally {
      this.unlock();
    }
  }

  /** The table lock, re-entrant on the main thread (a backend callback may publish inside a locked section). */
  private lock(): void {
    if (this.depth++ === 0) this.table.lock();
  }

  private unlock(): void {
    if (--this.depth === 0) this.table.unlock();
  }
}
