// The process ledger's table (hashing, collisions, full table, dirty ring, the lock under contention and
// its takeover) and the host/client pair's bounds, in one process plus real worker_threads for the lock.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import { F_BASE_C, F_TR, LedgerTable, SLOT_FIELDS, createLedger } from '../../src/quota/shared/ledger.ts';
import { LedgerHost, MAX_LEDGER_SLOTS, MIN_LEDGER_SLOTS, ledgerSlotsFor } from '../../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import type { LedgerReply, LedgerRequest } from '../../src/quota/shared/protocol.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { createMetrics } from '../../src/metrics/registry.ts';
import type { CounterSpec } from '../../src/quota/types.ts';

const WORKER = new URL('../helpers/ledger-worker.ts', import.meta.url);

function tsWorker(url: URL, options: ConstructorParameters<typeof Worker>[1]): Worker {
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  return new Worker(`import(${api}).then((t) => { t.register(); return import(${JSON.stringify(url.href)}); })`, { ...options, eval: true });
}

function key(a: number, b: number, c: number): Int32Array {
  return Int32Array.of(a, b, c);
}

/** A tiny deterministic PRNG (xorshift32). */
function prng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

describe('ledger table', () => {
  it('finds colliding keys (same first hash, same window) and keeps finding them after removals', () => {
    const t = new LedgerTable(createLedger({ slots: 16 }));
    t.lock();
    const slots: number[] = [];
    // Same k1 and window: the same home position, so every key probes past the others.
    for (let i = 0; i < 12; i++) slots.push(t.insertLocked(key(7, i, i * 3), 60_000, 60_000, 0));
    for (let i = 0; i < 12; i++) assert.equal(t.findLocked(key(7, i, i * 3), 60_000), slots[i]);
    // Differs only in the third hash, or in the window: not found.
    assert.equal(t.findLocked(key(7, 1, 4), 60_000), -1);
    assert.equal(t.findLocked(key(7, 1, 3), 120_000), -1);
    for (const i of [0, 5, 6, 11]) t.removeLocked(slots[i]!);
    for (let i = 0; i < 12; i++) assert.equal(t.findLocked(key(7, i, i * 3), 60_000), [0, 5, 6, 11].includes(i) ? -1 : slots[i]);
    t.unlock();
    assert.equal(t.used, 8);
  });

  it('matches a map under random inserts and removals (backward-shift deletion)', () => {
    const t = new LedgerTable(createLedger({ slots: 64 }));
    const model = new Map<string, number>();
    const rnd = prng(42);
    t.lock();
    for (let step = 0; step < 20_000; step++) {
      // Few distinct first hashes: many collisions and wrap-arounds.
      const k = key(Math.floor(rnd() * 4), Math.floor(rnd() * 40), 1);
      const ws = Math.floor(rnd() * 3) * 1000;
      const id = `${k[0]}/${k[1]}/${ws}`;
      const found = t.findLocked(k, ws);
      assert.equal(found, model.get(id) ?? -1, `step ${step}`);
      if (found >= 0 && rnd() < 0.5) {
        t.removeLocked(found);
        model.delete(id);
      } else if (found < 0) {
        const s = t.insertLocked(k, ws, 1000, 0);
        if (model.size < 64) {
          assert.ok(s >= 0);
          model.set(id, s);
        } else {
          assert.equal(s, -1, 'a full table refuses');
        }
      }
    }
    t.unlock();
    assert.equal(t.used, model.size);
  });

  it('refuses a new slot when full and reuses a freed one', () => {
    const t = new LedgerTable(createLedger({ slots: 4 }));
    t.lock();
    const s = [0, 1, 2, 3].map((i) => t.insertLocked(key(i, i, i), 0, 1000, 0));
    assert.ok(s.every((x) => x >= 0));
    assert.equal(t.insertLocked(key(9, 9, 9), 0, 1000, 0), -1);
    t.removeLocked(s[2]!);
    assert.equal(t.insertLocked(key(9, 9, 9), 0, 1000, 0), s[2]);
    t.unlock();
  });

  it('the dirty ring queues each slot once and overflows into a full scan', () => {
    const t = new LedgerTable(createLedger({ slots: 3000, ringSize: 1024 }));
    const out = new Int32Array(3000);
    t.lock();
    for (let i = 0; i < 3000; i++) t.insertLocked(key(i, 1, 2), 0, 1000, 0);
    t.markDirtyLocked(5);
    t.markDirtyLocked(5);
    t.markDirtyLocked(9);
    assert.equal(t.drainLocked(out), 2);
    assert.deepEqual([...out.subarray(0, 2)].sort((a, b) => a - b), [5, 9]);
    assert.equal(t.drainLocked(out), 0);
    for (let i = 0; i < 3000; i++) t.markDirtyLocked(i);
    assert.equal(t.overflowed, true);
    assert.equal(t.drainLocked(out), 3000, 'every dirty slot is found by the scan');
    assert.equal(t.overflowed, false);
    assert.equal(t.drainLocked(out), 0);
    t.unlock();
  });

  it('the lock serialises two threads and the main thread (no lost update)', async () => {
    const desc = createLedger({ slots: 4 });
    const t = new LedgerTable(desc);
    const iterations = 20_000;
    const workers = [0, 1].map(() => tsWorker(WORKER, { workerData: { mode: 'lock', desc, iterations, slot: 1 } }));
    const done = workers.map((w) => new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    }));
    // The main thread contends too, yielding between rounds so the workers' messages can arrive.
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 500; i++) {
        t.lock();
        t.f64[SLOT_FIELDS + F_BASE_C] = t.f64[SLOT_FIELDS + F_BASE_C]! + 1;
        t.unlock();
      }
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(done);
    for (const w of workers) await w.terminate();
    assert.equal(t.f64[SLOT_FIELDS + F_BASE_C], 2 * iterations + 20 * 500);
    assert.equal(t.steals, 0);
  });

  it('a lock left held by a terminated thread is taken over after the timeout', async () => {
    const desc = createLedger({ slots: 4 });
    const t = new LedgerTable(desc, { stealMs: 200 });
    const w = tsWorker(WORKER, { workerData: { mode: 'lock-and-exit', desc, iterations: 0, slot: 0 } });
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    });
    await w.terminate();
    const started = Date.now();
    t.lock();
    t.unlock();
    assert.ok(Date.now() - started >= 190, 'waited for the holder first');
    assert.equal(t.steals, 1);
    // Usable afterwards.
    t.lock();
    t.unlock();
    assert.equal(t.steals, 1);
  });
});

describe('ledger host and client bounds', () => {
  it('the table is sized from limits.max_quota_keys: two windows per key, within fixed bounds', () => {
    assert.equal(ledgerSlotsFor(100_000), 200_000);
    assert.equal(ledgerSlotsFor(1), MIN_LEDGER_SLOTS);
    assert.equal(ledgerSlotsFor(100_000_000), MAX_LEDGER_SLOTS);
    const host = new LedgerHost({ maxSlots: ledgerSlotsFor(10) });
    assert.equal(host.table.slots, MIN_LEDGER_SLOTS);
    host.close();
  });

  it('the store directory takes a config of 1,000 stores twice over (a reload attaches the new before the old go)', async () => {
    const host = new LedgerHost({ maxSlots: MIN_LEDGER_SLOTS });
    const metrics = createMetrics({ defaultMetrics: false });
    const backends = Array.from({ length: 2000 }, (_, i) => new LocalQuotaStore(`s${i}`, { metrics }));
    backends.forEach((b, i) => host.attach(`store-${i}`, b));
    host.close();
    await Promise.all(backends.map((b) => b.close()));
  });

  const spec = (id: string, limit = 1000): CounterSpec => ({ id, limit, windowMs: 600_000, sliding: false });
  /** A local backend with metrics behind a three-slot ledger, and a serving thread's store over it. */
  const threeSlots = () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const backend = new LocalQuotaStore('local', { metrics });
    const host = new LedgerHost({ maxSlots: 3 });
    host.attach('s', backend);
    return { metrics, backend, host, store: new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('s', 'l') };
  };

  it('a full table answers SLC_OVERLOADED, counted as the store\'s key overflow, and leaves nothing reserved in the backend', async () => {
    const { metrics, backend, host, store } = threeSlots();
    const now = Date.now();
    for (let i = 0; i < 3; i++) assert.equal((await store.acquire([{ counter: spec(`c${i}`), amount: 10 }], now)).ok, true);
    await assert.rejects(async () => store.acquire([{ counter: spec('c3'), amount: 10 }], now), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_OVERLOADED');
    assert.equal(backend.peek(spec('c3'), now).reserved, 0);
    const text = await metrics.registry.metrics();
    assert.match(text, /^sluice_quota_key_evictions_total\{store="local",outcome="overflow"\} 1$/m);
    // Counters with a slot keep being served on the fast path.
    const r = store.acquire([{ counter: spec('c1'), amount: 10 }], now);
    assert.equal(r instanceof Promise, false);
    host.close();
    await backend.close();
  });

  it('a table full of slots no thread holds makes room: a new counter is admitted, and the counters taken back keep their usage', async () => {
    const { metrics, backend, host, store } = threeSlots();
    const now = Date.now();
    // Three counters with usage in a live window, none held: the table is full.
    for (let i = 0; i < 3; i++) {
      const g = await store.acquire([{ counter: spec(`u${i}`, 100), amount: 10 }], now);
      assert.ok(g.ok);
      store.settle(g, [60]);
    }
    const fourth = await store.acquire([{ counter: spec('u3', 100), amount: 10 }], now);
    assert.ok(fourth.ok, 'admitted: a slot was taken back');
    store.settle(fourth, [60]);
    assert.doesNotMatch(await metrics.registry.metrics(), /outcome="overflow"\} [1-9]/);
    // Every counter still holds its 60 tokens, in the backend or its slot: 40 more spend it, and the next is refused.
    for (let i = 0; i < 4; i++) {
      const more = await store.acquire([{ counter: spec(`u${i}`, 100), amount: 10 }], now);
      assert.ok(more.ok, `u${i} has room at 60 of 100`);
      store.settle(more, [40]);
      const again = await store.acquire([{ counter: spec(`u${i}`, 100), amount: 10 }], now);
      if (again.ok) store.settle(again, [0]);
      assert.equal(again.ok, false, `u${i} is spent at 100: its first 60 were kept`);
    }
    host.close();
    await backend.close();
  });

  it('past max_quota_keys, a counter linked to a slot that holds nothing is taken back and evicted; one a thread holds is not', async () => {
    const backend = new LocalQuotaStore('local', { maxKeys: 2 });
    const host = new LedgerHost({ maxSlots: 16 });
    host.attach('s', backend);
    const store = new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('s', 'l');
    const now = Date.now();
    const idle = await store.acquire([{ counter: spec('idle'), amount: 10 }], now);
    assert.ok(idle.ok);
    store.release(idle);
    const held = await store.acquire([{ counter: spec('held'), amount: 10 }], now);
    assert.ok(held.ok);
    assert.equal(host.table.used, 2);
    // Both tracked counters are linked: 'idle' (released on the thread, nothing in it) goes, 'held' stays.
    const next = await store.acquire([{ counter: spec('next'), amount: 10 }], now);
    assert.ok(next.ok);
    assert.equal(backend.size, 2);
    assert.equal(host.table.used, 2, 'the evicted counter\'s slot was freed');
    assert.equal(backend.peek(spec('held'), now).reserved, 10);
    // Both tracked counters now hold a running request: a new key is refused, never admitted unmetered.
    await assert.rejects(async () => store.acquire([{ counter: spec('more'), amount: 10 }], now), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_OVERLOADED');
    store.settle(held, [7]);
    store.settle(next, [3]);
    host.poll();
    assert.equal(backend.peek(spec('held'), now).consumed, 7);
    assert.equal(backend.peek(spec('next'), now).consumed, 3);
    host.close();
    await backend.close();
  });

  it('admits on the fast path with no message, and delegates a counter without a slot', async () => {
    const backend = new LocalQuotaStore('local');
    const host = new LedgerHost({ maxSlots: 16 });
    host.attach('s', backend);
    let asked = 0;
    const store = new LedgerClient(host.descriptor(), (r) => {
      asked++;
      return host.handle(r);
    }).storeFor('s', 'l');
    const c = spec('fast', 100);
    const now = Date.now();
    const g = await store.acquire([{ counter: c, amount: 60 }], now);
    assert.equal(asked, 1);
    const r2 = store.acquire([{ counter: c, amount: 60 }], now);
    assert.equal(r2 instanceof Promise, false, 'synchronous: decided from the slot');
    assert.equal((r2 as { ok: boolean }).ok, true, '60 < 100: admitted, overshooting by this request');
    const r3 = store.acquire([{ counter: c, amount: 1 }], now);
    assert.equal(r3 instanceof Promise, false);
    assert.equal((r3 as { ok: boolean }).ok, false, 'spent: denied from the slot');
    assert.equal(asked, 1);
    if (g.ok) store.release(g);
    host.poll();
    assert.deepEqual([backend.peek(c, now).consumed, backend.peek(c, now).reserved], [0, 60]);
    assert.equal(host.table.f64[0 * SLOT_FIELDS + F_TR], 60);
    host.close();
    await backend.close();
  });

  it('a denial binds a slot: further acquires of the spent counter are denied on the thread until the window changes', async () => {
    const backend = new LocalQuotaStore('local');
    const host = new LedgerHost({ maxSlots: 16 });
    host.attach('s', backend);
    let asked = 0;
    const store = new LedgerClient(host.descriptor(), (r) => {
      if (r.kind === 'acquire') asked++;
      return host.handle(r);
    }).storeFor('s', 'l');
    // Spent in the backend (another replica's, or the main thread's, usage): no slot and no grant yet.
    const c: CounterSpec = { id: 'spent', limit: 100, windowMs: 60_000, sliding: false };
    const ws = Math.floor(Date.now() / 60_000) * 60_000;
    const now = ws + 15_000;
    const g = backend.acquire([{ counter: c, amount: 100 }], now);
    assert.ok(!(g instanceof Promise) && g.ok);
    backend.settle(g, [100]);
    const first = await store.acquire([{ counter: c, amount: 1 }], now);
    assert.deepEqual(first, { ok: false, denied: [0], retryAfterMs: 45_000 });
    assert.equal(asked, 1);
    const n = 500;
    for (let i = 0; i < n; i++) {
      const r = store.acquire([{ counter: c, amount: 1 }], now + i);
      assert.equal(r instanceof Promise, false, `acquire ${i} was delegated`);
      assert.deepEqual(r, { ok: false, denied: [0], retryAfterMs: 45_000 - i });
    }
    assert.equal(asked, 1, `${n} denials decided on the thread`);
    // A request with a roomy counter too: every counter got a slot, so the thread decides it alone.
    const roomy: CounterSpec = { id: 'roomy', limit: 1000, windowMs: 60_000, sliding: false };
    assert.deepEqual(await store.acquire([{ counter: roomy, amount: 5 }, { counter: c, amount: 5 }], now), { ok: false, denied: [1], retryAfterMs: 45_000 });
    assert.equal(asked, 2);
    assert.deepEqual(store.acquire([{ counter: roomy, amount: 5 }, { counter: c, amount: 5 }], now), { ok: false, denied: [1], retryAfterMs: 45_000 });
    const alone = store.acquire([{ counter: roomy, amount: 5 }], now);
    assert.ok(!(alone instanceof Promise) && alone.ok, 'the roomy counter is admitted on the thread');
    store.release(alone);
    assert.equal(asked, 2);
    assert.equal(backend.peek(roomy, now).reserved, 0, 'denials reserved nothing');
    // The next window has no slot yet: delegated, and admitted there.
    const next = store.acquire([{ counter: c, amount: 1 }], ws + 60_000);
    assert.ok(next instanceof Promise, 'a new window is delegated');
    assert.equal((await next).ok, true);
    assert.equal(asked, 3);
    // A view that stops being valid (its store detached) stops deciding on the thread too.
    host.detach('s');
    const gone = store.acquire([{ counter: c, amount: 1 }], now);
    assert.ok(gone instanceof Promise, 'an invalid view is delegated');
    await assert.rejects(gone, (e: unknown) => e instanceof SluiceError && e.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
    assert.equal(asked, 4);
    host.close();
    await backend.close();
  });

  it('a slot freed under a grant (its thread gone) is reused safely: the late settle charges nothing', async () => {
    const backend = new LocalQuotaStore('local');
    const host = new LedgerHost({ maxSlots: 1, holdGraceMs: 0 });
    host.attach('s', backend);
    const store = new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('s', 'l');
    const short: CounterSpec = { id: 'short', limit: 1000, windowMs: 20, sliding: false };
    const g = await store.acquire([{ counter: short, amount: 10 }], Date.now());
    assert.equal(g.ok, true);
    // Both windows over: the held slot goes (grace 0) and the only slot is reused by another counter.
    await new Promise((r) => setTimeout(r, 60));
    host.poll();
    assert.equal(host.table.used, 0);
    const other = spec('other');
    const g2 = await store.acquire([{ counter: other, amount: 100 }], Date.now());
    assert.equal(g2.ok, true);
    if (g.ok) store.settle(g, [999]);
    const v = store.peek(other, Date.now());
    assert.deepEqual([v.consumed, v.reserved], [0, 100]);
    if (g2.ok) store.settle(g2, [50]);
    assert.deepEqual([store.peek(other, Date.now()).consumed, store.peek(other, Date.now()).reserved], [50, 0]);
    host.close();
    await backend.close();
  });

  it('health follows the host; a detached store is unavailable and delegates get an error', async () => {
    const backend = new LocalQuotaStore('local');
    const host = new LedgerHost({ maxSlots: 16 });
    host.attach('s', backend);
    const store = new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('s', 'l');
    assert.equal(store.health(), 'ok');
    host.detach('s');
    assert.equal(store.health(), 'unavailable');
    await assert.rejects(async () => store.acquire([{ counter: spec('d'), amount: 1 }], Date.now()), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
    host.close();
    await backend.close();
  });

  it('a delegate that fails rejects with SLC_QUOTA_STORE_UNAVAILABLE', async () => {
    const host = new LedgerHost({ maxSlots: 16 });
    const store = new LedgerClient(host.descriptor(), () => Promise.reject(new Error('port closed'))).storeFor('s', 'l');
    await assert.rejects(async () => store.acquire([{ counter: spec('e'), amount: 1 }], Date.now()), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
    await assert.rejects(store.flush(), (e: unknown) => e instanceof SluiceError);
    host.close();
  });

  it('a grant that arrives after the thread gave up (503) is released at once, not held until the window ends', async () => {
    const backend = new LocalQuotaStore('local');
    const host = new LedgerHost({ maxSlots: 16 });
    host.attach('s', backend);
    // The main thread answers only when the test lets it, long after the client's (short) timeout.
    let answer: ((r: LedgerReply) => void) | undefined;
    let asked: LedgerRequest | undefined;
    const store = new LedgerClient(host.descriptor(), (r) => {
      asked = r;
      return new Promise<LedgerReply>((resolve) => { answer = resolve; });
    }, { timeoutMs: 30 }).storeFor('s', 'l');
    const c = spec('late', 1000);
    const now = Date.now();
    await assert.rejects(async () => store.acquire([{ counter: c, amount: 400 }], now), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
    const reply = await host.handle(asked!);
    assert.equal(reply.kind, 'granted');
    const slot = reply.kind === 'granted' ? reply.entries[0]!.slot : -1;
    assert.equal(host.table.f64[slot * SLOT_FIELDS + F_TR], 400, 'exported into the slot');
    answer!(reply);
    await new Promise((r) => setImmediate(r));
    assert.equal(host.table.f64[slot * SLOT_FIELDS + F_TR], 0, 'the late grant was released on the thread');
    host.poll();
    assert.deepEqual([backend.peek(c, now).consumed, backend.peek(c, now).reserved], [0, 0]);
    host.close();
    await backend.close();
  });
});
