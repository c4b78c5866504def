import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import { windowStartOf, type AcquireResult, type CounterSpec } from '../../src/quota/types.ts';
import { StoreGrant, StoreGrantEntry, claimGrant, previousWeight, retryAfterMs, tokens } from '../../src/quota/window.ts';

const fixed: CounterSpec = { id: 'f', limit: 1000, windowMs: 60_000, sliding: false };
const sliding: CounterSpec = { ...fixed, id: 's', sliding: true };

/** The local store decides synchronously (a Promise only for the key-cap overflow). */
function sync(r: AcquireResult | Promise<AcquireResult>): AcquireResult {
  assert.ok(!(r instanceof Promise), 'decided synchronously');
  return r as AcquireResult;
}

describe('window math', () => {
  it('aligns windows to the epoch', () => {
    assert.equal(windowStartOf(1_700_000_123_456, 60_000), 1_700_000_100_000);
    assert.equal(windowStartOf(1_700_000_100_000, 60_000), 1_700_000_100_000);
  });

  it('weights the previous window from 1 at the start down to 0 at the end', () => {
    assert.equal(previousWeight(0, 0, 1000), 1);
    assert.equal(previousWeight(250, 0, 1000), 0.75);
    assert.equal(previousWeight(1000, 0, 1000), 0);
    assert.equal(previousWeight(5000, 0, 1000), 0);
  });

  it('gives a fixed window the time to its end', () => {
    assert.equal(retryAfterMs(15_000, 0, fixed, 2000, 0), 45_000);
    assert.equal(retryAfterMs(59_999.5, 0, fixed, 2000, 0), 1);
  });

  it('gives a sliding window the time until the previous window has decayed enough', () => {
    // 800·(1 − t/60 s) + 450 < 1000 ⇔ t > 18 750 ms.
    assert.equal(retryAfterMs(15_000, 0, sliding, 450, 800), 3751);
  });

  it('waits into the next window when the current one alone is spent', () => {
    // At the end of this window 1250 becomes the previous: 1250·(1 − t/60 s) < 1000 ⇔ t > 12 s.
    assert.equal(retryAfterMs(40_000, 0, sliding, 1250, 300), 20_000 + 12_001);
  });

  it('rounds token amounts up and treats negatives as 0', () => {
    assert.deepEqual([tokens(3), tokens(2.1), tokens(0), tokens(-5), tokens(Number.NaN)], [3, 3, 0, 0, 0]);
  });

  it('claims a grant once, and only for the store that issued it', () => {
    const owner = {};
    const g = new StoreGrant(owner, [new StoreGrantEntry(fixed, 0, 5, 'cell')]);
    assert.equal(claimGrant(g, {}), undefined);
    assert.equal(claimGrant(g, owner), g);
    assert.equal(claimGrant(g, owner), undefined);
    assert.equal(claimGrant({ ok: true, entries: [] }, owner), undefined);
    assert.equal(g.entries[0]!.cell, 'cell');
    assert.equal(JSON.stringify(g), JSON.stringify({ ok: true, entries: [{ counter: fixed, windowStart: 0, reserved: 5 }] }));
  });
});

describe('LocalQuotaStore specifics', () => {
  it('forgets counters whose windows have passed', () => {
    const store = new LocalQuotaStore();
    const t0 = 1_700_000_000_000;
    for (let i = 0; i < 100; i++) store.acquire([{ counter: { ...fixed, id: `k${i}`, windowMs: 1000 }, amount: 1 }], t0);
    assert.equal(store.size, 100);
    store.acquire([{ counter: { ...fixed, id: 'late', windowMs: 1000 }, amount: 1 }], t0 + 11_000);
    assert.equal(store.size, 1);
  });

  it('starts afresh when a counter changes its window length', () => {
    const store = new LocalQuotaStore();
    const now = 1_700_000_000_000;
    const g = sync(store.acquire([{ counter: fixed, amount: 400 }], now));
    assert.ok(g.ok);
    store.settle(g, [400]);
    const longer = { ...fixed, windowMs: 3_600_000 };
    assert.equal(store.peek(longer, now).consumed, 0);
    assert.equal(sync(store.acquire([{ counter: longer, amount: 10 }], now)).ok, true);
    const v = store.peek(longer, now);
    assert.deepEqual([v.consumed, v.reserved], [0, 10]);
  });

  it('keeps a late settlement in its own (previous) window', () => {
    const store = new LocalQuotaStore();
    const w0 = 1_700_000_040_000;
    const g = sync(store.acquire([{ counter: sliding, amount: 100 }], w0 + 59_000));
    assert.ok(g.ok);
    store.acquire([{ counter: sliding, amount: 1 }], w0 + 60_000);
    store.settle(g, [500]);
    // Half-way through the next window the previous window's 500 counts for 250.
    assert.equal(store.peek(sliding, w0 + 90_000).consumed, 250);
  });

  it('admits on an empty counter even for a request larger than the limit', () => {
    const store = new LocalQuotaStore();
    const r = sync(store.acquire([{ counter: { ...fixed, limit: 10 }, amount: 50 }], 1_700_000_000_000));
    assert.equal(r.ok, true);
  });
});
