// k6: non-streaming chat completions through Sluice at a constant number of VUs.
//   k6 run -e BASE_URL=http://127.0.0.1:9080 load-tests/scenarios/non-stream.ts
// Each VU keeps one request in flight (closed loop). Thresholds fail the run on errors or a slow p99.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:9080';
const PATH = __ENV.CHAT_PATH || '/v1/chat/completions';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || '32');
const P99_MS = Number(__ENV.P99_MS || '250');

export const options: Options = {
  scenarios: {
    non_stream: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || '32'),
      duration: __ENV.DURATION || '30s',
    },
  },
  discardResponseBodies: false,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${P99_MS}`],
    checks: ['rate>0.99'],
    completion_tokens: ['count>0'],
  },
};

const totalTokens = new Trend('total_tokens_per_request');
const completionTokens = new Counter('completion_tokens');

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers.authorization = `Bearer ${__ENV.API_KEY}`;
const body = JSON.stringify({
  model: MODEL,
  messages: [{ role: 'user', content: 'Say hello to the load test, politely and briefly.' }],
  max_tokens: MAX_TOKENS,
});

interface Usage { prompt_tokens: number; completion_tokens: number; total_tokens: number }

export default function (): void {
  const res = http.post(`${BASE_URL}${PATH}`, body, { headers, tags: { scenario_kind: 'non_stream' } });
  let usage: Usage | undefined;
  let content: unknown;
  if (res.status === 200 && typeof res.body === 'string') {
    try {
      const json = JSON.parse(res.body) as { usage?: Usage; choices?: { message?: { content?: unknown } }[] };
      usage = json.usage;
      content = json.choices?.[0]?.message?.content;
    } catch {
      usage = undefined;
    }
  }
  check(res, {
    'status is 200': (r) => r.status === 200,
    'answer has content': () => typeof content === 'string' && content.length > 0,
    'usage adds up': () => usage !== undefined && usage.prompt_tokens + usage.completion_tokens === usage.total_tokens,
  });
  if (usage !== undefined) {
    totalTokens.add(usage.total_tokens);
    completionTokens.add(usage.completion_tokens);
  }
}
