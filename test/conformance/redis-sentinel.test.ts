import { after, before } from 'node:test';
import { startSentinel, type SentinelHandle } from '../helpers/redis-topology.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { ledgerFactory } from './ledger-targets.ts';
import { redisFactory, sentinelTarget } from './redis-targets.ts';

let sentinel: SentinelHandle;
before(async () => {
  sentinel = await startSentinel({ password: 'data-secret', sentinelPassword: 'sentinel-secret' });
});
after(async () => {
  await sentinel?.stop();
});

runQuotaStoreSuite('redis sentinel (master, replica, 3 sentinels)', redisFactory(() => sentinelTarget(sentinel)), { shared: true });

// The same topology behind a serving thread's ledger (LedgerHost + LedgerClient over the Sentinel store).
runQuotaStoreSuite('ledger over redis sentinel', ledgerFactory(() => redisFactory(() => sentinelTarget(sentinel))()), { shared: true });
