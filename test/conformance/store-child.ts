// A process that holds reservations in a Redis store and then waits to be killed (lease tests).
// argv: JSON { target, counter, amount, count, leaseMs }. Prints "held <processId>" once the reservations
// are acknowledged by Redis.
import { createMetrics } from '../../src/metrics/registry.ts';
import { RedisQuotaStore } from '../../src/quota/redis/redis-store.ts';
import type { RedisTargetConfig } from '../../src/config/types.ts';
import type { CounterSpec } from '../../src/quota/types.ts';

const args = JSON.parse(process.argv[2] ?? '{}') as { target: RedisTargetConfig; counter: CounterSpec; amount: number; count: number; leaseMs: number; now: number };
const store = new RedisQuotaStore(args.target, {
  batching: { flush_interval_ms: 50, max_batch_keys: 1000, max_pending_keys: 100_000, reservation_lease_ms: args.leaseMs },
  metrics: createMetrics({ defaultMetrics: false }),
  allowDegradation: false,
  storeLabel: 'child',
});
if (!(await store.ready(10_000))) process.exit(2);
for (let i = 0; i < args.count; i++) {
  const r = await store.acquire([{ counter: args.counter, amount: args.amount }], args.now);
  if (!r.ok) process.exit(3);
}
await store.flush();
process.stdout.write(`held ${store.processId}\n`);
// Hold the reservations (renewing their lease) until killed.
setInterval(() => undefined, 1_000);
