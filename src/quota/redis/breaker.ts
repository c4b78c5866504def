// Circuit breaker over one Redis client. Closed: commands flow. Open: no flushes and no synchronous
// admissions are attempted; every `probeIntervalMs` it turns half-open and runs the probe (PING); the probe's
// success closes it, its failure opens it again. It opens after `failureThreshold` consecutive failed round
// trips, or at once on a timeout (a hung Redis must not be asked again on the request path).

import { monotonicClock, type Clock } from '../../core/clock.ts';

export type BreakerState = 'closed' | 'half-open' | 'open';

export interface BreakerOptions {
  readonly failureThreshold: number;
  readonly probeIntervalMs: number;
  /** Resolves when Redis answers; rejects otherwise. Bounded by the client's command timeout. */
  readonly probe: () => Promise<void>;
  readonly onChange: (state: BreakerState) => void;
  /** Schedules the probes. Default: the process clock. */
  readonly clock?: Clock;
}

export class CircuitBreaker {
  private current: BreakerState = 'closed';
  private failures = 0;
  private cancelTimer: (() => void) | undefined;
  private stopped = false;
  private readonly opts: BreakerOptions;

  constructor(opts: BreakerOptions) {
    this.opts = opts;
  }

  get state(): BreakerState {
    return this.current;
  }

  get closed(): boolean {
    return this.current === 'closed';
  }

  success(): void {
    this.failures = 0;
  }

  failure(timeout: boolean): void {
    if (this.current !== 'closed') return;
    this.failures++;
    if (timeout || this.failures >= this.opts.failureThreshold) this.open();
  }

  /** Trip now (e.g. the connection reported it is down). */
  open(): void {
    if (this.stopped || this.current === 'open') return;
    this.current = 'open';
    this.failures = 0;
    this.opts.onChange('open');
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  private schedule(): void {
    if (this.cancelTimer !== undefined || this.stopped) return;
    this.cancelTimer = (this.opts.clock ?? monotonicClock).after(this.opts.probeIntervalMs, () => {
      this.cancelTimer = undefined;
      void this.probe();
    });
  }

  private async probe(): Promise<void> {
    if (this.stopped || this.current !== 'open') return;
    this.current = 'half-open';
    this.opts.onChange('half-open');
    try {
      await this.opts.probe();
    } catch {
      if (this.stopped) return;
      this.current = 'open';
      this.opts.onChange('open');
      this.schedule();
      return;
    }
    if (this.stopped) return;
    this.current = 'closed';
    this.failures = 0;
    this.opts.onChange('closed');
  }
}
