// The process ledger: one SharedArrayBuffer that every serving thread and the main thread map, holding a
// hash table of slots (one per store, counter and window), a dirty ring and a store directory, guarded by
// one Atomics lock. Serving threads read and update slots under the lock with no message; only the main
// thread inserts and frees slots. docs/quota-design.md ("Serving threads: the process ledger").
//
// The buffer is sized once from the slot count: pages never touched cost no RSS, so a table sized for
// limits.max_quota_keys costs memory only for the slots in use (measured in the design note).
import type { LedgerDescriptor } from './protocol.ts';

// Header (Int32 indexes).
const H_LOCK = 0;
const H_RING_HEAD = 1;
const H_RING_COUNT = 2;
const H_RING_OVERFLOW = 3;
const H_STEALS = 4;
const H_USED = 5;
/** One past the highest slot ever used (slots are handed out lowest first, so scans stop here). */
const H_HIGH = 6;
const HEADER_INTS = 16;

// Store directory entry (Int32 fields): three hashes of the store key, then its health.
const D_FIELDS = 4;
export const HEALTH_NONE = 0;
export const HEALTH_OK = 1;
export const HEALTH_DEGRADED = 2;
export const HEALTH_UNAVAILABLE = 3;

// Slot Int32 fields.
const I_K1 = 0;
const I_K2 = 1;
const I_K3 = 2;
const I_USED = 3;
const I_DIRTY = 4;
const I_STORE = 5;
const SLOT_INTS = 8;

// Slot Float64 fields.
export const F_WS = 0;
export const F_WMS = 1;
/** Usage the backend holds outside the ledger (other replicas, the main thread's own), consumed and reserved. */
export const F_BASE_C = 2;
export const F_BASE_R = 3;
/** Consumed and reserved by serving threads in this window. */
export const F_TC = 4;
export const F_TR = 5;
/** Ledger grants not yet settled or released. */
export const F_HOLDS = 6;
/** The previous window's usage the backend holds outside the ledger (threads add the previous slot's tC/tR). */
export const F_PREV_C = 7;
export const F_PREV_R = 8;
/** A thread admits iff used < limit − limitMargin and used + amount ≤ limit − capMargin. */
export const F_LIMIT_MARGIN = 9;
export const F_CAP_MARGIN = 10;
/** Wall-clock ms (the `now` of acquire) until which the published view may admit without the main thread. */
export const F_VALID_UNTIL = 11;
const SLOT_FLOATS = 12;

/** Spin this many times before waiting on the lock (critical sections are a few hundred nanoseconds). */
const SPIN = 64;
const WAIT_SLICE_MS = 5;
/** A holder that keeps the lock this long died inside its critical section (a terminated thread): take it over. */
const DEFAULT_STEAL_MS = 2_000;

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** Three independent 32-bit hashes of a string (96 bits in all), written into `out`. */
export function hash3(s: string, out: Int32Array): void {
  let a = 0x811c9dc5 | 0;
  let b = 0x9747b28c | 0;
  let c = 0x2545f491 | 0;
  for (let i = 0; i < s.length; i++) {
    const ch = s.charCodeAt(i);
    a = Math.imul(a ^ ch, 0x01000193);
    b = Math.imul(b ^ ch, 0x5bd1e995);
    b ^= b >>> 15;
    c = Math.imul(c + ch, 0x27d4eb2d) ^ (c >>> 11);
  }
  out[0] = fmix(a ^ s.length);
  out[1] = fmix(b);
  out[2] = fmix(c + s.length);
}

/** The key of a counter (without its window) in one store. */
export function counterKey(store: string, id: string, windowMs: number): string {
  return `${store}\0${id}\0${windowMs}`;
}

/** The key of a store in the directory (distinct from every counter key: those contain two NULs). */
export function storeDirKey(store: string, out: Int32Array): void {
  hash3(`\u0001store\u0001${store}`, out);
}

/**
 * Stores the directory holds (16 bytes each): every distinct Redis target and option set of a config is a store, and
 * a reload attaches its new stores before the old ones go, so a config may use half of these. 256 refused configs
 * that a single thread serves (300 routes, each its own redis_timeout).
 */
export const DEFAULT_STORES = 4096;

export interface LedgerSizes {
  /** Slots (counter windows) the table holds. */
  readonly slots: number;
  /** Dirty-ring entries; default the slot count (at least 1024). */
  readonly ringSize?: number;
  /** Store directory entries; default DEFAULT_STORES. */
  readonly stores?: number;
}

/** Create the shared buffer and its descriptor (main thread). */
export function createLedger(sizes: LedgerSizes): LedgerDescriptor {
  const slots = Math.max(1, Math.floor(sizes.slots));
  const indexSize = nextPow2(slots * 2);
  const ringSize = nextPow2(Math.max(1024, sizes.ringSize ?? slots));
  const stores = Math.max(1, sizes.stores ?? DEFAULT_STORES);
  const bytes = layout(slots, indexSize, ringSize, stores).total;
  return { sab: new SharedArrayBuffer(bytes), slots, indexSize, ringSize, stores };
}

function layout(slots: number, indexSize: number, ringSize: number, stores: number): { dir: number; index: number; ring: number; ints: number; floats: number; total: number } {
  const dir = HEADER_INTS;
  const index = dir + stores * D_FIELDS;
  const ring = index + indexSize;
  const ints = ring + ringSize;
  const intEnd = ints + slots * SLOT_INTS;
  const floatsByte = Math.ceil((intEnd * 4) / 8) * 8;
  return { dir, index, ring, ints, floats: floatsByte / 8, total: floatsByte + slots * SLOT_FLOATS * 8 };
}

/**
 * A view of the ledger. Every method whose name ends in `Locked` must be called with the lock held; the
 * serving threads' critical sections are straight-line code that allocates nothing.
 */
export class LedgerTable {
  readonly slots: number;
  readonly stores: number;
  private readonly i32: Int32Array;
  /** Float64 view over the slot fields (index = slot × SLOT_FLOATS + field). */
  readonly f64: Float64Array;
  private readonly dirOff: number;
  private readonly indexOff: number;
  private readonly indexMask: number;
  private readonly ringOff: number;
  private readonly ringMask: number;
  private readonly intsOff: number;
  private readonly stealMs: number;
  /** Main thread only: free slot indexes (a stack). */
  private free: Int32Array | undefined;
  private freeTop = 0;
  /** Created by this view's owner (createLedger): no slot is in use yet. */
  private readonly fresh: boolean;

  constructor(desc: LedgerDescriptor, opts: { stealMs?: number; fresh?: boolean } = {}) {
    const l = layout(desc.slots, desc.indexSize, desc.ringSize, desc.stores);
    this.slots = desc.slots;
    this.stores = desc.stores;
    this.i32 = new Int32Array(desc.sab, 0, l.ints + desc.slots * SLOT_INTS);
    this.f64 = new Float64Array(desc.sab, l.floats * 8, desc.slots * SLOT_FLOATS);
    this.dirOff = l.dir;
    this.indexOff = l.index;
    this.indexMask = desc.indexSize - 1;
    this.ringOff = l.ring;
    this.ringMask = desc.ringSize - 1;
    this.intsOff = l.ints;
    this.stealMs = opts.stealMs ?? DEFAULT_STEAL_MS;
    this.fresh = opts.fresh === true;
  }

  // ----------------------------------------------------------------------------------------------------
  // Lock: 0 free, 1 held, 2 held with waiters (a futex mutex). Spin briefly, then wait in short slices.

  lock(): void {
    const a = this.i32;
    if (Atomics.compareExchange(a, H_LOCK, 0, 1) === 0) return;
    for (let i = 0; i < SPIN; i++) {
      if (Atomics.load(a, H_LOCK) === 0 && Atomics.compareExchange(a, H_LOCK, 0, 1) === 0) return;
    }
    let waitedSince = 0;
    for (;;) {
      if (Atomics.exchange(a, H_LOCK, 2) === 0) return;
      if (Atomics.wait(a, H_LOCK, 2, WAIT_SLICE_MS) === 'timed-out') {
        const t = Date.now();
        if (waitedSince === 0) waitedSince = t;
        else if (t - waitedSince >= this.stealMs) {
          // Its holder is gone (a thread terminated inside its critical section): take the lock over.
          Atomics.store(a, H_LOCK, 2);
          Atomics.add(a, H_STEALS, 1);
          return;
        }
      }
    }
  }

  unlock(): void {
    const a = this.i32;
    if (Atomics.sub(a, H_LOCK, 1) !== 1) {
      Atomics.store(a, H_LOCK, 0);
      Atomics.notify(a, H_LOCK, 1);
    }
  }

  /** Times a waiter took over a lock whose holder never released it. */
  get steals(): number {
    return Atomics.load(this.i32, H_STEALS);
  }

  /** One past the highest slot index ever used: every used slot is below it. */
  get high(): number {
    return Atomics.load(this.i32, H_HIGH);
  }

  /** Slots in use. */
  get used(): number {
    return Atomics.load(this.i32, H_USED);
  }

  // ----------------------------------------------------------------------------------------------------
  // Slots

  private home(k1: number, ws: number): number {
    const lo = ws >>> 0;
    const hi = Math.floor(ws / 4294967296) | 0;
    return fmix(k1 ^ Math.imul(lo, 0x9e3779b1) ^ Math.imul(hi ^ 0x5bd1e995, 0x85ebca6b)) & this.indexMask;
  }

  /** The slot of (counter key, window start), or −1. */
  findLocked(k: Int32Array, ws: number): number {
    return this.findKeyLocked(k[0]!, k[1]!, k[2]!, ws);
  }

  findKeyLocked(k1: number, k2: number, k3: number, ws: number): number {
    const a = this.i32;
    const f = this.f64;
    let p = this.home(k1, ws);
    for (;;) {
      const e = a[this.indexOff + p]!;
      if (e === 0) return -1;
      const s = e - 1;
      const o = this.intsOff + s * SLOT_INTS;
      if (a[o + I_K1] === k1 && a[o + I_K2] === k2 && a[o + I_K3] === k3 && f[s * SLOT_FLOATS + F_WS] === ws) return s;
      p = (p + 1) & this.indexMask;
    }
  }

  /** Main thread: a new zeroed slot for (key, window), or −1 when the table is full. */
  insertLocked(k: Int32Array, ws: number, windowMs: number, store: number): number {
    const free = this.freeStack();
    if (this.freeTop === 0) return -1;
    const s = free[--this.freeTop]!;
    const a = this.i32;
    const o = this.intsOff + s * SLOT_INTS;
    a[o + I_K1] = k[0]!;
    a[o + I_K2] = k[1]!;
    a[o + I_K3] = k[2]!;
    a[o + I_USED] = 1;
    a[o + I_DIRTY] = 0;
    a[o + I_STORE] = store;
    const f = this.f64;
    const fo = s * SLOT_FLOATS;
    for (let i = 0; i < SLOT_FLOATS; i++) f[fo + i] = 0;
    f[fo + F_WS] = ws;
    f[fo + F_WMS] = windowMs;
    let p = this.home(k[0]!, ws);
    while (a[this.indexOff + p] !== 0) p = (p + 1) & this.indexMask;
    a[this.indexOff + p] = s + 1;
    a[H_USED]!++;
    if (s >= a[H_HIGH]!) Atomics.store(a, H_HIGH, s + 1);
    return s;
  }

  /** Main thread: free a slot (backward-shift deletion keeps every probe sequence unbroken). */
  removeLocked(s: number): void {
    const a = this.i32;
    const f = this.f64;
    const o = this.intsOff + s * SLOT_INTS;
    if (a[o + I_USED] !== 1) return;
    const mask = this.indexMask;
    const base = this.indexOff;
    let i = this.home(a[o + I_K1]!, f[s * SLOT_FLOATS + F_WS]!);
    while (a[base + i] !== s + 1) i = (i + 1) & mask;
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const e = a[base + j]!;
      if (e === 0) break;
      const t = e - 1;
      const h = this.home(a[this.intsOff + t * SLOT_INTS + I_K1]!, f[t * SLOT_FLOATS + F_WS]!);
      // Move e back to the hole at i unless its home lies cyclically in (i, j].
      const inRange = i <= j ? h > i && h <= j : h > i || h <= j;
      if (!inRange) {
        a[base + i] = e;
        i = j;
      }
    }
    a[base + i] = 0;
    a[o + I_USED] = 0;
    a[o + I_DIRTY] = 0;
    a[H_USED]!--;
    this.freeStack()[this.freeTop++] = s;
  }

  /** Whether slot `s` is in use for (key, window): a grant's slot may have been freed and reused meanwhile. */
  holdsKeyLocked(s: number, k1: number, k2: number, k3: number, ws: number): boolean {
    const a = this.i32;
    const o = this.intsOff + s * SLOT_INTS;
    return a[o + I_USED] === 1 && a[o + I_K1] === k1 && a[o + I_K2] === k2 && a[o + I_K3] === k3 && this.f64[s * SLOT_FLOATS + F_WS] === ws;
  }

  isUsed(s: number): boolean {
    return this.i32[this.intsOff + s * SLOT_INTS + I_USED] === 1;
  }

  storeOf(s: number): number {
    return this.i32[this.intsOff + s * SLOT_INTS + I_STORE]!;
  }

  isDirty(s: number): boolean {
    return this.i32[this.intsOff + s * SLOT_INTS + I_DIRTY] === 1;
  }

  /** Mark a slot changed by a serving thread; on the first change since the main thread looked, queue it. */
  markDirtyLocked(s: number): void {
    const a = this.i32;
    const o = this.intsOff + s * SLOT_INTS + I_DIRTY;
    if (a[o] === 1) return;
    a[o] = 1;
    const n = a[H_RING_COUNT]!;
    if (n > this.ringMask) {
      a[H_RING_OVERFLOW] = 1;
      return;
    }
    a[this.ringOff + ((a[H_RING_HEAD]! + n) & this.ringMask)] = s;
    a[H_RING_COUNT] = n + 1;
  }

  /**
   * Main thread: take the dirty slots (clearing their flags) into `out`; returns how many. When the ring
   * overflowed, every used slot is scanned instead. `out` must hold `slots` entries.
   */
  drainLocked(out: Int32Array): number {
    const a = this.i32;
    let n = 0;
    if (a[H_RING_OVERFLOW] === 1) {
      const high = a[H_HIGH]!;
      for (let s = 0; s < high; s++) {
        const o = this.intsOff + s * SLOT_INTS;
        if (a[o + I_USED] === 1 && a[o + I_DIRTY] === 1) {
          a[o + I_DIRTY] = 0;
          out[n++] = s;
        }
      }
    } else {
      const count = a[H_RING_COUNT]!;
      const head = a[H_RING_HEAD]!;
      for (let i = 0; i < count; i++) {
        const s = a[this.ringOff + ((head + i) & this.ringMask)]!;
        const o = this.intsOff + s * SLOT_INTS + I_DIRTY;
        if (a[o] === 1) {
          a[o] = 0;
          out[n++] = s;
        }
      }
    }
    a[H_RING_HEAD] = 0;
    a[H_RING_COUNT] = 0;
    a[H_RING_OVERFLOW] = 0;
    return n;
  }

  /** Whether the dirty ring overflowed since the last drain (tests). */
  get overflowed(): boolean {
    return Atomics.load(this.i32, H_RING_OVERFLOW) === 1;
  }

  private freeStack(): Int32Array {
    if (this.free === undefined) {
      // Built lazily on the main thread (the only one that inserts), lowest slot on top. A new table is all
      // free: not reading it leaves its pages untouched (no RSS until slots are used).
      const free = new Int32Array(this.slots);
      let top = 0;
      for (let s = this.slots - 1; s >= 0; s--) if (this.fresh || !this.isUsed(s)) free[top++] = s;
      this.free = free;
      this.freeTop = top;
    }
    return this.free;
  }

  // ----------------------------------------------------------------------------------------------------
  // Store directory (health per attached store)

  /** Main thread: claim a directory entry for a store key; −1 when the directory is full. */
  attachStore(k: Int32Array): number {
    const a = this.i32;
    for (let i = 0; i < this.stores; i++) {
      const o = this.dirOff + i * D_FIELDS;
      if (Atomics.load(a, o + 3) === HEALTH_NONE) {
        a[o] = k[0]!;
        a[o + 1] = k[1]!;
        a[o + 2] = k[2]!;
        Atomics.store(a, o + 3, HEALTH_OK);
        return i;
      }
    }
    return -1;
  }

  detachStore(i: number): void {
    Atomics.store(this.i32, this.dirOff + i * D_FIELDS + 3, HEALTH_NONE);
  }

  /** The directory entry of a store key (−1 when not attached); `hint` is checked first. */
  findStore(k: Int32Array, hint: number): number {
    if (hint >= 0 && this.storeMatches(hint, k)) return hint;
    for (let i = 0; i < this.stores; i++) if (this.storeMatches(i, k)) return i;
    return -1;
  }

  private storeMatches(i: number, k: Int32Array): boolean {
    const a = this.i32;
    const o = this.dirOff + i * D_FIELDS;
    return Atomics.load(a, o + 3) !== HEALTH_NONE && a[o] === k[0] && a[o + 1] === k[1] && a[o + 2] === k[2];
  }

  health(i: number): number {
    return Atomics.load(this.i32, this.dirOff + i * D_FIELDS + 3);
  }

  setHealth(i: number, h: number): void {
    Atomics.store(this.i32, this.dirOff + i * D_FIELDS + 3, h);
  }
}

export const SLOT_FIELDS = SLOT_FLOATS;
