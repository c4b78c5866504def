// One /metrics answer for a process of several serving threads: each thread's registry exported as JSON
// (getMetricsAsJSON, structured-cloneable) and summed with the main thread's by prom-client's aggregator.
import { AggregatorRegistry, type Registry, type RegistryContentType } from 'prom-client';

export type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

/** A registry's metrics as JSON (collect() hooks run, so hot slots are included). */
export function metricsJson(registry: Registry): Promise<MetricsJson> {
  return registry.getMetricsAsJSON();
}

/**
 * Sums every part (counters, histograms, and gauges such as requests in flight) into the Prometheus text format.
 * A metric only one part has (the main thread's process metrics) is taken as it is: prom-client's aggregators
 * for some default metrics (average, omit) are meant for copies of one metric across cluster workers.
 */
export async function aggregateMetrics(parts: readonly MetricsJson[]): Promise<{ contentType: string; body: string }> {
  const sources = new Map<string, number>();
  for (const p of parts) for (const m of p) sources.set(m.name, (sources.get(m.name) ?? 0) + 1);
  const prepared = parts.map((p) => p.map((m) => (sources.get(m.name) === 1 ? { ...m, aggregator: 'first' as const } : m)));
  const reg = AggregatorRegistry.aggregate(prepared);
  return metricsText(reg);
}

/** A registry's Prometheus text. prom-client 15 writes a NaN value as `Nan` (an event-loop lag with no samples yet,
 *  two scrapes apart by a few ms), which strict OpenMetrics parsers refuse: spelt `NaN` here. */
export async function metricsText(reg: Registry<RegistryContentType>): Promise<{ contentType: string; body: string }> {
  const body = await reg.metrics();
  return { contentType: reg.contentType, body: body.includes(' Nan') ? body.replace(/ Nan$/gm, ' NaN') : body };
}
