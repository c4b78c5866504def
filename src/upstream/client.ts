// Upstream HTTP client over one undici Agent (keep-alive pools per origin, no cap on connections: an
// HTTP/1.1 stream holds its connection for its whole life, so a capped pool would cap concurrent streams).
// undici is imported in this folder only.
import { Agent, errors } from 'undici';
import type { Readable } from 'node:stream';
import type { InstanceConfig } from '../config/types.ts';

export interface UpstreamTimeouts {
  readonly connectMs: number;
  readonly firstByteMs: number;
  readonly idleMs: number;
}

export type RequestKind = 'chat' | 'completion';

const PROVIDER_BASE: Record<string, string> = {
  openai: 'https://api.openai.com/v1',
  deepseek: 'https://api.deepseek.com/v1',
};

export interface Target {
  readonly origin: string;
  readonly chatPath: string;
  readonly completionPath: string;
}

/** Resolves an instance's endpoint once, at config load. */
export function resolveTarget(inst: InstanceConfig): Target {
  const raw = inst.endpoint ?? `${PROVIDER_BASE[inst.provider] ?? PROVIDER_BASE.openai}/chat/completions`;
  const url = new URL(raw);
  const q = url.search;
  let chatPath = url.pathname + q;
  let completionPath = url.pathname + q;
  if (url.pathname.endsWith('/chat/completions')) {
    completionPath = url.pathname.slice(0, -'/chat/completions'.length) + '/completions' + q;
  } else if (url.pathname.endsWith('/completions')) {
    chatPath = url.pathname.slice(0, -'/completions'.length) + '/chat/completions' + q;
  }
  const extra = Object.keys(inst.auth_query);
  if (extra.length > 0) {
    const sp = new URLSearchParams();
    for (const k of extra) sp.set(k, inst.auth_query[k]!);
    const sep = q === '' ? '?' : '&';
    chatPath += sep + sp.toString();
    completionPath += sep + sp.toString();
  }
  return { origin: url.origin, chatPath, completionPath };
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Readable;
}

export type FailureKind = 'connect_error' | 'timeout' | 'aborted' | 'protocol_error';

/** A failed attempt that produced no HTTP response. */
export class UpstreamFailure extends Error {
  readonly kind: FailureKind;
  constructor(kind: FailureKind, message: string, cause: unknown) {
    super(message, { cause });
    this.kind = kind;
  }
}

export function classifyError(err: unknown): UpstreamFailure {
  if (err instanceof UpstreamFailure) return err;
  const code = (err as { code?: string } | null)?.code ?? '';
  if (err instanceof errors.HeadersTimeoutError || err instanceof errors.BodyTimeoutError || err instanceof errors.ConnectTimeoutError ||
      code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT') {
    return new UpstreamFailure('timeout', 'upstream timed out', err);
  }
  if (err instanceof errors.RequestAbortedError || code === 'UND_ERR_ABORTED' || (err as Error | null)?.name === 'AbortError') {
    return new UpstreamFailure('aborted', 'request aborted', err);
  }
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH' || code === 'EAI_AGAIN' ||
      code === 'UND_ERR_SOCKET' || code === 'UND_ERR_CLOSED' || code === 'EPIPE') {
    return new UpstreamFailure('connect_error', 'upstream unreachable', err);
  }
  return new UpstreamFailure('protocol_error', 'upstream protocol error', err);
}

export class UpstreamClient {
  private readonly agent: Agent;
  private readonly timeouts: UpstreamTimeouts;

  constructor(timeouts: UpstreamTimeouts) {
    this.timeouts = timeouts;
    this.agent = new Agent({
      connections: null,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connect: { timeout: timeouts.connectMs },
      headersTimeout: timeouts.firstByteMs,
      bodyTimeout: timeouts.idleMs,
    });
  }

  async send(origin: string, path: string, headers: Record<string, string>, body: Buffer, signal: AbortSignal): Promise<UpstreamResponse> {
    try {
      const r = await this.agent.request({
        origin, path, method: 'POST', headers, body, signal,
        headersTimeout: this.timeouts.firstByteMs,
        bodyTimeout: this.timeouts.idleMs,
      });
      return { status: r.statusCode, headers: r.headers, body: r.body };
    } catch (err) {
      throw classifyError(err);
    }
  }

  close(): Promise<void> {
    return this.agent.close();
  }
}
