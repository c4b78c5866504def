// The provider conformance table (issue 10 item 7): ONE list of cases run on every (client surface, instance
// provider) pair Sluice supports, through a real gateway and the mock upstream, with plain fetch and an SSE
// reader (one client for every surface keeps the table uniform; the SDK-level tests are in each provider's own
// test file). Every case ends with the exact-settlement check: the route's charged total (the
// sluice_quota_tokens_charged_total metric) and its quota store's consumed total both moved by exactly the
// usage the mock reported (/mock/stats, normalised kinds) or the counted estimate (our prompt count plus the
// generated text the mock wrote), and nothing is left reserved.
//
// A pair whose provider module or surface is not registered stays in the table and fails every case with the
// reason (never skipped). Adding a provider here is a row in PAIRS, its instance in instanceConfig() and, for a
// new client surface, its request and answer shapes (callOf, jsonText, jsonUsageTotal, parseSse, assertSurfaceError).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import type { MockUpstream } from '../../src/mock/server.ts';
import { anthropicPromptTokens, geminiPromptTokens } from '../../src/mock/tokens.ts';
import { prepareCall } from '../../src/providers/prepare.ts';
import { promptScaleOf, providerModule, surfaceSpec } from '../../src/providers/registry.ts';
import type { SurfaceId } from '../../src/providers/types.ts';
import type { CompiledRoute, Snapshot } from '../../src/pipeline/snapshot.ts';
import type { PlannedQuota } from '../../src/quota/plan.ts';
import type { TestGateway } from '../helpers/gateway.ts';

// ─── The table ──────────────────────────────────────────────────────────────────────────────────────────────

export type ProviderName = 'openai' | 'azure-openai' | 'anthropic' | 'gemini';

export interface Pair {
  /** Route-id friendly name, e.g. `chat-anthropic`. */
  readonly id: string;
  /** Human name: client surface → instance provider. */
  readonly label: string;
  readonly surface: SurfaceId;
  readonly provider: ProviderName;
  /** Whether the surface streams (embeddings do not: stream cases do not apply). */
  readonly streams: boolean;
  readonly mode: 'native' | 'translated';
}

export const PAIRS: readonly Pair[] = [
  { id: 'chat-openai', label: 'openai-chat → openai', surface: 'openai-chat', provider: 'openai', streams: true, mode: 'native' },
  { id: 'chat-azure', label: 'openai-chat → azure-openai', surface: 'openai-chat', provider: 'azure-openai', streams: true, mode: 'native' },
  { id: 'chat-anthropic', label: 'openai-chat → anthropic (translated)', surface: 'openai-chat', provider: 'anthropic', streams: true, mode: 'translated' },
  { id: 'chat-gemini', label: 'openai-chat → gemini (translated)', surface: 'openai-chat', provider: 'gemini', streams: true, mode: 'translated' },
  { id: 'messages-anthropic', label: 'anthropic-messages → anthropic', surface: 'anthropic-messages', provider: 'anthropic', streams: true, mode: 'native' },
  { id: 'generate-gemini', label: 'gemini-generate → gemini', surface: 'gemini-generate', provider: 'gemini', streams: true, mode: 'native' },
  { id: 'responses-openai', label: 'openai-responses → openai', surface: 'openai-responses', provider: 'openai', streams: true, mode: 'native' },
  { id: 'embeddings-openai', label: 'openai-embeddings → openai', surface: 'openai-embeddings', provider: 'openai', streams: false, mode: 'native' },
];

/** Route kinds of one pair: c = one instance, f = fallback on 429/5xx, q = fallback on a spent instance quota,
 *  s = a spent quota (429), r = Redis-backed (exact settlement). */
export type RouteKind = 'c' | 'f' | 'q' | 's' | 'r';

export const QUOTA_LIMIT = 100_000_000;
export const TIME_WINDOW = 3600;
const API_VERSION = '2024-10-21';
const SYSTEM = 'You are a concise oceanographer.';
const USER = 'Tell me about the tides, briefly.';
/** Completion tokens asked for: the mock generates exactly these (chat) or at most these (other surfaces). */
const MAX_TOKENS = 24;
const POLL_MS = 25;
/** Frame gap of the aborted stream. The HTTP/1.x guard learns of a client that closed only when it next writes
 *  to it, so the upstream is cancelled about two frames after the abort: keep this well above scheduling noise. */
const ABORT_FRAME_GAP_MS = 500;
const SETTLE_DEADLINE_MS = 15_000;

export function routeId(p: Pair, kind: RouteKind): string {
  return `${p.id}-${kind}`;
}

function routePrefix(p: Pair, kind: RouteKind): string {
  return `/${kind}/${p.id}`;
}

/** Why a pair cannot run before any gateway starts: its provider module or its surface is not registered. */
export function registrationProblem(p: Pair): string | undefined {
  if (providerModule(p.provider) === undefined) return `provider module "${p.provider}" is not registered in src/providers/registry.ts`;
  if (surfaceSpec(p.surface) === undefined) return `surface "${p.surface}" is not defined by any registered provider module`;
  return undefined;
}

/** Why a pair cannot run on a started gateway: its routes are missing, or its instance does not serve the surface as the table says. */
export function servingProblem(p: Pair, gw: TestGateway, kinds: readonly RouteKind[]): string | undefined {
  const snap = gw.handle.gateway.current;
  for (const kind of kinds) {
    const route = compiledRoute(snap, routeId(p, kind));
    if (route === undefined) return `route ${routeId(p, kind)} is missing from the gateway`;
    for (const inst of route.instances) {
      const mode = inst.provider.mode(p.surface);
      if (mode === undefined) return `provider "${p.provider}" does not serve surface "${p.surface}" (mode() is undefined)`;
      if (mode !== p.mode) return `provider "${p.provider}" serves "${p.surface}" ${mode}, the table expects ${p.mode}`;
    }
  }
  return undefined;
}

/** An instance of the pair's provider on the mock. `forward`: lets the per-request x-mock-* fault headers through. */
export function instanceConfig(p: Pair, name: string, mockUrl: string, forward: boolean): Record<string, unknown> {
  const fwd = forward ? { forward_headers: ['x-mock-*'] } : {};
  switch (p.provider) {
    case 'openai':
      return { name, provider: 'openai', auth: { header: { Authorization: `Bearer sk-${name}` } }, options: { model: `${name}-model` }, override: { endpoint: mockUrl }, ...fwd };
    case 'azure-openai':
      return {
        name, provider: 'azure-openai', auth: { header: { 'api-key': `az-${name}` } },
        override: { endpoint: `${mockUrl}/openai/deployments/${name}-dep/chat/completions?api-version=${API_VERSION}` }, ...fwd,
      };
    case 'anthropic':
      return { name, provider: 'anthropic', auth: { header: { 'x-api-key': `sk-ant-${name}` } }, options: { model: `${name}-model` }, override: { endpoint: mockUrl }, ...fwd };
    case 'gemini':
      return { name, provider: 'gemini', auth: { header: { 'x-goog-api-key': `g-${name}` } }, options: { model: `${name}-model` }, override: { endpoint: mockUrl }, ...fwd };
  }
}

/** The routes of one pair (kinds other than r), or only its Redis route. */
export function pairRoutes(p: Pair, mockUrl: string, kinds: readonly RouteKind[], redis?: Record<string, unknown>): Record<string, unknown>[] {
  const big = { limit: QUOTA_LIMIT, time_window: TIME_WINDOW };
  const route = (kind: RouteKind, proxy: Record<string, unknown>, arl: Record<string, unknown>) => ({
    id: routeId(p, kind), uri: `${routePrefix(p, kind)}/*`, plugins: { 'ai-proxy-multi': proxy, 'ai-rate-limiting': arl },
  });
  const out: Record<string, unknown>[] = [];
  for (const kind of kinds) {
    switch (kind) {
      case 'c':
        out.push(route('c', { instances: [instanceConfig(p, 'main', mockUrl, true)] }, big));
        break;
      case 'f':
        // `first` sees the fault headers, `second` does not and answers normally.
        out.push(route('f', {
          fallback_strategy: ['http_429', 'http_5xx'],
          instances: [{ ...instanceConfig(p, 'first', mockUrl, true), priority: 1 }, { ...instanceConfig(p, 'second', mockUrl, false), priority: 0 }],
        }, big));
        break;
      case 'q':
        // `first` has a quota of 1 token: its first request spends it, the next falls back to `second`.
        out.push(route('q', {
          fallback_strategy: ['rate_limiting', 'http_429', 'http_5xx'],
          instances: [{ ...instanceConfig(p, 'first', mockUrl, true), priority: 1 }, { ...instanceConfig(p, 'second', mockUrl, true), priority: 0 }],
        }, { ...big, instances: [{ name: 'first', limit: 1, time_window: TIME_WINDOW }] }));
        break;
      case 's':
        out.push(route('s', { instances: [instanceConfig(p, 'main', mockUrl, true)] }, { limit: 1, time_window: TIME_WINDOW }));
        break;
      case 'r':
        out.push(route('r', { instances: [instanceConfig(p, 'main', mockUrl, true)] }, { ...big, policy: 'redis', ...redis }));
        break;
    }
  }
  return out;
}

// ─── Requests in each surface's wire format ──────────────────────────────────────────────────────────────────

interface Call {
  readonly path: string;
  readonly query: string;
  readonly body: Record<string, unknown>;
}

function callOf(p: Pair, kind: RouteKind, stream: boolean): Call {
  const base = routePrefix(p, kind);
  switch (p.surface) {
    case 'openai-chat':
      return {
        path: `${base}/v1/chat/completions`, query: '',
        body: { model: 'gpt-4o', messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: USER }], max_tokens: MAX_TOKENS, ...(stream ? { stream: true } : {}) },
      };
    case 'anthropic-messages':
      return {
        path: `${base}/v1/messages`, query: '',
        body: { model: 'claude-client', max_tokens: MAX_TOKENS, system: SYSTEM, messages: [{ role: 'user', content: USER }], ...(stream ? { stream: true } : {}) },
      };
    case 'gemini-generate':
      return {
        path: `${base}/v1beta/models/gemini-client:${stream ? 'streamGenerateContent' : 'generateContent'}`, query: stream ? 'alt=sse' : '',
        body: { contents: [{ role: 'user', parts: [{ text: USER }] }], systemInstruction: { parts: [{ text: SYSTEM }] }, generationConfig: { maxOutputTokens: MAX_TOKENS } },
      };
    case 'openai-responses':
      return {
        path: `${base}/v1/responses`, query: '',
        body: { model: 'gpt-4o', instructions: SYSTEM, input: USER, max_output_tokens: MAX_TOKENS, ...(stream ? { stream: true } : {}) },
      };
    case 'openai-embeddings':
      return { path: `${base}/v1/embeddings`, query: '', body: { model: 'text-embedding-3-small', input: [USER, SYSTEM] } };
    default:
      throw new Error(`no request shape for surface ${p.surface}`);
  }
}

/** The gateway's own prompt estimate of a call (what an aborted or usage-less answer is charged for its prompt). */
function promptEstimate(p: Pair, call: Call): number {
  const r = prepareCall(Buffer.from(JSON.stringify(call.body)), {
    surface: p.surface, path: call.path, query: call.query, promptScale: Math.max(1, promptScaleOf(p.provider)), defaultMaxTokens: 0,
  });
  if (!r.ok) throw new Error(`prepareCall refused the table's own request: ${r.message}`);
  return r.promptTokens;
}

/**
 * The prompt of a stream cut before its final usage: Anthropic's message_start and Gemini's frames before the finish
 * report the upstream's own count (the mock's, from the body it received), which stands; OpenAI streams report
 * nothing before the end, so the gateway's estimate.
 */
function reportedPrompt(p: Pair, env: Env, call: Call): number {
  const body = env.mock.requests().at(-1)?.body as Record<string, unknown>;
  if (p.provider === 'anthropic') return anthropicPromptTokens(body);
  if (p.provider === 'gemini') return geminiPromptTokens(body);
  return promptEstimate(p, call);
}

/**
 * What the gateway charges for `tokens` of generated text it had to count itself: o200k × the instance
 * provider's scale where the model's tokenizer is not public, capped at the max_tokens the call allowed.
 */
function countedOutput(p: Pair, tokens: number): number {
  const scale = promptScaleOf(p.provider);
  return scale > 1 ? Math.min(Math.ceil(tokens * scale), MAX_TOKENS) : tokens;
}

/** Text of a buffered answer in the surface's format. */
function jsonText(p: Pair, j: any): string {
  switch (p.surface) {
    case 'openai-chat': return j?.choices?.[0]?.message?.content ?? '';
    case 'anthropic-messages': return (j?.content ?? []).filter((b: any) => b?.type === 'text').map((b: any) => b.text).join('');
    case 'gemini-generate': return (j?.candidates?.[0]?.content?.parts ?? []).map((x: any) => x?.text ?? '').join('');
    case 'openai-responses': return (j?.output ?? []).flatMap((o: any) => o?.content ?? []).filter((c: any) => c?.type === 'output_text').map((c: any) => c.text).join('');
    default: return '';
  }
}

/** The usage total a buffered answer shows its client (every kind normalised into prompt + completion). */
function jsonUsageTotal(p: Pair, j: any): number | undefined {
  switch (p.surface) {
    case 'openai-chat':
    case 'openai-responses':
    case 'openai-embeddings':
      return j?.usage?.total_tokens;
    case 'anthropic-messages': {
      const u = j?.usage;
      return u === undefined ? undefined : u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0) + u.output_tokens;
    }
    case 'gemini-generate':
      return j?.usageMetadata?.totalTokenCount;
    default:
      return undefined;
  }
}

interface Sse {
  /** Parsed `data:` payloads in order ('[DONE]' kept as the string). */
  readonly events: unknown[];
  readonly text: string;
  readonly complete: boolean;
}

/** Text and completeness from the complete SSE events in `raw` (a cut last event is ignored). */
function parseSse(p: Pair, raw: string): Sse {
  const blocks = raw.split(/\r?\n\r?\n/);
  blocks.pop();
  const events: unknown[] = [];
  let text = '';
  let complete = false;
  for (const b of blocks) {
    const data = b.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
    if (data === '') continue;
    if (data === '[DONE]') { events.push(data); complete = true; continue; }
    let e: any;
    try { e = JSON.parse(data); } catch { throw new Error(`unparsable SSE data: ${data.slice(0, 200)}`); }
    events.push(e);
    switch (p.surface) {
      case 'openai-chat':
        text += e?.choices?.[0]?.delta?.content ?? '';
        break;
      case 'anthropic-messages':
        if (e?.type === 'content_block_delta' && e.delta?.type === 'text_delta') text += e.delta.text;
        if (e?.type === 'message_stop') complete = true;
        break;
      case 'openai-responses':
        if (e?.type === 'response.output_text.delta') text += e.delta;
        if (e?.type === 'response.completed' || e?.type === 'response.incomplete') complete = true;
        break;
      case 'gemini-generate':
        for (const part of e?.candidates?.[0]?.content?.parts ?? []) text += part?.text ?? '';
        if (e?.candidates?.[0]?.finishReason !== undefined) complete = true;
        break;
      default:
        break;
    }
  }
  return { events, text, complete };
}

/** An error body in the client's surface format, for `status`. */
function assertSurfaceError(p: Pair, status: number, j: any, what: string): void {
  switch (p.surface) {
    case 'anthropic-messages':
      assert.equal(j?.type, 'error', `${what}: Anthropic error envelope: ${JSON.stringify(j)}`);
      assert.equal(j?.error?.type, status === 429 ? 'rate_limit_error' : j?.error?.type, `${what}: Anthropic error type`);
      assert.equal(typeof j?.error?.message, 'string');
      break;
    case 'gemini-generate':
      assert.equal(j?.error?.code, status, `${what}: Gemini error envelope: ${JSON.stringify(j)}`);
      assert.equal(j?.error?.status, status === 429 ? 'RESOURCE_EXHAUSTED' : j?.error?.status);
      assert.equal(typeof j?.error?.message, 'string');
      break;
    default:
      assert.equal(typeof j?.error?.message, 'string', `${what}: OpenAI error envelope: ${JSON.stringify(j)}`);
      assert.equal(j?.error?.type, status === 429 ? 'rate_limit_error' : j?.error?.type, `${what}: OpenAI error type`);
      break;
  }
}

// ─── Observables ─────────────────────────────────────────────────────────────────────────────────────────────

export interface Env {
  readonly gw: TestGateway;
  readonly mock: MockUpstream;
  /** Redis-backed gateway and a reader of the route's totals straight from Redis (exact-settlement variant). */
  readonly redisGw?: TestGateway;
  readonly redisTotals?: (routeId: string) => Promise<{ consumed: number; reserved: number }>;
  /** Why the pair cannot run (module not registered, gateway refused its routes); every case then fails with it. */
  readonly problem: (p: Pair) => string | undefined;
}

async function metricSum(gw: TestGateway, name: string, labels: Record<string, string>): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    const body = line.slice(name.length + 1, close);
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) sum += Number(line.slice(close + 1).trim());
  }
  return sum;
}

function charged(gw: TestGateway, route: string): Promise<number> {
  return metricSum(gw, 'sluice_quota_tokens_charged_total', { route });
}

function compiledRoute(snap: Snapshot, id: string): CompiledRoute | undefined {
  for (const list of snap.exact.values()) for (const r of list) if (r.id === id) return r;
  for (const p of snap.prefixes) if (p.route.id === id) return p.route;
  return undefined;
}

/** Consumed and reserved over every quota counter of a route, from the local store's own view. */
function storeTotals(gw: TestGateway, id: string): { consumed: number; reserved: number } {
  const snap = gw.handle.gateway.current;
  const route = compiledRoute(snap, id);
  assert.ok(route?.quotas !== undefined, `route ${id} has quotas`);
  const scope = route.quotas.anonymous;
  const quotas: PlannedQuota[] = [...scope.staticCommon];
  for (const list of scope.staticInstances?.values() ?? []) quotas.push(...list);
  assert.ok(quotas.length > 0, `route ${id}: static quotas found`);
  const now = Date.now();
  let consumed = 0;
  let reserved = 0;
  for (const q of quotas) {
    const store = snap.storeOf.get(q.source);
    assert.ok(store !== undefined, `route ${id}: a store for its quota`);
    const v = store.peek(q.counter, now);
    consumed += v.consumed;
    reserved += v.reserved;
  }
  return { consumed, reserved };
}

interface Mark {
  readonly charged: number;
  readonly consumed: number;
  readonly mockTotal: number;
  readonly mockText: number;
  readonly mockRequests: number;
}

/** The state of one route and of the mock before a case. */
async function mark(env: Env, gw: TestGateway, route: string, redis: boolean): Promise<Mark> {
  const s = env.mock.stats();
  return {
    charged: await charged(gw, route),
    consumed: redis ? (await env.redisTotals!(route)).consumed : storeTotals(gw, route).consumed,
    mockTotal: s.usage.total_tokens,
    mockText: s.textTokensSent,
    mockRequests: s.requests,
  };
}

/**
 * Exact settlement: once the answer is settled (polled: the machine is shared), the route's charged total and its
 * store's consumed total both moved by `expected`, and nothing is reserved any more.
 */
async function assertSettled(env: Env, gw: TestGateway, route: string, m0: Mark, expected: number, redis = false): Promise<void> {
  const deadline = Date.now() + SETTLE_DEADLINE_MS;
  let got = { charged: 0, consumed: 0, reserved: -1 };
  for (;;) {
    const t = redis ? await env.redisTotals!(route) : storeTotals(gw, route);
    got = { charged: (await charged(gw, route)) - m0.charged, consumed: t.consumed - m0.consumed, reserved: t.reserved };
    if ((got.charged === expected && got.consumed === expected && got.reserved === 0) || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  assert.deepEqual(got, { charged: expected, consumed: expected, reserved: 0 },
    `route ${route}: charged/consumed must move by exactly ${expected} and nothing stay reserved${redis ? ' (Redis)' : ''}`);
}

function send(gw: TestGateway, call: Call, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(`${gw.url}${call.path}${call.query === '' ? '' : `?${call.query}`}`, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(call.body), signal,
  });
}

async function json(r: Response): Promise<any> {
  const text = await r.text();
  try { return JSON.parse(text); } catch { throw new Error(`HTTP ${r.status}: not JSON: ${text.slice(0, 300)}`); }
}

/** Headers every token-kind-capable upstream honours: cached reads and reasoning (and Anthropic cache writes). */
const KINDS = { 'x-mock-cached-tokens': '3', 'x-mock-reasoning-tokens': '2', 'x-mock-cache-write-tokens': '2' };

/** Buffered call → 200 with content; returns the client's body. */
async function okJson(p: Pair, gw: TestGateway, call: Call, headers: Record<string, string> = {}): Promise<any> {
  const r = await send(gw, call, headers);
  const j = await json(r);
  assert.equal(r.status, 200, `${p.label}: ${JSON.stringify(j).slice(0, 300)}`);
  if (p.surface === 'openai-embeddings') assert.equal(j?.data?.length, 2, 'one embedding per input');
  else assert.ok(jsonText(p, j).length > 0, `${p.label}: the answer has text: ${JSON.stringify(j).slice(0, 300)}`);
  return j;
}

/** Streamed call → 200, a complete stream with text. */
async function okStream(p: Pair, gw: TestGateway, call: Call, headers: Record<string, string> = {}): Promise<{ res: Response; sse: Sse }> {
  const r = await send(gw, call, headers);
  const raw = await r.text();
  assert.equal(r.status, 200, `${p.label}: ${raw.slice(0, 300)}`);
  assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
  const sse = parseSse(p, raw);
  assert.ok(sse.text.length > 0, `${p.label}: the stream has text`);
  assert.ok(sse.complete, `${p.label}: the stream ended with its closing event: …${raw.slice(-300)}`);
  return { res: r, sse };
}

/**
 * Sends a streamed call over node:http and destroys the connection as soon as the first text arrived (fetch's
 * abort leaves closing the socket to its pool; this client hangs up at once, as a browser tab closing does).
 * Returns the text seen.
 */
function abortAfterText(p: Pair, gw: TestGateway, call: Call, headers: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { req.destroy(); reject(new Error('no text within the deadline')); }, SETTLE_DEADLINE_MS);
    const req = httpRequest(`${gw.url}${call.path}${call.query === '' ? '' : `?${call.query}`}`, {
      method: 'POST', agent: false, headers: { 'content-type': 'application/json', ...headers },
    }, (res) => {
      if (res.statusCode !== 200) { clearTimeout(timer); req.destroy(); reject(new Error(`HTTP ${res.statusCode}`)); return; }
      let raw = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => {
        raw += s;
        const text = parseSse(p, raw).text;
        if (text !== '') { clearTimeout(timer); req.destroy(); resolve(text); }
      });
    });
    req.on('error', () => undefined);
    req.end(JSON.stringify(call.body));
  });
}

function instanceHeaders(r: Response, inst: string): { limit: number; remaining: number; reset: number } {
  const get = (k: string) => {
    const v = r.headers.get(`x-ai-ratelimit-${k}-${inst}`);
    assert.ok(v !== null, `X-AI-RateLimit-${k}-${inst} present (got ${[...r.headers.keys()].filter((h) => h.includes('ratelimit')).join(', ')})`);
    return Number(v);
  };
  return { limit: get('limit'), remaining: get('remaining'), reset: get('reset') };
}

/** Which instance of a fallback route the mock's last request came from. */
function lastServedBy(env: Env): 'first' | 'second' | 'main' | 'unknown' {
  const last = env.mock.requests().at(-1);
  const sig = `${last?.path ?? ''} ${JSON.stringify((last?.body as { model?: unknown } | undefined)?.model ?? '')}`;
  for (const n of ['first', 'second', 'main'] as const) if (sig.includes(`${n}-`)) return n;
  return 'unknown';
}

// ─── The cases ───────────────────────────────────────────────────────────────────────────────────────────────

export interface Case {
  readonly id: string;
  readonly title: string;
  /** Cases that need a stream do not apply to surfaces without one (embeddings). */
  readonly needsStream?: boolean;
  readonly redis?: boolean;
  run(env: Env, p: Pair): Promise<void>;
}

export const CASES: readonly Case[] = [
  {
    id: 'non-stream', title: 'non-stream: the answer; charged = the usage the mock reported (cached/reasoning kinds inside)',
    async run(env, p) {
      const route = routeId(p, 'c');
      const m0 = await mark(env, env.gw, route, false);
      const j = await okJson(p, env.gw, callOf(p, 'c', false), KINDS);
      const reported = env.mock.stats().usage.total_tokens - m0.mockTotal;
      assert.ok(reported > 0, 'the mock reported usage');
      assert.equal(jsonUsageTotal(p, j), reported, 'the client sees the usage the upstream reported, mapped to its surface');
      assert.equal(lastServedBy(env), 'main');
      await assertSettled(env, env.gw, route, m0, reported);
    },
  },
  {
    id: 'stream', title: 'stream: a complete stream in the surface\'s format; charged = the streamed usage', needsStream: true,
    async run(env, p) {
      const route = routeId(p, 'c');
      const m0 = await mark(env, env.gw, route, false);
      await okStream(p, env.gw, callOf(p, 'c', true), KINDS);
      const reported = env.mock.stats().usage.total_tokens - m0.mockTotal;
      assert.ok(reported > 0, 'the upstream stream carried usage (the gateway asks for it where the API makes it optional)');
      await assertSettled(env, env.gw, route, m0, reported);
    },
  },
  {
    id: 'abort', title: 'client abort mid-stream: charged = the prompt (the upstream\'s count where its stream gave one first, else the estimate) + the text produced; reserved back to 0', needsStream: true,
    async run(env, p) {
      const route = routeId(p, 'c');
      const call = callOf(p, 'c', true);
      const m0 = await mark(env, env.gw, route, false);
      // Gaps between frames long enough that the abort reaches the upstream between two of them: the text
      // produced is then exactly what the gateway received (the mock counts every frame it wrote).
      const seen = await abortAfterText(p, env.gw, call, { 'x-mock-chunks': '8', 'x-mock-chunk-delay-ms': String(ABORT_FRAME_GAP_MS) });
      assert.ok(seen.length > 0, 'text arrived before the abort');
      // Wait until the mock saw the connection go: only then is the produced text final.
      const deadline = Date.now() + SETTLE_DEADLINE_MS;
      while (env.mock.stats().inFlight > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, POLL_MS));
      const s = env.mock.stats();
      assert.equal(s.usage.total_tokens, m0.mockTotal, 'an aborted stream reports no usage');
      const produced = s.textTokensSent - m0.mockText;
      assert.ok(produced > 0 && produced < MAX_TOKENS, `some but not all of the answer was produced (${produced})`);
      await assertSettled(env, env.gw, route, m0, reportedPrompt(p, env, call) + countedOutput(p, produced));
    },
  },
  {
    id: 'usage-missing', title: 'upstream usage missing (buffered, and streamed where the surface streams): charged = the counted estimate',
    async run(env, p) {
      const route = routeId(p, 'c');
      const off = { 'x-mock-usage': 'off' };
      let call = callOf(p, 'c', false);
      let m0 = await mark(env, env.gw, route, false);
      await okJson(p, env.gw, call, off);
      let s = env.mock.stats();
      assert.equal(s.usage.total_tokens, m0.mockTotal, 'the mock reported no usage');
      await assertSettled(env, env.gw, route, m0, promptEstimate(p, call) + countedOutput(p, s.textTokensSent - m0.mockText));
      if (!p.streams) return;
      call = callOf(p, 'c', true);
      m0 = await mark(env, env.gw, route, false);
      await okStream(p, env.gw, call, off);
      s = env.mock.stats();
      assert.equal(s.usage.total_tokens, m0.mockTotal, 'the mock reported no usage');
      await assertSettled(env, env.gw, route, m0, promptEstimate(p, call) + countedOutput(p, s.textTokensSent - m0.mockText));
    },
  },
  {
    id: 'fallback-429', title: 'fallback on 429: the first instance answers 429, the second serves; the fallback metric counts it',
    async run(env, p) {
      const route = routeId(p, 'f');
      const f0 = await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'http_429' });
      const m0 = await mark(env, env.gw, route, false);
      const j = await okJson(p, env.gw, callOf(p, 'f', false), { 'x-mock-status': '429' });
      assert.equal(lastServedBy(env), 'second');
      const s = env.mock.stats();
      assert.equal(s.requests - m0.mockRequests, 2, 'two upstream attempts');
      const reported = s.usage.total_tokens - m0.mockTotal;
      assert.equal(jsonUsageTotal(p, j), reported);
      assert.equal(await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'http_429' }) - f0, 1);
      await assertSettled(env, env.gw, route, m0, reported);
    },
  },
  {
    id: 'fallback-5xx', title: 'fallback on 5xx (streamed where the surface streams): the second instance serves; counted',
    async run(env, p) {
      const route = routeId(p, 'f');
      const f0 = await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'http_5xx' });
      const m0 = await mark(env, env.gw, route, false);
      if (p.streams) await okStream(p, env.gw, callOf(p, 'f', true), { 'x-mock-status': '503' });
      else await okJson(p, env.gw, callOf(p, 'f', false), { 'x-mock-status': '503' });
      assert.equal(lastServedBy(env), 'second');
      const s = env.mock.stats();
      assert.equal(s.requests - m0.mockRequests, 2, 'two upstream attempts');
      assert.equal(await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'http_5xx' }) - f0, 1);
      await assertSettled(env, env.gw, route, m0, s.usage.total_tokens - m0.mockTotal);
    },
  },
  {
    id: 'fallback-quota', title: 'fallback on a spent instance quota: the first instance\'s quota is spent, the second serves; counted',
    async run(env, p) {
      const route = routeId(p, 'q');
      const call = callOf(p, 'q', false);
      // The first request spends `first`'s 1-token quota (admitted below it, settled far above it).
      let m0 = await mark(env, env.gw, route, false);
      await okJson(p, env.gw, call);
      assert.equal(lastServedBy(env), 'first');
      await assertSettled(env, env.gw, route, m0, env.mock.stats().usage.total_tokens - m0.mockTotal);
      const f0 = await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'rate_limiting' });
      m0 = await mark(env, env.gw, route, false);
      const r = await send(env.gw, call);
      const j = await json(r);
      assert.equal(r.status, 200, JSON.stringify(j).slice(0, 300));
      assert.equal(lastServedBy(env), 'second');
      assert.equal(env.mock.stats().requests - m0.mockRequests, 1, 'the spent instance was never called');
      assert.equal(instanceHeaders(r, 'second').limit, QUOTA_LIMIT);
      assert.equal(await metricSum(env.gw, 'sluice_fallbacks_total', { route, from_instance: 'first', reason: 'rate_limiting' }) - f0, 1);
      await assertSettled(env, env.gw, route, m0, env.mock.stats().usage.total_tokens - m0.mockTotal);
    },
  },
  {
    id: 'quota-headers', title: 'quota headers: X-AI-RateLimit-{Limit,Remaining,Reset}-<instance> on buffered and streamed answers',
    async run(env, p) {
      const route = routeId(p, 'c');
      const m0 = await mark(env, env.gw, route, false);
      const r = await send(env.gw, callOf(p, 'c', false));
      await r.text();
      assert.equal(r.status, 200);
      const h = instanceHeaders(r, 'main');
      assert.equal(h.limit, QUOTA_LIMIT);
      assert.ok(h.reset > 0 && h.reset <= TIME_WINDOW, `reset ${h.reset}`);
      const used = env.mock.stats().usage.total_tokens - m0.mockTotal;
      // A buffered answer is settled before its headers leave: its Remaining already has its own usage taken off.
      assert.equal(h.remaining, QUOTA_LIMIT - m0.consumed - used, 'buffered: Remaining = limit - consumed, this answer included');
      await assertSettled(env, env.gw, route, m0, used);
      // A stream's headers leave before its usage is known: its Remaining is what the earlier requests left.
      const m1 = await mark(env, env.gw, route, false);
      const follow = p.streams ? await okStream(p, env.gw, callOf(p, 'c', true)).then((x) => x.res) : await send(env.gw, callOf(p, 'c', false));
      if (!p.streams) await follow.text();
      const used1 = env.mock.stats().usage.total_tokens - m1.mockTotal;
      const h1 = instanceHeaders(follow, 'main');
      assert.equal(h1.remaining, p.streams ? h.remaining : h.remaining - used1, 'the follow-up\'s Remaining shows the first answer settled exactly');
      await assertSettled(env, env.gw, route, m1, used1);
    },
  },
  {
    id: 'quota-spent', title: 'a spent quota → 429 in the surface\'s error format, Remaining 0; nothing reaches the upstream or is charged',
    async run(env, p) {
      const route = routeId(p, 's');
      let m0 = await mark(env, env.gw, route, false);
      await okJson(p, env.gw, callOf(p, 's', false));
      await assertSettled(env, env.gw, route, m0, env.mock.stats().usage.total_tokens - m0.mockTotal);
      m0 = await mark(env, env.gw, route, false);
      const r = await send(env.gw, callOf(p, 's', p.streams));
      const j = await json(r);
      assert.equal(r.status, 429, JSON.stringify(j));
      assertSurfaceError(p, 429, j, p.label);
      const h = instanceHeaders(r, 'main');
      assert.equal(h.limit, 1);
      assert.equal(h.remaining, 0);
      assert.ok(h.reset >= 1);
      assert.equal(env.mock.stats().requests, m0.mockRequests, 'no upstream request');
      await assertSettled(env, env.gw, route, m0, 0);
    },
  },
  {
    id: 'redis-exact', title: 'exact settlement on a Redis-backed quota (standalone): consumed in Redis = the reported usage, reserved 0', redis: true,
    async run(env, p) {
      assert.ok(env.redisGw !== undefined && env.redisTotals !== undefined, 'the Redis-backed gateway is running');
      const gw = env.redisGw;
      const route = routeId(p, 'r');
      const m0 = await mark(env, gw, route, true);
      await okJson(p, gw, callOf(p, 'r', false), KINDS);
      if (p.streams) await okStream(p, gw, callOf(p, 'r', true), KINDS);
      else await okJson(p, gw, callOf(p, 'r', false));
      const reported = env.mock.stats().usage.total_tokens - m0.mockTotal;
      assert.ok(reported > 0);
      await assertSettled(env, gw, route, m0, reported, true);
    },
  },
];

/** Registers one test per (pair, case): the table. */
export function runProviderConformance(setup: () => Promise<Env>, teardown: () => Promise<void>): void {
  describe('provider conformance: every (client surface, instance provider) pair × every case', () => {
    let env: Env | undefined;
    let setupError: Error | undefined;
    before(async () => {
      try { env = await setup(); } catch (err) { setupError = err as Error; }
    });
    after(teardown);
    for (const p of PAIRS) {
      describe(p.label, () => {
        for (const c of CASES) {
          if (c.needsStream === true && !p.streams) continue;
          it(`${c.id}: ${c.title}`, async () => {
            if (setupError !== undefined) throw setupError;
            const why = env!.problem(p);
            if (why !== undefined) assert.fail(`${p.label}: ${why}`);
            await c.run(env!, p);
          });
        }
      });
    }
  });
}
