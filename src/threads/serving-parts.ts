// What every serving loop owns besides its App and Gateway, built the same way on the main thread (workers: 1)
// and on each serving thread: the upstream client with the config's timeouts and the lazily started tokenizer pool.
import type { SluiceConfig } from '../config/types.ts';
import type { Metrics } from '../metrics/registry.ts';
import { UpstreamClient, upstreamTimeouts } from '../upstream/client.ts';
import { WorkerPool } from '../workers/pool.ts';

export function createServingParts(config: SluiceConfig, metrics: Metrics): { upstream: UpstreamClient; pool: WorkerPool } {
  const upstream = new UpstreamClient(upstreamTimeouts(config.limits));
  const pool = new WorkerPool({
    threads: config.tokens.offload_threads,
    countBudgetMs: config.tokens.count_budget_ms,
    onTask: (kind, outcome) => metrics.workerTasks.inc({ kind, outcome }),
  });
  return { upstream, pool };
}
