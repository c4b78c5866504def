// RedisTargetConfig builders for the harness topologies, and a store factory for the conformance suite.
import type { RedisTargetConfig } from '../../src/config/types.ts';
import { createMetrics } from '../../src/metrics/registry.ts';
import { RedisQuotaStore, type RedisStoreOptions } from '../../src/quota/redis/redis-store.ts';
import type { ClusterHandle, HostPort, RedisServerHandle, SentinelHandle } from '../helpers/redis-topology.ts';
import type { StoreHandle } from './quota-store.case.ts';

const BASE = {
  username: undefined, password: undefined, database: 0, timeout_ms: 500, connect_timeout_ms: 1000,
  cluster_nodes: [], cluster_name: undefined, sentinels: [], master_name: undefined, role: undefined,
  sentinel_username: undefined, sentinel_password: undefined,
} as const;

let seq = 0;

/** `unique`: a distinct id, so the store gets its own client, as a second replica would. */
export function standaloneTarget(r: RedisServerHandle, over: Partial<RedisTargetConfig> = {}, unique = true): RedisTargetConfig {
  return {
    ...BASE, mode: 'standalone', host: r.host, port: r.port, password: r.password, username: r.username,
    id: `standalone://${r.host}:${r.port}/0${unique ? `#${++seq}` : ''}`, ...over,
  };
}

export function clusterTarget(c: ClusterHandle, over: Partial<RedisTargetConfig> = {}, unique = true): RedisTargetConfig {
  const nodes: HostPort[] = c.nodes.slice(0, 3).map((n) => ({ host: n.host, port: n.port }));
  return {
    ...BASE, mode: 'cluster', host: nodes[0]!.host, port: nodes[0]!.port, cluster_nodes: nodes, password: c.password,
    id: `cluster://${nodes.map((n) => `${n.host}:${n.port}`).join(',')}/0${unique ? `#${++seq}` : ''}`, ...over,
  };
}

export function sentinelTarget(s: SentinelHandle, over: Partial<RedisTargetConfig> = {}, unique = true): RedisTargetConfig {
  return {
    ...BASE, mode: 'sentinel', host: s.sentinels[0]!.host, port: s.sentinels[0]!.port,
    sentinels: s.sentinels.map((n) => ({ host: n.host, port: n.port })), master_name: s.masterName, role: 'master',
    password: s.password, sentinel_password: s.sentinelPassword,
    id: `sentinel://${s.sentinels.map((n) => `${n.host}:${n.port}`).join(',')}/0?master=${s.masterName}${unique ? `#${++seq}` : ''}`, ...over,
  };
}

export type StoreOverrides = Partial<Omit<RedisStoreOptions, 'metrics'>>;

export function redisStore(target: RedisTargetConfig, over: StoreOverrides = {}): { store: RedisQuotaStore; metrics: ReturnType<typeof createMetrics> } {
  const metrics = createMetrics({ defaultMetrics: false });
  const store = new RedisQuotaStore(target, {
    batching: { flush_interval_ms: 50, max_batch_keys: 1000, max_pending_keys: 100_000 },
    allowDegradation: false,
    storeLabel: target.mode,
    metrics,
    ...over,
  });
  return { store, metrics };
}

/** A conformance factory: each call is a new store with its own client (a separate replica). */
export function redisFactory(target: () => RedisTargetConfig, over: StoreOverrides = {}): () => Promise<StoreHandle> {
  return async () => {
    const { store } = redisStore(target(), over);
    if (!(await store.ready(10_000))) {
      await store.close();
      throw new Error('redis store did not become ready');
    }
    return { store, close: () => store.close() };
  };
}
