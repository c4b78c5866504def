// Joins planned quotas (quota/plan.ts) with their stores (quota/): acquire across stores all-or-nothing, settle
// with actual usage, release on failure. Each hold is settled or released exactly once.
import type { AcquireItem, CounterView, Denial, Grant, QuotaStore } from '../quota/types.ts';
import type { PlannedQuota, Usage } from '../quota/plan.ts';
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
      const actual = costsOf(p.quotas, usage);
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

function costsOf(quotas: readonly PlannedQuota[], usage: Usage): number[] {
  const out = new Array<number>(quotas.length);
  for (let i = 0; i < quotas.length; i++) out[i] = quotas[i]!.cost(usage);
  return out;
}

export interface Rejection {
  readonly ok: false;
  /** The first spent quota: its rejected_code and rejected_msg answer the client. */
  readonly quota: PlannedQuota;
  readonly spent: readonly PlannedQuota[];
  readonly retryAfterMs: number;
}

export type HoldResult = QuotaHold | Rejection;

type Resolve = (source: QuotaSource) => QuotaStore;

function itemsOf(quotas: readonly PlannedQuota[], estimate: Usage): AcquireItem[] {
  const items: AcquireItem[] = new Array(quotas.length);
  for (let i = 0; i < quotas.length; i++) items[i] = { counter: quotas[i]!.counter, amount: quotas[i]!.cost(estimate) };
  return items;
}

function denial(parts: readonly HoldPart[], qs: readonly PlannedQuota[], d: Denial): Rejection {
  for (const p of parts) p.store.release(p.grant);
  const spent = d.denied.map((i) => qs[i]!);
  return { ok: false, quota: spent[0] ?? qs[0]!, spent, retryAfterMs: d.retryAfterMs };
}

/**
 * Reserve the estimate on every quota. Synchronous when every store answers from its local view (the
 * common case), otherwise a Promise. All or nothing: a denial releases what was already reserved.
 */
export function acquireAll(quotas: readonly PlannedQuota[], estimate: Usage, now: number, storeOf: Resolve): HoldResult | Promise<HoldResult> {
  // Fast path: every quota of a request usually lives in one store, so one acquire call decides.
  const first = storeOf(quotas[0]!.source);
  let single = true;
  for (let i = 1; i < quotas.length && single; i++) single = storeOf(quotas[i]!.source) === first;
  if (single) {
    const r = first.acquire(itemsOf(quotas, estimate), now);
    if (r instanceof Promise) return r.then((res) => (res.ok ? new QuotaHold([{ store: first, grant: res, quotas }], quotas) : denial([], quotas, res)));
    return r.ok ? new QuotaHold([{ store: first, grant: r, quotas }], quotas) : denial([], quotas, r);
  }
  return acquireGroups([...groupByStore(quotas, storeOf)], quotas, estimate, now);
}

async function acquireGroups(groups: [QuotaStore, PlannedQuota[]][], quotas: readonly PlannedQuota[], estimate: Usage, now: number): Promise<HoldResult> {
  const parts: HoldPart[] = [];
  try {
    for (const [store, qs] of groups) {
      const r = await store.acquire(itemsOf(qs, estimate), now);
      if (!r.ok) return denial(parts, qs, r);
      parts.push({ store, grant: r, quotas: qs });
    }
  } catch (err) {
    for (const p of parts) p.store.release(p.grant);
    throw err;
  }
  return new QuotaHold(parts, quotas);
}

function groupByStore(quotas: readonly PlannedQuota[], storeOf: Resolve): Map<QuotaStore, PlannedQuota[]> {
  const groups = new Map<QuotaStore, PlannedQuota[]>();
  for (const q of quotas) {
    const store = storeOf(q.source);
    const g = groups.get(store);
    if (g === undefined) groups.set(store, [q]); else g.push(q);
  }
  return groups;
}

/** Current view of each quota, for response headers. */
export function views(quotas: readonly PlannedQuota[], now: number, storeOf: Resolve): { q: PlannedQuota; view: CounterView }[] {
  const out: { q: PlannedQuota; view: CounterView }[] = [];
  for (const q of quotas) out.push({ q, view: storeOf(q.source).peek(q.counter, now) });
  return out;
}
