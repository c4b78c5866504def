// What every serving loop owns besides its App and Gateway, built the same way on the main thread (workers: 1)
// and on each serving thread: the upstream client with the config's timeouts and the lazily started tokenizer pool.
import type { SluiceConfig } from '../config/types.ts';
import { LocalByteBudget, SharedByteBudget } from '../core/byte-budget.ts';
import type { Metrics } from '../metrics/registry.ts';
import { UpstreamClient, upstreamTimeouts } from '../upstream/client.ts';
import { WorkerPool } from '../workers/pool.ts';

/** `answerBudget`: the process's shared cell of limits.max_inflight_answer_bytes (serving threads); absent, the
 *  loop keeps its own counter (workers: 1). */
export function createServingParts(config: SluiceConfig, metrics: Metrics, answerBudget?: SharedArrayBuffer): { upstream: UpstreamClient; pool: WorkerPool } {
  const max = config.limits.max_inflight_answer_bytes;
  const budget = answerBudget !== undefined
    ? new SharedByteBudget(answerBudget, max, metrics.answerBytesInFlight)
    : new LocalByteBudget(max, metrics.answerBytesInFlight);
  const upstream = new UpstreamClient(upstreamTimeouts(config.limits), budget);
  const pool = new WorkerPool({
    threads: config.tokens.offload_threads,
    countBudgetMs: config.tokens.count_budget_ms,
    onTask: (kind, outcome) => metrics.workerTasks.inc({ kind, outcome }),
  });
  return { upstream, pool };
}
