// /metrics of a multi-threaded process: every thread's registry summed with the main thread's.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createMetrics } from '../../src/metrics/registry.ts';
import { Gauge, Registry } from 'prom-client';
import { aggregateMetrics, metricsJson, metricsText } from '../../src/metrics/aggregate.ts';

describe('aggregateMetrics', () => {
  it('sums counters, histograms (hot slots included) and gauges across registries', async () => {
    const main = createMetrics({ defaultMetrics: true });
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ defaultMetrics: false });
    main.configReloads.inc({ outcome: 'ok' });
    for (const [m, n] of [[a, 3], [b, 5]] as const) {
      const slot = m.hot.requests.make({ route: 'r', instance: 'i', status: '200' });
      slot.add(n);
      m.requestsInFlight.set(n);
      m.redisErrors.inc({ store: 'redis-0', kind: 'timeout' }, n);
    }
    const { contentType, body } = await aggregateMetrics([await metricsJson(main.registry), await metricsJson(a.registry), await metricsJson(b.registry)]);
    assert.match(contentType, /^text\/plain/);
    assert.match(body, /^sluice_http_requests_total\{route="r",instance="i",status="200"\} 8$/m);
    assert.match(body, /^sluice_requests_in_flight 8$/m);
    assert.match(body, /^sluice_redis_errors_total\{store="redis-0",kind="timeout"\} 8$/m);
    assert.match(body, /^sluice_config_reloads_total\{outcome="ok"\} 1$/m);
    // The main thread's process metrics, which only it has, pass through whatever their aggregator.
    assert.match(body, /^sluice_process_cpu_user_seconds_total \d/m);
    assert.match(body, /^sluice_process_start_time_seconds \d/m);
    assert.match(body, /^sluice_nodejs_eventloop_lag_seconds \d/m);
    assert.doesNotMatch(body, /sluice_process_process_/);
  });

  it('a NaN value is written NaN (prom-client writes Nan, as the event-loop lag does before its first sample)', async () => {
    const reg = new Registry();
    new Gauge({ name: 't_nan', help: 'x', registers: [reg] }).set(Number.NaN);
    new Gauge({ name: 't_num', help: 'Nan in help text stays', registers: [reg] }).set(1);
    const { body } = await metricsText(reg);
    assert.match(body, /^t_nan NaN$/m);
    assert.doesNotMatch(body, / Nan$/m);
    assert.match(body, /Nan in help text stays/);
    const summed = await aggregateMetrics([await reg.getMetricsAsJSON()]);
    assert.match(summed.body, /^t_nan NaN$/m);
  });
});
