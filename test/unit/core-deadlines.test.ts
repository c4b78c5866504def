// core/deadlines.ts on a manual clock: entries expire once, at their deadline (not before, not late), moving or
// clearing a deadline costs no timer, one timer serves them all, and callbacks may add, move or clear others.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from '../../src/core/clock.ts';
import { Deadlines, type DeadlineEntry } from '../../src/core/deadlines.ts';

class Item implements DeadlineEntry<Item> {
  deadline = 0;
  liveOwner: object | undefined = undefined;
  livePrev: Item | undefined = undefined;
  liveNext: Item | undefined = undefined;
  fired: number[] = [];
  then: (() => void) | undefined = undefined;
  constructor(readonly clock: ManualClock) {}
  onDeadline(): void {
    this.fired.push(this.clock.now());
    this.then?.();
  }
}

function setup(minGapMs = 10): { clock: ManualClock; d: Deadlines<Item>; item: () => Item; t0: number } {
  const clock = new ManualClock();
  return { clock, d: new Deadlines<Item>(clock, minGapMs), item: () => new Item(clock), t0: clock.now() };
}

test('an entry expires once, at its deadline, and leaves the set', () => {
  const { clock, d, item, t0 } = setup();
  const a = item();
  d.set(a, 100);
  clock.advance(98);
  assert.deepEqual(a.fired, []);
  assert.equal(d.has(a), true);
  clock.advance(2);
  assert.deepEqual(a.fired, [t0 + 100]);
  assert.equal(d.has(a), false);
  clock.advance(1000);
  assert.equal(a.fired.length, 1);
  assert.equal(clock.pending, 0);
});

test('moving a deadline later or clearing it arms no timer; an earlier one re-arms', () => {
  const { clock, d, item, t0 } = setup();
  const a = item();
  d.set(a, 100);
  assert.equal(clock.pending, 1);
  for (let i = 0; i < 50; i++) d.set(a, 200 + i);
  d.clear(a);
  d.set(a, 300);
  assert.equal(clock.pending, 1, 'later deadlines reuse the armed timer');
  clock.advance(100);
  assert.deepEqual(a.fired, [], 'the early timer found nothing due');
  clock.advance(199);
  assert.deepEqual(a.fired, []);
  clock.advance(1);
  assert.deepEqual(a.fired, [t0 + 300]);
  const b = item();
  d.set(b, 1000);
  d.set(b, 50);
  clock.advance(50);
  assert.deepEqual(b.fired, [t0 + 350]);
});

test('a cleared entry never fires', () => {
  const { clock, d, item } = setup();
  const a = item();
  const b = item();
  d.set(a, 10);
  d.set(b, 10);
  d.clear(a);
  clock.advance(100);
  assert.deepEqual(a.fired, []);
  assert.equal(b.fired.length, 1);
  assert.equal(d.size, 0);
});

test('many entries: each fires at its own deadline; after a walk the next one waits at least minGapMs', () => {
  const { clock, d, item, t0 } = setup(10);
  const xs = [0, 30, 5, 100, 33, 7].map((ms) => { const x = item(); d.set(x, 1000 + ms); return x; });
  clock.advance(1000);
  assert.deepEqual(xs.map((x) => x.fired), [[t0 + 1000], [], [], [], [], []]);
  clock.advance(10);
  assert.deepEqual(xs.map((x) => x.fired.length), [1, 0, 1, 0, 0, 1], 'due at +5 and +7, walked at +10');
  assert.deepEqual(xs[2]!.fired, [t0 + 1010]);
  clock.advance(20);
  assert.deepEqual(xs[1]!.fired, [t0 + 1030]);
  clock.advance(10);
  assert.deepEqual(xs[4]!.fired, [t0 + 1040], 'within the gap after the walk at +30');
  clock.advance(60);
  assert.deepEqual(xs[3]!.fired, [t0 + 1100]);
  assert.equal(d.size, 0);
});

test('a deadline set after a walk and shorter than the gap is not delayed by it', () => {
  const { clock, d, item, t0 } = setup(10);
  const a = item();
  const b = item();
  d.set(a, 100);
  d.set(b, 101);
  clock.advance(100);
  assert.equal(a.fired.length, 1);
  assert.equal(b.fired.length, 1, 'within a ms of due: expired with the first');
  const c = item();
  d.set(c, 3);
  clock.advance(3);
  assert.deepEqual(c.fired, [t0 + 103]);
});

test('callbacks may clear, move and add entries while the walk runs', () => {
  const { clock, d, item, t0 } = setup(10);
  const [b, c, a, fresh] = [item(), item(), item(), item()];
  d.set(b, 50);
  d.set(c, 50);
  d.set(a, 50);
  // The walk goes newest first: a's callback runs before b and c are reached, though all three are due.
  a.then = () => {
    a.then = undefined;
    d.clear(b);
    d.set(c, 500);
    d.set(fresh, 2);
    d.set(a, 40);
  };
  clock.advance(50);
  assert.deepEqual([a.fired, b.fired, c.fired], [[t0 + 50], [], []]);
  clock.advance(2);
  assert.deepEqual(fresh.fired, [t0 + 52], 'added by a callback, armed its own earlier timer');
  clock.advance(38);
  assert.deepEqual(a.fired, [t0 + 50, t0 + 90]);
  clock.advance(500);
  assert.deepEqual(c.fired, [t0 + 550]);
  assert.deepEqual(b.fired, []);
  assert.equal(d.size, 0);
});

test('stop clears every deadline and the timer', () => {
  const { clock, d, item } = setup();
  const a = item();
  d.set(a, 10);
  d.stop();
  assert.equal(clock.pending, 0);
  clock.advance(100);
  assert.deepEqual(a.fired, []);
  assert.equal(d.has(a), false);
});
