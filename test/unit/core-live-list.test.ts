// core/live-list.ts: O(1) add and remove anywhere in the list, entries newest first, one list per entry, and a
// removed entry keeps no link to the list or its neighbours (what keeps dead requests from holding young ones).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LiveList, type LiveEntry } from '../../src/core/live-list.ts';

class Item implements LiveEntry<Item> {
  liveOwner: object | undefined = undefined;
  livePrev: Item | undefined = undefined;
  liveNext: Item | undefined = undefined;
  constructor(readonly id: number) {}
}

const ids = (l: LiveList<Item>): number[] => l.entries().map((x) => x.id);

test('adds newest first and removes the head, the middle and the tail', () => {
  const l = new LiveList<Item>();
  const items = [0, 1, 2, 3, 4].map((i) => new Item(i));
  for (const x of items) l.add(x);
  assert.equal(l.size, 5);
  assert.deepEqual(ids(l), [4, 3, 2, 1, 0]);
  assert.equal(l.delete(items[4]!), true);
  assert.deepEqual(ids(l), [3, 2, 1, 0]);
  assert.equal(l.delete(items[2]!), true);
  assert.deepEqual(ids(l), [3, 1, 0]);
  assert.equal(l.delete(items[0]!), true);
  assert.deepEqual(ids(l), [3, 1]);
  assert.equal(l.size, 2);
  for (const x of items) assert.equal(l.has(x), x.id === 1 || x.id === 3);
});

test('adding twice and removing twice change nothing; an entry of another list is refused', () => {
  const a = new LiveList<Item>();
  const b = new LiveList<Item>();
  const x = new Item(1);
  a.add(x);
  a.add(x);
  assert.equal(a.size, 1);
  assert.throws(() => b.add(x), /another list/);
  assert.equal(b.delete(x), false);
  assert.equal(a.size, 1);
  assert.equal(a.delete(x), true);
  assert.equal(a.delete(x), false);
  assert.equal(a.size, 0);
  b.add(x);
  assert.deepEqual(ids(b), [1]);
});

test('a removed entry holds no link to the list or its neighbours', () => {
  const l = new LiveList<Item>();
  const [a, b, c] = [new Item(0), new Item(1), new Item(2)];
  l.add(a); l.add(b); l.add(c);
  l.delete(b);
  assert.equal(b.liveOwner, undefined);
  assert.equal(b.livePrev, undefined);
  assert.equal(b.liveNext, undefined);
  assert.equal(c.liveNext, a);
  assert.equal(a.livePrev, c);
});

test('entries() is a copy: removing and adding while walking it visits each entry of the copy once', () => {
  const l = new LiveList<Item>();
  const items = Array.from({ length: 100 }, (_, i) => new Item(i));
  for (const x of items) l.add(x);
  const seen: number[] = [];
  for (const x of l.entries()) {
    seen.push(x.id);
    l.delete(x);
    if (x.id % 10 === 0) l.add(new Item(1000 + x.id));
  }
  assert.equal(seen.length, 100);
  assert.equal(l.size, 10);
  l.clear();
  assert.equal(l.size, 0);
  assert.deepEqual(ids(l), []);
});

test('many adds and removes in any order keep size and contents exact', () => {
  const l = new LiveList<Item>();
  const live = new Set<Item>();
  let seed = 7;
  const rnd = (n: number): number => { seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648; return seed % n; };
  const pool = Array.from({ length: 64 }, (_, i) => new Item(i));
  for (let i = 0; i < 20_000; i++) {
    const x = pool[rnd(pool.length)]!;
    if (rnd(2) === 0) { l.add(x); live.add(x); } else { l.delete(x); live.delete(x); }
  }
  assert.equal(l.size, live.size);
  assert.deepEqual(new Set(l.entries()), live);
});
