// Builds the quota store for a policy: local counters, or counters shared through Redis.
import type { RedisBatchingConfig, RedisTargetConfig } from '../config/types.ts';
import type { StoreMetrics } from '../metrics/registry.ts';
import { LocalQuotaStore } from './local-store.ts';
import { RedisQuotaStore } from './redis/redis-store.ts';
import type { QuotaStore } from './types.ts';

export interface QuotaStoreOptions {
  readonly batching: RedisBatchingConfig;
  readonly metrics: StoreMetrics;
  readonly allowDegradation: boolean;
  /** Metric label of the store (from configuration, never a secret). */
  readonly storeLabel: string;
  /** limits.max_quota_keys: most counters tracked by the store in this process. */
  readonly maxKeys?: number;
}

/**
 * `undefined` target: a LocalQuotaStore. Otherwise a RedisQuotaStore; stores for the same target share one
 * client (connection or cluster client), its circuit breaker and its reconnect handling, so create one store
 * per (target, allow_degradation) and close each.
 */
export function createQuotaStore(target: RedisTargetConfig | undefined, opts: QuotaStoreOptions): QuotaStore {
  if (target === undefined) return new LocalQuotaStore(opts.storeLabel, { maxKeys: opts.maxKeys, metrics: opts.metrics });
  return new RedisQuotaStore(target, opts);
}

export { LocalQuotaStore } from './local-store.ts';
export { RedisQuotaStore, type RedisStoreOptions } from './redis/redis-store.ts';
