// In-process quota store (policy: local). Everything is synchronous. Each counter keeps its current and
// previous window (the previous one weighs into sliding counts and receives late settlements of requests
// that started in it). Counters whose windows have both passed are swept lazily.
import type { AcquireItem, AcquireResult, CounterSpec, CounterView, Denial, Grant, QuotaStore, StoreHealth } from './types.ts';
import { windowStartOf } from './types.ts';
import { StoreGrant, StoreGrantEntry, claimGrant, previousWeight, retryAfterMs, tokens } from './window.ts';

class LocalCell {
  readonly start: number;
  consumed = 0;
  reserved = 0;

  constructor(start: number) {
    this.start = start;
  }
}

class LocalCounter {
  readonly windowMs: number;
  cur: LocalCell;
  prev: LocalCell | undefined = undefined;

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

export class LocalQuotaStore implements QuotaStore {
  readonly name: string;
  private readonly counters = new Map<string, LocalCounter>();
  private nextSweep = 0;
  /** Scratch for acquire: the cells of the current call (no allocation on the admit path). */
  private readonly scratch: LocalCell[] = [];

  constructor(name = 'local') {
    this.name = name;
  }

  acquire(items: readonly AcquireItem[], now: number): AcquireResult {
    if (now >= this.nextSweep) this.sweep(now);
    const cells = this.scratch;
    let denied: number[] | undefined;
    let retry = 0;
    for (let i = 0; i < items.length; i++) {
      const spec = items[i]!.counter;
      const counter = this.counterFor(spec, now);
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
      const amount = tokens(item.amount);
      cell.reserved += amount;
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
      cell.reserved = Math.max(0, cell.reserved - e.reserved);
      cell.consumed += tokens(actual[i] ?? 0);
    }
  }

  release(grant: Grant): void {
    const g = claimGrant<LocalCell>(grant, this);
    if (g === undefined) return;
    for (const e of g.entries) e.cell.reserved = Math.max(0, e.cell.reserved - e.reserved);
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

  health(): StoreHealth {
    return 'ok';
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.counters.clear();
    return Promise.resolve();
  }

  /** Counters held (for tests of the sweep). */
  get size(): number {
    return this.counters.size;
  }

  private counterFor(spec: CounterSpec, now: number): LocalCounter {
    let c = this.counters.get(spec.id);
    // Same id, new window length: the old windows do not line up with the new ones, so start afresh.
    if (c === undefined || c.windowMs !== spec.windowMs) {
      c = new LocalCounter(spec.windowMs, windowStartOf(now, spec.windowMs));
      this.counters.set(spec.id, c);
    }
    return c;
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
  }
}
