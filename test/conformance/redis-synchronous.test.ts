// The conformance suite on the Redis store in synchronous mode (redis_batching.flush_interval_ms: 0): every
// admission is decided by a Redis round trip, deltas are written on the next tick.
import { after, before } from 'node:test';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { redisFactory, standaloneTarget } from './redis-targets.ts';

let redis: RedisServerHandle;
before(async () => {
  redis = await startRedis({ password: 'conformance-secret' });
});
after(async () => {
  await redis?.stop();
});

runQuotaStoreSuite('redis standalone, synchronous (flush_interval_ms 0)', redisFactory(() => standaloneTarget(redis), {
  batching: { flush_interval_ms: 0, max_batch_keys: 1000, max_pending_keys: 100_000 },
}), { shared: true });
