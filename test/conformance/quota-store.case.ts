// The QuotaStore contract as executable cases. Every store (local, Redis standalone, Cluster, Sentinel)
// runs this same suite. Time is injected through `now` wherever the contract takes it; windows are placed
// at or after the real clock, because Redis key expiry runs on real time.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { AcquireItem, AcquireResult, CounterSpec, Grant, QuotaStore } from '../../src/quota/types.ts';
import { windowStartOf } from '../../src/quota/types.ts';

export interface StoreHandle {
  readonly store: QuotaStore;
  close(): Promise<void>;
}

export interface SuiteOptions {
  /** Stores from two create() calls share counters (Redis): run the second-replica cases. */
  readonly shared?: boolean;
}

const MINUTE = 60_000;

function grantOf(r: AcquireResult): Grant {
  assert.equal(r.ok, true, `expected a grant, got ${JSON.stringify(r)}`);
  return r as Grant;
}

export function runQuotaStoreSuite(name: string, create: () => Promise<StoreHandle>, opts: SuiteOptions = {}): void {
  describe(`QuotaStore conformance: ${name}`, () => {
    let h: StoreHandle;
    const run = randomBytes(4).toString('hex');
    let n = 0;
    /** A fresh counter id per case, so cases (and runs against a long-lived Redis) never share counts. */
    const spec = (limit: number, extra: Partial<CounterSpec> = {}): CounterSpec => ({
      id: `conf-${run}-${++n}/route/arl`, limit, windowMs: MINUTE, sliding: false, ...extra,
    });
    /** The start of the next whole window of `windowMs` after the real clock. */
    const nextWindow = (windowMs = MINUTE): number => windowStartOf(Date.now(), windowMs) + windowMs;
    const acquire = async (items: AcquireItem[], now: number): Promise<AcquireResult> => h.store.acquire(items, now);

    before(async () => {
      h = await create();
    });
    after(async () => {
      await h.close();
    });

    it('admits below the limit and reserves the amount', async () => {
      const c = spec(1000);
      const now = nextWindow() + 1000;
      const g = grantOf(await acquire([{ counter: c, amount: 300 }], now));
      assert.equal(g.entries.length, 1);
      assert.equal(g.entries[0]!.reserved, 300);
      assert.equal(g.entries[0]!.windowStart, windowStartOf(now, MINUTE));
      const v = h.store.peek(c, now);
      assert.deepEqual({ consumed: v.consumed, reserved: v.reserved, limit: v.limit }, { consumed: 0, reserved: 300, limit: 1000 });
      assert.equal(v.resetMs, MINUTE - 1000);
    });

    it('denies once consumed + reserved reaches the limit, with the time to the window end', async () => {
      const c = spec(500);
      const now = nextWindow() + 15_000;
      const g = grantOf(await acquire([{ counter: c, amount: 200 }], now));
      h.store.settle(g, [500]);
      const r = await acquire([{ counter: c, amount: 1 }], now);
      assert.equal(r.ok, false);
      if (r.ok) return;
      assert.deepEqual(r.denied, [0]);
      assert.equal(r.retryAfterMs, MINUTE - 15_000);
    });

    it('lets the last admitted request overshoot by its own amount only', async () => {
      const c = spec(1000);
      const now = nextWindow() + 10;
      const g1 = grantOf(await acquire([{ counter: c, amount: 999 }], now));
      const g2 = grantOf(await acquire([{ counter: c, amount: 400 }], now));
      const v = h.store.peek(c, now);
      assert.equal(v.reserved, 1399);
      const r = await acquire([{ counter: c, amount: 1 }], now);
      assert.equal(r.ok, false);
      h.store.release(g1);
      h.store.release(g2);
    });

    it('is all or nothing across counters', async () => {
      const roomy = spec(10_000);
      const spent = spec(100);
      const now = nextWindow() + 5;
      h.store.settle(grantOf(await acquire([{ counter: spent, amount: 100 }], now)), [100]);
      const r = await acquire([{ counter: roomy, amount: 50 }, { counter: spent, amount: 50 }], now);
      assert.equal(r.ok, false);
      if (!r.ok) assert.deepEqual(r.denied, [1]);
      assert.equal(h.store.peek(roomy, now).reserved, 0, 'nothing reserved on the counter with room');
      const g = grantOf(await acquire([{ counter: roomy, amount: 50 }, { counter: spec(1000), amount: 70 }], now));
      assert.deepEqual(g.entries.map((e) => e.reserved), [50, 70]);
      assert.equal(h.store.peek(roomy, now).reserved, 50);
    });

    it('settle replaces the reservation by the actual tokens; release drops it', async () => {
      const c = spec(10_000);
      const now = nextWindow() + 100;
      const g1 = grantOf(await acquire([{ counter: c, amount: 400 }], now));
      const g2 = grantOf(await acquire([{ counter: c, amount: 300 }], now));
      assert.equal(h.store.peek(c, now).reserved, 700);
      h.store.settle(g1, [123]);
      let v = h.store.peek(c, now);
      assert.deepEqual([v.consumed, v.reserved], [123, 300]);
      h.store.release(g2);
      v = h.store.peek(c, now);
      assert.deepEqual([v.consumed, v.reserved], [123, 0]);
      // More than reserved is charged in full.
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 10 }], now)), [1000]);
      assert.equal(h.store.peek(c, now).consumed, 1123);
    });

    it('settles in the window the reservation was made in', async () => {
      const c = spec(10_000);
      const w0 = nextWindow();
      const g = grantOf(await acquire([{ counter: c, amount: 100 }], w0 + 59_000));
      // The next window starts before the request ends.
      grantOf(await acquire([{ counter: c, amount: 5 }], w0 + MINUTE + 10));
      h.store.settle(g, [80]);
      const v = h.store.peek(c, w0 + MINUTE + 20);
      assert.deepEqual([v.consumed, v.reserved], [0, 5]);
    });

    it('ignores a second settle or release of the same grant', async () => {
      const c = spec(10_000);
      const now = nextWindow() + 100;
      const g = grantOf(await acquire([{ counter: c, amount: 100 }], now));
      const other = grantOf(await acquire([{ counter: c, amount: 50 }], now));
      h.store.settle(g, [60]);
      h.store.settle(g, [60]);
      h.store.release(g);
      const v = h.store.peek(c, now);
      assert.deepEqual([v.consumed, v.reserved], [60, 50]);
      h.store.release(other);
      h.store.release(other);
      assert.equal(h.store.peek(c, now).reserved, 0);
    });

    it('never lowers consumed within a window (Remaining never grows)', async () => {
      const c = spec(5_000);
      const now = nextWindow() + 100;
      let last = 0;
      const grants: Grant[] = [];
      for (let i = 0; i < 30; i++) {
        const r = await acquire([{ counter: c, amount: 50 + (i % 7) * 10 }], now + i);
        if (r.ok) grants.push(r);
        if (i % 3 === 2) {
          const g = grants.shift();
          if (g !== undefined) {
            if (i % 2 === 0) h.store.release(g); else h.store.settle(g, [i * 3]);
          }
        }
        if (i % 10 === 9) await h.store.flush();
        const v = h.store.peek(c, now + i);
        assert.ok(v.consumed >= last, `consumed went from ${last} to ${v.consumed}`);
        last = v.consumed;
      }
      for (const g of grants) h.store.settle(g, [1]);
      await h.store.flush();
      assert.ok(h.store.peek(c, now + 40).consumed >= last);
    });

    it('rolls over to a fresh fixed window', async () => {
      const c = spec(300);
      const w0 = nextWindow();
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 300 }], w0 + 10)), [300]);
      assert.equal((await acquire([{ counter: c, amount: 1 }], w0 + 20)).ok, false);
      const g = grantOf(await acquire([{ counter: c, amount: 100 }], w0 + MINUTE));
      assert.equal(g.entries[0]!.windowStart, w0 + MINUTE);
      const v = h.store.peek(c, w0 + MINUTE + 1);
      assert.deepEqual([v.consumed, v.reserved, v.resetMs], [0, 100, MINUTE - 1]);
    });

    it('weights the previous window in a sliding count', async () => {
      const c = spec(1000, { sliding: true });
      const w0 = nextWindow();
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 800 }], w0 + 100)), [800]);
      // A quarter into the next window, 3/4 of the previous window still counts: 600 + 100.
      const w1 = w0 + MINUTE;
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 100 }], w1 + 15_000)), [100]);
      let v = h.store.peek(c, w1 + 15_000);
      assert.ok(Math.abs(v.consumed - 700) < 1e-6, `consumed ${v.consumed}`);
      // 350 more are admitted (700 < 1000) and bring the sliding count to 1050.
      grantOf(await acquire([{ counter: c, amount: 350 }], w1 + 15_000));
      const r = await acquire([{ counter: c, amount: 10 }], w1 + 15_000);
      assert.equal(r.ok, false);
      // Room again when 800·(1 − t/60 s) + 450 < 1000, i.e. t > 18 750 ms: 3 751 ms from now.
      if (!r.ok) assert.equal(r.retryAfterMs, 3751);
      v = h.store.peek(c, w1 + 45_000);
      assert.ok(Math.abs(v.consumed - (200 + 100)) < 1e-6, `consumed ${v.consumed}`);
      assert.equal(v.resetMs, 15_000);
    });

    it('keeps consumption when a limit is edited (same id, new limit)', async () => {
      const c = spec(1000);
      const now = nextWindow() + 10;
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 600 }], now)), [600]);
      const lower = { ...c, limit: 500 };
      const v = h.store.peek(lower, now);
      assert.deepEqual([v.limit, v.consumed], [500, 600]);
      assert.equal((await acquire([{ counter: lower, amount: 1 }], now)).ok, false);
      const higher = { ...c, limit: 2000 };
      grantOf(await acquire([{ counter: higher, amount: 100 }], now));
      assert.equal(h.store.peek(higher, now).consumed, 600);
    });

    it('peek never waits and knows unseen counters as empty', () => {
      const c = spec(42);
      const now = nextWindow() + 7;
      const v = h.store.peek(c, now);
      assert.equal(v instanceof Promise, false);
      assert.deepEqual(v, { limit: 42, consumed: 0, reserved: 0, resetMs: MINUTE - 7 });
    });

    it('50 concurrent acquires overshoot by at most one request', async () => {
      const c = spec(1000);
      const now = nextWindow() + 50;
      const amount = 30;
      const results = await Promise.all(Array.from({ length: 50 }, () => acquire([{ counter: c, amount }], now)));
      const admitted = results.filter((r) => r.ok).length;
      assert.ok(admitted * amount >= 1000, `only ${admitted} admitted`);
      assert.ok(admitted * amount < 1000 + amount, `${admitted} admitted: more than one request over`);
      assert.equal(h.store.peek(c, now).reserved, admitted * amount);
      for (const r of results) if (r.ok) h.store.settle(r, [amount]);
      assert.equal(h.store.peek(c, now).consumed, admitted * amount);
    });

    it('50 concurrent acquires on a counter already in use stay within one request too', async () => {
      const c = spec(3000);
      const now = nextWindow() + 60;
      h.store.settle(grantOf(await acquire([{ counter: c, amount: 100 }], now)), [100]);
      await h.store.flush();
      const amount = 70;
      const results = await Promise.all(Array.from({ length: 50 }, () => acquire([{ counter: c, amount }], now)));
      const admitted = results.filter((r) => r.ok).length;
      const used = 100 + admitted * amount;
      assert.ok(used >= 3000 && used < 3000 + amount, `used ${used}`);
    });

    it('flush resolves and health is ok', async () => {
      await h.store.flush();
      assert.equal(h.store.health(), 'ok');
    });

    if (opts.shared) {
      describe('second replica', () => {
        let other: StoreHandle;
        before(async () => {
          other = await create();
        });
        after(async () => {
          await other.close();
        });

        it('sees consumption flushed by the first', async () => {
          const c = spec(1000);
          const now = nextWindow() + 10;
          h.store.settle(grantOf(await acquire([{ counter: c, amount: 400 }], now)), [400]);
          await h.store.flush();
          const g = grantOf(await other.store.acquire([{ counter: c, amount: 100 }], now));
          const v = other.store.peek(c, now);
          assert.deepEqual([v.consumed, v.reserved], [400, 100]);
          other.store.release(g);
        });

        it('denies on the second replica once the first spent the quota', async () => {
          const c = spec(500);
          const now = nextWindow() + 10;
          h.store.settle(grantOf(await acquire([{ counter: c, amount: 500 }], now)), [500]);
          await h.store.flush();
          const r = await other.store.acquire([{ counter: c, amount: 1 }], now);
          assert.equal(r.ok, false);
        });

        it('learns the other replica\'s consumption on a refresh (peek, flush, peek)', async () => {
          const c = spec(10_000);
          const now = nextWindow() + 10;
          grantOf(await other.store.acquire([{ counter: c, amount: 1 }], now));
          h.store.settle(grantOf(await acquire([{ counter: c, amount: 250 }], now)), [250]);
          await h.store.flush();
          other.store.peek(c, now);
          await other.store.flush();
          assert.equal(other.store.peek(c, now).consumed, 250);
        });

        it('two replicas admitting concurrently overshoot by at most one request each', async () => {
          const c = spec(2000);
          const now = nextWindow() + 10;
          const amount = 50;
          const results = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? h.store : other.store).acquire([{ counter: c, amount }], now)));
          const admitted = results.filter((r) => r.ok).length;
          assert.ok(admitted * amount >= 2000 - amount && admitted * amount < 2000 + 2 * amount, `admitted ${admitted}`);
        });
      });
    }
  });
}
