import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Batcher, type Batchable, type BatchSink } from '../../src/batcher/batcher.ts';
import { ManualClock } from '../../src/core/clock.ts';

/** Let pending callbacks and promise continuations run (a few event-loop turns, no wall-clock wait). */
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

class Item implements Batchable {
  queued = false;
  delta = 0;
  constructor(readonly id: number) {}
}

/** A sink that records batches; `fail` makes writes fail (items re-marked), `gate` holds a write open. */
class RecordingSink implements BatchSink<Item> {
  batches: number[][] = [];
  dropped: number[] = [];
  fail = false;
  open = true;
  inFlight = 0;
  maxInFlight = 0;
  gate: Promise<void> | undefined;
  batcher!: Batcher<Item>;

  async write(batch: readonly Item[]): Promise<boolean> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    this.batches.push(batch.map((i) => i.id));
    if (this.gate !== undefined) await this.gate;
    await turns(1);
    this.inFlight--;
    if (this.fail) {
      for (const i of batch) this.batcher.mark(i);
      return false;
    }
    return true;
  }

  drop(item: Item): void {
    this.dropped.push(item.id);
  }

  canWrite(): boolean {
    return this.open;
  }

  room?: () => void;
}

function setup(opts: { intervalMs?: number; maxBatchKeys?: number; maxPendingKeys?: number } = {}) {
  const sink = new RecordingSink();
  const clock = new ManualClock();
  const batcher = new Batcher(sink, { intervalMs: opts.intervalMs ?? 10, maxBatchKeys: opts.maxBatchKeys ?? 100, maxPendingKeys: opts.maxPendingKeys ?? 1000, clock });
  sink.batcher = batcher;
  return { sink, batcher, clock };
}

describe('batcher', () => {
  it('writes marked items once per interval, each item once per batch', async () => {
    const { sink, batcher, clock } = setup();
    batcher.start();
    const a = new Item(1);
    const b = new Item(2);
    for (let i = 0; i < 100; i++) { batcher.mark(a); batcher.mark(b); }
    assert.equal(batcher.queuedCount, 2);
    clock.advance(9);
    await turns();
    assert.deepEqual(sink.batches, [], 'nothing before the interval');
    for (let i = 0; i < 4; i++) {
      clock.advance(10);
      await turns();
    }
    batcher.stop();
    assert.deepEqual(sink.batches, [[1, 2]]);
    assert.equal(a.queued, false);
  });

  it('flushes early when max_batch_keys items are dirty', async () => {
    const { sink, batcher } = setup({ intervalMs: 60_000, maxBatchKeys: 5 });
    batcher.start();
    for (let i = 0; i < 5; i++) batcher.mark(new Item(i));
    await turns();
    batcher.stop();
    assert.deepEqual(sink.batches, [[0, 1, 2, 3, 4]]);
  });

  it('keeps one write in flight and splits a large backlog into max_batch_keys batches', async () => {
    const { sink, batcher, clock } = setup({ intervalMs: 5, maxBatchKeys: 10 });
    batcher.start();
    for (let i = 0; i < 35; i++) batcher.mark(new Item(i));
    for (let i = 0; i < 100 && sink.batches.flat().length < 35; i++) {
      clock.advance(5);
      await turns();
    }
    batcher.stop();
    assert.equal(sink.maxInFlight, 1);
    assert.deepEqual(sink.batches.map((b) => b.length), [10, 10, 10, 5]);
  });

  it('does not write on the timer while the sink refuses, but flush() does', async () => {
    const { sink, batcher, clock } = setup();
    sink.open = false;
    batcher.start();
    batcher.mark(new Item(1));
    clock.advance(40);
    await turns();
    assert.equal(sink.batches.length, 0);
    assert.equal(await batcher.flush(), true);
    assert.deepEqual(sink.batches, [[1]]);
    batcher.stop();
  });

  it('keeps failed items for a later batch and reports the failure from flush()', async () => {
    const { sink, batcher } = setup({ intervalMs: 60_000 });
    sink.fail = true;
    batcher.mark(new Item(7));
    assert.equal(await batcher.flush(), false);
    assert.equal(batcher.backlog, 1);
    sink.fail = false;
    assert.equal(await batcher.flush(), true);
    assert.equal(batcher.backlog, 0);
    assert.deepEqual(sink.batches, [[7], [7]]);
  });

  it('bounds the backlog by dropping the oldest dirty items', () => {
    const { sink, batcher } = setup({ intervalMs: 60_000, maxBatchKeys: 1000, maxPendingKeys: 3 });
    for (let i = 0; i < 5; i++) batcher.mark(new Item(i));
    assert.equal(batcher.backlog, 3);
    assert.deepEqual(sink.dropped, [0, 1]);
  });

  it('offer() queues only when the backlog has room, evicting nothing; room() is called once an acknowledged write frees it', async () => {
    const { sink, batcher } = setup({ intervalMs: 60_000, maxBatchKeys: 2, maxPendingKeys: 2 });
    const items = [0, 1, 2, 3].map((i) => new Item(i));
    const declined: Item[] = [];
    let rooms = 0;
    sink.room = () => {
      rooms++;
      while (declined.length > 0 && batcher.offer(declined[0]!)) declined.shift();
    };
    batcher.start();
    for (const it of items) if (!batcher.offer(it)) declined.push(it);
    assert.deepEqual(declined.map((i) => i.id), [2, 3]);
    assert.deepEqual(sink.dropped, []);
    assert.equal(batcher.offer(items[0]!), true, 'an item already queued is in');
    await turns(10);
    assert.deepEqual(sink.batches, [[0, 1], [2, 3]], 'the declined items went with the next batch, in order');
    assert.ok(rooms >= 1);
    assert.equal(batcher.backlog, 0);
    batcher.stop();
  });

  it('flush() waits for the write in flight and then writes what is left', async () => {
    const { sink, batcher } = setup({ intervalMs: 60_000, maxBatchKeys: 1 });
    let openGate!: () => void;
    sink.gate = new Promise((resolve) => { openGate = resolve; });
    batcher.mark(new Item(1));
    const first = batcher.flush();
    await turns();
    batcher.mark(new Item(2));
    const second = batcher.flush();
    sink.gate = undefined;
    openGate();
    assert.equal(await first, true);
    assert.equal(await second, true);
    assert.deepEqual(sink.batches, [[1], [2]]);
  });
});
