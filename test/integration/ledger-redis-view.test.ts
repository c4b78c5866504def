// What a serving thread may decide on its own over a Redis store: the published view admits without a
// message only when the store itself would trust its local view; synchronous mode and an open breaker
// send every admission to the main thread.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { SluiceError } from '../../src/core/errors.ts';
import { LedgerHost } from '../../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import { F_CAP_MARGIN, F_LIMIT_MARGIN, F_VALID_UNTIL, SLOT_FIELDS, counterKey, hash3 } from '../../src/quota/shared/ledger.ts';
import type { AcquireResult, CounterSpec, QuotaStore } from '../../src/quota/types.ts';
import { windowStartOf } from '../../src/quota/types.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';
import { avoidWindowEdge } from '../helpers/gateway.ts';

const run = randomBytes(4).toString('hex');

function setup(backend: QuotaStore): { host: LedgerHost; store: QuotaStore; asked: () => number } {
  const host = new LedgerHost({ maxSlots: 256, pollMs: 5 });
  host.attach('r', backend);
  let n = 0;
  const store = new LedgerClient(host.descriptor(), (req) => {
    if (req.kind === 'acquire') n++;
    return host.handle(req);
  }).storeFor('r', 'redis');
  return { host, store, asked: () => n };
}

async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('ledger over redis: what a thread decides alone', () => {
  let redis: RedisServerHandle;
  before(async () => {
    redis = await startRedis({ password: 'ledger-view-secret' });
  });
  after(async () => {
    await redis?.stop();
  });

  it('batched: far from the limit on the fast path, inside the margin through the main thread', async () => {
    const { store: backend } = redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 10, max_batch_keys: 1000, max_pending_keys: 100_000 } });
    assert.ok(await backend.ready(10_000));
    const { host, store, asked } = setup(backend);
    const limit = 100_000;
    const c: CounterSpec = { id: `view-${run}-far`, limit, windowMs: 600_000, sliding: false };
    // A new window mid-run would make the counter unknown again (synchronous admissions).
    await avoidWindowEdge(600, 30_000);
    // Traffic until the counter is known and its growth rate measured (a few reconciliations).
    let sync = 0;
    await until(() => {
      const r = store.acquire([{ counter: c, amount: 10 }], Date.now());
      if (!(r instanceof Promise)) {
        sync++;
        if (r.ok) store.settle(r, [10]);
      } else {
        void r.then((g) => g.ok && store.settle(g, [10]));
      }
      return sync >= 5;
    }, 'fast-path admissions');
    // The published margins are positive (rate × horizon × safety), and the view expires.
    const s = 0;
    const f = host.table.f64;
    assert.ok(f[s * SLOT_FIELDS + F_CAP_MARGIN]! >= 0);
    assert.ok(f[s * SLOT_FIELDS + F_LIMIT_MARGIN]! >= f[s * SLOT_FIELDS + F_CAP_MARGIN]!);
    assert.ok(f[s * SLOT_FIELDS + F_VALID_UNTIL]! < Date.now() + 600_000, 'a Redis view is valid for freshViewMs at most');
    // An amount that would cross limit − capMargin is never decided by the thread.
    const before = asked();
    const big = store.acquire([{ counter: c, amount: limit }], Date.now());
    assert.ok(big instanceof Promise, 'inside the margin: delegated');
    const g = await big;
    if (g.ok) store.release(g);
    assert.equal(asked(), before + 1);
    host.close();
    await backend.close();
  });

  it('a counter another replica spent: once its view is valid the thread denies alone, until it goes stale or the window changes', async () => {
    // The stale-view check acquires at the view's end (up to freshViewMs after now): that must be the same window,
    // or the store rightly admits in the next one (a CI run once started 2 s before a window edge).
    await avoidWindowEdge(3600, 60_000);
    const target = standaloneTarget(redis);
    const batching = { flush_interval_ms: 10, max_batch_keys: 1000, max_pending_keys: 100_000 };
    const { store: other } = redisStore(target, { batching });
    // A view valid for 2 s: long enough for a loaded machine to see it valid between two polls.
    const { store: backend } = redisStore(standaloneTarget(redis), { batching, freshViewMs: 2_000 });
    assert.ok(await other.ready(10_000));
    assert.ok(await backend.ready(10_000));
    const { host, store, asked } = setup(backend);
    const c: CounterSpec = { id: `view-${run}-spent`, limit: 1000, windowMs: 3_600_000, sliding: false };
    const g = await other.acquire([{ counter: c, amount: 1000 }], Date.now());
    assert.ok(g.ok);
    other.settle(g, [1000]);
    await other.flush();
    try {
      // This process never had a grant on it: delegated denials until the counter is known and its rate
      // measured (the store's own trust rule), then the thread denies on the published view.
      let t0 = 0;
      const delegated: Promise<AcquireResult>[] = [];
      await until(() => {
        const now = Date.now();
        const r = store.acquire([{ counter: c, amount: 1 }], now);
        if (r instanceof Promise) {
          delegated.push(r);
          return false;
        }
        assert.equal(r.ok, false);
        t0 = now;
        return true;
      }, 'a denial decided on the thread');
      for (const d of await Promise.all(delegated)) assert.equal(d.ok, false);
      const before = asked();
      assert.ok(before >= 1);
      for (let i = 0; i < 200; i++) {
        const r = store.acquire([{ counter: c, amount: 1 }], t0);
        assert.equal(r instanceof Promise, false, `acquire ${i} was delegated`);
        assert.equal((r as { ok: boolean }).ok, false);
      }
      assert.equal(asked(), before, '200 denials without a message');
      const k = new Int32Array(3);
      hash3(counterKey('r', c.id, c.windowMs), k);
      host.table.lock();
      const slot = host.table.findLocked(k, windowStartOf(t0, c.windowMs));
      host.table.unlock();
      const validity = (): number => host.table.f64[slot * SLOT_FIELDS + F_VALID_UNTIL]!;
      const first = validity();
      assert.ok(slot >= 0 && first > t0 && first < t0 + 600_000, `slot ${slot} valid until ${first - t0} ms after t0`);
      // The thread's denials mark the slot; the main thread refreshes its view from Redis and republishes.
      await until(() => validity() > first, 'the denied counter\'s view to be refreshed');
      // At the end of the published view's validity: delegated (and denied by the store).
      const validUntil = validity();
      const stale = store.acquire([{ counter: c, amount: 1 }], validUntil);
      assert.ok(stale instanceof Promise, 'a stale view is delegated');
      assert.equal((await stale).ok, false);
      assert.equal(asked(), before + 1);
      // The next window has no slot: delegated, and admitted by the store.
      const next = store.acquire([{ counter: c, amount: 1 }], windowStartOf(t0, c.windowMs) + c.windowMs);
      assert.ok(next instanceof Promise, 'a new window is delegated');
      const n = await next;
      assert.equal(n.ok, true);
      if (n.ok) store.release(n);
      assert.equal(asked(), before + 2);
    } finally {
      host.close();
      await backend.close();
      await other.close();
    }
  });

  it('synchronous mode: every admission goes to the main thread (and so to Redis)', async () => {
    const { store: backend } = redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 0, max_batch_keys: 1000, max_pending_keys: 100_000 } });
    assert.ok(await backend.ready(10_000));
    const { host, store, asked } = setup(backend);
    const c: CounterSpec = { id: `view-${run}-sync`, limit: 1e9, windowMs: 600_000, sliding: false };
    for (let i = 0; i < 20; i++) {
      const r = store.acquire([{ counter: c, amount: 5 }], Date.now());
      assert.ok(r instanceof Promise, `acquire ${i} was decided on the thread`);
      const g = await r;
      if (g.ok) store.settle(g, [5]);
      host.poll();
    }
    assert.equal(asked(), 20);
    host.close();
    await backend.close();
  });

  it('breaker open: the thread reports unavailable and every admission is decided by the main thread', async () => {
    const own = await startRedis({ password: 'ledger-view-secret-2' });
    const { store: backend } = redisStore(standaloneTarget(own), { batching: { flush_interval_ms: 10, max_batch_keys: 1000, max_pending_keys: 100_000 } });
    assert.ok(await backend.ready(10_000));
    const { host, store } = setup(backend);
    const c: CounterSpec = { id: `view-${run}-down`, limit: 1e9, windowMs: 600_000, sliding: false };
    const g = await store.acquire([{ counter: c, amount: 5 }], Date.now());
    if (g.ok) store.settle(g, [5]);
    assert.equal(store.health(), 'ok');
    await own.kill();
    try {
      await until(() => {
        host.poll();
        return store.health() === 'unavailable';
      }, 'the breaker to open');
      assert.equal(host.table.f64[0 * SLOT_FIELDS + F_VALID_UNTIL], 0, 'the view admits nothing on the thread');
      const r = store.acquire([{ counter: c, amount: 5 }], Date.now());
      assert.ok(r instanceof Promise, 'an open breaker sends every admission to the main thread');
      // The store decides: it rides out on a recent view far from the limit, or refuses (no degradation).
      const out = await r.then((g) => (g.ok ? 'granted' : 'denied'), (e: unknown) => (e instanceof SluiceError ? e.code : String(e)));
      assert.ok(out === 'granted' || out === 'SLC_QUOTA_STORE_UNAVAILABLE', out);
    } finally {
      host.close();
      await backend.close();
      await own.stop();
    }
  });
});
