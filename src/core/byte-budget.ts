// A process-wide budget of bytes held: request bodies in the front end (limits.max_inflight_body_bytes) and
// buffered upstream answers in the upstream client (limits.max_inflight_answer_bytes). One serving loop
// (workers: 1) keeps a plain counter; serving threads share one counter in a SharedArrayBuffer, so the limit
// holds for the whole process, not per thread (native-bench/body-budget.bench.ts: the cost of each).

/** What a budget reports its bytes to (a prom-client gauge). */
interface Gauge {
  set(v: number): void;
}

export interface ByteBudget {
  /** Takes `n` bytes, or refuses (false) when that would pass the limit. */
  tryReserve(n: number): boolean;
  release(n: number): void;
}

/** One serving loop's budget. */
export class LocalByteBudget implements ByteBudget {
  used = 0;
  private readonly max: number;
  private readonly gauge: Gauge | undefined;

  constructor(max: number, gauge: Gauge | undefined) {
    this.max = max;
    this.gauge = gauge;
  }

  tryReserve(n: number): boolean {
    if (n > 0 && this.used + n > this.max) return false;
    this.used += n;
    this.gauge?.set(this.used);
    return true;
  }

  release(n: number): void {
    this.used -= n;
    this.gauge?.set(this.used);
  }
}

/** Most bytes an Int32 counter holds; a larger limit counts in a BigInt64 cell (slower, still exact). */
const INT32_MAX = 0x7fffffff;

/** The shared cell of a process-wide budget: made once on the main thread and sent to every serving thread. */
export function byteBudgetCell(): SharedArrayBuffer {
  return new SharedArrayBuffer(8);
}

/**
 * A budget every serving thread of the process draws from: a compare-and-swap loop on one shared counter, so
 * bytes held by all threads together never pass the limit (no reservation is refused that would have fit).
 * The gauge is this thread's own share: /metrics sums the threads' gauges into the process's total.
 */
export class SharedByteBudget implements ByteBudget {
  private own = 0;
  private readonly max: number;
  private readonly small: Int32Array | undefined;
  private readonly big: BigInt64Array | undefined;
  private readonly gauge: Gauge | undefined;

  constructor(cell: SharedArrayBuffer, max: number, gauge: Gauge | undefined) {
    this.max = max;
    this.gauge = gauge;
    if (max <= INT32_MAX) this.small = new Int32Array(cell, 0, 1);
    else this.big = new BigInt64Array(cell, 0, 1);
  }

  tryReserve(n: number): boolean {
    const small = this.small;
    if (small !== undefined) {
      for (;;) {
        const used = Atomics.load(small, 0);
        // A release (n < 0) always goes through; used + n stays within Int32 since used <= max <= INT32_MAX.
        if (n > 0 && used + n > this.max) return false;
        if (Atomics.compareExchange(small, 0, used, used + n) === used) break;
      }
    } else if (!this.reserveBig(n)) {
      return false;
    }
    this.own += n;
    this.gauge?.set(this.own);
    return true;
  }

  private reserveBig(n: number): boolean {
    const big = this.big!;
    const bn = BigInt(n);
    const max = BigInt(this.max);
    for (;;) {
      const used = Atomics.load(big, 0);
      if (n > 0 && used + bn > max) return false;
      if (Atomics.compareExchange(big, 0, used, used + bn) === used) return true;
    }
  }

  release(n: number): void {
    if (this.small !== undefined) Atomics.sub(this.small, 0, n);
    else Atomics.sub(this.big!, 0, BigInt(n));
    this.own -= n;
    this.gauge?.set(this.own);
  }

  /** Bytes held by every thread (tests, benches). */
  total(): number {
    return this.small !== undefined ? Atomics.load(this.small, 0) : Number(Atomics.load(this.big!, 0));
  }
}
