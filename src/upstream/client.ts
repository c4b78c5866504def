// Upstream HTTP client over one undici Agent (keep-alive pools per origin, no cap on connections: an
// HTTP/1.1 stream holds its connection for its whole life, so a capped pool would cap concurrent streams).
// Only HTTP: origin, path, headers, body and transport. Where a request goes and what it says is the
// provider's (src/providers/). undici is imported in this folder only.
import { Agent, errors } from './undici-agent.ts';
import type { Readable } from 'node:stream';
import type { InstanceConfig } from '../config/types.ts';

export interface UpstreamTimeouts {
  readonly connectMs: number;
  readonly firstByteMs: number;
  readonly idleMs: number;
}

/** Per-instance transport (APISIX `timeout`, `ssl_verify`, `keepalive`, `keepalive_timeout`), resolved at load. */
export interface Transport {
  /** Instances with equal settings share one undici Agent. */
  readonly agentKey: string;
  readonly sslVerify: boolean;
  readonly keepalive: boolean;
  readonly keepaliveTimeoutMs: number;
  readonly firstByteMs: number | undefined;
  readonly idleMs: number | undefined;
}

/** The settings of the client's own Agent: instances that only set `timeout` use it. */
const DEFAULT_KEEPALIVE_MS = 30_000;
const DEFAULT_AGENT_KEY = `verify|${DEFAULT_KEEPALIVE_MS}`;

/** An instance's transport settings, resolved once at config load. */
export function resolveTransport(inst: InstanceConfig): Transport | undefined {
  const t = inst.transport;
  if (t === undefined) return undefined;
  return {
    agentKey: `${t.ssl_verify ? 'verify' : 'noverify'}|${t.keepalive ? t.keepalive_timeout_ms : 'close'}`,
    sslVerify: t.ssl_verify,
    keepalive: t.keepalive,
    keepaliveTimeoutMs: t.keepalive_timeout_ms,
    firstByteMs: t.timeout_ms,
    idleMs: t.timeout_ms,
  };
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
  /** Agents for instances with their own TLS or keep-alive settings, by Transport.agentKey (few: one per distinct setting). */
  private readonly agents = new Map<string, Agent>();

  constructor(timeouts: UpstreamTimeouts) {
    this.timeouts = timeouts;
    this.agent = new Agent({
      connections: null,
      pipelining: 1,
      keepAliveTimeout: DEFAULT_KEEPALIVE_MS,
      connect: { timeout: timeouts.connectMs },
      headersTimeout: timeouts.firstByteMs,
      bodyTimeout: timeouts.idleMs,
    });
  }

  private agentFor(t: Transport): Agent {
    if (t.agentKey === DEFAULT_AGENT_KEY) return this.agent;
    let agent = this.agents.get(t.agentKey);
    if (agent === undefined) {
      agent = new Agent({
        connections: null,
        // undici: pipelining 0 disables keep-alive (a connection per request).
        pipelining: t.keepalive ? 1 : 0,
        keepAliveTimeout: t.keepaliveTimeoutMs,
        connect: { timeout: this.timeouts.connectMs, rejectUnauthorized: t.sslVerify },
        headersTimeout: this.timeouts.firstByteMs,
        bodyTimeout: this.timeouts.idleMs,
      });
      this.agents.set(t.agentKey, agent);
    }
    return agent;
  }

  async send(origin: string, path: string, headers: Record<string, string>, body: Buffer, signal: AbortSignal, transport?: Transport): Promise<UpstreamResponse> {
    try {
      const agent = transport === undefined ? this.agent : this.agentFor(transport);
      const r = await agent.request({
        origin, path, method: 'POST', headers, body, signal,
        headersTimeout: transport?.firstByteMs ?? this.timeouts.firstByteMs,
        bodyTimeout: transport?.idleMs ?? this.timeouts.idleMs,
      });
      return { status: r.statusCode, headers: r.headers, body: r.body };
    } catch (err) {
      throw classifyError(err);
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.agent.close(), ...[...this.agents.values()].map((a) => a.close())]);
  }
}
