// Hot-path metric slots (issue 11 item 2). Per-request metrics are plain numbers in objects resolved once per
// (route, instance[, status | consumer | rule]) and copied into the prom-client metrics at scrape time by their
// collect() hooks, so a request does no label hashing or validation. Series are created in first-touch order,
// which is the order the per-call API produced, so /metrics text is unchanged. Keys come from the same
// configuration-bounded values as the labels did (route ids, instance names, consumers, rules), so cardinality
// is unchanged; statuses are the few codes the gateway answers with.
import type { Counter, Gauge, Histogram } from 'prom-client';

type Labels = Record<string, string>;

/** A gauge without labels that every request moves (requests and body bytes in flight): a plain number, copied
 *  into its prom-client Gauge by the gauge's collect() at scrape time (prom-client's inc/dec/set allocate per call). */
export class PlainGauge {
  value = 0;
  inc(n = 1): void { this.value += n; }
  dec(n = 1): void { this.value -= n; }
  set(v: number): void { this.value = v; }
  export(g: Gauge): void { g.set(this.value); }
}

/** One counter series. `exported` is what collect() has already added to the prom-client counter. */
export class CounterSlot {
  value = 0;
  exported = 0;
  constructor(readonly labels: Labels) {}
  /** Counters never go down; a non-finite or negative amount is ignored rather than thrown mid-request. */
  add(n: number): void {
    if (n >= 0 && n !== Infinity) this.value += n;
  }
}

/** One histogram series: bucket counts (not cumulative), sum and count, as prom-client keeps them. */
export class HistogramSlot {
  readonly counts: number[];
  sum = 0;
  count = 0;
  constructor(readonly labels: Labels, private readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length).fill(0);
  }
  observe(v: number): void {
    if (!Number.isFinite(v)) return;
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (v <= b[i]!) { this.counts[i]!++; break; }
    }
    this.sum += v;
    this.count++;
  }
}

/** Slots of one counter metric, in creation order. */
export class CounterSlots {
  readonly all: CounterSlot[] = [];
  make(labels: Labels): CounterSlot {
    const s = new CounterSlot(labels);
    this.all.push(s);
    return s;
  }
  /** collect() hook body: adds what each slot gained since the last scrape (0 creates the series, as inc(…, 0) did). */
  export(c: Counter<string>): void {
    for (const s of this.all) {
      const d = s.value - s.exported;
      s.exported = s.value;
      c.inc(s.labels, d);
    }
  }
}

/** Slots of one histogram metric, in creation order. */
export class HistogramSlots {
  readonly all: HistogramSlot[] = [];
  constructor(readonly bounds: readonly number[]) {}
  make(labels: Labels): HistogramSlot {
    const s = new HistogramSlot(labels, this.bounds);
    this.all.push(s);
    return s;
  }
  /**
   * collect() hook body. prom-client has no public call to set a series' buckets, so the entries are written in
   * the shape its Histogram keeps in `hashMap` (pinned prom-client 15; test/unit/metric-slots.test.ts compares the
   * text with the per-call API). Keys are private so they never collide with series made by observe().
   */
  export(h: Histogram<string>): void {
    const map = (h as unknown as { hashMap: Record<string, unknown> }).hashMap;
    for (let i = 0; i < this.all.length; i++) {
      const s = this.all[i]!;
      const bucketValues: Record<number, number> = {};
      for (let j = 0; j < this.bounds.length; j++) bucketValues[this.bounds[j]!] = s.counts[j]!;
      map[`\u0000slot${i}`] = { labels: s.labels, bucketValues, sum: s.sum, count: s.count };
    }
  }
}

/** Slots of one answer status on one (route, instance). */
export interface StatusSlots { readonly requests: CounterSlot; readonly duration: HistogramSlot }

/** Token counters of one consumer on one (route, instance); kinds made on first use. */
export class TokenSlots {
  private readonly kinds = new Map<string, CounterSlot>();
  constructor(private readonly hot: HotSlots, private readonly base: Labels) {}
  add(kind: string, n: number): void {
    let s = this.kinds.get(kind);
    if (s === undefined) {
      s = this.hot.tokens.make({ ...this.base, kind });
      this.kinds.set(kind, s);
    }
    s.add(n);
  }
}

/** Every hot slot of one (route, instance). */
export class RouteSlots {
  private readonly statuses = new Map<number, StatusSlots>();
  private readonly attemptSlots = new Map<string, CounterSlot>();
  private readonly tokenSlots = new Map<string, TokenSlots>();
  private readonly chargedSlots = new Map<string, CounterSlot>();
  private firstByteSlot: HistogramSlot | undefined;
  private estimateSlot: HistogramSlot | undefined;
  constructor(private readonly hot: HotSlots, readonly route: string, readonly instance: string) {}

  /** One answered request: requests_total and request_duration_seconds. */
  answered(status: number, seconds: number): void {
    let s = this.statuses.get(status);
    if (s === undefined) {
      const labels = { route: this.route, instance: this.instance, status: String(status) };
      s = { requests: this.hot.requests.make(labels), duration: this.hot.requestDuration.make(labels) };
      this.statuses.set(status, s);
    }
    s.requests.value++;
    s.duration.observe(seconds);
  }

  /** Reserved minus actual tokens of one settled request: a series per route, shared by its instances. */
  estimateError(tokens: number): void {
    (this.estimateSlot ??= this.hot.estimateOf(this.route)).observe(tokens);
  }

  firstByte(seconds: number): void {
    (this.firstByteSlot ??= this.hot.upstreamFirstByte.make({ route: this.route, instance: this.instance })).observe(seconds);
  }

  attempt(outcome: string): void {
    let s = this.attemptSlots.get(outcome);
    if (s === undefined) {
      s = this.hot.upstreamAttempts.make({ route: this.route, instance: this.instance, outcome });
      this.attemptSlots.set(outcome, s);
    }
    s.value++;
  }

  tokens(consumer: string): TokenSlots {
    let s = this.tokenSlots.get(consumer);
    if (s === undefined) {
      s = new TokenSlots(this.hot, { route: this.route, instance: this.instance, consumer });
      this.tokenSlots.set(consumer, s);
    }
    return s;
  }

  charged(rule: string, consumer: string, n: number): void {
    const key = `${rule}\u0000${consumer}`;
    let s = this.chargedSlots.get(key);
    if (s === undefined) {
      s = this.hot.tokensCharged.make({ route: this.route, instance: this.instance, rule, consumer });
      this.chargedSlots.set(key, s);
    }
    s.add(n);
  }
}

/** All hot slots of one metrics registry. */
export class HotSlots {
  readonly requests = new CounterSlots();
  readonly requestDuration: HistogramSlots;
  readonly upstreamFirstByte: HistogramSlots;
  readonly upstreamAttempts = new CounterSlots();
  readonly tokens = new CounterSlots();
  readonly tokensCharged = new CounterSlots();
  readonly estimateError: HistogramSlots;
  private readonly routes = new Map<string, Map<string, RouteSlots>>();
  private readonly estimates = new Map<string, HistogramSlot>();

  constructor(latencyBuckets: readonly number[], estimateBuckets: readonly number[]) {
    const sorted = [...latencyBuckets].sort((a, b) => a - b);
    this.requestDuration = new HistogramSlots(sorted);
    this.upstreamFirstByte = new HistogramSlots(sorted);
    this.estimateError = new HistogramSlots([...estimateBuckets].sort((a, b) => a - b));
  }

  /** The estimate-error series of a route (labelled by route alone). */
  estimateOf(route: string): HistogramSlot {
    let s = this.estimates.get(route);
    if (s === undefined) { s = this.estimateError.make({ route }); this.estimates.set(route, s); }
    return s;
  }

  /** The slots of (route, instance); '' is the instance of answers given before any instance was chosen. */
  route(route: string, instance: string): RouteSlots {
    let byInst = this.routes.get(route);
    if (byInst === undefined) { byInst = new Map(); this.routes.set(route, byInst); }
    let s = byInst.get(instance);
    if (s === undefined) { s = new RouteSlots(this, route, instance); byInst.set(instance, s); }
    return s;
  }
}
