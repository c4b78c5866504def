// Time source for policy decisions and timers. Code that decides by elapsed time (view age, rates, leases)
// or waits (flush intervals, breaker probes) goes through a Clock instead of the process clock, so tests can
// drive it by hand and decisions never depend on how fast the machine happens to be.
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** Monotonic milliseconds (arbitrary origin). */
  now(): number;
  /** Calls `fn` once after `ms` (never keeps the process alive); returns a cancel function. */
  after(ms: number, fn: () => void): () => void;
  /** Calls `fn` every `ms` (never keeps the process alive); returns a cancel function. */
  every(ms: number, fn: () => void): () => void;
}

export const monotonicClock: Clock = {
  now: () => performance.now(),
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    t.unref();
    return () => clearTimeout(t);
  },
  every(ms, fn) {
    const t = setInterval(fn, ms);
    t.unref();
    return () => clearInterval(t);
  },
};

interface ManualTimer {
  at: number;
  readonly period: number;
  readonly fn: () => void;
  live: boolean;
}

/** A clock that moves only when told to; `advance` runs the timers that fall due, in time order (tests). */
export class ManualClock implements Clock {
  private t: number;
  private timers: ManualTimer[] = [];

  constructor(start = 1_000_000) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): () => void {
    return this.add(ms, 0, fn);
  }

  every(ms: number, fn: () => void): () => void {
    return this.add(ms, Math.max(1, ms), fn);
  }

  /** Timers not cancelled yet. */
  get pending(): number {
    return this.timers.filter((x) => x.live).length;
  }

  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: ManualTimer | undefined;
      for (const x of this.timers) if (x.live && x.at <= end && (next === undefined || x.at < next.at)) next = x;
      if (next === undefined) break;
      this.t = Math.max(this.t, next.at);
      if (next.period > 0) next.at += next.period;
      else next.live = false;
      next.fn();
    }
    this.timers = this.timers.filter((x) => x.live);
    this.t = end;
  }

  private add(ms: number, period: number, fn: () => void): () => void {
    const timer: ManualTimer = { at: this.t + Math.max(0, ms), period, fn, live: true };
    this.timers.push(timer);
    return () => {
      timer.live = false;
    };
  }
}
