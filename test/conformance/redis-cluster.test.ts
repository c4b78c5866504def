import { after, before } from 'node:test';
import { startCluster, type ClusterHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { ledgerFactory } from './ledger-targets.ts';
import { clusterTarget, redisFactory } from './redis-targets.ts';

let cluster: ClusterHandle;
before(async () => {
  cluster = await startCluster();
});
after(async () => {
  await cluster?.stop();
});

runQuotaStoreSuite('redis cluster (3 masters, 3 replicas)', redisFactory(() => clusterTarget(cluster)), { shared: true });

// The same topology behind a serving thread's ledger (LedgerHost + LedgerClient over the Cluster store).
runQuotaStoreSuite('ledger over redis cluster', ledgerFactory(() => redisFactory(() => clusterTarget(cluster))()), { shared: true });
