import { after, before } from 'node:test';
import { startSentinel, type SentinelHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { redisFactory, sentinelTarget } from './redis-targets.ts';

let sentinel: SentinelHandle;
before(async () => {
  sentinel = await startSentinel({ password: 'data-secret', sentinelPassword: 'sentinel-secret' });
});
after(async () => {
  await sentinel?.stop();
});

runQuotaStoreSuite('redis sentinel (master, replica, 3 sentinels)', redisFactory(() => sentinelTarget(sentinel)), { shared: true });
