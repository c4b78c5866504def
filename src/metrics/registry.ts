// Every metric Sluice exports, defined in one place. prom-client is imported nowhere else.
// Label values come from configuration only (route ids, instance names, consumer usernames, rule names),
// never from request data, so cardinality is bounded by the config. Secrets never become labels.
import { Registry, Counter, Histogram, Gauge, collectDefaultMetrics } from 'prom-client';
import { HotSlots, PlainGauge } from './slots.ts';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const SIZE_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
const FLUSH_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const ESTIMATE_BUCKETS = [-1000, -100, -10, -1, 0, 10, 100, 1000, 10000];

/** A label-less gauge moved on the request path: a PlainGauge, read by its prom-client Gauge at scrape time. */
function plainGauge(cfg: { name: string; help: string; registers: Registry[] }): PlainGauge {
  const g = new PlainGauge();
  new Gauge({ ...cfg, collect() { g.export(this); } });
  return g;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'sluice_' });
  const registers = [registry];
  // Per-request metrics live in plain-number slots (hot) and reach these metrics at scrape time via collect().
  const hot = new HotSlots(LATENCY_BUCKETS, ESTIMATE_BUCKETS);
  return {
    registry,
    hot,
    requests: new Counter({
      name: 'sluice_http_requests_total', help: 'Requests answered, by route, instance and status.',
      labelNames: ['route', 'instance', 'status'] as const, registers,
      collect() { hot.requests.export(this); },
    }),
    requestDuration: new Histogram({
      name: 'sluice_http_request_duration_seconds', help: 'Time from request to the last byte of the response.',
      labelNames: ['route', 'instance', 'status'] as const, buckets: LATENCY_BUCKETS, registers,
      collect() { hot.requestDuration.export(this); },
    }),
    upstreamFirstByte: new Histogram({
      name: 'sluice_upstream_first_byte_seconds', help: 'Time from sending the upstream request to its response headers.',
      labelNames: ['route', 'instance'] as const, buckets: LATENCY_BUCKETS, registers,
      collect() { hot.upstreamFirstByte.export(this); },
    }),
    upstreamAttempts: new Counter({
      name: 'sluice_upstream_attempts_total', help: 'Upstream attempts by outcome (ok, connect_error, timeout, protocol_error, http_429, http_5xx, aborted; resent: a send lost to the keep-alive race and sent again).',
      labelNames: ['route', 'instance', 'outcome'] as const, registers,
      collect() { hot.upstreamAttempts.export(this); },
    }),
    tokens: new Counter({
      name: 'sluice_tokens_total', help: 'Tokens used, from upstream usage or counted, by kind: prompt, completion, other (a reported total_tokens above prompt + completion, charged whole), and parts of those (never added on top): cached_prompt, cache_write (of prompt), reasoning (of completion).',
      labelNames: ['route', 'instance', 'consumer', 'kind'] as const, registers,
      collect() { hot.tokens.export(this); },
    }),
    tokensCharged: new Counter({
      name: 'sluice_quota_tokens_charged_total', help: 'Tokens charged to quotas at settlement.',
      labelNames: ['route', 'instance', 'rule', 'consumer'] as const, registers,
      collect() { hot.tokensCharged.export(this); },
    }),
    rejected: new Counter({
      name: 'sluice_quota_rejected_total', help: 'Requests rejected because a quota was spent.',
      labelNames: ['route', 'instance', 'rule', 'consumer'] as const, registers,
    }),
    fallbacks: new Counter({
      name: 'sluice_fallbacks_total', help: 'Times the next instance was tried, by reason.',
      labelNames: ['route', 'from_instance', 'reason'] as const, registers,
    }),
    estimateError: new Histogram({
      name: 'sluice_quota_estimate_error_tokens', help: 'Reserved minus actual tokens per settled request.',
      labelNames: ['route'] as const, buckets: ESTIMATE_BUCKETS, registers,
      collect() { hot.estimateError.export(this); },
    }),
    usageEstimated: new Counter({
      name: 'sluice_usage_estimated_total', help: 'Responses charged from counted text because upstream usage was missing, not believed or not covering all the text, by reason.',
      labelNames: ['route', 'reason'] as const, registers,
    }),
    workerTasks: new Counter({
      name: 'sluice_worker_tasks_total', help: 'Tasks run on worker threads, by kind and outcome.',
      labelNames: ['kind', 'outcome'] as const, registers,
    }),
    redisFlushes: new Counter({
      name: 'sluice_redis_flushes_total', help: 'Pipelined flushes of pre-aggregated deltas, by outcome.',
      labelNames: ['store', 'outcome'] as const, registers,
    }),
    redisFlushKeys: new Histogram({
      name: 'sluice_redis_flush_keys', help: 'Counter keys written per flush.',
      labelNames: ['store'] as const, buckets: SIZE_BUCKETS, registers,
    }),
    redisFlushCommands: new Histogram({
      name: 'sluice_redis_flush_commands', help: 'Redis commands per flush (batch size).',
      labelNames: ['store'] as const, buckets: SIZE_BUCKETS, registers,
    }),
    redisFlushDuration: new Histogram({
      name: 'sluice_redis_flush_duration_seconds', help: 'Round trip of one pipelined flush.',
      labelNames: ['store'] as const, buckets: FLUSH_BUCKETS, registers,
    }),
    redisCommands: new Counter({
      name: 'sluice_redis_commands_total', help: 'Redis commands sent, by path (flush, sync_admission, probe).',
      labelNames: ['store', 'path'] as const, registers,
    }),
    redisErrors: new Counter({
      name: 'sluice_redis_errors_total', help: 'Redis errors, by kind: timeout, connection (refused, unknown host, dropped), reply (an error reply, a refused AUTH), not_sent (no connection to send on).',
      labelNames: ['store', 'kind'] as const, registers,
    }),
    redisBreakerState: new Gauge({
      name: 'sluice_redis_breaker_state', help: 'Circuit breaker: 0 closed, 1 half-open, 2 open.',
      labelNames: ['store'] as const, registers,
    }),
    redisPendingDeltas: new Gauge({
      name: 'sluice_redis_pending_deltas', help: 'Counter keys with deltas not yet acknowledged by Redis.',
      labelNames: ['store'] as const, registers,
    }),
    redisDroppedDeltas: new Counter({
      name: 'sluice_redis_dropped_deltas_total', help: 'Deltas dropped because the pending backlog was full.',
      labelNames: ['store'] as const, registers,
    }),
    syncAdmissions: new Counter({
      name: 'sluice_quota_sync_admissions_total', help: 'Admissions decided by a synchronous Redis round trip (key near its limit).',
      labelNames: ['store'] as const, registers,
    }),
    degradedAdmissions: new Counter({
      name: 'sluice_quota_degraded_admissions_total', help: 'Admissions decided on local counters while Redis was unreachable.',
      labelNames: ['store'] as const, registers,
    }),
    quotaInvalidAmounts: new Counter({
      name: 'sluice_quota_invalid_amounts_total', help: 'Token amounts a quota store refused (non-finite, negative or too large), by operation.',
      labelNames: ['store', 'op'] as const, registers,
    }),
    quotaTrackedKeys: new Gauge({
      name: 'sluice_quota_tracked_keys', help: 'Quota counters tracked in this process (capped by limits.max_quota_keys).',
      labelNames: ['store'] as const, registers,
    }),
    quotaKeyEvictions: new Counter({
      name: 'sluice_quota_key_evictions_total', help: 'Quota counters over limits.max_quota_keys: evicted (idle, flushed) or overflow (new key refused with 503).',
      labelNames: ['store', 'outcome'] as const, registers,
    }),
    usageRejected: new Counter({
      name: 'sluice_usage_rejected_total', help: 'Upstream usage objects not believed (malformed, not_a_number, negative, fractional, too_large, inconsistent; zero_prompt, zero_completion: a 0 where the gateway counted more); the counted estimate (or count) was charged instead.',
      labelNames: ['route', 'reason'] as const, registers,
    }),
    shutdownCut: new Counter({
      name: 'sluice_shutdown_cut_total', help: 'Requests still running when the shutdown drain time ran out, cut and settled from counted text.',
      labelNames: ['route'] as const, registers,
    }),
    requestsInFlight: plainGauge({
      name: 'sluice_requests_in_flight', help: 'Requests accepted by the front end whose response has not finished or aborted yet.', registers,
    }),
    bodyBytesInFlight: plainGauge({
      name: 'sluice_request_body_bytes_in_flight', help: 'Request-body bytes held by the front end (budget: limits.max_inflight_body_bytes).', registers,
    }),
    answerBytesInFlight: plainGauge({
      name: 'sluice_upstream_answer_bytes_in_flight', help: 'Bytes of buffered upstream answers held while they arrive and until their clients have taken them (budget: limits.max_inflight_answer_bytes).', registers,
    }),
    frontendRejected: new Counter({
      name: 'sluice_frontend_rejected_total', help: 'Requests the front end answered itself before the pipeline, by reason.',
      labelNames: ['reason'] as const, registers,
    }),
    configReloads: new Counter({
      name: 'sluice_config_reloads_total', help: 'Configuration reloads by outcome.',
      labelNames: ['outcome'] as const, registers,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Metrics used by quota stores; tests may pass a fresh createMetrics({ defaultMetrics: false }). */
export type StoreMetrics = Pick<Metrics,
  'redisFlushes' | 'redisFlushKeys' | 'redisFlushCommands' | 'redisFlushDuration' | 'redisCommands' | 'redisErrors' |
  'redisBreakerState' | 'redisPendingDeltas' | 'redisDroppedDeltas' | 'syncAdmissions' | 'degradedAdmissions' | 'quotaInvalidAmounts' |
  'quotaTrackedKeys' | 'quotaKeyEvictions'>;

/** Every metric a quota store labels with `store` (the type check keeps it in step with StoreMetrics). */
const STORE_METRIC_KEYS = {
  redisFlushes: true, redisFlushKeys: true, redisFlushCommands: true, redisFlushDuration: true, redisCommands: true,
  redisErrors: true, redisBreakerState: true, redisPendingDeltas: true, redisDroppedDeltas: true, syncAdmissions: true,
  degradedAdmissions: true, quotaInvalidAmounts: true, quotaTrackedKeys: true, quotaKeyEvictions: true,
} as const satisfies Record<keyof StoreMetrics, true>;

type LabelSet = Record<string, string | number>;
interface Removable {
  get(): Promise<{ values: { labels: LabelSet }[] }> | { values: { labels: LabelSet }[] };
  remove(labels: LabelSet): void;
}

/**
 * Drops every series labelled `store="<store>"` (a quota store closed by a reload), so labels of closed stores
 * do not pile up in /metrics. Call it once the store is closed: a later update would bring the series back.
 */
export async function removeStoreSeries(metrics: StoreMetrics, store: string): Promise<void> {
  for (const key of Object.keys(STORE_METRIC_KEYS) as (keyof StoreMetrics)[]) {
    const metric = metrics[key] as unknown as Removable;
    const seen = new Set<string>();
    for (const { labels } of (await metric.get()).values) {
      if (labels.store !== store) continue;
      // A histogram's bucket samples carry `le`, which is not one of its label names.
      const { le: _le, ...own } = labels;
      const id = JSON.stringify(own);
      if (seen.has(id)) continue;
      seen.add(id);
      metric.remove(own);
    }
  }
}
