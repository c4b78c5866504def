import { after, before } from 'node:test';
import { startCluster, type ClusterHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { clusterTarget, redisFactory } from './redis-targets.ts';

let cluster: ClusterHandle;
before(async () => {
  cluster = await startCluster();
});
after(async () => {
  await cluster?.stop();
});

runQuotaStoreSuite('redis cluster (3 masters, 3 replicas)', redisFactory(() => clusterTarget(cluster)), { shared: true });
