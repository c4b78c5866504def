// RedisQuotaStore behaviour that the shared conformance suite cannot see: the key layout in Redis, expiry
// set once per window, commands per request, synchronous admission near a limit, the pending backlog bound,
// one client per target, the final flush on close, degraded shares, ACL users and the Sentinel replica role.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ManualClock } from '../../src/core/clock.ts';
import type { Metrics } from '../../src/metrics/registry.ts';
import { createQuotaStore, LocalQuotaStore } from '../../src/quota/index.ts';
import { cellKeys, counterTag } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec, type Grant } from '../../src/quota/types.ts';
import { redisCall, startRedis, startSentinel, type RedisServerHandle, type SentinelHandle } from '../helpers/redis-topology.ts';
import { flushUntilAcknowledged, holders, until, warmUp } from '../conformance/load.ts';
import { redisStore, sentinelTarget, standaloneTarget } from '../conformance/redis-targets.ts';

const MINUTE = 60_000;
const run = randomBytes(3).toString('hex');
let n = 0;
const spec = (limit: number, extra: Partial<CounterSpec> = {}): CounterSpec => ({ id: `rs-${run}-${++n}`, limit, windowMs: MINUTE, sliding: false, ...extra });

async function metricSum(m: Metrics[keyof Metrics], match: Record<string, string> = {}): Promise<number> {
  const got = await (m as { get(): Promise<{ values: { value: number; labels: Record<string, string | number> }[] }> }).get();
  return got.values.filter((v) => Object.entries(match).every(([k, want]) => v.labels[k] === want)).reduce((a, v) => a + v.value, 0);
}

describe('RedisQuotaStore on a standalone Redis', () => {
  let redis: RedisServerHandle;
  const call = (...args: (string | number)[]) => redisCall(redis, args, { password: redis.password });
  before(async () => {
    redis = await startRedis({ password: 'store-secret' });
  });
  after(async () => {
    await redis?.stop();
  });

  it('writes versioned, hash-tagged keys with a TTL set once per window and never refreshed', async () => {
    const { store } = redisStore(standaloneTarget(redis));
    try {
      const c = spec(1_000_000, { windowMs: 30_000 });
      const now = Date.now();
      const ws = windowStartOf(now, c.windowMs);
      const keys = cellKeys(counterTag(c.id), ws);
      assert.match(keys.c, /^sluice:v2:\{rs-[0-9a-f]+-\d+\}:\d+:c$/);
      const g = await store.acquire([{ counter: c, amount: 10 }], now);
      assert.ok(g.ok);
      store.settle(g, [7]);
      await store.flush();
      assert.equal(await call('get', keys.c), '7');
      assert.deepEqual(await holders((a) => call(...a), keys.r), { reserved: 0, consumed: 7, fields: 1 });
      const ttl1 = Number(await call('pttl', keys.c));
      const expected = ws + c.windowMs + 5_000 - Date.now();
      assert.ok(ttl1 > 0 && Math.abs(ttl1 - expected) < 1_500, `ttl ${ttl1}, expected about ${expected}`);
      await sleep(1_100);
      for (let i = 0; i < 5; i++) {
        const gi = await store.acquire([{ counter: c, amount: 10 }], now);
        assert.ok(gi.ok);
        store.settle(gi, [3]);
        await store.flush();
      }
      assert.equal(await call('get', keys.c), '22');
      const ttl2 = Number(await call('pttl', keys.c));
      assert.ok(ttl2 <= ttl1 - 1_000, `TTL refreshed by increments: ${ttl1} then ${ttl2}`);
    } finally {
      await store.close();
    }
  });

  it('far from the limit: a handful of Redis commands for a thousand requests, no synchronous admission', async () => {
    const { store, metrics } = redisStore(standaloneTarget(redis), { batching: { flush_interval_ms: 1_000, max_batch_keys: 1000, max_pending_keys: 10_000 } });
    try {
      const c = spec(1e9);
      const now = Date.now();
      await warmUp(store, c, now);
      const before = await metricSum(metrics.redisCommands);
      const syncBefore = await metricSum(metrics.syncAdmissions);
      for (let i = 0; i < 1000; i++) {
        const r = store.acquire([{ counter: c, amount: 100 }], now);
        assert.equal(r instanceof Promise, false, 'decided locally');
        assert.ok(!(r instanceof Promise) && r.ok);
        store.settle(r as Grant, [50]);
      }
      await store.flush();
      const commands = (await metricSum(metrics.redisCommands)) - before;
      assert.ok(commands <= 4, `${commands} commands for 1000 requests`);
      assert.equal(await metricSum(metrics.syncAdmissions), syncBefore, 'no synchronous admission');
      assert.equal(await call('get', cellKeys(counterTag(c.id), windowStartOf(now, MINUTE)).c), String(3 + 50 * 1000));
    } finally {
      await store.close();
    }
  });

  it('near the limit: admissions become synchronous and never overshoot by more than one request', async () => {
    // Admission policy is a function of the view and the clock: a manual clock (1 ms per request) makes view
    // ages and growth rates the same on any machine, however slow.
    const clock = new ManualClock();
    const { store, metrics } = redisStore(standaloneTarget(redis), { clock });
    try {
      const c = spec(50_000);
      const now = Date.now();
      const synchronous: boolean[] = [];
      for (let i = 0; i < 1000; i++) {
        const p = store.acquire([{ counter: c, amount: 100 }], now);
        const r = await p;
        if (!r.ok) break;
        synchronous.push(p instanceof Promise);
        store.settle(r, [100]);
        if (i % 10 === 0) await store.flush();
        clock.advance(1);
      }
      assert.equal(synchronous.length, 500, 'exactly the limit admitted');
      const remote = synchronous.filter(Boolean).length;
      assert.ok(synchronous.slice(100, 200).includes(false), 'far from the limit, admissions are local');
      assert.ok(synchronous.slice(-20).every(Boolean), 'the last admissions before the limit are synchronous');
      assert.ok(await metricSum(metrics.syncAdmissions) >= remote - 1);
    } finally {
      await store.close();
    }
  });

  it('bounds the pending backlog while Redis is unreachable and counts what it drops', async () => {
    const r2 = await startRedis();
    const { store, metrics } = redisStore(standaloneTarget(r2), {
      allowDegradation: true,
      batching: { flush_interval_ms: 20, max_batch_keys: 1000, max_pending_keys: 10 },
    });
    try {
      assert.ok(await store.ready());
      await r2.kill();
      await until(() => store.health() === 'degraded', 3_000, 'degraded');
      const now = Date.now();
      for (let i = 0; i < 50; i++) {
        const r = await store.acquire([{ counter: spec(1e9), amount: 5 }], now);
        assert.ok(r.ok);
        store.settle(r, [5]);
      }
      assert.ok(await metricSum(metrics.redisDroppedDeltas) >= 40);
      await assert.rejects(store.flush(), /not acknowledged/);
    } finally {
      await store.close();
      await r2.stop();
    }
  });

  it('shares one client per target id and writes pending deltas on close', async () => {
    const target = standaloneTarget(redis, { id: `shared-${run}` }, false);
    const a = redisStore(target).store;
    const b = redisStore(target).store;
    const c = spec(1e6);
    const now = Date.now();
    try {
      assert.ok(await a.ready());
      const clients = String(await call('client', 'list')).split('\n').filter((l) => / name=sluice /.test(l));
      assert.equal(clients.length, 1, 'one connection for both stores');
      const g = await b.acquire([{ counter: c, amount: 30 }], now);
      assert.ok(g.ok);
      b.settle(g, [30]);
    } finally {
      await b.close();
    }
    assert.equal(await call('get', cellKeys(counterTag(c.id), windowStartOf(now, MINUTE)).c), '30', 'close flushed');
    const g = await a.acquire([{ counter: c, amount: 1 }], now);
    assert.ok(g.ok, 'the other store keeps the shared client');
    await a.close();
  });

  it('degraded: replicas divide the remaining quota by their recent shares', async () => {
    const r3 = await startRedis();
    // Shares come from growth measured between reconciliations: a manual clock (1 ms per request) makes
    // them independent of the machine's speed.
    const clock = new ManualClock();
    const heavy = redisStore(standaloneTarget(r3), { allowDegradation: true, clock }).store;
    const light = redisStore(standaloneTarget(r3), { allowDegradation: true, clock }).store;
    const limit = 200_000;
    const c = spec(limit);
    const now = Date.now();
    try {
      assert.ok((await heavy.ready()) && (await light.ready()));
      // Healthy phase: heavy takes 3 of every 4 requests.
      for (let i = 0; i < 400; i++) {
        const s = i % 4 === 3 ? light : heavy;
        const r = await s.acquire([{ counter: c, amount: 100 }], now);
        assert.ok(r.ok);
        s.settle(r, [100]);
        if (i % 20 === 19) await Promise.all([heavy.flush(), light.flush()]);
        clock.advance(1);
      }
      await Promise.all([heavy.flush(), light.flush()]);
      await r3.kill();
      await until(() => heavy.health() === 'degraded' && light.health() === 'degraded', 3_000, 'degraded');
      // A long outage: views are too old to ride out (maxViewAgeMs 5 s), so every admission is degraded.
      clock.advance(6_000);
      // Outage: both replicas admit as much as their share allows; together they stay near the limit.
      const remaining = limit - 400 * 100;
      let tokens = 0;
      for (const s of [heavy, light]) {
        for (let i = 0; i < 5_000; i++) {
          const r = await s.acquire([{ counter: c, amount: 100 }], now);
          if (!r.ok) break;
          s.settle(r, [100]);
          tokens += 100;
        }
      }
      assert.ok(tokens <= remaining * 1.25, `${tokens} admitted against ${remaining} remaining`);
      assert.ok(tokens >= remaining * 0.75, `${tokens} admitted against ${remaining} remaining`);
    } finally {
      await heavy.close();
      await light.close();
      await r3.stop();
    }
  });

  it('authenticates with an ACL user', async () => {
    const acl = await startRedis({ username: 'sluice-user', password: 'acl-secret' });
    const { store } = redisStore(standaloneTarget(acl));
    try {
      assert.ok(await store.ready());
      const r = await store.acquire([{ counter: spec(100), amount: 1 }], Date.now());
      assert.ok(r.ok);
      store.settle(r, [1]);
      await store.flush();
    } finally {
      await store.close();
      await acl.stop();
    }
  });

  it('createQuotaStore builds a local store without a target and a Redis store with one', async () => {
    const metrics = (await import('../../src/metrics/registry.ts')).createMetrics({ defaultMetrics: false });
    const batching = { flush_interval_ms: 50, max_batch_keys: 100, max_pending_keys: 1000 };
    const local = createQuotaStore(undefined, { batching, metrics, allowDegradation: false, storeLabel: 'local' });
    assert.ok(local instanceof LocalQuotaStore);
    const shared = createQuotaStore(standaloneTarget(redis), { batching, metrics, allowDegradation: false, storeLabel: 'redis-0' });
    try {
      assert.equal(shared.name, 'redis-0');
      // Issued before the client has connected: waits for the connection (bounded), then decides.
      const r = await shared.acquire([{ counter: spec(10), amount: 1 }], Date.now());
      assert.ok(r.ok);
    } finally {
      await shared.close();
      await local.close();
    }
  });
});

describe('RedisQuotaStore on Sentinel with redis_role slave', () => {
  let sentinel: SentinelHandle;
  before(async () => {
    sentinel = await startSentinel({ password: 'data-secret', sentinelPassword: 'sentinel-secret' });
  });
  after(async () => {
    await sentinel?.stop();
  });

  it('writes to the master and refreshes read-only keys from a replica', async () => {
    const writer = redisStore(sentinelTarget(sentinel, { role: 'slave' })).store;
    const reader = redisStore(sentinelTarget(sentinel, { role: 'slave' })).store;
    const c = spec(1000);
    const now = Date.now();
    try {
      assert.ok(await writer.ready());
      const g = await writer.acquire([{ counter: c, amount: 300 }], now);
      assert.ok(g.ok);
      writer.settle(g, [300]);
      await writer.flush();
      const master = await sentinel.master();
      assert.equal(await redisCall(master, ['get', cellKeys(counterTag(c.id), windowStartOf(now, MINUTE)).c], { password: sentinel.password }), '300');
      assert.ok(await reader.ready());
      reader.peek(c, now);
      await flushUntilAcknowledged(reader);
      const replica = sentinel.nodes.find((n) => n.port !== master.port)!;
      // Replicas receive the scripts' effects, not the scripts: every EVALSHA there is a read.
      const mgets = async (): Promise<number> => {
        const info = String(await redisCall(replica, ['info', 'commandstats'], { password: sentinel.password }));
        return Number(/cmdstat_evalsha:calls=(\d+)/.exec(info)?.[1] ?? 0) + Number(/cmdstat_eval:calls=(\d+)/.exec(info)?.[1] ?? 0);
      };
      const before = await mgets();
      await until(async () => {
        reader.peek(c, now);
        await reader.flush();
        return reader.peek(c, now).consumed === 300;
      }, 3_000, 'the reader to learn the total');
      assert.ok((await mgets()) > before, 'the refresh was read from the replica');
    } finally {
      await writer.close();
      await reader.close();
    }
  });
});
