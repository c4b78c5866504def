// OpenAI-compatible LLM stand-in for tests, demos and the benchmark baseline. Plain node:http with keep-alive:
// it must stay cheap, so per request it parses the body, counts prompt tokens (cached) and writes the answer.
// Faults are chosen per request by `x-mock-*` headers so one instance serves every test case.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { errorBody } from '../core/errors.ts';
import { chatPromptTokens, completionPromptTokens, completionSlice, PromptShapeError } from './tokens.ts';

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
  /** Streaming usage frame: auto = only when stream_options.include_usage is true (as OpenAI does). */
  usage?: MockUsageMode;
  /** Sent back in the `x-mock-name` response header. */
  name?: string;
}

export interface MockStats {
  /** Requests to /v1/* and unknown paths (the /mock/* control endpoints are not counted). */
  requests: number;
  /** Answered statuses by code; `disconnected` counts deliberate drops (x-mock-disconnect-after), including
   *  streams already counted under 200. */
  byStatus: Record<string, number>;
  lastRequest?: { path: string; headers: Record<string, string>; body: unknown };
  /** Requests being handled right now (a stream counts until its last frame or its disconnect). */
  inFlight: number;
  /** Requests whose client went away before the answer was complete. */
  aborted: number;
}

export interface MockUpstream {
  readonly port: number;
  /** http://host:port, without the /v1 suffix. */
  readonly url: string;
  stats(): MockStats;
  reset(): void;
  close(): Promise<void>;
}

export const MOCK_MAX_BODY_BYTES = 32 * 1024 * 1024;
const MAX_TOKENS_LIMIT = 1_000_000;
const MAX_DELAY_MS = 600_000;

interface Settings {
  chunks: number;
  chunkDelayMs: number;
  ttftMs: number;
  completionTokens: number;
  usage: MockUsageMode;
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

function errorTypeFor(status: number): string {
  switch (status) {
    case 401: return 'authentication_error';
    case 403: return 'permission_error';
    case 404: return 'not_found_error';
    case 429: return 'rate_limit_error';
    default: return status >= 500 ? 'server_error' : 'invalid_request_error';
  }
}

function flattenHeaders(h: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(h)) {
    const v = h[k];
    if (v !== undefined) out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
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
    if (!this.res.write(data)) await this.drain();
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

type Kind = 'chat' | 'completion';

interface Plan {
  status: number;
  delayMs: number;
  /** -1: no disconnect. */
  disconnectAfter: number;
  chunks: number;
  chunkDelayMs: number;
  ttftMs: number;
  completionTokens: number;
  usage: MockUsageMode;
  echoHeaders: boolean;
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
  return {
    status,
    delayMs: headerInt(headers, 'x-mock-delay-ms', 0, MAX_DELAY_MS, 0),
    disconnectAfter: headerInt(headers, 'x-mock-disconnect-after', 0, MAX_TOKENS_LIMIT, -1),
    chunks: headerInt(headers, 'x-mock-chunks', 1, 100_000, s.chunks),
    chunkDelayMs: headerInt(headers, 'x-mock-chunk-delay-ms', 0, MAX_DELAY_MS, s.chunkDelayMs),
    ttftMs: headerInt(headers, 'x-mock-ttft-ms', 0, MAX_DELAY_MS, s.ttftMs),
    completionTokens: headerInt(headers, 'x-mock-completion-tokens', 0, MAX_TOKENS_LIMIT, s.completionTokens),
    usage,
    echoHeaders: headers['x-mock-echo-headers'] === '1' || headers['x-mock-echo-headers'] === 'true',
  };
}

function requestedMaxTokens(body: Record<string, unknown>): number | undefined {
  const v = body.max_completion_tokens ?? body.max_tokens;
  if (v === undefined || v === null) return undefined;
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > MAX_TOKENS_LIMIT) {
    throw new PromptShapeError(`max_tokens must be an integer in 0..${MAX_TOKENS_LIMIT}`);
  }
  return v as number;
}

export async function startMockUpstream(opts: MockUpstreamOptions = {}): Promise<MockUpstream> {
  validateMockOptions(opts);
  const host = opts.host ?? '127.0.0.1';
  const settings: Settings = {
    chunks: opts.chunks ?? 8,
    chunkDelayMs: opts.chunkDelayMs ?? 0,
    ttftMs: opts.ttftMs ?? 0,
    completionTokens: opts.completionTokens ?? 16,
    usage: opts.usage ?? 'auto',
  };
  const nameHeader: Record<string, string> = opts.name === undefined ? {} : { 'x-mock-name': opts.name };
  const jsonHeaders = { 'content-type': 'application/json', ...nameHeader };
  const sseHeaders = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...nameHeader };

  let requests = 0;
  let byStatus: Record<string, number> = {};
  let lastRequest: { path: string; headers: IncomingHttpHeaders; body: unknown } | undefined;
  let inFlight = 0;
  let aborted = 0;
  let seq = 0;

  const count = (key: string) => { byStatus[key] = (byStatus[key] ?? 0) + 1; };

  const sendJson = (res: ServerResponse, status: number, json: string, extra?: Record<string, string>) => {
    if (res.destroyed) return;
    count(String(status));
    res.writeHead(status, { ...jsonHeaders, ...extra, 'content-length': Buffer.byteLength(json) });
    res.end(json);
  };
  const sendError = (res: ServerResponse, status: number, message: string, code: string, extra?: Record<string, string>) =>
    sendJson(res, status, errorBody(message, errorTypeFor(status), code), extra);

  const statsSnapshot = (): MockStats => {
    const s: MockStats = { requests, byStatus: { ...byStatus }, inFlight, aborted };
    if (lastRequest !== undefined) {
      s.lastRequest = { path: lastRequest.path, headers: flattenHeaders(lastRequest.headers), body: lastRequest.body };
    }
    return s;
  };
  const reset = () => { requests = 0; byStatus = {}; lastRequest = undefined; aborted = 0; };

  const control = (req: IncomingMessage, res: ServerResponse, path: string) => {
    // Control answers bypass the statistics they report on.
    const reply = (status: number, json: string, extra?: Record<string, string>) => {
      res.writeHead(status, { ...jsonHeaders, ...extra, 'content-length': Buffer.byteLength(json) });
      res.end(json);
    };
    if (path === '/mock/stats') {
      if (req.method !== 'GET') reply(405, errorBody('use GET', 'invalid_request_error', 'method_not_allowed'), { allow: 'GET' });
      else reply(200, JSON.stringify(statsSnapshot()));
    } else if (path === '/mock/reset') {
      if (req.method !== 'POST') reply(405, errorBody('use POST', 'invalid_request_error', 'method_not_allowed'), { allow: 'POST' });
      else { reset(); reply(200, '{"ok":true}'); }
    } else {
      reply(404, errorBody(`unknown path ${path}`, 'not_found_error', 'not_found'));
    }
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (path.startsWith('/mock/')) { control(req, res, path); return; }

    requests++;
    inFlight++;
    const ex = new Exchange(res);
    const record = { path, headers: req.headers, body: undefined as unknown };
    lastRequest = record;
    res.once('close', () => {
      inFlight--;
      ex.closed = true;
      if (ex.dropped) count('disconnected');
      else if (!res.writableFinished) aborted++;
      ex.fire();
    });

    const kind: Kind | undefined = path === '/v1/chat/completions' ? 'chat' : path === '/v1/completions' ? 'completion' : undefined;
    if (kind === undefined) { sendError(res, 404, `unknown path ${path}`, 'not_found'); return; }
    if (req.method !== 'POST') { sendError(res, 405, `${req.method ?? ''} not allowed on ${path}`, 'method_not_allowed', { allow: 'POST' }); return; }

    const parts: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (b: Buffer) => {
      if (tooLarge) return;
      size += b.length;
      if (size > MOCK_MAX_BODY_BYTES) { tooLarge = true; parts.length = 0; sendError(res, 413, 'request body too large', 'body_too_large'); return; }
      parts.push(b);
    });
    req.on('end', () => {
      if (tooLarge || ex.closed) return;
      let body: unknown;
      try {
        body = JSON.parse(parts.length === 1 ? parts[0]!.toString('utf8') : Buffer.concat(parts).toString('utf8'));
      } catch {
        sendError(res, 400, 'request body is not valid JSON', 'invalid_json');
        return;
      }
      record.body = body;
      if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        sendError(res, 400, 'request body must be a JSON object', 'invalid_request');
        return;
      }
      let plan: Plan;
      try {
        plan = planFor(req.headers, settings);
      } catch (err) {
        sendError(res, 400, (err as Error).message, 'mock_bad_header');
        return;
      }
      answer(ex, kind, body as Record<string, unknown>, plan, req.headers).catch(() => {
        // A failure after the headers went out can only be answered by dropping the connection.
        if (!res.headersSent) sendError(res, 500, 'mock upstream failed', 'mock_internal');
        else res.destroy();
      });
    });
    req.on('error', () => res.destroy());
  };

  const answer = async (ex: Exchange, kind: Kind, body: Record<string, unknown>, plan: Plan, headers: IncomingHttpHeaders) => {
    const res = ex.res;
    if (plan.delayMs > 0) { await ex.sleep(plan.delayMs); if (ex.closed) return; }
    if (plan.disconnectAfter === 0) { ex.drop(); return; }
    if (plan.status !== 200) { sendError(res, plan.status, `mock fault: status ${plan.status}`, 'mock_fault'); return; }

    let promptTokens: number;
    let maxTokens: number | undefined;
    try {
      promptTokens = kind === 'chat' ? chatPromptTokens(body.messages) : completionPromptTokens(body.prompt);
      maxTokens = requestedMaxTokens(body);
    } catch (err) {
      if (!(err instanceof PromptShapeError)) throw err;
      sendError(res, 400, err.message, 'invalid_request');
      return;
    }
    const completionTokens = maxTokens ?? plan.completionTokens;
    const usage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
    const model = typeof body.model === 'string' ? body.model : 'mock-model';
    const finishReason = maxTokens !== undefined ? 'length' : 'stop';
    const id = (kind === 'chat' ? 'chatcmpl-mock-' : 'cmpl-mock-') + (++seq);
    const created = Math.floor(Date.now() / 1000);

    if (body.stream !== true) {
      if (plan.ttftMs > 0) { await ex.sleep(plan.ttftMs); if (ex.closed) return; }
      const text = completionSlice(0, completionTokens);
      const out: Record<string, unknown> = kind === 'chat'
        ? {
          id, object: 'chat.completion', created, model, system_fingerprint: 'fp_mock',
          choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: finishReason }],
          usage,
        }
        : { id, object: 'text_completion', created, model, choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }], usage };
      if (plan.echoHeaders) out.mock_request_headers = flattenHeaders(headers);
      const json = JSON.stringify(out);
      if (plan.disconnectAfter > 0) {
        // Truncated body: the full Content-Length is promised, fewer bytes arrive.
        const buf = Buffer.from(json);
        count('200');
        res.writeHead(200, { ...jsonHeaders, 'content-length': String(buf.length) });
        res.write(buf.subarray(0, Math.min(plan.disconnectAfter, buf.length - 1)));
        ex.drop();
        return;
      }
      sendJson(res, 200, json);
      return;
    }

    const streamOptions = body.stream_options as { include_usage?: unknown } | undefined | null;
    const withUsage = plan.usage === 'on' || (plan.usage === 'auto' && streamOptions?.include_usage === true);
    // Every frame shares its envelope; OpenAI sends "usage":null on each frame when usage was asked for.
    const head = `data: {"id":"${id}","object":"${kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'}","created":${created},`
      + `"model":${JSON.stringify(model)},"system_fingerprint":"fp_mock","choices":[`;
    const tail = withUsage ? '],"usage":null}\n\n' : ']}\n\n';
    const frame = (text: string, finish: string | null) => kind === 'chat'
      ? `${head}{"index":0,"delta":${finish === null ? `{"content":${JSON.stringify(text)}}` : '{}'},"logprobs":null,"finish_reason":${finish === null ? 'null' : `"${finish}"`}}${tail}`
      : `${head}{"text":${JSON.stringify(text)},"index":0,"logprobs":null,"finish_reason":${finish === null ? 'null' : `"${finish}"`}}${tail}`;

    count('200');
    res.writeHead(200, sseHeaders);
    if (plan.ttftMs > 0) {
      res.flushHeaders();
      await ex.sleep(plan.ttftMs);
      if (ex.closed) return;
    }
    if (kind === 'chat') {
      const role = `${head}{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}${tail}`;
      if (!(await ex.write(role))) return;
    }
    const frames = Math.min(plan.chunks, completionTokens);
    const base = Math.floor(completionTokens / Math.max(frames, 1));
    const extra = completionTokens - base * frames;
    let at = 0;
    for (let i = 0; i < frames; i++) {
      if (i > 0 && plan.chunkDelayMs > 0) { await ex.sleep(plan.chunkDelayMs); if (ex.closed) return; }
      const end = at + base + (i < extra ? 1 : 0);
      if (!(await ex.write(frame(completionSlice(at, end), null)))) return;
      at = end;
      if (plan.disconnectAfter === i + 1) { ex.drop(); return; }
    }
    // Asked to drop after more frames than there are: drop before the finish frame.
    if (plan.disconnectAfter > 0) { ex.drop(); return; }
    if (!(await ex.write(frame('', finishReason)))) return;
    if (withUsage) {
      if (!(await ex.write(`${head}],"usage":${JSON.stringify(usage)}}\n\n`))) return;
    }
    if (!ex.closed) res.end('data: [DONE]\n\n');
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
