// Many deadlines behind one timer. Each upstream request used to create and clear two or three setTimeouts (first
// byte, idle body, keep-alive park); at one request in flight Node deletes and recreates its timer list on every
// one of those, ~4-5% of a request's CPU. Here setting, moving or clearing a deadline only writes a number and
// links the entry into a list; the one timer is re-armed only when a deadline comes before the one it waits for,
// and its walk, once per expiry, finds what is due and the next deadline.
import { monotonicClock, type Clock } from './clock.ts';
import { LiveList, type LiveEntry } from './live-list.ts';

/** What a Deadlines holds: its deadline (clock ms) and what to do when it passes. */
export interface DeadlineEntry<T> extends LiveEntry<T> {
  deadline: number;
  onDeadline(): void;
}

/** An entry due within this much of now expires now: Node's timers are ms-grained and may fire a fraction early. */
const EARLY_MS = 1;

export class Deadlines<T extends DeadlineEntry<T>> {
  private readonly live = new LiveList<T>();
  private readonly clock: Clock;
  /** After a walk the timer is not armed sooner than this: a stream of staggered deadlines costs at most one walk per gap. */
  private readonly minGapMs: number;
  private cancel: (() => void) | undefined = undefined;
  /** When the armed timer fires (Infinity: none armed). */
  private at = Infinity;

  constructor(clock: Clock = monotonicClock, minGapMs = 10) {
    this.clock = clock;
    this.minGapMs = minGapMs;
  }

  get size(): number {
    return this.live.size;
  }

  has(x: T): boolean {
    return this.live.has(x);
  }

  /** `x` expires `ms` from now, replacing any deadline it had. */
  set(x: T, ms: number): void {
    const d = this.clock.now() + ms;
    x.deadline = d;
    this.live.add(x);
    if (d < this.at) this.arm(d);
  }

  clear(x: T): void {
    this.live.delete(x);
  }

  /** Clears every deadline and the timer. */
  stop(): void {
    this.live.clear();
    this.cancel?.();
    this.cancel = undefined;
    this.at = Infinity;
  }

  private arm(at: number): void {
    this.cancel?.();
    this.at = at;
    this.cancel = this.clock.after(Math.max(0, Math.ceil(at - this.clock.now())), this.fire);
  }

  private readonly fire = (): void => {
    this.cancel = undefined;
    this.at = Infinity;
    const now = this.clock.now();
    const all = this.live.entries();
    // Callbacks may clear, move or add deadlines: an entry added meanwhile armed the timer itself (at was Infinity).
    for (const x of all) {
      if (!this.live.has(x) || x.deadline > now + EARLY_MS) continue;
      this.live.delete(x);
      x.onDeadline();
    }
    let next = Infinity;
    for (const x of all) if (this.live.has(x) && x.deadline < next) next = x.deadline;
    const t = Math.max(next, now + this.minGapMs);
    if (t < this.at) this.arm(t);
  };
}
