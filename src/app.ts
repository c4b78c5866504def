// Composition root: the one place that names concrete implementations (uWS front end, undici client,
// piscina pool, local or Redis quota stores) and wires them into a running gateway.
import type { SluiceConfig } from './config/types.ts';
import { log } from './core/log.ts';
import { startAdmin, startFrontend, type Listening } from './frontend/server.ts';
import { createMetrics, type Metrics } from './metrics/registry.ts';
import { Gateway } from './pipeline/gateway.ts';
import { buildSnapshot, type QuotaSource, type StoreResolver } from './pipeline/snapshot.ts';
import { createQuotaStore } from './quota/index.ts';
import type { QuotaStore } from './quota/types.ts';
import { UpstreamClient } from './upstream/client.ts';
import { WorkerPool } from './workers/pool.ts';
import { warmTokenizers } from './tokens/encoding.ts';

export interface SluiceHandle {
  readonly port: number;
  readonly adminPort: number;
  readonly metrics: Metrics;
  readonly gateway: Gateway;
  /** Swap in a new validated config; the old one stays when building the new snapshot fails. */
  reload(config: SluiceConfig): void;
  /** Stop accepting, let in-flight requests finish (bounded), flush quota deltas, release everything. */
  close(opts?: { drainMs?: number }): Promise<void>;
}

export interface StartOptions {
  /** Override listen/admin ports (tests pass 0 for ephemeral ports). */
  readonly port?: number;
  readonly adminPort?: number;
  readonly defaultMetrics?: boolean;
}

/** Quota stores outlive config snapshots, so a reload keeps every counter. Keyed by Redis target and degradation mode. */
class StoreRegistry implements StoreResolver {
  private readonly stores = new Map<string, QuotaStore>();
  private config: SluiceConfig;
  private readonly metrics: Metrics;

  constructor(config: SluiceConfig, metrics: Metrics) {
    this.config = config;
    this.metrics = metrics;
  }

  setConfig(config: SluiceConfig): void {
    this.config = config;
  }

  storeFor(source: QuotaSource): QuotaStore {
    // Validation leaves `redis` undefined under policy local (and for ai-token-ratelimit without a redis block).
    const target = source.redis;
    const key = target === undefined ? 'local' : `${target.id}|${source.allow_degradation ? 'degrade' : 'strict'}`;
    let store = this.stores.get(key);
    if (store === undefined) {
      store = createQuotaStore(target, {
        batching: this.config.redis_batching,
        metrics: this.metrics,
        allowDegradation: source.allow_degradation,
        storeLabel: target === undefined ? 'local' : `${target.mode}-${this.stores.size}`,
      });
      this.stores.set(key, store);
    }
    return store;
  }

  all(): QuotaStore[] {
    return [...this.stores.values()];
  }
}

export async function startSluice(config: SluiceConfig, opts: StartOptions = {}): Promise<SluiceHandle> {
  // Load the tokenizer tables now, not on the first request (130–330 ms).
  warmTokenizers();
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics });
  const stores = new StoreRegistry(config, metrics);
  const upstream = new UpstreamClient({
    connectMs: config.limits.upstream_connect_timeout_ms,
    firstByteMs: config.limits.upstream_first_byte_timeout_ms,
    idleMs: config.limits.upstream_idle_timeout_ms,
  });
  const pool = new WorkerPool({
    threads: config.workers,
    onTask: (kind, outcome) => metrics.workerTasks.inc({ kind, outcome }),
  });
  const gateway = new Gateway(buildSnapshot(config, stores), { metrics, upstream, pool });
  let front: Listening | undefined;
  let admin: Listening | undefined;
  try {
    front = await startFrontend(gateway, config.listen.host, opts.port ?? config.listen.port);
    admin = await startAdmin({
      metrics: async () => ({ contentType: metrics.registry.contentType, body: await metrics.registry.metrics() }),
      ready: () => stores.all().every((s) => s.health() !== 'unavailable'),
    }, config.admin.host, opts.adminPort ?? config.admin.port);
  } catch (err) {
    front?.close();
    await Promise.allSettled([pool.close(), upstream.close(), ...stores.all().map((s) => s.close())]);
    throw err;
  }
  log.info('sluice listening', { host: config.listen.host, port: front.port, admin_port: admin.port, workers: config.workers, routes: config.routes.length });

  let closed = false;
  const frontL = front;
  const adminL = admin;
  return {
    port: front.port,
    adminPort: admin.port,
    metrics,
    gateway,
    reload(next: SluiceConfig) {
      try {
        stores.setConfig(next);
        gateway.swap(buildSnapshot(next, stores));
        metrics.configReloads.inc({ outcome: 'ok' });
        log.info('config reloaded', { routes: next.routes.length });
      } catch (err) {
        stores.setConfig(gateway.current.config);
        metrics.configReloads.inc({ outcome: 'error' });
        log.error('config reload failed; keeping the previous config', { err });
        throw err;
      }
    },
    async close(closeOpts = {}) {
      if (closed) return;
      closed = true;
      frontL.stopListening();
      const deadline = Date.now() + (closeOpts.drainMs ?? 10_000);
      while (gateway.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      frontL.close();
      adminL.close();
      await Promise.allSettled(stores.all().map((s) => s.close()));
      await Promise.allSettled([pool.close(), upstream.close()]);
    },
  };
}
