// Window arithmetic and the grant objects shared by every QuotaStore implementation.
import { log } from '../core/log.ts';
import type { CounterSpec, Grant, GrantEntry } from './types.ts';

/**
 * Weight of the previous window in a sliding count at `now`: 1 at the start of the current window, 0 at its
 * end (Cloudflare's approximation: used = prev × (1 − elapsed/window) + current).
 */
export function previousWeight(now: number, windowStart: number, windowMs: number): number {
  const w = 1 - (now - windowStart) / windowMs;
  return w <= 0 ? 0 : w > 1 ? 1 : w;
}

/**
 * Milliseconds until a spent counter has room again (consumed + reserved < limit), assuming nothing else
 * changes. Fixed windows: the window end. Sliding windows: when enough of the previous window has decayed,
 * or, if the current window alone is spent, when the decaying current window (then previous) falls below
 * the limit in the next window. `cur` and `prev` are the unweighted window totals.
 */
export function retryAfterMs(now: number, windowStart: number, spec: CounterSpec, cur: number, prev: number): number {
  const w = spec.windowMs;
  const elapsed = now - windowStart;
  const toEnd = Math.max(1, w - elapsed);
  if (!spec.sliding) return toEnd;
  const limit = spec.limit;
  if (cur < limit && prev > 0) {
    // prev × (1 − t/w) + cur < limit  ⇔  t > w × (prev + cur − limit)/prev
    const t = (w * (prev + cur - limit)) / prev;
    return Math.min(toEnd, Math.max(1, Math.floor(t - elapsed) + 1));
  }
  if (cur <= 0) return toEnd;
  // Next window: cur × (1 − t/w) < limit  ⇔  t > w × (cur − limit)/cur
  const t = Math.max(0, (w * (cur - limit)) / cur);
  return toEnd + Math.min(w, Math.floor(t) + 1);
}

/** Token amounts are whole numbers everywhere (Redis INCRBY takes integers); fractions round up, negatives are 0. */
export function tokens(n: number): number {
  return n > 0 ? Math.ceil(n) : 0;
}

/**
 * Largest token amount one request may reserve or be charged. Far beyond any model's context, and small
 * enough that a window's total stays an exact integer in JavaScript (2^53) and in Redis (INCRBY, int64).
 */
export const MAX_TOKENS_PER_REQUEST = 1_000_000_000;
const INVALID_LOG_EVERY_MS = 10_000;

/**
 * Defence in depth at the store boundary: amounts that are not finite, negative or beyond
 * MAX_TOKENS_PER_REQUEST never reach a counter (the pipeline validates upstream usage before it gets here).
 * Each refusal is counted and logged (rate-limited).
 */
export class TokenGuard {
  private readonly store: string;
  private readonly metric: { labels(l: { store: string; op: string }): { inc(n?: number): void } } | undefined;
  private loggedAt = Number.NEGATIVE_INFINITY;
  private suppressed = 0;

  constructor(store: string, metric?: { labels(l: { store: string; op: string }): { inc(n?: number): void } }) {
    this.store = store;
    this.metric = metric;
  }

  /** A settlement: an invalid value is replaced by `fallback` (the reservation, so nothing used is lost). */
  amount(v: number, fallback: number, op: string | undefined): number {
    if (typeof v === 'number' && v >= 0 && v <= MAX_TOKENS_PER_REQUEST) return v > 0 ? Math.ceil(v) : 0;
    if (op !== undefined) this.refused(v, op);
    return fallback;
  }

  /** An estimate to reserve: an invalid one reserves the maximum (denied by any real limit), not nothing. */
  estimate(v: number, op: string | undefined): number {
    if (typeof v === 'number' && v >= 0 && v <= MAX_TOKENS_PER_REQUEST) return v > 0 ? Math.ceil(v) : 0;
    if (op !== undefined) this.refused(v, op);
    return v < 0 ? 0 : MAX_TOKENS_PER_REQUEST;
  }

  private refused(v: number, op: string): void {
    this.metric?.labels({ store: this.store, op }).inc();
    const now = Date.now();
    if (now - this.loggedAt < INVALID_LOG_EVERY_MS) {
      this.suppressed++;
      return;
    }
    log.warn('quota store refused an invalid token amount', { store: this.store, op, value: String(v), suppressed: this.suppressed });
    this.loggedAt = now;
    this.suppressed = 0;
  }
}

export class StoreGrantEntry<C> implements GrantEntry {
  readonly counter: CounterSpec;
  readonly windowStart: number;
  readonly reserved: number;
  // Private, so a logged grant does not print the store's internals.
  readonly #cell: C;

  constructor(counter: CounterSpec, windowStart: number, reserved: number, cell: C) {
    this.counter = counter;
    this.windowStart = windowStart;
    this.reserved = reserved;
    this.#cell = cell;
  }

  /** The store's cell for this counter and window, so settlement needs no lookup. */
  get cell(): C {
    return this.#cell;
  }
}

/** A grant that remembers its store and whether it was settled, so a second settle/release is ignored. */
export class StoreGrant<C> implements Grant {
  readonly ok = true as const;
  readonly entries: readonly StoreGrantEntry<C>[];
  readonly #owner: object;
  #done = false;

  constructor(owner: object, entries: readonly StoreGrantEntry<C>[]) {
    this.#owner = owner;
    this.entries = entries;
  }

  /** The grant if `owner` issued it and it was not settled or released yet; marks it done. */
  static claim<C>(grant: Grant, owner: object): StoreGrant<C> | undefined {
    if (!(grant instanceof StoreGrant) || grant.#owner !== owner || grant.#done) return undefined;
    grant.#done = true;
    return grant as StoreGrant<C>;
  }
}

export function claimGrant<C>(grant: Grant, owner: object): StoreGrant<C> | undefined {
  return StoreGrant.claim<C>(grant, owner);
}
