// The QuotaStore suite over a serving thread's LedgerQuotaStore, the main thread's LedgerHost and a Redis
// standalone store (each create() is another process: its own host, ledger and client).
import { after, before } from 'node:test';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { ledgerFactory } from './ledger-targets.ts';
import { redisFactory, standaloneTarget } from './redis-targets.ts';

let redis: RedisServerHandle;
before(async () => {
  redis = await startRedis({ password: 'conformance-secret' });
});
after(async () => {
  await redis?.stop();
});

runQuotaStoreSuite('ledger over redis standalone', ledgerFactory(() => redisFactory(() => standaloneTarget(redis))()), { shared: true });

runQuotaStoreSuite('ledger over redis standalone, synchronous', ledgerFactory(() => redisFactory(() => standaloneTarget(redis), {
  batching: { flush_interval_ms: 0, max_batch_keys: 1000, max_pending_keys: 100_000 },
})()), { shared: true });
