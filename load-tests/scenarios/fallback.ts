// k6: ai-proxy-multi fallback under load. The `fallback` route of load-tests/sluice.yaml puts a failing
// instance first (it makes the mock answer 503; FALLBACK_PATH=/fallback-connect/v1/chat/completions picks the
// route whose first instance is unreachable instead), so every request must be answered by the next instance by
// priority. The mock echoes the model it was sent, and Sluice rewrites `model` per instance, so the answer's
// `model` names the instance that served it.
//   k6 run -e BASE_URL=http://127.0.0.1:9080 load-tests/scenarios/fallback.ts
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:9080';
const PATH = __ENV.FALLBACK_PATH || '/fallback/v1/chat/completions';
const EXPECT_MODEL = __ENV.EXPECT_MODEL || 'secondary-model';
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || '16');
const P99_MS = Number(__ENV.P99_MS || '300');

export const options: Options = {
  scenarios: {
    fallback: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || '16'),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    fallback_latency: [`p(99)<${P99_MS}`],
    served_by_unexpected_instance: ['count==0'],
  },
};

const fallbackLatency = new Trend('fallback_latency', true);
const wrongInstance = new Counter('served_by_unexpected_instance');

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers.authorization = `Bearer ${__ENV.API_KEY}`;
const body = JSON.stringify({
  model: 'client-chosen-model',
  messages: [{ role: 'user', content: 'Answer from whichever instance is healthy.' }],
  max_tokens: MAX_TOKENS,
});

export default function (): void {
  const res = http.post(`${BASE_URL}${PATH}`, body, { headers, tags: { scenario_kind: 'fallback' } });
  let model: unknown;
  if (res.status === 200 && typeof res.body === 'string') {
    try {
      model = (JSON.parse(res.body) as { model?: unknown }).model;
    } catch {
      model = undefined;
    }
  }
  check(res, {
    'status is 200 despite the failing first instance': (r) => r.status === 200,
    'served by the fallback instance': () => model === EXPECT_MODEL,
  });
  if (res.status === 200 && model !== EXPECT_MODEL) wrongInstance.add(1);
  fallbackLatency.add(res.timings.duration);
}
