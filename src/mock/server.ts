// LLM stand-in for tests, demos and the benchmark baseline: every surface the gateway meters (OpenAI chat,
// completions, responses, embeddings; the Azure OpenAI URL shapes; Anthropic messages and count_tokens; Gemini
// generateContent/streamGenerateContent), each in its own wire format (openai-wire.ts, anthropic-wire.ts,
// gemini-wire.ts). Plain node:http with keep-alive: it must stay cheap, so per request it parses the body, counts
// prompt tokens (cached) and writes the answer. Faults, token kinds and auth checks are chosen per request by
// `x-mock-*` headers so one instance serves every test case; /mock/* control endpoints report what it saw.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import {
  anthropicPromptTokens, chatPromptTokens, completionPromptTokens, completionSlice, geminiPromptTokens, PromptShapeError,
  responsesPromptTokens,
} from './tokens.ts';
import {
  addUsage, emptyUsageSums, type AnswerContext, type Dialect, type Lies, type Renderer, type RequestFacts, type Route,
  type TokenPlan, type UsageSums,
} from './surface.ts';
import { chatRenderer, embeddingsJson, openaiError, readEmbeddings, responsesRenderer } from './openai-wire.ts';
import { anthropicError, messagesRenderer } from './anthropic-wire.ts';
import { geminiError, generateRenderer } from './gemini-wire.ts';

export type MockUsageMode = 'auto' | 'on' | 'off';

export interface MockUpstreamOptions {
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: an ephemeral port, read back from `port`. */
  port?: number;
  /** Streamed content frames (the completion tokens are spread over them), default 8. */
  chunks?: number;
  /** Delay between consecutive content frames, default 0. */
  chunkDelayMs?: number;
  /** Delay before the first streamed frame / before a non-stream response, default 0. */
  ttftMs?: number;
  /** Completion tokens when the request has no max_tokens / max_completion_tokens, default 16. */
  completionTokens?: number;
  /** Usage in answers: auto = always, except OpenAI chat/completions streams only with stream_options.include_usage
   *  (as OpenAI does); off = never. */
  usage?: MockUsageMode;
  /** Sent back in the `x-mock-name` response header. */
  name?: string;
  /** Default for the x-mock-require-auth header (same syntax): requests without the credential get a 401. */
  requireAuth?: string;
}

/** One received request as /mock/last-request and /mock/requests report it. */
export interface MockRequestRecord {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: Record<string, string>;
  /** The parsed JSON body; a non-JSON body as text (first 64 KiB); undefined before the body arrived. */
  body: unknown;
}

export interface MockStats {
  /** Requests to /v1/* and unknown paths (the /mock/* control endpoints are not counted). */
  requests: number;
  /** Answered statuses by code; `disconnected` counts deliberate drops (x-mock-disconnect-after), including
   *  streams already counted under 200. */
  byStatus: Record<string, number>;
  lastRequest?: MockRequestRecord;
  /** Requests being handled right now (a stream counts until its last frame or its disconnect). */
  inFlight: number;
  /** Requests whose client went away before the answer was complete. */
  aborted: number;
  /** Requests per surface (`openai.chat`, `azure.embeddings`, `anthropic.messages`, `gemini.generate`, …). */
  bySurface: Record<string, number>;
  /** Usage the mock reported in complete answers (lies excluded), in the gateway's normalised kinds. */
  usage: UsageSums;
  usageBySurface: Record<string, UsageSums>;
  /** Complete answers that carried honest usage (summed above). */
  usageReports: number;
  /** Answers whose usage was replaced by x-mock-lie-* values (not summed). */
  usageLies: number;
  /** Generated text tokens written to sockets (whole JSON answers and every stream frame, aborted streams included). */
  textTokensSent: number;
}

export interface MockUpstream {
  readonly port: number;
  /** http://host:port, without the /v1 suffix. */
  readonly url: string;
  stats(): MockStats;
  /** The last requests received, oldest first (at most MOCK_HISTORY). */
  requests(): MockRequestRecord[];
  reset(): void;
  close(): Promise<void>;
}

export const MOCK_MAX_BODY_BYTES = 32 * 1024 * 1024;
export const MOCK_HISTORY = 20;
const MAX_TOKENS_LIMIT = 1_000_000;
const MAX_DELAY_MS = 600_000;
/** Bodies above this are kept only for the newest request: 20 large bodies would pin ~640 MB. */
const HISTORY_BODY_BYTES = 1024 * 1024;
const TEXT_BODY_CHARS = 64 * 1024;

interface Settings {
  chunks: number;
  chunkDelayMs: number;
  ttftMs: number;
  completionTokens: number;
  usage: MockUsageMode;
  requireAuth: string | undefined;
}

/** `name=value` (a request header) or `?name=value` (a query parameter); `|` separates accepted alternatives. */
function parseAuthSpec(spec: string): Array<{ query: boolean; name: string; value: string }> {
  return spec.split('|').map((alt) => {
    const a = alt.trim();
    const query = a.startsWith('?');
    const eq = a.indexOf('=');
    const name = a.slice(query ? 1 : 0, eq).trim().toLowerCase();
    if (eq === -1 || name === '') throw new RangeError('require-auth must be name=value or ?name=value, alternatives split by |');
    return { query, name, value: a.slice(eq + 1) };
  });
}

/** Checks option values; the CLI reports these messages as they are. */
export function validateMockOptions(opts: MockUpstreamOptions): void {
  const int = (v: number | undefined, name: string, min: number, max: number) => {
    if (v !== undefined && (!Number.isInteger(v) || v < min || v > max)) throw new RangeError(`${name} must be an integer in ${min}..${max}`);
  };
  int(opts.port, 'port', 0, 65535);
  int(opts.chunks, 'chunks', 1, 100_000);
  int(opts.chunkDelayMs, 'chunkDelayMs', 0, MAX_DELAY_MS);
  int(opts.ttftMs, 'ttftMs', 0, MAX_DELAY_MS);
  int(opts.completionTokens, 'completionTokens', 0, MAX_TOKENS_LIMIT);
  if (opts.usage !== undefined && opts.usage !== 'auto' && opts.usage !== 'on' && opts.usage !== 'off') {
    throw new RangeError('usage must be auto, on or off');
  }
  if (opts.host !== undefined && (typeof opts.host !== 'string' || opts.host === '')) throw new RangeError('host must be a non-empty string');
  if (opts.requireAuth !== undefined) parseAuthSpec(opts.requireAuth);
}

class BadMockHeader extends Error {}

function headerInt(headers: IncomingHttpHeaders, name: string, min: number, max: number, fallback: number): number {
  const raw = headers[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isInteger(v) || v < min || v > max) {
    throw new BadMockHeader(`${name} must be an integer in ${min}..${max}`);
  }
  return v;
}

function flattenHeaders(h: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(h)) {
    const v = h[k];
    if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

const GEMINI_PATH = /^\/(?:v1|v1beta|v1alpha)\/models\/([^/:]+):(generateContent|streamGenerateContent|countTokens)$/;
const AZURE_DEPLOYMENT_PATH = /^\/openai\/deployments\/([^/]+)\/(chat\/completions|completions|embeddings|responses)$/;
const AZURE_V1_PATH = /^\/openai\/v1\/(chat\/completions|completions|embeddings|responses)$/;
const OPENAI_KINDS = { 'chat/completions': 'chat', completions: 'completion', embeddings: 'embeddings', responses: 'responses' } as const;
const AZURE_NAMES = { chat: 'azure.chat', completion: 'azure.completions', embeddings: 'azure.embeddings', responses: 'azure.responses' } as const;

/** The surface a path names; `apiVersion` tells whether the Azure path needs `?api-version=`. */
function routeFor(path: string): (Route & { apiVersion?: boolean }) | undefined {
  switch (path) {
    case '/v1/chat/completions': return { surface: 'openai.chat', dialect: 'openai', kind: 'chat' };
    case '/v1/completions': return { surface: 'openai.completions', dialect: 'openai', kind: 'completion' };
    case '/v1/responses': return { surface: 'openai.responses', dialect: 'openai', kind: 'responses' };
    case '/v1/embeddings': return { surface: 'openai.embeddings', dialect: 'openai', kind: 'embeddings' };
    case '/v1/messages': return { surface: 'anthropic.messages', dialect: 'anthropic', kind: 'messages' };
    case '/v1/messages/count_tokens': return { surface: 'anthropic.count_tokens', dialect: 'anthropic', kind: 'count_tokens' };
    case '/openai/responses': return { surface: 'azure.responses', dialect: 'openai', kind: 'responses', apiVersion: true };
  }
  let m = GEMINI_PATH.exec(path);
  if (m !== null) {
    let model: string;
    try { model = decodeURIComponent(m[1]!); } catch { return undefined; }
    if (m[2] === 'countTokens') return { surface: 'gemini.count_tokens', dialect: 'gemini', kind: 'gemini_count_tokens', model };
    const stream = m[2] === 'streamGenerateContent';
    return { surface: stream ? 'gemini.stream' : 'gemini.generate', dialect: 'gemini', kind: 'generate', model, stream };
  }
  m = AZURE_DEPLOYMENT_PATH.exec(path);
  if (m !== null) {
    let model: string;
    try { model = decodeURIComponent(m[1]!); } catch { return undefined; }
    const kind = OPENAI_KINDS[m[2] as keyof typeof OPENAI_KINDS];
    return { surface: AZURE_NAMES[kind], dialect: 'openai', kind, model, apiVersion: true };
  }
  m = AZURE_V1_PATH.exec(path);
  if (m !== null) {
    const kind = OPENAI_KINDS[m[1] as keyof typeof OPENAI_KINDS];
    return { surface: AZURE_NAMES[kind], dialect: 'openai', kind };
  }
  return undefined;
}

function dialectError(dialect: Dialect, status: number, message: string, code: string): string {
  switch (dialect) {
    case 'anthropic': return anthropicError(status, message);
    case 'gemini': return geminiError(status, message);
    default: return openaiError(status, message, code);
  }
}

/** Per-request state: one pending wait at a time, resolved early when the connection closes. */
class Exchange {
  closed = false;
  /** The mock dropped the connection on purpose: not counted as a client abort. */
  dropped = false;
  private timer: NodeJS.Timeout | undefined = undefined;
  private wake: (() => void) | undefined = undefined;
  constructor(readonly res: ServerResponse) {}

  readonly fire = (): void => {
    if (this.timer !== undefined) { clearTimeout(this.timer); this.timer = undefined; }
    this.res.off('drain', this.fire);
    const w = this.wake;
    this.wake = undefined;
    if (w !== undefined) w();
  };

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => { this.wake = resolve; this.timer = setTimeout(this.fire, ms); });
  }

  drain(): Promise<void> {
    return new Promise((resolve) => { this.wake = resolve; this.res.once('drain', this.fire); });
  }

  /** Writes one frame; resolves false once the connection is gone. Waits for 'drain' when the buffer is full. */
  async write(data: string): Promise<boolean> {
    if (this.closed) return false;
    if (data !== '' && !this.res.write(data)) await this.drain();
    return !this.closed;
  }

  /** Drops the connection once what was written so far reached the kernel. */
  drop(): void {
    this.dropped = true;
    const sock: Socket | null = this.res.socket;
    if (sock === null || sock.destroyed) return;
    if (sock.writableLength === 0) { sock.destroy(); return; }
    sock.end(() => sock.destroy());
  }
}

interface Plan {
  status: number;
  delayMs: number;
  /** -1: no disconnect. */
  disconnectAfter: number;
  /** -1: no in-stream error. */
  streamErrorAfter: number;
  streamErrorStatus: number | undefined;
  retryAfter: string | undefined;
  chunks: number;
  chunkDelayMs: number;
  ttftMs: number;
  completionTokens: number;
  cached: number;
  cacheWrite: number;
  reasoning: number;
  lies: Lies;
  usage: MockUsageMode;
  echoHeaders: boolean;
  requireAuth: string | undefined;
}

/** A lie header's value as JSON when it parses, else the text itself. */
function lieValue(raw: string | string[] | undefined): unknown {
  if (raw === undefined || Array.isArray(raw)) return undefined;
  try { return JSON.parse(raw) as unknown; } catch { return raw; }
}

function planFor(headers: IncomingHttpHeaders, s: Settings): Plan {
  const status = headerInt(headers, 'x-mock-status', 200, 599, 200);
  if (status !== 200 && status < 400) throw new BadMockHeader('x-mock-status must be 200 or 400..599');
  const usageRaw = headers['x-mock-usage'];
  let usage = s.usage;
  if (usageRaw !== undefined) {
    if (usageRaw !== 'auto' && usageRaw !== 'on' && usageRaw !== 'off') throw new BadMockHeader('x-mock-usage must be auto, on or off');
    usage = usageRaw;
  }
  const lies: Lies = {};
  for (const k of ['prompt', 'completion', 'total'] as const) {
    const v = lieValue(headers[`x-mock-lie-${k}-tokens`]);
    if (v !== undefined) lies[k] = v;
  }
  const errStatus = headers['x-mock-stream-error-status'] === undefined ? undefined : headerInt(headers, 'x-mock-stream-error-status', 400, 599, 500);
  const retryAfter = headers['x-mock-retry-after'];
  const requireAuth = typeof headers['x-mock-require-auth'] === 'string' ? headers['x-mock-require-auth'] : s.requireAuth;
  if (requireAuth !== undefined) {
    try { parseAuthSpec(requireAuth); } catch (err) { throw new BadMockHeader(`x-mock-${(err as Error).message}`); }
  }
  return {
    status,
    delayMs: headerInt(headers, 'x-mock-delay-ms', 0, MAX_DELAY_MS, 0),
    disconnectAfter: headerInt(headers, 'x-mock-disconnect-after', 0, MAX_TOKENS_LIMIT, -1),
    streamErrorAfter: headerInt(headers, 'x-mock-stream-error-after', 0, MAX_TOKENS_LIMIT, -1),
    streamErrorStatus: errStatus,
    retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
    chunks: headerInt(headers, 'x-mock-chunks', 1, 100_000, s.chunks),
    chunkDelayMs: headerInt(headers, 'x-mock-chunk-delay-ms', 0, MAX_DELAY_MS, s.chunkDelayMs),
    ttftMs: headerInt(headers, 'x-mock-ttft-ms', 0, MAX_DELAY_MS, s.ttftMs),
    completionTokens: headerInt(headers, 'x-mock-completion-tokens', 0, MAX_TOKENS_LIMIT, s.completionTokens),
    cached: headerInt(headers, 'x-mock-cached-tokens', 0, MAX_TOKENS_LIMIT, 0),
    cacheWrite: headerInt(headers, 'x-mock-cache-write-tokens', 0, MAX_TOKENS_LIMIT, 0),
    reasoning: headerInt(headers, 'x-mock-reasoning-tokens', 0, MAX_TOKENS_LIMIT, 0),
    lies,
    usage,
    echoHeaders: headers['x-mock-echo-headers'] === '1' || headers['x-mock-echo-headers'] === 'true',
    requireAuth,
  };
}

function authorized(spec: string, headers: IncomingHttpHeaders, query: URLSearchParams): boolean {
  for (const alt of parseAuthSpec(spec)) {
    const got = alt.query ? query.get(alt.name) : headers[alt.name];
    if (got === alt.value) return true;
  }
  return false;
}

function maxTokensField(v: unknown, name: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > MAX_TOKENS_LIMIT) {
    throw new PromptShapeError(`${name} must be an integer in 0..${MAX_TOKENS_LIMIT}`);
  }
  return v as number;
}

/** Prompt tokens, output limit and stream flag of a request on a generating surface. */
function readFacts(route: Route, body: Record<string, unknown>): RequestFacts {
  const model = route.model ?? (typeof body.model === 'string' ? body.model : 'mock-model');
  const stream = route.stream ?? body.stream === true;
  switch (route.kind) {
    case 'chat':
      return { prompt: chatPromptTokens(body.messages), maxTokens: maxTokensField(body.max_completion_tokens ?? body.max_tokens, 'max_tokens'), stream, model };
    case 'completion':
      return { prompt: completionPromptTokens(body.prompt), maxTokens: maxTokensField(body.max_tokens, 'max_tokens'), stream, model };
    case 'responses':
      return { prompt: responsesPromptTokens(body), maxTokens: maxTokensField(body.max_output_tokens, 'max_output_tokens'), stream, model };
    case 'messages':
    case 'count_tokens':
      return { prompt: anthropicPromptTokens(body), maxTokens: maxTokensField(body.max_tokens, 'max_tokens'), stream, model };
    case 'generate':
    case 'gemini_count_tokens': {
      // countTokens takes either the contents or a whole generateContentRequest.
      const inner = route.kind === 'gemini_count_tokens' && body.generateContentRequest !== null && typeof body.generateContentRequest === 'object'
        ? body.generateContentRequest as Record<string, unknown>
        : body;
      const gc = inner.generationConfig as { maxOutputTokens?: unknown } | undefined | null;
      return { prompt: geminiPromptTokens(inner), maxTokens: maxTokensField(gc?.maxOutputTokens, 'generationConfig.maxOutputTokens'), stream, model };
    }
    case 'embeddings':
      return { prompt: 0, maxTokens: undefined, stream: false, model };
  }
}

/**
 * Chat/completions keep the mock's first rule: max_tokens given → exactly that many tokens, finish `length`.
 * Other surfaces generate min(default, limit − reasoning) and stop on the limit only when it cut them short.
 * Reasoning tokens are inside the limit, as providers count them.
 */
function tokenPlanFor(route: Route, facts: RequestFacts, plan: Plan): TokenPlan {
  const cacheWrite = route.dialect === 'anthropic' ? plan.cacheWrite : 0;
  if (plan.cached + cacheWrite > facts.prompt) {
    throw new BadMockHeader(`x-mock-cached-tokens + x-mock-cache-write-tokens (${plan.cached + cacheWrite}) exceed the prompt's ${facts.prompt} tokens`);
  }
  const m = facts.maxTokens;
  const reasoning = m === undefined ? plan.reasoning : Math.min(plan.reasoning, m);
  let text: number;
  let capped: boolean;
  if (m === undefined) { text = plan.completionTokens; capped = false; }
  else if (route.kind === 'chat' || route.kind === 'completion') { text = m - reasoning; capped = true; }
  else { text = Math.min(plan.completionTokens, m - reasoning); capped = plan.reasoning + plan.completionTokens > m; }
  return { prompt: facts.prompt, cached: plan.cached, cacheWrite, text, reasoning, completion: text + reasoning, capped };
}

function rendererFor(ctx: AnswerContext): Renderer {
  switch (ctx.route.kind) {
    case 'chat':
    case 'completion': return chatRenderer(ctx);
    case 'responses': return responsesRenderer(ctx);
    case 'messages': return messagesRenderer(ctx);
    default: return generateRenderer(ctx, ctx.route.sse === true);
  }
}

const ID_PREFIX: Record<string, string> = {
  chat: 'chatcmpl-mock-', completion: 'cmpl-mock-', responses: 'resp_mock', messages: 'msg_mock', generate: 'mock-',
};

export async function startMockUpstream(opts: MockUpstreamOptions = {}): Promise<MockUpstream> {
  validateMockOptions(opts);
  const host = opts.host ?? '127.0.0.1';
  const settings: Settings = {
    chunks: opts.chunks ?? 8,
    chunkDelayMs: opts.chunkDelayMs ?? 0,
    ttftMs: opts.ttftMs ?? 0,
    completionTokens: opts.completionTokens ?? 16,
    usage: opts.usage ?? 'auto',
    requireAuth: opts.requireAuth,
  };
  const nameHeader: Record<string, string> = opts.name === undefined ? {} : { 'x-mock-name': opts.name };
  const jsonHeaders = { 'content-type': 'application/json', ...nameHeader };

  interface Received { method: string; path: string; query: Record<string, string>; headers: IncomingHttpHeaders; body: unknown; bytes: number }
  let requests = 0;
  let byStatus: Record<string, number> = {};
  let history: Received[] = [];
  let inFlight = 0;
  let aborted = 0;
  let bySurface: Record<string, number> = {};
  let usage = emptyUsageSums();
  let usageBySurface: Record<string, UsageSums> = {};
  let usageReports = 0;
  let usageLies = 0;
  let textTokensSent = 0;
  let seq = 0;

  const count = (key: string) => { byStatus[key] = (byStatus[key] ?? 0) + 1; };
  const reported = (route: Route, plan: Plan, t: TokenPlan) => {
    if (Object.keys(plan.lies).length > 0) { usageLies++; return; }
    usageReports++;
    addUsage(usage, t);
    addUsage(usageBySurface[route.surface] ??= emptyUsageSums(), t);
  };

  const sendJson = (res: ServerResponse, status: number, json: string, extra?: Record<string, string>) => {
    if (res.destroyed) return;
    count(String(status));
    res.writeHead(status, { ...jsonHeaders, ...extra, 'content-length': Buffer.byteLength(json) });
    res.end(json);
  };
  const sendError = (res: ServerResponse, dialect: Dialect, status: number, message: string, code: string, extra?: Record<string, string>) =>
    sendJson(res, status, dialectError(dialect, status, message, code), extra);

  const snapshot = (r: Received): MockRequestRecord => ({ method: r.method, path: r.path, query: r.query, headers: flattenHeaders(r.headers), body: r.body });
  const statsSnapshot = (): MockStats => {
    const s: MockStats = {
      requests, byStatus: { ...byStatus }, inFlight, aborted, bySurface: { ...bySurface }, usage: { ...usage },
      usageBySurface: Object.fromEntries(Object.entries(usageBySurface).map(([k, v]) => [k, { ...v }])), usageReports, usageLies, textTokensSent,
    };
    const last = history.at(-1);
    if (last !== undefined) s.lastRequest = snapshot(last);
    return s;
  };
  const reset = () => {
    requests = 0; byStatus = {}; history = []; aborted = 0; bySurface = {}; usage = emptyUsageSums(); usageBySurface = {};
    usageReports = 0; usageLies = 0; textTokensSent = 0;
  };

  const control = (req: IncomingMessage, res: ServerResponse, path: string) => {
    // Control answers bypass the statistics they report on.
    const reply = (status: number, json: string, extra?: Record<string, string>) => {
      res.writeHead(status, { ...jsonHeaders, ...extra, 'content-length': Buffer.byteLength(json) });
      res.end(json);
    };
    const get = (json: () => string) => {
      if (req.method !== 'GET') reply(405, openaiError(405, 'use GET', 'method_not_allowed'), { allow: 'GET' });
      else reply(200, json());
    };
    if (path === '/mock/stats') get(() => JSON.stringify(statsSnapshot()));
    else if (path === '/mock/last-request') get(() => JSON.stringify(history.length === 0 ? null : snapshot(history.at(-1)!)));
    else if (path === '/mock/requests') get(() => JSON.stringify(history.map(snapshot)));
    else if (path === '/mock/reset') {
      if (req.method !== 'POST') reply(405, openaiError(405, 'use POST', 'method_not_allowed'), { allow: 'POST' });
      else { reset(); reply(200, '{"ok":true}'); }
    } else {
      reply(404, openaiError(404, `unknown path ${path}`, 'not_found'));
    }
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (path.startsWith('/mock/')) { control(req, res, path); return; }
    const query = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));

    requests++;
    inFlight++;
    const ex = new Exchange(res);
    const record: Received = { method: req.method ?? '', path, query: Object.fromEntries(query), headers: req.headers, body: undefined, bytes: 0 };
    const previous = history.at(-1);
    if (previous !== undefined && previous.bytes > HISTORY_BODY_BYTES) previous.body = { mock_body_omitted_bytes: previous.bytes };
    history.push(record);
    if (history.length > MOCK_HISTORY) history.shift();
    res.once('close', () => {
      inFlight--;
      ex.closed = true;
      if (ex.dropped) count('disconnected');
      else if (!res.writableFinished) aborted++;
      ex.fire();
    });

    const route = routeFor(path);
    if (route === undefined) { sendError(res, 'openai', 404, `unknown path ${path}`, 'not_found'); return; }
    bySurface[route.surface] = (bySurface[route.surface] ?? 0) + 1;
    const d = route.dialect;
    if (req.method !== 'POST') { sendError(res, d, 405, `${req.method ?? ''} not allowed on ${path}`, 'method_not_allowed', { allow: 'POST' }); return; }
    // Azure answers a missing api-version on these paths with a 404.
    if (route.apiVersion === true && !query.has('api-version')) { sendError(res, d, 404, 'Resource not found: api-version query parameter is missing', '404'); return; }
    if (route.kind === 'generate' && route.stream === true) route.sse = query.get('alt') === 'sse';

    const parts: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (b: Buffer) => {
      if (tooLarge) return;
      size += b.length;
      if (size > MOCK_MAX_BODY_BYTES) { tooLarge = true; parts.length = 0; sendError(res, d, 413, 'request body too large', 'body_too_large'); return; }
      parts.push(b);
    });
    req.on('end', () => {
      if (tooLarge || ex.closed) return;
      const text = parts.length === 1 ? parts[0]!.toString('utf8') : Buffer.concat(parts).toString('utf8');
      record.bytes = size;
      // A newer request arrived while this body was uploading: it is history already, so keep it small.
      const keep = (b: unknown) => { record.body = size > HISTORY_BODY_BYTES && history.at(-1) !== record ? { mock_body_omitted_bytes: size } : b; };
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        keep(text.length > TEXT_BODY_CHARS ? text.slice(0, TEXT_BODY_CHARS) : text);
        sendError(res, d, 400, 'request body is not valid JSON', 'invalid_json');
        return;
      }
      keep(body);
      if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        sendError(res, d, 400, 'request body must be a JSON object', 'invalid_request');
        return;
      }
      let plan: Plan;
      try {
        plan = planFor(req.headers, settings);
      } catch (err) {
        sendError(res, d, 400, (err as Error).message, 'mock_bad_header');
        return;
      }
      if (plan.requireAuth !== undefined && !authorized(plan.requireAuth, req.headers, query)) {
        const message = d === 'anthropic' ? 'invalid x-api-key' : d === 'gemini' ? 'Request had invalid authentication credentials.' : 'Incorrect API key provided';
        sendJson(res, 401, d === 'openai' ? openaiError401(route) : dialectError(d, 401, message, 'invalid_api_key'));
        return;
      }
      answer(ex, route, body as Record<string, unknown>, plan, req.headers).catch(() => {
        // A failure after the headers went out can only be answered by dropping the connection.
        if (!res.headersSent) sendError(res, d, 500, 'mock upstream failed', 'mock_internal');
        else res.destroy();
      });
    });
    req.on('error', () => res.destroy());
  };

  const answer = async (ex: Exchange, route: Route, body: Record<string, unknown>, plan: Plan, headers: IncomingHttpHeaders) => {
    const res = ex.res;
    const d = route.dialect;
    if (plan.delayMs > 0) { await ex.sleep(plan.delayMs); if (ex.closed) return; }
    if (plan.disconnectAfter === 0) { ex.drop(); return; }
    if (plan.status !== 200) {
      sendError(res, d, plan.status, `mock fault: status ${plan.status}`, 'mock_fault', plan.retryAfter === undefined ? undefined : { 'retry-after': plan.retryAfter });
      return;
    }

    let facts: RequestFacts;
    let tokens: TokenPlan;
    let embeddings: ReturnType<typeof readEmbeddings> | undefined;
    try {
      facts = readFacts(route, body);
      if (route.kind === 'embeddings') {
        embeddings = readEmbeddings(body);
        facts.prompt = embeddings.prompt;
        tokens = { prompt: facts.prompt, cached: 0, cacheWrite: 0, text: 0, reasoning: 0, completion: 0, capped: false };
      } else {
        tokens = tokenPlanFor(route, facts, plan);
      }
    } catch (err) {
      if (err instanceof PromptShapeError) { sendError(res, d, 400, err.message, 'invalid_request'); return; }
      if (err instanceof BadMockHeader) { sendError(res, d, 400, err.message, 'mock_bad_header'); return; }
      throw err;
    }
    const ctx: AnswerContext = {
      route, body, id: (ID_PREFIX[route.kind] ?? 'mock-') + (++seq), created: Math.floor(Date.now() / 1000), model: facts.model,
      tokens, usage: plan.usage, lies: plan.lies, echoHeaders: plan.echoHeaders ? flattenHeaders(headers) : undefined,
    };
    const extraHeaders: Record<string, string> = d === 'anthropic' ? { 'request-id': `req_mock${seq}` } : d === 'openai' ? { 'x-request-id': `req_mock${seq}` } : {};

    if (route.kind === 'count_tokens' || route.kind === 'gemini_count_tokens' || route.kind === 'embeddings') {
      if (plan.ttftMs > 0) { await ex.sleep(plan.ttftMs); if (ex.closed) return; }
      const json = route.kind === 'count_tokens' ? JSON.stringify({ input_tokens: facts.prompt })
        : route.kind === 'gemini_count_tokens' ? JSON.stringify({ totalTokens: facts.prompt, promptTokensDetails: [{ modality: 'TEXT', tokenCount: facts.prompt }] })
          : embeddingsJson(ctx, embeddings!);
      if (sendWhole(ex, json, plan, extraHeaders) && route.kind === 'embeddings' && plan.usage !== 'off') reported(route, plan, tokens);
      return;
    }

    const r = rendererFor(ctx);
    if (!facts.stream) {
      if (plan.ttftMs > 0) { await ex.sleep(plan.ttftMs); if (ex.closed) return; }
      if (sendWhole(ex, r.json(), plan, extraHeaders)) {
        textTokensSent += tokens.text;
        if (r.reportsUsage) reported(route, plan, tokens);
      }
      return;
    }

    count('200');
    res.writeHead(200, { 'content-type': r.streamContentType, 'cache-control': 'no-cache', ...nameHeader, ...extraHeaders });
    if (plan.ttftMs > 0) {
      res.flushHeaders();
      await ex.sleep(plan.ttftMs);
      if (ex.closed) return;
    }
    const errorStatus = plan.streamErrorStatus ?? (d === 'anthropic' ? 529 : 500);
    const streamError = async () => {
      if (await ex.write(r.streamError(errorStatus, `mock fault: in-stream error ${errorStatus}`))) res.end();
    };
    if (!(await ex.write(r.head()))) return;
    if (plan.streamErrorAfter === 0) { await streamError(); return; }
    const frames = Math.min(plan.chunks, tokens.text);
    const base = Math.floor(tokens.text / Math.max(frames, 1));
    const extra = tokens.text - base * frames;
    let at = 0;
    for (let i = 0; i < frames; i++) {
      if (i > 0 && plan.chunkDelayMs > 0) { await ex.sleep(plan.chunkDelayMs); if (ex.closed) return; }
      const end = at + base + (i < extra ? 1 : 0);
      if (!(await ex.write(r.frame(completionSlice(at, end))))) return;
      textTokensSent += end - at;
      at = end;
      if (plan.disconnectAfter === i + 1) { ex.drop(); return; }
      if (plan.streamErrorAfter === i + 1) { await streamError(); return; }
    }
    // Asked to fail after more frames than there are: fail before the closing frames.
    if (plan.disconnectAfter > 0) { ex.drop(); return; }
    if (plan.streamErrorAfter > 0) { await streamError(); return; }
    if (!(await ex.write(r.tail()))) return;
    if (ex.closed) return;
    res.end();
    if (r.reportsUsage) reported(route, plan, tokens);
  };

  /** A whole JSON answer, or its truncated first bytes with x-mock-disconnect-after; true when sent whole. */
  const sendWhole = (ex: Exchange, json: string, plan: Plan, extra: Record<string, string>): boolean => {
    if (plan.disconnectAfter > 0) {
      // Truncated body: the full Content-Length is promised, fewer bytes arrive.
      const buf = Buffer.from(json);
      count('200');
      ex.res.writeHead(200, { ...jsonHeaders, ...extra, 'content-length': String(buf.length) });
      ex.res.write(buf.subarray(0, Math.min(plan.disconnectAfter, buf.length - 1)));
      ex.drop();
      return false;
    }
    if (ex.res.destroyed) return false;
    sendJson(ex.res, 200, json, extra);
    return true;
  };

  const server: Server = createServer({ keepAlive: true, noDelay: true }, handle);
  // Idle keep-alive long enough for benchmark clients to reuse connections; close() cuts them anyway.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.on('clientError', (_err, socket) => { if (!socket.destroyed) socket.destroy(); });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | undefined;

  return {
    port,
    url: `http://${urlHost}:${port}`,
    stats: statsSnapshot,
    requests: () => history.map(snapshot),
    reset,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

/** OpenAI's and Azure's 401 bodies. */
function openaiError401(route: Route): string {
  return route.surface.startsWith('azure.')
    ? openaiError(401, 'Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.', '401')
    : JSON.stringify({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
}
