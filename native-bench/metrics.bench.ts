// What the per-request metric calls cost (issue 11 item 2): the per-call prom-client API the gateway used
// (label objects hashed and validated on every call) against the pre-resolved slots of src/metrics/slots.ts,
// alternated in one process. One request-equivalent is what a JSON request with one quota records:
// upstream first byte + attempt outcome, prompt + completion tokens, one charged quota, requests + duration.
// Also times one /metrics scrape of the resulting series with each.
//   node --import tsx native-bench/metrics.bench.ts [--requests 200000] [--rounds 7]
import { numArg } from './lib/args.ts';
import { fmt, median, table } from './lib/stats.ts';
import { createMetrics, type Metrics } from '../src/metrics/registry.ts';

const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const requests = flag('--requests') === undefined ? 200_000 : numArg('--requests', flag('--requests'), 1000, 10_000_000);
const rounds = flag('--rounds') === undefined ? 7 : numArg('--rounds', flag('--rounds'), 1, 50);

// A spread of label values like a small config: 4 routes × 2 instances × 3 consumers, a few statuses.
const ROUTES = ['chat', 'embed', 'resp', 'claude'];
const INSTANCES = ['primary', 'backup'];
const CONSUMERS = ['alice', 'bob', ''];
const STATUSES = [200, 200, 200, 200, 200, 200, 200, 429];

function oldWay(m: Metrics, i: number): void {
  const route = ROUTES[i & 3]!;
  const instance = INSTANCES[(i >> 2) & 1]!;
  const consumer = CONSUMERS[i % 3]!;
  const status = STATUSES[i & 7]!;
  m.upstreamFirstByte.observe({ route, instance }, 0.0004);
  m.upstreamAttempts.inc({ route, instance, outcome: status === 429 ? 'http_429' : 'ok' });
  m.tokens.inc({ route, instance, consumer, kind: 'prompt' }, 12);
  m.tokens.inc({ route, instance, consumer, kind: 'completion' }, 30);
  m.tokensCharged.inc({ route, instance, rule: 'r0', consumer }, 42);
  const labels = { route, instance, status: String(status) };
  m.requests.inc(labels);
  m.requestDuration.observe(labels, 0.0007);
}

function newWay(m: Metrics, i: number): void {
  const route = ROUTES[i & 3]!;
  const instance = INSTANCES[(i >> 2) & 1]!;
  const consumer = CONSUMERS[i % 3]!;
  const status = STATUSES[i & 7]!;
  // As gateway.ts does: resolved once in attempt(), once in settle(), once in observe().
  const a = m.hot.route(route, instance);
  a.firstByte(0.0004);
  a.attempt(status === 429 ? 'http_429' : 'ok');
  const s = m.hot.route(route, instance);
  const t = s.tokens(consumer);
  t.add('prompt', 12);
  t.add('completion', 30);
  s.charged('r0', consumer, 42);
  m.hot.route(route, instance).answered(status, 0.0007);
}

function time(fn: (m: Metrics, i: number) => void, m: Metrics): number {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) fn(m, i);
  return Number(process.hrtime.bigint() - t0) / 1000 / requests;
}

async function scrapeMs(m: Metrics): Promise<number> {
  const t0 = process.hrtime.bigint();
  await m.registry.metrics();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const oldM = createMetrics({ defaultMetrics: false });
const newM = createMetrics({ defaultMetrics: false });
// Warm-up: JIT both paths and create every series.
time(oldWay, oldM);
time(newWay, newM);
const us: Record<'old' | 'new', number[]> = { old: [], new: [] };
const scrape: Record<'old' | 'new', number[]> = { old: [], new: [] };
for (let r = 0; r < rounds; r++) {
  us.old.push(time(oldWay, oldM));
  us.new.push(time(newWay, newM));
  scrape.old.push(await scrapeMs(oldM));
  scrape.new.push(await scrapeMs(newM));
}
const same = (await oldM.registry.metrics()) === (await newM.registry.metrics());
const rows = [['API', 'µs / request-equivalent (median)', 'min', 'max', 'scrape ms (median)']];
for (const k of ['old', 'new'] as const) {
  rows.push([k === 'old' ? 'per-call labels' : 'slots + collect()', fmt(median(us[k]), 3), fmt(Math.min(...us[k]), 3), fmt(Math.max(...us[k]), 3), fmt(median(scrape[k]), 2)]);
}
console.log(table(rows));
console.log(`saved ${fmt(median(us.old) - median(us.new), 3)} µs per request (${fmt(median(us.old) / median(us.new), 1)}×); ` +
  `${requests} request-equivalents × ${rounds} rounds; identical /metrics text: ${same}`);
