// Memory per tracked quota key (issue 7, item 9): how much RSS and heap one distinct counter costs in this
// process, for the local store and the Redis store (and, for the latter, in redis-server), so that
// limits.max_quota_keys can be sized. Each key gets one acquire + settle, as a real request would do.
//
// Usage: node --import tsx native-bench/quota-keys.bench.ts [--quick]
// Bounded: about a minute; a redis-server on 127.0.0.1 is started and stopped here.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { RedisTargetConfig } from '../src/config/types.ts';
import { createMetrics } from '../src/metrics/registry.ts';
import { LocalQuotaStore } from '../src/quota/local-store.ts';
import { RedisQuotaStore } from '../src/quota/redis/redis-store.ts';
import type { CounterSpec, QuotaStore } from '../src/quota/types.ts';
import { parseInfo, redisCall, startRedis } from '../test/helpers/redis-topology.ts';
import { fmt, table } from './lib/stats.ts';

const QUICK = process.argv.includes('--quick');
const LOCAL_KEYS = QUICK ? 50_000 : 200_000;
const REDIS_KEYS = QUICK ? 20_000 : 50_000;
const HARD_STOP_MS = 170_000;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function settle(): { rss: number; heap: number } {
  for (let i = 0; i < 3; i++) gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heap: m.heapUsed };
}

/** A counter id shaped like the ones quota plans build (route, plugin, consumer key). */
const spec = (prefix: string, i: number): CounterSpec => ({ id: `route-${prefix}/arl/c/consumer-${i.toString(36).padStart(6, '0')}/`, limit: 1e9, windowMs: 3_600_000, sliding: false });

async function fill(store: QuotaStore, prefix: string, n: number, concurrency: number): Promise<void> {
  const now = Date.now();
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const c = spec(prefix, next++);
      const r = await store.acquire([{ counter: c, amount: 100 }], now);
      if (r.ok) store.settle(r, [60]);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  await store.flush();
}

async function main(): Promise<void> {
  const hard = setTimeout(() => {
    process.stderr.write('quota-keys bench: hard time limit reached, aborting\n');
    process.exit(2);
  }, HARD_STOP_MS);
  hard.unref();
  const rows: string[][] = [];

  {
    const store = new LocalQuotaStore('local', { maxKeys: LOCAL_KEYS * 2 });
    const before = settle();
    await fill(store, 'l', LOCAL_KEYS, 1);
    const after = settle();
    rows.push(['local', fmt(LOCAL_KEYS, 0), fmt((after.rss - before.rss) / LOCAL_KEYS, 0), fmt((after.heap - before.heap) / LOCAL_KEYS, 0), '—']);
    await store.close();
  }

  const redis = await startRedis();
  try {
    const target: RedisTargetConfig = {
      mode: 'standalone', host: redis.host, port: redis.port, username: undefined, password: undefined, database: 0,
      timeout_ms: 2000, connect_timeout_ms: 2000, cluster_nodes: [], cluster_name: undefined, sentinels: [],
      master_name: undefined, role: undefined, sentinel_username: undefined, sentinel_password: undefined,
      id: `bench-keys://${redis.host}:${redis.port}`,
    };
    const store = new RedisQuotaStore(target, {
      batching: { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 1_000_000 },
      metrics: createMetrics({ defaultMetrics: false }), allowDegradation: false, storeLabel: 'bench', maxKeys: REDIS_KEYS * 2,
    });
    if (!(await store.ready(10_000))) throw new Error('redis not ready');
    const redisBefore = Number(parseInfo(await redisCall(redis, ['info', 'memory'])).used_memory);
    const before = settle();
    await fill(store, 'r', REDIS_KEYS, 64);
    const after = settle();
    const redisAfter = Number(parseInfo(await redisCall(redis, ['info', 'memory'])).used_memory);
    rows.push(['redis', fmt(REDIS_KEYS, 0), fmt((after.rss - before.rss) / REDIS_KEYS, 0), fmt((after.heap - before.heap) / REDIS_KEYS, 0), fmt((redisAfter - redisBefore) / REDIS_KEYS, 0)]);
    await store.close();
  } finally {
    await redis.stop();
  }

  console.log(`\n## Memory per tracked quota key (one window, one acquire + settle each)\n`);
  console.log(table([['store', 'keys', 'RSS bytes / key', 'heap bytes / key', 'redis-server bytes / key'], ...rows]));
  console.log(`\nlimits.max_quota_keys = 100,000 (default) ⇒ about ${fmt(Number(rows[1]?.[2]?.replace(/,/g, '') ?? 0) * 100_000 / 1024 / 1024, 0)} MiB of RSS for a full Redis store.`);
}

await main();
