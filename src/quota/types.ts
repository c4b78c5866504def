// The quota-store contract. The request pipeline talks only to this interface; the local store and the
// Redis stores (standalone, Cluster, Sentinel) implement it and pass one conformance suite.
//
// Accounting model, per counter and window:
//   consumed  tokens of finished requests (only grows within a window)
//   reserved  estimates held by admitted requests still running
// A request is admitted while consumed + reserved < limit on every counter it touches. At the end its
// reservation is replaced by its actual usage (settle), or dropped (release) when the attempt failed.

export interface CounterSpec {
  /** Stable identity without the window, e.g. 'route-1/arl/i/openai-instance/'. No secrets in it. */
  readonly id: string;
  readonly limit: number;
  readonly windowMs: number;
  readonly sliding: boolean;
}

export interface CounterView {
  readonly limit: number;
  /** Tokens settled in the window; for sliding windows the previous window is weighted in. */
  readonly consumed: number;
  /** Tokens reserved by admitted, unfinished requests. */
  readonly reserved: number;
  /** Milliseconds until the current window ends. */
  readonly resetMs: number;
}

export interface GrantEntry {
  readonly counter: CounterSpec;
  /** Start of the window the reservation was made in; settlement goes to the same window. */
  readonly windowStart: number;
  readonly reserved: number;
}

export interface Grant {
  readonly ok: true;
  readonly entries: readonly GrantEntry[];
}

export interface Denial {
  readonly ok: false;
  /** Indexes (into the acquire call's items) of the counters that were spent. */
  readonly denied: readonly number[];
  /** Milliseconds until the earliest denied counter has room again (the window end). */
  readonly retryAfterMs: number;
}

export type AcquireResult = Grant | Denial;

export interface AcquireItem {
  readonly counter: CounterSpec;
  /** Estimated tokens to reserve on this counter (its limit strategy applied to the estimate). */
  readonly amount: number;
}

export type StoreHealth = 'ok' | 'degraded' | 'unavailable';

export interface QuotaStore {
  readonly name: string;
  /**
   * Check every item and, when all have room, reserve on all of them (all or nothing).
   * Synchronous when the store trusts its local view; a Promise when it must consult the shared
   * store first (near a limit). Rejects with SluiceError SLC_QUOTA_STORE_UNAVAILABLE when the shared
   * store is down and degradation is not allowed.
   */
  acquire(items: readonly AcquireItem[], now: number): AcquireResult | Promise<AcquireResult>;
  /** Replace each entry's reservation by its actual tokens (same order as grant.entries). Call once per grant. */
  settle(grant: Grant, actual: readonly number[]): void;
  /** Drop the reservation without charging anything (failed attempt). Call once per grant, instead of settle. */
  release(grant: Grant): void;
  /** The local view of a counter, for response headers. Never waits. */
  peek(counter: CounterSpec, now: number): CounterView;
  /** ok: shared state reachable; degraded: serving on local counters; unavailable: rejecting. */
  health(): StoreHealth;
  /** Write every pending delta (resolves when the shared store has acknowledged them, or at once when local). */
  flush(): Promise<void>;
  /** A reload's limits.max_quota_keys: the most counters tracked from now on (a lower cap is reached by evicting
   *  as new keys come, never by dropping usage). */
  setMaxKeys(maxKeys: number): void;
  /** Flush (a shared store retrying for at most `flushWithinMs` while it is unreachable; a later call may shorten
   *  that) and release connections and timers. */
  close(flushWithinMs?: number): Promise<void>;
}

/** Fixed windows are aligned to the Unix epoch, so every replica agrees on boundaries without talking. */
export function windowStartOf(now: number, windowMs: number): number {
  return now - (now % windowMs);
}
