import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import { runQuotaStoreSuite } from './quota-store.case.ts';

runQuotaStoreSuite('local', async () => {
  const store = new LocalQuotaStore();
  return { store, close: () => store.close() };
});
