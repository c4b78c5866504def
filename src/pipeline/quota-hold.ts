// Joins planned quotas (rules/) with their stores (quota/): acquire across stores all-or-nothing, settle
// with actual usage, release on failure. Each hold is settled or released exactly once.
import type { QuotaStore, Grant, CounterView } from '../quota/types.ts';
import type { PlannedQuota, Usage } from '../rules/quota-plan.ts';
import type { QuotaSource } from './snapshot.ts';

interface HoldPart {
  readonly store: QuotaStore;
  readonly grant: Grant;
  readonly quotas: readonly PlannedQuota[];
}

export class QuotaHold {
  readonly ok = true;
  private parts: HoldPart[] | undefined;
  readonly quotas: readonly PlannedQuota[];

  constructor(parts: HoldPart[], quotas: readonly PlannedQuota[]) {
    this.parts = parts;
    this.quotas = quotas;
  }

  /** Charge actual usage. Returns the tokens charged per quota (same order as `quotas`). */
  settle(usage: Usage): number[] {
    const parts = this.parts;
    this.parts = undefined;
    const charged: number[] = [];
    if (parts === undefined) return charged;
    for (const p of parts) {
      const actual = p.quotas.map((q) => q.cost(usage));
      p.store.settle(p.grant, actual);
      for (const a of actual) charged.push(a);
    }
    return charged;
  }

  release(): void {
    const parts = this.parts;
    this.parts = undefined;
    if (parts === undefined) return;
    for (const p of parts) p.store.release(p.grant);
  }

  get open(): boolean {
    return this.parts !== undefined;
  }
}

export const EMPTY_HOLD_QUOTAS: readonly PlannedQuota[] = Object.freeze([]);

export interface Rejection {
  readonly ok: false;
  /** The first spent quota: its rejected_code and rejected_msg answer the client. */
  readonly quota: PlannedQuota;
  readonly spent: readonly PlannedQuota[];
  readonly retryAfterMs: number;
}

export type HoldResult = QuotaHold | Rejection;

type Resolve = (source: QuotaSource) => QuotaStore;

function groupByStore(quotas: readonly PlannedQuota[], storeOf: Resolve): Map<QuotaStore, PlannedQuota[]> {
  const groups = new Map<QuotaStore, PlannedQuota[]>();
  for (const q of quotas) {
    const store = storeOf(q.source);
    const g = groups.get(store);
    if (g === undefined) groups.set(store, [q]); else g.push(q);
  }
  return groups;
}

/**
 * Reserve the estimate on every quota. Synchronous when every store answers from its local view (the
 * common case), otherwise a Promise. All or nothing: a denial releases what was already reserved.
 */
export function acquireAll(quotas: readonly PlannedQuota[], estimate: Usage, now: number, storeOf: Resolve): HoldResult | Promise<HoldResult> {
  const groups = [...groupByStore(quotas, storeOf)];
  const parts: HoldPart[] = [];
  const step = (i: number): HoldResult | Promise<HoldResult> => {
    for (; i < groups.length; i++) {
      const [store, qs] = groups[i]!;
      const items = qs.map((q) => ({ counter: q.counter, amount: q.cost(estimate) }));
      const r = store.acquire(items, now);
      if (r instanceof Promise) {
        const next = i + 1;
        return r.then(
          (res) => (res.ok ? (parts.push({ store, grant: res, quotas: qs }), step(next)) : deny(qs, res.denied, res.retryAfterMs)),
          (err: unknown) => { for (const p of parts) p.store.release(p.grant); throw err; },
        );
      }
      if (!r.ok) return deny(qs, r.denied, r.retryAfterMs);
      parts.push({ store, grant: r, quotas: qs });
    }
    return new QuotaHold(parts, quotas);
  };
  const deny = (qs: readonly PlannedQuota[], denied: readonly number[], retryAfterMs: number): Rejection => {
    for (const p of parts) p.store.release(p.grant);
    const spent = denied.map((i) => qs[i]!);
    return { ok: false, quota: spent[0] ?? qs[0]!, spent, retryAfterMs };
  };
  return step(0);
}

/** Current view of each quota, for response headers. */
export function views(quotas: readonly PlannedQuota[], now: number, storeOf: Resolve): { q: PlannedQuota; view: CounterView }[] {
  const out: { q: PlannedQuota; view: CounterView }[] = [];
  for (const q of quotas) out.push({ q, view: storeOf(q.source).peek(q.counter, now) });
  return out;
}
