// Redis failures under load: a standalone Redis killed and restarted (with and without degradation), a hung
// Redis, a Cluster master killed, a Sentinel failover. No crashes, no lost usage, bounded latency.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { isSluiceError } from '../../src/core/errors.ts';
import { cellKeys, counterTag, hashSlot } from '../../src/quota/redis/keys.ts';
import { windowStartOf, type CounterSpec } from '../../src/quota/types.ts';
import {
  redisCall, startCluster, startRedis, startSentinel,
  type ClusterHandle, type HostPort, type RedisServerHandle, type SentinelHandle,
} from '../helpers/redis-topology.ts';
import { startFaultServer } from '../helpers/resp-fault-server.ts';
import { freePorts } from '../helpers/free-port.ts';
import type { RedisTargetConfig } from '../../src/config/types.ts';
import { flushUntilAcknowledged, holders, startLoad, until, warmUp, type Load } from '../conformance/load.ts';
import { clusterTarget, redisStore, sentinelTarget, standaloneTarget } from '../conformance/redis-targets.ts';

const WINDOW = 10 * 60_000;

function counters(prefix: string, n: number, limit = 1e12): CounterSpec[] {
  const run = randomBytes(3).toString('hex');
  return Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${run}-${i}`, limit, windowMs: WINDOW, sliding: false }));
}

async function total(owner: (key: string) => Promise<HostPort>, password: string | undefined, c: CounterSpec, now: number, kind: 'c' | 'r'): Promise<number> {
  const key = cellKeys(counterTag(c.id), windowStartOf(now, c.windowMs))[kind];
  const node = await owner(key);
  if (kind === 'r') return (await holders((a) => redisCall(node, a, { password }), key)).reserved;
  const v = await redisCall(node, ['get', key], { password });
  return v === null ? 0 : Number(v);
}

/**
 * Every charged token is in Redis and none twice (writes are absolute and sequence-numbered), and no
 * reservation is left. `exact`: per counter; otherwise (a failover may lose a write the old master had not
 * replicated, repaired by the cell's next write) at least what was charged per counter, at most in total.
 */
async function assertTotals(load: Load, cs: CounterSpec[], now: number, owner: (key: string) => Promise<HostPort>, password: string | undefined, exact: boolean): Promise<void> {
  let charged = 0;
  let stored = 0;
  for (const c of cs) {
    const want = load.charged.get(c.id) ?? 0;
    const got = await total(owner, password, c, now, 'c');
    charged += want;
    stored += got;
    if (exact) assert.equal(got, want, `consumed total of ${c.id}`);
    else assert.ok(got >= want, `${c.id}: Redis has ${got}, charged ${want}: usage lost`);
    assert.equal(await total(owner, password, c, now, 'r'), 0, `${c.id}: reservations left after the load`);
  }
  assert.ok(charged > 0, 'the load charged something');
  assert.ok(stored <= charged, `Redis has ${stored}, charged ${charged}: usage counted twice`);
}

describe('standalone Redis killed and restarted mid-load', () => {
  let redis: RedisServerHandle;
  const owner = async (): Promise<HostPort> => redis;
  before(async () => {
    redis = await startRedis({ password: 'failure-secret' });
  });
  after(async () => {
    await redis?.stop();
  });

  for (const allowDegradation of [false, true]) {
    it(`allow_degradation ${allowDegradation}: ${allowDegradation ? 'local decisions' : '503 once the view is stale'}, then every charged token in Redis`, async () => {
      const { store, metrics } = redisStore(standaloneTarget(redis), { allowDegradation, maxViewAgeMs: 800 });
      const cs = counters(`kill-${allowDegradation}`, 4);
      const now = Date.now();
      let load: Load | undefined;
      try {
        assert.ok(await store.ready());
        load = startLoad(store, cs, { amount: 40, actual: 25, concurrency: 16, now, maxMs: 30_000 });
        await sleep(400);
        assert.ok(load.admitted > 0);
        await redis.kill();
        await until(() => store.health() !== 'ok', 3_000, 'the breaker to open');
        assert.equal(store.health(), allowDegradation ? 'degraded' : 'unavailable');
        await sleep(1_200);
        load.mark();
        await sleep(500);
        const outage = load.mark();
        if (allowDegradation) {
          assert.equal(outage.unavailable, 0);
          assert.ok(outage.admitted > 0, 'served on local counters');
          assert.ok((await metrics.degradedAdmissions.get()).values.some((v) => v.value > 0));
        } else {
          assert.ok(outage.unavailable > 0, 'rejected with SLC_QUOTA_STORE_UNAVAILABLE');
          assert.equal(outage.admitted, 0, 'nothing admitted on a stale view');
        }
        await redis.restart();
        await until(() => store.health() === 'ok', 5_000, 'the breaker to close');
        await sleep(300);
        const after = load.mark();
        assert.ok(after.admitted > 0, 'admitting again');
        await load.stop();
        assert.deepEqual(load.otherErrors, []);
        await flushUntilAcknowledged(store);
        // Redis restarted empty: every process re-sends what it had written, so the totals are exact.
        await assertTotals(load, cs, now, owner, redis.password, true);
      } finally {
        await load?.stop();
        await store.close();
      }
    });
  }
});

describe('hung Redis', () => {
  it('a paused Redis does not hold acquire beyond timeout_ms, and the breaker closes again', async () => {
    const redis = await startRedis();
    const { store } = redisStore(standaloneTarget(redis, { timeout_ms: 300 }), { allowDegradation: false });
    try {
      assert.ok(await store.ready());
      const now = Date.now();
      const [far] = counters('hang-far', 1);
      const near = { ...counters('hang-near', 1, 1000)[0]! };
      const g = await store.acquire([{ counter: near, amount: 10 }], now);
      assert.ok(g.ok);
      store.settle(g, [995]);
      await warmUp(store, far!, now);
      redis.pause();
      // Near its limit the counter needs a synchronous round trip: bounded by the command timeout.
      const t0 = performance.now();
      await assert.rejects(Promise.resolve(store.acquire([{ counter: near, amount: 10 }], now)), (err: unknown) => isSluiceError(err) && err.code === 'SLC_QUOTA_STORE_UNAVAILABLE');
      const waited = performance.now() - t0;
      // Bounded by the command timeout (300 ms), not by how long Redis stays paused; 10x slack for a loaded machine.
      assert.ok(waited < 3_000, `acquire waited ${waited} ms`);
      // Far from its limit, with a fresh view, the request does not wait for Redis at all.
      const r = store.acquire([{ counter: far!, amount: 10 }], now);
      assert.equal(r instanceof Promise, false);
      assert.equal(store.health(), 'unavailable');
      const t1 = performance.now();
      await assert.rejects(Promise.resolve(store.acquire([{ counter: near, amount: 10 }], now)));
      assert.ok(performance.now() - t1 < 250, 'an open breaker answers at once (no round trip)');
      redis.resume();
      await until(() => store.health() === 'ok', 5_000, 'the breaker to close');
      await flushUntilAcknowledged(store);
    } finally {
      await store.close();
      await redis.stop();
    }
  });

  it('a server that never answers: acquire rejects within timeout_ms, the store reports unavailable', async () => {
    const fault = await startFaultServer('hang');
    const { store } = redisStore({ ...standaloneTarget({ host: '127.0.0.1', port: fault.port } as RedisServerHandle), timeout_ms: 200, connect_timeout_ms: 200 }, { allowDegradation: false });
    try {
      const [c] = counters('fault', 1);
      const t0 = performance.now();
      await assert.rejects(Promise.resolve(store.acquire([{ counter: c!, amount: 1 }], Date.now())), (err: unknown) => isSluiceError(err) && err.status === 503);
      assert.ok(performance.now() - t0 < 2_000, 'bounded by timeout_ms (200 ms; 10x slack for a loaded machine)');
      await until(() => store.health() === 'unavailable', 3_000, 'the breaker to open');
      const { store: lenient } = redisStore({ ...standaloneTarget({ host: '127.0.0.1', port: fault.port } as RedisServerHandle), timeout_ms: 200 }, { allowDegradation: true });
      const r = await lenient.acquire([{ counter: c!, amount: 1 }], Date.now());
      assert.equal(r.ok, true, 'degradation: decided on local counters');
      await lenient.close();
    } finally {
      await store.close();
      await fault.close();
    }
  });
});

describe('Redis Cluster master killed mid-load', () => {
  let cluster: ClusterHandle;
  before(async () => {
    cluster = await startCluster();
  });
  after(async () => {
    await cluster?.stop();
  });

  it('no errors reach acquire or settle, and the totals are intact', async () => {
    const { store } = redisStore(clusterTarget(cluster), { allowDegradation: false });
    const cs = counters('cluster-kill', 12);
    const now = Date.now();
    const owner = (key: string): Promise<HostPort> => cluster.ownerOfSlot(hashSlot(key));
    let load: Load | undefined;
    try {
      assert.ok(await store.ready());
      load = startLoad(store, cs, { amount: 40, actual: 25, concurrency: 16, now, maxMs: 40_000 });
      await sleep(400);
      const killed = await cluster.killMaster(cellKeys(counterTag(cs[0]!.id), windowStartOf(now, WINDOW)).c, { waitForSync: false });
      await sleep(500);
      await load.stop();
      assert.deepEqual(load.otherErrors, []);
      assert.equal(load.unavailable, 0);
      await flushUntilAcknowledged(store);
      await assertTotals(load, cs, now, owner, undefined, false);
      await cluster.restartNode(killed);
    } finally {
      await load?.stop();
      await store.close();
    }
  });
});

describe('Redis Sentinel failover mid-load', () => {
  let sentinel: SentinelHandle;
  before(async () => {
    sentinel = await startSentinel({ password: 'data-secret', sentinelPassword: 'sentinel-secret' });
  });
  after(async () => {
    await sentinel?.stop();
  });

  it('sentinels that refuse the password, name no such master or cannot be reached open the breaker (readiness 503), never a silent outage', async () => {
    const [closed] = await freePorts(1);
    const cases: [string, Partial<RedisTargetConfig>][] = [
      ['wrong sentinel password', { sentinel_password: 'not-the-password' }],
      ['wrong sentinel username', { sentinel_username: 'admin' }],
      ['unknown master name', { master_name: 'no-such-master' }],
      ['no sentinel reachable', { sentinels: [{ host: '127.0.0.1', port: closed! }], host: '127.0.0.1', port: closed! }],
    ];
    for (const [name, over] of cases) {
      const { store, metrics } = redisStore(sentinelTarget(sentinel, over), { allowDegradation: false });
      try {
        await until(() => store.health() === 'unavailable', 15_000, `${name}: the breaker to open`);
        assert.match(await metrics.registry.getSingleMetricAsString('sluice_redis_breaker_state'), /sluice_redis_breaker_state\{[^}]*\} 2/, name);
      } finally {
        await store.close();
      }
    }
  });

  it('no errors reach acquire or settle, and the totals are intact', async () => {
    const { store } = redisStore(sentinelTarget(sentinel), { allowDegradation: false });
    const cs = counters('sentinel-failover', 6);
    const now = Date.now();
    let load: Load | undefined;
    try {
      assert.ok(await store.ready());
      load = startLoad(store, cs, { amount: 40, actual: 25, concurrency: 16, now, maxMs: 40_000 });
      await sleep(400);
      await sentinel.failover({ waitForSync: false });
      await until(() => store.health() === 'ok', 10_000, 'the store to be healthy after the failover');
      await sleep(300);
      await load.stop();
      assert.deepEqual(load.otherErrors, []);
      assert.equal(load.unavailable, 0);
      await flushUntilAcknowledged(store);
      await assertTotals(load, cs, now, () => sentinel.master(), sentinel.password, false);
    } finally {
      await load?.stop();
      await store.close();
    }
  });
});
