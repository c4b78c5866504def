// Conformance factories for the serving-thread ledger: a LedgerHost over a backend store and a
// LedgerClient on the same thread, the delegate calling host.handle directly.
import { LedgerHost } from '../../src/quota/shared/ledger-host.ts';
import { LedgerClient } from '../../src/quota/shared/ledger-store.ts';
import type { LedgerReply, LedgerRequest } from '../../src/quota/shared/protocol.ts';
import type { QuotaStore } from '../../src/quota/types.ts';
import type { StoreHandle } from './quota-store.case.ts';

export function ledgerFactory(backend: () => Promise<{ store: QuotaStore; close(): Promise<void> }>): () => Promise<StoreHandle> {
  return async () => {
    const b = await backend();
    const host = new LedgerHost({ maxSlots: 4096 });
    host.attach('store-a', b.store);
    // A structured clone both ways, as over a MessagePort.
    const delegate = async (req: LedgerRequest): Promise<LedgerReply> => structuredClone(await host.handle(structuredClone(req)));
    const client = new LedgerClient(structuredClone(host.descriptor()), delegate);
    const store = client.storeFor('store-a', 'ledger');
    return {
      store,
      close: async () => {
        host.close();
        await b.close();
      },
    };
  };
}
