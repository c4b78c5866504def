// What a backend store (LocalQuotaStore, RedisQuotaStore) offers the main thread's LedgerHost. Nothing here
// runs unless a host is attached, so a store without one behaves exactly as before.
import type { CounterSpec, Grant } from '../types.ts';

/** The part of a backend's window cell the host manages. */
export interface LedgerCell {
  readonly start: number;
  /** The ledger slot this cell is linked to, or −1. */
  slot: number;
  /** How much of the slot's tC / tR the backend has folded into its own totals so far. */
  pulledC: number;
  pulledR: number;
}

/** Index of each published field in the `out` array of `ledgerView`. */
export const V_BASE_C = 0;
export const V_BASE_R = 1;
export const V_PREV_C = 2;
export const V_PREV_R = 3;
export const V_LIMIT_MARGIN = 4;
export const V_CAP_MARGIN = 5;
export const V_VALID_UNTIL = 6;
export const VIEW_FIELDS = 7;

export interface LedgerBackend {
  /**
   * Take a grant over for the ledger: the backend marks it done (a later settle/release of it is ignored)
   * and drops its own holds on the cells; the host moves the reservations into slots. False when the
   * grant is not this store's or was settled already.
   */
  ledgerClaim(grant: Grant): boolean;
  /** Fold serving threads' consumed/reserved deltas of a linked cell into the backend's own usage. */
  ledgerApply(cell: LedgerCell, dC: number, dR: number): void;
  /**
   * The fields a serving thread decides on, for a linked cell of counter `id`: usage held outside the
   * ledger (totals minus what was pulled), the previous window's, the margins and the validity
   * (wall-clock ms, compared with acquire's `now`; 0 = always ask the main thread).
   */
  ledgerView(id: string, cell: LedgerCell, out: Float64Array): void;
  /** Queue a linked cell for a refresh from the shared store (no-op for local stores). */
  ledgerTouch(cell: LedgerCell): void;
  /** The ledger had no slot for a counter this store granted: the request is refused like a key past the store's
   *  own cap (503 SLC_OVERLOADED), and counted as such (sluice_quota_key_evictions_total{outcome="overflow"}). */
  ledgerFull(): void;
  /**
   * The cell `acquire(…, now)` decided `counter` on, when the backend holds it and it is the window of
   * `now` (after a denial, so the host can bind a slot to it); undefined otherwise.
   */
  ledgerCellOf(counter: CounterSpec, now: number): LedgerCell | undefined;
  /**
   * `changed`: called by the backend whenever the view of a linked cell changed on its own (a
   * reconciliation). `release`: called by the backend's key cap to take a cell it would evict back from the
   * ledger: the host folds the slot's usage in, frees the slot and unlinks the cell; false (nothing
   * changed) while a serving thread still holds a grant on it.
   */
  ledgerBind(changed: ((cell: LedgerCell) => void) | undefined, release?: (cell: LedgerCell) => boolean): void;
}

/**
 * A backend's key cap taking a counter's cells back from the ledger (`release` from ledgerBind): true when every
 * linked one was released (a cell a serving thread still holds a grant on stops it).
 */
export function releaseLinked(release: (cell: LedgerCell) => boolean, cells: readonly (LedgerCell | undefined)[]): boolean {
  for (const cell of cells) if (cell !== undefined && cell.slot >= 0 && !release(cell)) return false;
  return true;
}

export function isLedgerBackend(s: object): s is LedgerBackend {
  return typeof (s as Partial<LedgerBackend>).ledgerClaim === 'function';
}
