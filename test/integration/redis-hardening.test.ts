// A poisoned counter stays a problem of that counter (issue 7, item 2), and the key cap (item 9), against a
// real redis-server: bad data in one counter's keys never fails the other counters of a batch nor opens the
// breaker; amounts no upstream can produce never reach Redis; past limits.max_quota_keys idle counters are
// evicted (their state is in Redis) and a new key is refused with 503 when none can be.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { isSluiceError } from '../../src/core/errors.ts';
import type { Metrics } from '../../src/metrics/registry.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { MAX_TOKENS_PER_REQUEST } from '../../src/quota/window.ts';
import { windowStartOf, type AcquireResult, type CounterSpec, type Grant } from '../../src/quota/types.ts';
import { redisCall, startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { holders } from '../conformance/load.ts';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { mockInstance } from '../helpers/gateway.ts';
import { eventually, startSluiceProcess } from '../helpers/sluice-process.ts';
import { freePorts } from '../helpers/free-port.ts';
import { redisStore, standaloneTarget } from '../conformance/redis-targets.ts';
import { LedgerHost } from '../../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';

const WINDOW = 10 * 60_000;
const run = randomBytes(3).toString('hex');
let n = 0;
const spec = (limit: number): CounterSpec => ({ id: `hard-${run}-${++n}`, limit, windowMs: WINDOW, sliding: false });

async function metricSum(m: Metrics[keyof Metrics], match: Record<string, string> = {}): Promise<number> {
  const got = await (m as { get(): Promise<{ values: { value: number; labels: Record<string, string | number> }[] }> }).get();
  return got.values.filter((v) => Object.entries(match).every(([k, want]) => v.labels[k] === want)).reduce((a, v) => a + v.value, 0);
}

function grantOf(r: AcquireResult): Grant {
  assert.ok(r.ok, 'admitted');
  return r;
}

describe('RedisQuotaStore hardening', () => {
  let redis: RedisServerHandle;
  const call = (a: (string | number)[]) => redisCall(redis, a, { password: redis.password });
  const keysOf = (c: CounterSpec, now: number) => cellKeys(counterTag(c.id), windowStartOf(now, WINDOW));
  before(async () => {
    redis = await startRedis({ password: 'hard-secret' });
  });
  after(async () => {
    await redis?.stop();
  });

  it('a counter whose keys hold bad data fails alone: other counters, other routes and the breaker are unaffected', async () => {
    const { store, metrics } = redisStore(standaloneTarget(redis));
    const other = redisStore(standaloneTarget(redis));
    const now = Date.now();
    const garbage = spec(1e9);
    const overflow = spec(1e19);
    const [c1, c2] = [spec(1e9), spec(1e9)];
    try {
      assert.ok(await store.ready());
      await call(['set', keysOf(garbage, now).c, 'not-a-number']);
      // INCRBY on it overflows int64 ("increment or decrement would overflow").
      await call(['set', keysOf(overflow, now).c, '9223372036854775800']);
      await assert.rejects(Promise.resolve(store.acquire([{ counter: garbage, amount: 10 }], now)), (e: unknown) => isSluiceError(e) && e.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
      const go = grantOf(await store.acquire([{ counter: overflow, amount: 10 }], now));
      const g1 = grantOf(await store.acquire([{ counter: c1, amount: 10 }], now));
      const g2 = grantOf(await store.acquire([{ counter: c2, amount: 10 }], now));
      store.settle(go, [100]);
      store.settle(g1, [7]);
      store.settle(g2, [9]);
      // One batch carries the poisoned cells and the healthy ones.
      await assert.rejects(store.flush(), /not acknowledged/);
      assert.equal(await call(['get', keysOf(c1, now).c]), '7');
      assert.equal(await call(['get', keysOf(c2, now).c]), '9');
      assert.equal(store.health(), 'ok', 'a reply error is not a connection fault');
      assert.equal(await metricSum(metrics.redisBreakerState), 0);
      assert.ok(await metricSum(metrics.redisErrors, { kind: 'reply' }) >= 2);
      // The healthy counters keep working, synchronously near a limit too, and so does another route's store.
      for (let i = 0; i < 20; i++) {
        const g = grantOf(await store.acquire([{ counter: c1, amount: 10 }], now));
        store.settle(g, [1]);
      }
      const og = grantOf(await other.store.acquire([{ counter: c2, amount: 10 }], now));
      other.store.settle(og, [1]);
      await other.store.flush();
      await call(['del', keysOf(garbage, now).c, keysOf(overflow, now).c]);
      // Repaired keys: the retried writes go through (absolute, so nothing is counted twice).
      await store.flush();
      assert.equal(await call(['get', keysOf(c1, now).c]), '27');
      assert.equal(await call(['get', keysOf(c2, now).c]), '10');
      assert.equal(await call(['get', keysOf(overflow, now).c]), '100');
      assert.equal(store.health(), 'ok');
    } finally {
      await store.close();
      await other.store.close();
    }
  });

  it('refuses amounts no upstream can produce: charges the reservation instead, counts and never writes them', async () => {
    const { store, metrics } = redisStore(standaloneTarget(redis));
    const now = Date.now();
    const c = spec(1e9);
    try {
      for (const bad of [1e300, Number.POSITIVE_INFINITY, Number.NaN, -5, 2 ** 60]) {
        const g = grantOf(await store.acquire([{ counter: c, amount: 50 }], now));
        store.settle(g, [bad]);
      }
      const g = grantOf(await store.acquire([{ counter: c, amount: 50 }], now));
      store.settle(g, [3]);
      await store.flush();
      assert.equal(await call(['get', keysOf(c, now).c]), String(5 * 50 + 3));
      assert.equal(await metricSum(metrics.quotaInvalidAmounts, { op: 'settle' }), 5);
      // An absurd estimate reserves the per-request maximum, never an unbounded number.
      const r = grantOf(await store.acquire([{ counter: c, amount: Number.POSITIVE_INFINITY }], now));
      assert.equal(store.peek(c, now).reserved, MAX_TOKENS_PER_REQUEST);
      assert.equal(await metricSum(metrics.quotaInvalidAmounts, { op: 'acquire' }), 1);
      store.release(r);
      await store.flush();
      assert.equal((await holders(call, keysOf(c, now).r)).reserved, 0);
      assert.equal(store.health(), 'ok');
    } finally {
      await store.close();
    }
  });

  it('past max_quota_keys: evicts flushed idle counters (re-learned from Redis), refuses a new key when none can go', async () => {
    const { store, metrics } = redisStore(standaloneTarget(redis), { maxKeys: 3 });
    const now = Date.now();
    const cs = [spec(1e9), spec(1e9), spec(1e9)];
    try {
      for (const c of cs) store.settle(grantOf(await store.acquire([{ counter: c, amount: 10 }], now)), [5]);
      await store.flush();
      const extra = spec(1e9);
      store.settle(grantOf(await store.acquire([{ counter: extra, amount: 10 }], now)), [5]);
      assert.equal(store.size, 3);
      assert.equal(await metricSum(metrics.quotaKeyEvictions, { outcome: 'evicted' }), 1);
      // The evicted counter (least recently used: the first) comes back with its total from Redis.
      await store.flush();
      store.settle(grantOf(await store.acquire([{ counter: cs[0]!, amount: 10 }], now)), [5]);
      assert.equal(store.peek(cs[0]!, now).consumed, 10);
      await store.flush();
      assert.equal(await call(['get', keysOf(cs[0]!, now).c]), '10');

      // Every tracked counter holds a running request: a new key is refused, nothing is admitted unmetered.
      const held = [];
      for (const c of [cs[0]!, cs[1]!, extra]) held.push(grantOf(await store.acquire([{ counter: c, amount: 10 }], now)));
      await assert.rejects(Promise.resolve(store.acquire([{ counter: spec(1e9), amount: 10 }], now)), (e: unknown) => isSluiceError(e) && e.code === 'SLC_OVERLOADED');
      assert.equal(await metricSum(metrics.quotaKeyEvictions, { outcome: 'overflow' }), 1);
      for (const g of held) store.release(g);
      await store.flush();
      assert.ok((await store.acquire([{ counter: spec(1e9), amount: 10 }], now)).ok);
      assert.equal(await metricSum(metrics.quotaTrackedKeys), 3);
      assert.equal((await holders(call, keysOf(cs[1]!, now).r)).reserved, 0);
    } finally {
      await store.close();
    }
  });

  it('with serving threads: counters linked to ledger slots are taken back and evicted past max_quota_keys, as with one thread', async () => {
    const { store, metrics } = redisStore(standaloneTarget(redis), { maxKeys: 3 });
    const host = new LedgerHost({ maxSlots: 64 });
    host.attach('r', store);
    const thread = new LedgerClient(host.descriptor(), (r) => host.handle(r)).storeFor('r', 'redis');
    const now = Date.now();
    const cs = [spec(1e9), spec(1e9), spec(1e9)];
    try {
      // Each counter's first admission is delegated and links a slot; the usage is settled on the thread.
      for (const c of cs) thread.settle(grantOf(await thread.acquire([{ counter: c, amount: 10 }], now)), [5]);
      host.poll();
      await store.flush();
      // Before: every tracked counter was linked, so none could go and a fourth key got 503 for two windows.
      const extra = spec(1e9);
      thread.settle(grantOf(await thread.acquire([{ counter: extra, amount: 10 }], now)), [5]);
      assert.equal(store.size, 3);
      assert.equal(await metricSum(metrics.quotaKeyEvictions, { outcome: 'evicted' }), 1);
      assert.equal(host.table.used, 3, 'the evicted counter\'s slot was freed');
      // The evicted counter (least recently used: the first) comes back with its total from Redis.
      host.poll();
      await store.flush();
      thread.settle(grantOf(await thread.acquire([{ counter: cs[0]!, amount: 10 }], now)), [5]);
      host.poll();
      await store.flush();
      assert.equal(await call(['get', keysOf(cs[0]!, now).c]), '10');
      for (const c of [cs[1]!, extra]) assert.equal(await call(['get', keysOf(c, now).c]), '5');

      // A thread holds a grant on every tracked counter: nothing can go, a new key is refused, never unmetered.
      // (Whichever of cs[1] and cs[2] is tracked, holding cs[1] leaves three tracked counters, all held.)
      const held = [];
      for (const c of [cs[0]!, extra, cs[1]!]) held.push(grantOf(await thread.acquire([{ counter: c, amount: 10 }], now)));
      assert.equal(store.size, 3);
      await assert.rejects(Promise.resolve(thread.acquire([{ counter: spec(1e9), amount: 10 }], now)), (e: unknown) => isSluiceError(e) && e.code === 'SLC_OVERLOADED');
      for (const g of held) thread.release(g);
      host.poll();
      await store.flush();
      assert.ok((await thread.acquire([{ counter: spec(1e9), amount: 10 }], now)).ok);
    } finally {
      host.close();
      await store.close();
    }
  });
});

describe('a wrong Redis password', () => {
  let redis: RedisServerHandle;
  let mock: MockUpstream;
  before(async () => {
    redis = await startRedis({ password: 'right-secret-4711' });
    mock = await startMockUpstream();
  });
  after(async () => {
    await mock?.close();
    await redis?.stop();
  });

  it('is named in the breaker\'s log line (WRONGPASS), not taken for a Redis that is down, and the password is never logged', async () => {
    const gw = await startSluiceProcess({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] },
      'ai-rate-limiting': { limit: 1000, time_window: 60, policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_password: 'wrong-secret-0815' },
    } }] });
    try {
      await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }) });
      await eventually('the breaker opens and says why', () => gw.logs.some((l) => l.includes('redis circuit breaker open') && /WRONGPASS|NOAUTH/.test(l)), 30_000);
      assert.ok(!gw.logs.some((l) => l.includes('wrong-secret-0815') || l.includes('right-secret-4711')), 'no password in the logs');
      // A Redis never reachable shows in the error counter an alert watches, not only in the breaker gauge.
      const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      const errors = [...metrics.matchAll(/^sluice_redis_errors_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
      assert.ok(errors > 0, `sluice_redis_errors_total counts the refused AUTH:\n${metrics.split('\n').filter((l) => l.startsWith('sluice_redis_errors')).join('\n')}`);
      assert.ok(!metrics.includes('wrong-secret-0815'), 'no password in the metrics');
    } finally { await gw.stop(); }
  });

  it('a Redis port with nothing listening is counted in sluice_redis_errors_total{kind="connection"}', async () => {
    const [closed] = await freePorts(1) as [number];
    const gw = await startSluiceProcess({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] },
      'ai-rate-limiting': { limit: 1000, time_window: 60, policy: 'redis', redis_host: '127.0.0.1', redis_port: closed },
    } }] });
    try {
      await eventually('connection errors are counted', async () => {
        const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
        const m = /^sluice_redis_errors_total\{[^}]*kind="connection"[^}]*\} (\d+)/m.exec(metrics);
        return m !== null && Number(m[1]) > 0;
      }, 30_000);
      // And logged, whatever the breaker does: a replica the views are read from fails without any write noticing.
      await eventually('connection errors are logged', () => gw.logs.some((l) => l.includes('redis connection error') && l.includes('"kind":"connection"')), 30_000);
    } finally { await gw.stop(); }
  });
});
