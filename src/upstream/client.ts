// Upstream HTTP client over one undici Agent (keep-alive pools per origin, no cap on connections: an
// HTTP/1.1 stream holds its connection for its whole life, so a capped pool would cap concurrent streams).
// Only HTTP: origin, path, headers, body and transport. Where a request goes and what it says is the
// provider's (src/providers/). undici is imported in this folder only.
import { Agent, errors, parseHeaders, type DispatchHandler } from './undici-agent.ts';
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

export type UpstreamHeaders = Record<string, string | string[] | undefined>;

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

  /**
   * Starts one POST; the returned call is the undici handler itself (no AbortController, no body stream).
   * Await `call.head()`, then read the body with `readAll(max)` or `next()`; `abort()` cuts it at any point.
   */
  send(origin: string, path: string, headers: Record<string, string>, body: Buffer, transport?: Transport): UpstreamCall {
    const agent = transport === undefined ? this.agent : this.agentFor(transport);
    const call = new UpstreamCall();
    try {
      agent.dispatch({
        origin, path, method: 'POST', headers, body,
        headersTimeout: transport?.firstByteMs ?? this.timeouts.firstByteMs,
        bodyTimeout: transport?.idleMs ?? this.timeouts.idleMs,
      }, call);
    } catch (err) {
      call.onError(err as Error);
    }
    return call;
  }

  async close(): Promise<void> {
    await Promise.all([this.agent.close(), ...[...this.agents.values()].map((a) => a.close())]);
  }
}

/** Body bytes queued for a reader that is not asking (a stream parked on a slow client) before the socket pauses. */
const QUEUE_HIGH_WATER = 64 * 1024;
const NO_HEADERS: UpstreamHeaders = Object.freeze({}) as UpstreamHeaders;
type Waiter = ((v: unknown) => void) | undefined;

/**
 * One upstream request, driven by undici's dispatch handler callbacks. Every failure (timeouts, resets, a body
 * past readAll's cap, abort()) becomes one UpstreamFailure, delivered to whatever waits now or next.
 * Readers: `head()` once, then either `readAll(max)` once or `next()` in a loop (one outstanding at a time).
 */
export class UpstreamCall implements DispatchHandler {
  status = 0;
  headers: UpstreamHeaders = NO_HEADERS;
  private abortFn: ((err?: Error) => void) | undefined = undefined;
  private resumeFn: (() => void) | undefined = undefined;
  private failure: UpstreamFailure | undefined = undefined;
  private headDone = false;
  private ended = false;
  private paused = false;
  /** readAll's cap; while collecting, the queue is the whole body so far. */
  private collecting = false;
  private max = Infinity;
  private queue: Buffer[] = [];
  private queueHead = 0;
  private queued = 0;
  private resolve: Waiter = undefined;
  private reject: Waiter = undefined;

  /** Body bytes received and not yet read (bounded by QUEUE_HIGH_WATER plus one chunk while streaming). */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Cuts the request now (client gone, shutdown): pending and later reads fail with kind 'aborted'. */
  abort(): void {
    if (this.failure !== undefined || this.ended) return;
    this.fail(new UpstreamFailure('aborted', 'request aborted', undefined));
  }

  /** Resolves once status and headers are in (`status`, `headers`). */
  head(): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.headDone) return Promise.resolve();
    return this.wait();
  }

  /** The whole body; past `max` bytes the request is cut and this fails with 'protocol_error'. */
  readAll(max: number): Promise<Buffer> {
    this.collecting = true;
    this.max = max;
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.queued > max) { this.tooLarge(); return Promise.reject(this.failure); }
    if (this.ended) return Promise.resolve(this.joined());
    this.unpause();
    return this.wait();
  }

  /** A body chunk already received (it came with the head), taken synchronously; undefined when none waits. */
  takeQueued(): Buffer | undefined {
    if (this.queueHead >= this.queue.length || this.collecting) return undefined;
    const c = this.queue[this.queueHead]!;
    this.queue[this.queueHead++] = EMPTY;
    this.queued -= c.length;
    if (this.queueHead === this.queue.length) { this.queue.length = 0; this.queueHead = 0; }
    if (this.paused && this.queued < QUEUE_HIGH_WATER) this.unpause();
    return c;
  }

  /** The next body chunk, or null at the end. The socket pauses while QUEUE_HIGH_WATER bytes wait unread. */
  next(): Promise<Buffer | null> {
    const c = this.takeQueued();
    if (c !== undefined) return Promise.resolve(c);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(null);
    this.unpause();
    return this.wait();
  }

  // undici's handler callbacks (its core calls these directly; the newer controller API is wrapped per request).

  onConnect(abort: (err?: Error) => void): void {
    this.abortFn = abort;
    if (this.failure !== undefined) abort(this.failure);
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    // 1xx informational answers (103 Early Hints) precede the real one.
    if (statusCode < 200 || this.failure !== undefined) return true;
    this.status = statusCode;
    this.headers = parseHeaders(rawHeaders);
    this.resumeFn = resume;
    this.headDone = true;
    this.settle(undefined);
    return true;
  }

  onData(chunk: Buffer): boolean {
    if (this.failure !== undefined) return true;
    if (this.collecting) {
      this.queued += chunk.length;
      if (this.queued > this.max) { this.tooLarge(); return true; }
      this.queue.push(chunk);
      return true;
    }
    if (this.resolve !== undefined) { this.settle(chunk); return true; }
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (this.queued >= QUEUE_HIGH_WATER) { this.paused = true; return false; }
    return true;
  }

  onComplete(): void {
    if (this.failure !== undefined) return;
    this.ended = true;
    if (this.resolve === undefined) return;
    this.settle(this.collecting ? this.joined() : null);
  }

  onError(err: Error): void {
    if (this.failure !== undefined || this.ended) return;
    this.failure = classifyError(err);
    this.rejectWaiter();
  }

  private tooLarge(): void {
    this.queue = [];
    this.fail(new UpstreamFailure('protocol_error', 'upstream response too large', undefined));
  }

  private fail(f: UpstreamFailure): void {
    this.failure = f;
    this.queue.length = 0;
    this.queued = 0;
    // Before onConnect (still queued for a connection) onConnect aborts it.
    this.abortFn?.(f);
    this.rejectWaiter();
  }

  private unpause(): void {
    if (!this.paused) return;
    this.paused = false;
    this.resumeFn?.();
  }

  private joined(): Buffer {
    const q = this.queue;
    const out = q.length === 1 ? q[0]! : Buffer.concat(q, this.queued);
    this.queue = [];
    this.queued = 0;
    return out;
  }

  private wait<T>(): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.resolve = resolve as Waiter;
      this.reject = reject;
    });
  }

  private settle(v: unknown): void {
    const r = this.resolve;
    if (r === undefined) return;
    this.resolve = undefined;
    this.reject = undefined;
    r(v);
  }

  private rejectWaiter(): void {
    const r = this.reject;
    if (r === undefined) return;
    this.resolve = undefined;
    this.reject = undefined;
    r(this.failure);
  }
}

const EMPTY = Buffer.alloc(0);
