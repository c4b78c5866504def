// k6: many VUs share one token quota (a route-wide `ai-rate-limiting` limit, see load-tests/sluice.yaml route
// `quota`). What must hold under contention:
//   - once the quota is spent, requests are rejected with 429, an OpenAI-style error, Retry-After and
//     x-ratelimit-remaining-tokens: 0;
//   - within one window, the x-ratelimit-remaining-tokens a VU sees never increases (each VU's requests are
//     sequential, so its own view must be monotonic; a new window may raise it again);
//   - nothing else than 200 and 429 comes back.
//   k6 run -e BASE_URL=http://127.0.0.1:9080 load-tests/scenarios/quota-contention.ts
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import type { Options } from 'k6/options';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:9080';
const PATH = __ENV.QUOTA_PATH || '/quota/v1/chat/completions';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || '32');
// Pause between a VU's requests, seconds: keeps the run about contention rather than raw throughput.
const PAUSE_S = Number(__ENV.PAUSE_S || '0.05');

export const options: Options = {
  scenarios: {
    contention: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || '50'),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: {
    rate_limited_responses: ['count>0'],
    remaining_increased: ['count==0'],
    unexpected_status: ['count==0'],
    checks: ['rate>0.99'],
  },
};

const admitted = new Counter('admitted_responses');
const rateLimited = new Counter('rate_limited_responses');
const remainingIncreased = new Counter('remaining_increased');
const unexpected = new Counter('unexpected_status');

const headers: Record<string, string> = { 'content-type': 'application/json' };
if (__ENV.API_KEY) headers.authorization = `Bearer ${__ENV.API_KEY}`;
const body = JSON.stringify({
  model: MODEL,
  messages: [{ role: 'user', content: 'Spend a few tokens of the shared quota.' }],
  max_tokens: MAX_TOKENS,
});

/** k6 canonicalises header names (X-Ratelimit-Remaining-Tokens); look them up case-insensitively. */
function header(h: { [name: string]: string }, name: string): string | undefined {
  const want = name.toLowerCase();
  for (const k in h) if (k.toLowerCase() === want) return h[k];
  return undefined;
}

function intHeader(h: { [name: string]: string }, name: string): number | undefined {
  const raw = header(h, name);
  if (raw === undefined) return undefined;
  const n = parseInt(raw, 10);
  return Number.isFinite(n) ? n : undefined;
}

// Module scope is per VU in k6: this is one VU's view of the quota.
let lastRemaining: number | undefined;
// Latest time (ms) at which the window seen by the last response can have ended: reset is rounded up to whole
// seconds, so the window ends at or before `now + reset`.
let lastWindowEndMs = 0;

export default function (): void {
  const res = http.post(`${BASE_URL}${PATH}`, body, {
    headers,
    tags: { scenario_kind: 'quota' },
    // 429 is an expected outcome here, not a failed request.
    responseCallback: http.expectedStatuses(200, 429),
  });
  const now = Date.now();
  const remaining = intHeader(res.headers, 'x-ratelimit-remaining-tokens');
  const reset = intHeader(res.headers, 'x-ratelimit-reset-tokens');

  if (res.status === 200) admitted.add(1);
  else if (res.status === 429) rateLimited.add(1);
  else unexpected.add(1, { status: String(res.status) });

  let errorType: unknown;
  if (res.status === 429 && typeof res.body === 'string') {
    try {
      errorType = (JSON.parse(res.body) as { error?: { type?: unknown } }).error?.type;
    } catch {
      errorType = undefined;
    }
  }
  check(res, {
    'status is 200 or 429': (r) => r.status === 200 || r.status === 429,
    'quota headers present': () => remaining !== undefined && reset !== undefined,
    '429 has Retry-After': (r) => r.status !== 429 || (intHeader(r.headers, 'retry-after') ?? 0) >= 1,
    '429 shows remaining 0': (r) => r.status !== 429 || remaining === 0,
    '429 is an OpenAI-style rate_limit_error': (r) => r.status !== 429 || errorType === 'rate_limit_error',
  });

  if (remaining !== undefined && reset !== undefined) {
    const newWindow = now >= lastWindowEndMs;
    if (lastRemaining !== undefined && remaining > lastRemaining && !newWindow) {
      remainingIncreased.add(1);
    }
    lastRemaining = remaining;
    lastWindowEndMs = now + reset * 1000;
  }
  if (PAUSE_S > 0) sleep(PAUSE_S);
}
