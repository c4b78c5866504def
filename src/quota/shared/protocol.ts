// What a serving thread asks the main thread about quotas (structured-clone objects; the threads runtime
// wraps them in its own envelope and owns the MessagePorts). See docs/quota-design.md, "Serving threads".

/** One counter of a delegated acquire (a CounterSpec flattened, plus the amount to reserve). */
export interface LedgerItem {
  readonly id: string;
  readonly limit: number;
  readonly windowMs: number;
  readonly sliding: boolean;
  readonly amount: number;
}

export type LedgerRequest =
  | { kind: 'acquire'; store: string; items: LedgerItem[]; now: number }
  | { kind: 'flush'; store: string }
  /** A thread released reservations near a limit: fold the slots into the backends now, not at the next poll. */
  | { kind: 'poke'; store: string };

export type LedgerReply =
  | { kind: 'granted'; entries: { slot: number; windowStart: number; reserved: number }[] }
  | { kind: 'denied'; denied: number[]; retryAfterMs: number }
  | { kind: 'flushed' }
  | { kind: 'poked' }
  /** A SluiceError code (SLC_QUOTA_STORE_UNAVAILABLE, SLC_OVERLOADED, ...) and its message. */
  | { kind: 'error'; code: string; message: string };

/** The process ledger, as a serving thread receives it (structured-cloneable: the SharedArrayBuffer is shared, not copied). */
export interface LedgerDescriptor {
  readonly sab: SharedArrayBuffer;
  /** Slots in the table (counter windows). */
  readonly slots: number;
  /** Entries of the open-addressing index (a power of two, at least twice `slots`). */
  readonly indexSize: number;
  /** Entries of the dirty ring (a power of two). */
  readonly ringSize: number;
  /** Entries of the store directory. */
  readonly stores: number;
}
