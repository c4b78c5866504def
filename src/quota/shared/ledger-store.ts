// Serving-thread side of the process ledger: a QuotaStore over the shared slots. An admission that the
// published view decides (slot present, view valid, clear of the backend's margins) takes the lock,
// reserves on every slot and returns, with no message; anything else is delegated to the main thread's
// LedgerHost in one message. Settle and release only touch the slots.
import { ERRORS, SluiceError, type ErrorCode } from '../../core/errors.ts';
import type { AcquireItem, AcquireResult, CounterSpec, CounterView, Grant, QuotaStore, StoreHealth } from '../types.ts';
import { windowStartOf } from '../types.ts';
import { StoreGrant, StoreGrantEntry, TokenGuard, claimGrant, previousWeight, retryAfterMs } from '../window.ts';
import {
  F_BASE_C, F_BASE_R, F_CAP_MARGIN, F_HOLDS, F_LIMIT_MARGIN, F_PREV_C, F_PREV_R, F_TC, F_TR, F_VALID_UNTIL,
  HEALTH_DEGRADED, HEALTH_OK, LedgerTable, SLOT_FIELDS, counterKey, hash3, storeDirKey,
} from './ledger.ts';
import type { LedgerDescriptor, LedgerReply, LedgerRequest } from './protocol.ts';

/** Counter keys remembered per store (hashing a key costs more than the rest of a fast-path admission). */
const MAX_CACHED_KEYS = 65_536;

type Delegate = (req: LedgerRequest) => Promise<LedgerReply>;

/** A delegated decision the main thread has not answered by then fails the request with 503. */
export const DEFAULT_DELEGATE_TIMEOUT_MS = 30_000;

export interface LedgerClientOptions {
  /** How long a delegated request may wait for the main thread. Default 30 s. */
  readonly timeoutMs?: number;
}

export class LedgerClient {
  private readonly table: LedgerTable;
  private readonly delegate: Delegate;
  private readonly timeoutMs: number;
  private readonly stores = new Map<string, LedgerQuotaStore>();

  constructor(desc: LedgerDescriptor, delegate: Delegate, opts: LedgerClientOptions = {}) {
    this.table = new LedgerTable(desc);
    this.delegate = delegate;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_DELEGATE_TIMEOUT_MS;
  }

  /** A QuotaStore for the backend registered under `store`; `name` is its metric label. close() is a no-op. */
  storeFor(store: string, name: string): QuotaStore {
    let s = this.stores.get(store);
    if (s === undefined || s.name !== name) {
      s = new LedgerQuotaStore(this.table, store, name, this.delegate, this.timeoutMs);
      this.stores.set(store, s);
    }
    return s;
  }
}

interface CachedKey {
  readonly windowMs: number;
  readonly k1: number;
  readonly k2: number;
  readonly k3: number;
}

const ADMIT = 0;
const DENY = 1;
const DELEGATE = 2;

export class LedgerQuotaStore implements QuotaStore {
  readonly name: string;
  private readonly table: LedgerTable;
  private readonly f: Float64Array;
  private readonly storeKey: string;
  private poking = false;
  private readonly delegate: Delegate;
  private readonly timeoutMs: number;
  private readonly guard: TokenGuard;
  private readonly keys = new Map<string, CachedKey>();
  private readonly dirKey = new Int32Array(3);
  private dir = -1;
  // Scratch for acquire (nothing is allocated inside the lock).
  private readonly kscratch: CachedKey[] = [];
  private readonly hashOut = new Int32Array(3);
  private slots = new Int32Array(8);
  private amounts = new Float64Array(8);
  private curs = new Float64Array(8);
  private prevs = new Float64Array(8);
  private spent = new Uint8Array(8);

  constructor(table: LedgerTable, storeKey: string, name: string, delegate: Delegate, timeoutMs = DEFAULT_DELEGATE_TIMEOUT_MS) {
    this.table = table;
    this.f = table.f64;
    this.storeKey = storeKey;
    this.name = name;
    this.delegate = delegate;
    this.timeoutMs = timeoutMs;
    this.guard = new TokenGuard(name);
    storeDirKey(storeKey, this.dirKey);
  }

  /** The cap is the main thread's backends' (their StoreRegistry applies a reload's). */
  setMaxKeys(): void {}

  acquire(items: readonly AcquireItem[], now: number): AcquireResult | Promise<AcquireResult> {
    const n = items.length;
    if (n > this.slots.length) this.grow(n);
    const ks = this.kscratch;
    for (let i = 0; i < n; i++) {
      const item = items[i]!;
      ks[i] = this.keyOf(item.counter);
      this.amounts[i] = this.guard.estimate(item.amount, 'acquire');
    }
    const t = this.table;
    const f = this.f;
    let verdict = ADMIT;
    let anySpent = false;
    t.lock();
    for (let i = 0; i < n; i++) {
      const spec = items[i]!.counter;
      const ws = windowStartOf(now, spec.windowMs);
      const k = ks[i]!;
      const s = t.findKeyLocked(k.k1, k.k2, k.k3, ws);
      if (s < 0) {
        verdict = DELEGATE;
        break;
      }
      const o = s * SLOT_FIELDS;
      if (!(now < f[o + F_VALID_UNTIL]!)) {
        verdict = DELEGATE;
        break;
      }
      this.slots[i] = s;
      const cur = f[o + F_BASE_C]! + f[o + F_BASE_R]! + f[o + F_TC]! + f[o + F_TR]!;
      let prev = 0;
      if (spec.sliding) {
        prev = f[o + F_PREV_C]! + f[o + F_PREV_R]!;
        const p = t.findKeyLocked(k.k1, k.k2, k.k3, ws - spec.windowMs);
        if (p >= 0) prev += f[p * SLOT_FIELDS + F_TC]! + f[p * SLOT_FIELDS + F_TR]!;
      }
      const used = prev === 0 ? cur : cur + prev * previousWeight(now, ws, spec.windowMs);
      this.curs[i] = cur;
      this.prevs[i] = prev;
      const limit = spec.limit;
      if (used >= limit) {
        this.spent[i] = 1;
        anySpent = true;
        continue;
      }
      this.spent[i] = 0;
      if (!(used < limit - f[o + F_LIMIT_MARGIN]! && used + this.amounts[i]! <= limit - f[o + F_CAP_MARGIN]!)) verdict = DELEGATE;
    }
    if (verdict !== DELEGATE && anySpent) verdict = DENY;
    if (verdict === ADMIT) {
      for (let i = 0; i < n; i++) {
        const s = this.slots[i]!;
        const o = s * SLOT_FIELDS;
        f[o + F_TR] += this.amounts[i]!;
        f[o + F_HOLDS] += 1;
        t.markDirtyLocked(s);
      }
    } else if (verdict === DENY) {
      // The main thread then refreshes the spent counters (Redis: a read on the next flush), as the store
      // does for a denial of its own, so a hammered spent counter's view stays valid.
      for (let i = 0; i < n; i++) if (this.spent[i] === 1) t.markDirtyLocked(this.slots[i]!);
    }
    t.unlock();
    if (verdict === DELEGATE) return this.delegateAcquire(items, now);
    if (verdict === DENY) return this.denial(items, now);
    const entries = new Array<StoreGrantEntry<number>>(n);
    for (let i = 0; i < n; i++) {
      const spec = items[i]!.counter;
      entries[i] = new StoreGrantEntry(spec, windowStartOf(now, spec.windowMs), this.amounts[i]!, this.slots[i]!);
    }
    return new StoreGrant(this, entries);
  }

  settle(grant: Grant, actual: readonly number[]): void {
    const g = claimGrant<number>(grant, this);
    if (g === undefined) return;
    const entries = g.entries;
    const n = entries.length;
    let near = false;
    if (n > this.amounts.length) this.grow(n);
    // A value no upstream can produce is charged as the estimate (guard), decided before the lock.
    const ks = this.kscratch;
    for (let i = 0; i < n; i++) {
      this.amounts[i] = this.guard.amount(actual[i] ?? 0, entries[i]!.reserved, 'settle');
      ks[i] = this.keyOf(entries[i]!.counter);
    }
    const t = this.table;
    const f = this.f;
    t.lock();
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      const k = ks[i]!;
      // Freed long after its windows (a grant older than the host's hold grace): nothing to charge it to.
      if (!t.holdsKeyLocked(e.cell, k.k1, k.k2, k.k3, e.windowStart)) continue;
      const o = e.cell * SLOT_FIELDS;
      f[o + F_TR] = Math.max(0, f[o + F_TR]! - e.reserved);
      f[o + F_TC] += this.amounts[i]!;
      f[o + F_HOLDS] -= 1;
      t.markDirtyLocked(e.cell);
      near ||= this.nearLimitLocked(o, e.counter.limit);
    }
    t.unlock();
    if (near) this.poke();
  }

  /** Within the backend's margin of the limit: other replicas' admissions are decided by Redis, where this
   *  reservation counts until the backend writes it released. */
  private nearLimitLocked(o: number, limit: number): boolean {
    const f = this.f;
    return limit - (f[o + F_BASE_C]! + f[o + F_BASE_R]! + f[o + F_TC]! + f[o + F_TR]!) < f[o + F_LIMIT_MARGIN]!;
  }

  /** The main thread folds the slots in now rather than at its next poll, and its backend writes what is near a limit
   *  on its next turn (requests taking turns between two replicas got 429 while a released reservation waited). One
   *  poke at a time: what changes meanwhile is folded by the host's next poll. */
  private poke(): void {
    if (this.poking) return;
    this.poking = true;
    void this.ask({ kind: 'poke', store: this.storeKey }).catch(() => undefined).finally(() => { this.poking = false; });
  }

  release(grant: Grant): void {
    const g = claimGrant<number>(grant, this);
    if (g === undefined) return;
    const entries = g.entries;
    const ks = this.kscratch;
    let near = false;
    for (let i = 0; i < entries.length; i++) ks[i] = this.keyOf(entries[i]!.counter);
    const t = this.table;
    const f = this.f;
    t.lock();
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const k = ks[i]!;
      if (!t.holdsKeyLocked(e.cell, k.k1, k.k2, k.k3, e.windowStart)) continue;
      const o = e.cell * SLOT_FIELDS;
      f[o + F_TR] = Math.max(0, f[o + F_TR]! - e.reserved);
      f[o + F_HOLDS] -= 1;
      t.markDirtyLocked(e.cell);
      near ||= this.nearLimitLocked(o, e.counter.limit);
    }
    t.unlock();
    if (near) this.poke();
  }

  peek(counter: CounterSpec, now: number): CounterView {
    const ws = windowStartOf(now, counter.windowMs);
    const resetMs = ws + counter.windowMs - now;
    const k = this.keyOf(counter);
    const t = this.table;
    const f = this.f;
    let consumed = 0;
    let reserved = 0;
    t.lock();
    const s = t.findKeyLocked(k.k1, k.k2, k.k3, ws);
    if (s >= 0) {
      const o = s * SLOT_FIELDS;
      consumed = f[o + F_BASE_C]! + f[o + F_TC]!;
      reserved = f[o + F_BASE_R]! + f[o + F_TR]!;
      if (counter.sliding) {
        let pc = f[o + F_PREV_C]!;
        let pr = f[o + F_PREV_R]!;
        const p = t.findKeyLocked(k.k1, k.k2, k.k3, ws - counter.windowMs);
        if (p >= 0) {
          pc += f[p * SLOT_FIELDS + F_TC]!;
          pr += f[p * SLOT_FIELDS + F_TR]!;
        }
        const w = previousWeight(now, ws, counter.windowMs);
        consumed += pc * w;
        reserved += pr * w;
      }
    }
    t.unlock();
    return { limit: counter.limit, consumed, reserved, resetMs };
  }

  health(): StoreHealth {
    this.dir = this.table.findStore(this.dirKey, this.dir);
    if (this.dir < 0) return 'unavailable';
    const h = this.table.health(this.dir);
    return h === HEALTH_OK ? 'ok' : h === HEALTH_DEGRADED ? 'degraded' : 'unavailable';
  }

  async flush(): Promise<void> {
    const reply = await this.ask({ kind: 'flush', store: this.storeKey });
    if (reply.kind === 'flushed') return;
    throw this.failure(reply);
  }

  /** The main thread owns the backend; nothing to release here. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  // ------------------------------------------------------------------------------------------------------

  private async delegateAcquire(items: readonly AcquireItem[], now: number): Promise<AcquireResult> {
    const req: LedgerRequest = {
      kind: 'acquire',
      store: this.storeKey,
      items: items.map((i) => ({ id: i.counter.id, limit: i.counter.limit, windowMs: i.counter.windowMs, sliding: i.counter.sliding, amount: i.amount })),
      now,
    };
    const reply = await this.ask(req, (late) => {
      // Given up on (503 already answered): a grant that arrives anyway is released at once, or its tokens
      // would stay reserved in the slots until the window ends.
      if (late.kind === 'granted' && late.entries.length === items.length) this.release(this.grantOf(items, late));
    });
    if (reply.kind === 'denied') return { ok: false, denied: reply.denied, retryAfterMs: reply.retryAfterMs };
    if (reply.kind !== 'granted' || reply.entries.length !== items.length) throw this.failure(reply);
    return this.grantOf(items, reply);
  }

  private grantOf(items: readonly AcquireItem[], reply: Extract<LedgerReply, { kind: 'granted' }>): StoreGrant<number> {
    const entries = reply.entries.map((e, i) => new StoreGrantEntry(items[i]!.counter, e.windowStart, e.reserved, e.slot));
    return new StoreGrant(this, entries);
  }

  /**
   * The main thread's answer, or SLC_QUOTA_STORE_UNAVAILABLE after `timeoutMs`; `late` then receives the
   * answer if it still comes.
   */
  private ask(req: LedgerRequest, late?: (reply: LedgerReply) => void): Promise<LedgerReply> {
    let answer: Promise<LedgerReply>;
    try {
      answer = this.delegate(req);
    } catch (err) {
      return Promise.reject(new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE', 'quota ledger unreachable', { cause: err }));
    }
    return new Promise<LedgerReply>((resolve, reject) => {
      let done = false;
      const timer = setTimeout(() => {
        done = true;
        reject(new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE', `the main thread did not answer a quota request within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      answer.then((reply) => {
        if (!done) {
          done = true;
          clearTimeout(timer);
          resolve(reply);
        } else if (late !== undefined) {
          late(reply);
        }
      }, (err: unknown) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        reject(new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE', 'quota ledger unreachable', { cause: err }));
      });
    });
  }

  private failure(reply: LedgerReply): SluiceError {
    if (reply.kind !== 'error') return new SluiceError('SLC_QUOTA_STORE_UNAVAILABLE', `unexpected ledger reply ${reply.kind}`);
    const code: ErrorCode = reply.code in ERRORS ? (reply.code as ErrorCode) : 'SLC_QUOTA_STORE_UNAVAILABLE';
    return new SluiceError(code, reply.message);
  }

  private denial(items: readonly AcquireItem[], now: number): AcquireResult {
    const denied: number[] = [];
    let retry = 0;
    for (let i = 0; i < items.length; i++) {
      if (this.spent[i] !== 1) continue;
      denied.push(i);
      const spec = items[i]!.counter;
      retry = Math.max(retry, retryAfterMs(now, windowStartOf(now, spec.windowMs), spec, this.curs[i]!, this.prevs[i]!));
    }
    return { ok: false, denied, retryAfterMs: retry };
  }

  private keyOf(spec: CounterSpec): CachedKey {
    const c = this.keys.get(spec.id);
    if (c !== undefined && c.windowMs === spec.windowMs) return c;
    if (this.keys.size >= MAX_CACHED_KEYS) this.keys.clear();
    const h = this.hashOut;
    hash3(counterKey(this.storeKey, spec.id, spec.windowMs), h);
    const k: CachedKey = { windowMs: spec.windowMs, k1: h[0]!, k2: h[1]!, k3: h[2]! };
    this.keys.set(spec.id, k);
    return k;
  }

  private grow(n: number): void {
    this.slots = new Int32Array(n);
    this.amounts = new Float64Array(n);
    this.curs = new Float64Array(n);
    this.prevs = new Float64Array(n);
    this.spent = new Uint8Array(n);
  }
}
