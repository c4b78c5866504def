// k6: streaming (SSE) chat completions through Sluice.
//   k6 run -e BASE_URL=http://127.0.0.1:9080 load-tests/scenarios/stream.ts
// k6's http client returns a response once it is complete, so frames are checked after the fact:
// every frame is a `data:` event, the stream ends with [DONE], and a usage frame appears only when asked for
// (Sluice asks upstream for usage to meter tokens and strips it when the client did not). `timings.waiting`
// is the time to the response head, which Sluice sends as soon as the upstream's head arrives: an upper
// bound of the gateway's share of time to first token, not the token itself.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:9080';
const PATH = __ENV.CHAT_PATH || '/v1/chat/completions';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || '32');
const INCLUDE_USAGE = __ENV.INCLUDE_USAGE === '1' || __ENV.INCLUDE_USAGE === 'true';
const TTFB_P99_MS = Number(__ENV.TTFB_P99_MS || '250');

export const options: Options = {
  scenarios: {
    stream: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || '64'),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    sse_time_to_head: [`p(99)<${TTFB_P99_MS}`],
    sse_frames: ['count>0'],
  },
};

const framesPerStream = new Trend('sse_frames_per_stream');
const frames = new Counter('sse_frames');
const timeToHead = new Trend('sse_time_to_head', true);
const streamDuration = new Trend('sse_stream_duration', true);

const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'text/event-stream' };
if (__ENV.API_KEY) headers.authorization = `Bearer ${__ENV.API_KEY}`;
const request: Record<string, unknown> = {
  model: MODEL,
  messages: [{ role: 'user', content: 'Stream a short greeting to the load test.' }],
  max_tokens: MAX_TOKENS,
  stream: true,
};
if (INCLUDE_USAGE) request.stream_options = { include_usage: true };
const body = JSON.stringify(request);

interface Chunk { choices?: { delta?: { content?: unknown } }[]; usage?: { total_tokens?: number } | null }

export default function (): void {
  const res = http.post(`${BASE_URL}${PATH}`, body, { headers, tags: { scenario_kind: 'stream' } });
  const text = typeof res.body === 'string' ? res.body : '';
  const events = text.split('\n\n').filter((e) => e.trim() !== '');
  let done = false;
  let malformed = 0;
  let content = '';
  let usageFrames = 0;
  for (const e of events) {
    if (!e.startsWith('data: ')) { malformed++; continue; }
    const data = e.slice(6);
    if (data === '[DONE]') { done = true; continue; }
    try {
      const chunk = JSON.parse(data) as Chunk;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (typeof delta === 'string') content += delta;
      if (chunk.usage !== undefined && chunk.usage !== null) usageFrames++;
    } catch {
      malformed++;
    }
  }
  const contentType = res.headers['Content-Type'] || res.headers['content-type'] || '';
  check(res, {
    'status is 200': (r) => r.status === 200,
    'is an event stream': () => contentType.indexOf('text/event-stream') === 0,
    'every frame is a data event': () => malformed === 0,
    'ends with [DONE]': () => done && events[events.length - 1] === 'data: [DONE]',
    'streamed some content': () => content.length > 0,
    'usage frame only when asked': () => (INCLUDE_USAGE ? usageFrames === 1 : usageFrames === 0),
  });
  framesPerStream.add(events.length);
  frames.add(events.length);
  timeToHead.add(res.timings.waiting);
  streamDuration.add(res.timings.duration);
}
