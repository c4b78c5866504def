// The QuotaStore suite over a serving thread's LedgerQuotaStore, the main thread's LedgerHost and a local store.
import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';
import { ledgerFactory } from './ledger-targets.ts';

runQuotaStoreSuite('ledger over local', ledgerFactory(async () => {
  const store = new LocalQuotaStore();
  return { store, close: () => store.close() };
}));
