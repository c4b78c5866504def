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

runQuotaStoreSuite('redis standalone', redisFactory(() => standaloneTarget(redis)), { shared: true });
