// Upstream HTTP client: keep-alive pools per origin and transport setting (h1-pool.ts, a purpose-built HTTP/1.1
// client; no cap on connections: an HTTP/1.1 stream holds its connection for its whole life, so a capped pool
// would cap concurrent streams). Only HTTP: origin, path, headers, body and transport. Where a request goes and
// what it says is the provider's (src/providers/).
import type { ByteBudget } from '../core/byte-budget.ts';
import { Pool, UpstreamFailure, requestHead, type Connection, type FailureKind, type ResponseHandler } from './h1-pool.ts';
import { byteCoding, headerValue, headerValues, transferCoded, type UpstreamHeaders } from './h1-head.ts';
import type { InstanceConfig } from '../config/types.ts';

export { UpstreamFailure, byteCoding, headerValue, headerValues, transferCoded, type FailureKind, type UpstreamHeaders };

export interface UpstreamTimeouts {
  readonly connectMs: number;
  readonly firstByteMs: number;
  readonly idleMs: number;
}

/** The config's upstream timeouts (limits.upstream_*_timeout_ms). */
export function upstreamTimeouts(limits: { readonly upstream_connect_timeout_ms: number; readonly upstream_first_byte_timeout_ms: number; readonly upstream_idle_timeout_ms: number }): UpstreamTimeouts {
  return { connectMs: limits.upstream_connect_timeout_ms, firstByteMs: limits.upstream_first_byte_timeout_ms, idleMs: limits.upstream_idle_timeout_ms };
}

/** Per-instance transport (APISIX `timeout`, `ssl_verify`, `keepalive`, `keepalive_timeout`), resolved at load. */
export interface Transport {
  /** Instances with equal settings share one pool per origin. */
  readonly agentKey: string;
  readonly sslVerify: boolean;
  readonly keepalive: boolean;
  readonly keepaliveTimeoutMs: number;
  readonly firstByteMs: number | undefined;
  readonly idleMs: number | undefined;
}

/** Keep-alive time of idle connections for instances without their own `keepalive_timeout`. */
const DEFAULT_KEEPALIVE_MS = 30_000;
/** Past this many pools, empty ones are dropped when a new origin appears. */
const MAX_IDLE_POOLS = 64;

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

const NODE_CONNECT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EPIPE']);

/** Any error of an attempt as an UpstreamFailure (the pool's own failures pass through unchanged). */
export function classifyError(err: unknown): UpstreamFailure {
  if (err instanceof UpstreamFailure) return err;
  const code = (err as { code?: string } | null)?.code ?? '';
  if (code === 'ETIMEDOUT') return new UpstreamFailure('timeout', 'upstream timed out', err);
  if ((err as Error | null)?.name === 'AbortError') return new UpstreamFailure('aborted', 'request aborted', err);
  if (NODE_CONNECT_CODES.has(code)) return new UpstreamFailure('connect_error', 'upstream unreachable', err);
  return new UpstreamFailure('protocol_error', 'upstream protocol error', err);
}

export class UpstreamClient {
  private timeouts: UpstreamTimeouts;
  /** Pools by transport setting and origin (few: one per distinct instance endpoint and setting). */
  private readonly pools = new Map<string, Pool>();
  private closed = false;
  /** Bytes of buffered answers held while they arrive, for the whole process (limits.max_inflight_answer_bytes). */
  private readonly budget: ByteBudget | undefined;

  constructor(timeouts: UpstreamTimeouts, budget?: ByteBudget) {
    this.timeouts = timeouts;
    this.budget = budget;
  }

  /** An answer sent whole to a client that has not taken it yet (it reads slowly): its bytes count in the answer
   *  budget until it has. False when the budget is full (the answer goes anyway: it was produced and charged). */
  holdUnsent(n: number): boolean {
    return this.budget !== undefined && this.budget.tryReserve(n);
  }

  releaseUnsent(n: number): void {
    this.budget?.release(n);
  }

  /** A reload's timeouts: requests sent from now on use them (a connection being opened keeps its deadline). */
  setTimeouts(timeouts: UpstreamTimeouts): void {
    this.timeouts = timeouts;
  }

  private poolFor(origin: string, t: Transport | undefined): Pool {
    const key = t === undefined ? origin : `${t.agentKey}|${origin}`;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      // Origins come from config; reloads can retire them. Pools with no connection left go first.
      if (this.pools.size >= MAX_IDLE_POOLS) for (const [k, p] of this.pools) if (p.open === 0) this.pools.delete(k);
      const client = this;
      pool = new Pool(origin, {
        // Read at each connect, so a reload's connect timeout reaches pools made before it.
        get connectMs() { return client.timeouts.connectMs; },
        keepAlive: t?.keepalive ?? true,
        keepAliveMs: t?.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_MS,
        rejectUnauthorized: t?.sslVerify ?? true,
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  /**
   * Starts one POST; the returned call is the pool's response handler (no AbortController, no body stream).
   * Await `call.head()`, then read the body with `readAll(max)` or `next()`; `abort()` cuts it at any point.
   */
  send(origin: string, path: string, headers: Record<string, string>, body: Buffer, transport?: Transport): UpstreamCall {
    const call = new UpstreamCall(this.budget);
    if (this.closed) { call.onError(new UpstreamFailure('aborted', 'upstream client closed', undefined)); return call; }
    let pool: Pool;
    try {
      pool = this.poolFor(origin, transport);
    } catch (err) {
      call.onError(new UpstreamFailure('connect_error', 'invalid upstream origin', err));
      return call;
    }
    const head = requestHead(pool, path, headers, body.length);
    if (typeof head !== 'string') { call.onError(head); return call; }
    pool.take().send(call, head, body, transport?.firstByteMs ?? this.timeouts.firstByteMs, transport?.idleMs ?? this.timeouts.idleMs);
    return call;
  }

  /** Closes idle connections and resolves once requests in flight have finished. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.pools.values()].map((p) => p.close()));
  }
}

/** Body bytes queued for a reader that is not asking (a stream parked on a slow client) before the socket pauses. */
const QUEUE_HIGH_WATER = 64 * 1024;
/**
 * Queued chunks shorter than this are copied together into one growing buffer (up to TAIL_MAX): queued as they
 * come, a body trickled a byte per packet would hold one Buffer per socket read, ~90 bytes of memory per byte
 * (measured: a buffered answer of 8 MiB in 1-byte chunks took the gateway's RSS up by 880 MiB).
 */
const SMALL_CHUNK = 2048;
const TAIL_MAX = 16 * 1024;
const NO_HEADERS: UpstreamHeaders = Object.freeze([]);
type Waiter = ((v: unknown) => void) | undefined;

/** The longest a wind-down reads on, however busy its reader is kept by bytes already received. */
const WIND_HARD_MS = 10_000;

function windCheck(call: UpstreamCall): void {
  call.windTick();
}

function windConfirm(call: UpstreamCall, activeAt: number): void {
  call.windConfirm(activeAt);
}

/** The failure message of a body cut past readAll's cap. */
export const RESPONSE_TOO_LARGE = 'upstream response too large';
/** The failure message of a body cut because buffered answers in flight reached the process's budget. */
export const ANSWERS_OVER_BUDGET = 'buffered upstream answers in flight exceed limits.max_inflight_answer_bytes';

/**
 * One upstream request, driven by the pool's handler callbacks. Every failure (timeouts, resets, a body
 * past readAll's cap, abort()) becomes one UpstreamFailure, delivered to whatever waits now or next.
 * Readers: `head()` once, then either `readAll(max)` once or `next()` in a loop (one outstanding at a time).
 */
export class UpstreamCall implements ResponseHandler {
  status = 0;
  headers: UpstreamHeaders = NO_HEADERS;
  /** Times the request was sent again after a kept-alive connection closed under it (the keep-alive race). */
  resends = 0;
  /** The whole request reached the kernel (Connection.write's callback): a call cut before that never reached the
   *  upstream whole. */
  written = false;
  private conn: Connection | undefined = undefined;
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
  /** Small chunks copied together, not yet in `queue` (their bytes are in `queued`). */
  private tail: Buffer | undefined = undefined;
  private tailLen = 0;
  private resolve: Waiter = undefined;
  private reject: Waiter = undefined;
  private readonly budget: ByteBudget | undefined;
  /** Bytes of this answer reserved on the budget while readAll collects it. */
  private held = 0;
  /** windDown: whether it runs, its timer (or the immediate that confirms a quiet spell), its quiet time, end, and
   *  when the upstream last sent a byte (or the reader last asked). */
  private winding = false;
  private windTimer: NodeJS.Timeout | undefined = undefined;
  private windImmediate: NodeJS.Immediate | undefined = undefined;
  private windQuietMs = 0;
  /** windDown's `maxMs` runs only while the reader waits on the upstream (a reader busy with bytes already here,
   *  counting text on a loaded machine, does not use it up), within a hard end of WIND_HARD_MS at least. */
  private windEnd = 0;
  private windHardEnd = 0;
  private windTickAt = 0;
  private windActiveAt = 0;

  constructor(budget?: ByteBudget) {
    this.budget = budget;
  }

  /** Bytes of the answer wait unread (queued, or the socket paused behind them): its reader is behind. */
  get backlogged(): boolean {
    return this.paused || this.queued > 0;
  }

  /** Body bytes received and not yet read (bounded by QUEUE_HIGH_WATER plus one chunk while streaming). */
  get queuedBytes(): number {
    return this.queued;
  }

  /** Cuts the request now (client gone, shutdown): pending and later reads fail with kind 'aborted'. */
  abort(): void {
    if (this.failure !== undefined || this.ended) return;
    // What a buffered body received so far stays for partial(): a client that leaves mid-answer is charged it.
    this.fail(new UpstreamFailure('aborted', 'request aborted', undefined), this.collecting);
  }

  /**
   * The reader's client is gone, but what the upstream already sent is still read (the usage report of a stream
   * that finished while its client was slow waits in the socket): the call is cut once no byte has come for
   * `quietMs` while the reader waits, or after `maxMs` of waiting in all (windEnd). A generation still running is cut
   * within `quietMs` of its last token; a call that ends or fails first needs nothing more.
   */
  windDown(quietMs: number, maxMs: number): void {
    if (this.failure !== undefined || this.ended) return;
    const now = performance.now();
    if (this.winding) {
      // Wound down already (after a stream's last event): the tighter bounds hold.
      this.windQuietMs = Math.min(this.windQuietMs, quietMs);
      this.windEnd = Math.min(this.windEnd, now + maxMs);
      this.windHardEnd = Math.min(this.windHardEnd, now + Math.max(WIND_HARD_MS, maxMs));
      return;
    }
    this.winding = true;
    this.windTickAt = now;
    this.windHardEnd = now + Math.max(WIND_HARD_MS, maxMs);
    this.windActiveAt = now;
    this.windQuietMs = quietMs;
    this.windEnd = now + maxMs;
    this.windTimer = setTimeout(windCheck, Math.min(quietMs, maxMs), this);
    this.windTimer.unref();
  }

  /** windDown's timer: cut the call when it went quiet or its time is up, else look again. */
  windTick(): void {
    this.windTimer = undefined;
    if (this.failure !== undefined || this.ended) return;
    const now = performance.now();
    // Bytes wait for a reader busy elsewhere (counting text): not quiet (cut, they would be lost), and its time is
    // not the upstream's.
    if (this.backlogged) {
      this.windActiveAt = now;
      this.windEnd += now - this.windTickAt;
    }
    this.windTickAt = now;
    const quiet = now - this.windActiveAt;
    if (now >= this.windEnd || now >= this.windHardEnd) {
      this.abort();
      return;
    }
    if (quiet >= this.windQuietMs) {
      // Quiet by the clock, which also runs while this process waits for a core: cut only if this loop turn's poll,
      // which runs before the immediate, finds nothing of it in the socket either.
      this.windImmediate = setImmediate(windConfirm, this, this.windActiveAt);
      return;
    }
    this.rearmWind(now);
  }

  /** windTick found the call quiet: still nothing since, it is cut. */
  windConfirm(activeAt: number): void {
    this.windImmediate = undefined;
    if (this.failure !== undefined || this.ended) return;
    if (this.windActiveAt === activeAt && !this.backlogged) this.abort();
    else this.rearmWind(performance.now());
  }

  private rearmWind(now: number): void {
    const quiet = now - this.windActiveAt;
    this.windTimer = setTimeout(windCheck, Math.max(1, Math.min(this.windQuietMs - quiet, this.windEnd - now, this.windHardEnd - now)), this);
    this.windTimer.unref();
  }

  /** Fails the request with kind 'timeout' (a buffered answer not complete in time); pending reads reject. */
  timeOut(message: string): void {
    if (this.failure !== undefined || this.ended) return;
    this.fail(new UpstreamFailure('timeout', message, undefined));
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
    if (!this.hold(this.queued)) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(this.joined());
    this.unpause();
    return this.wait();
  }

  /** The whole body when it already arrived complete (it came with the head), without a promise; else undefined,
   *  and readAll waits for it. */
  bodyNow(max: number): Buffer | undefined {
    if (!this.ended || this.failure !== undefined || this.queued > max) return undefined;
    this.collecting = true;
    this.max = max;
    return this.joined();
  }

  /** After readAll failed: the body bytes received before it broke off, or before abort() (empty when none, or
   *  when it was cut for size). For charging what an upstream produced. */
  partial(): Buffer {
    return this.collecting && this.queued > 0 ? this.joined() : EMPTY;
  }

  /** A body chunk already received (it came with the head), taken synchronously; undefined when none waits. */
  takeQueued(): Buffer | undefined {
    if (this.collecting) return undefined;
    if (this.queueHead >= this.queue.length) {
      if (this.tailLen === 0) return undefined;
      this.flushTail();
    }
    const c = this.queue[this.queueHead]!;
    this.queue[this.queueHead++] = EMPTY;
    this.queued -= c.length;
    if (this.queueHead === this.queue.length) { this.queue.length = 0; this.queueHead = 0; }
    if (this.paused && this.queued < QUEUE_HIGH_WATER) this.unpause();
    return c;
  }

  /** The next body chunk, or null at the end. The socket pauses while QUEUE_HIGH_WATER bytes wait unread. */
  next(): Promise<Buffer | null> {
    if (this.winding) this.windActiveAt = performance.now();
    const c = this.takeQueued();
    if (c !== undefined) return Promise.resolve(c);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve(null);
    this.unpause();
    return this.wait();
  }

  // The pool's handler callbacks.

  onStart(conn: Connection): void {
    this.conn = conn;
  }

  onResend(): void {
    this.resends++;
    // Resent because the upstream did not act on the first write: written again only when the new one is.
    this.written = false;
  }

  onWritten(): void {
    this.written = true;
  }

  onHead(status: number, headers: UpstreamHeaders): void {
    if (this.failure !== undefined) return;
    this.status = status;
    this.headers = headers;
    this.headDone = true;
    this.settle(undefined);
  }

  onData(chunk: Buffer): boolean {
    if (this.failure !== undefined) return true;
    if (this.collecting) {
      if (this.queued + chunk.length > this.max) { this.tooLarge(); return true; }
      if (!this.hold(chunk.length)) return true;
      this.enqueue(chunk);
      return true;
    }
    if (this.winding) this.windActiveAt = performance.now();
    if (this.resolve !== undefined) { this.settle(chunk); return true; }
    this.enqueue(chunk);
    if (this.queued >= QUEUE_HIGH_WATER) { this.paused = true; return false; }
    return true;
  }

  onComplete(): void {
    if (this.failure !== undefined) return;
    this.ended = true;
    this.stopWinding();
    if (this.resolve === undefined) return;
    this.settle(this.collecting ? this.joined() : null);
  }

  onError(err: UpstreamFailure): void {
    if (this.failure !== undefined || this.ended) return;
    this.failure = err;
    this.stopWinding();
    this.unhold();
    this.rejectWaiter();
  }

  /** Reserves `n` more bytes of a collected answer; past the budget the call fails (the bytes so far stay for
   *  partial(): the answer was produced upstream and is charged). */
  private hold(n: number): boolean {
    const b = this.budget;
    if (b === undefined || n === 0) return true;
    if (!b.tryReserve(n)) {
      this.fail(new UpstreamFailure('protocol_error', ANSWERS_OVER_BUDGET, undefined), true);
      return false;
    }
    this.held += n;
    return true;
  }

  private unhold(): void {
    if (this.held === 0) return;
    this.budget!.release(this.held);
    this.held = 0;
  }

  private enqueue(chunk: Buffer): void {
    const n = chunk.length;
    this.queued += n;
    if (n >= SMALL_CHUNK) {
      this.flushTail();
      this.queue.push(chunk);
      return;
    }
    let t = this.tail;
    if (t !== undefined && this.tailLen + n > t.length) {
      if (this.tailLen + n > TAIL_MAX) {
        this.flushTail();
        t = undefined;
      } else {
        const grown = Buffer.allocUnsafe(Math.min(TAIL_MAX, Math.max(2 * t.length, this.tailLen + n)));
        t.copy(grown, 0, 0, this.tailLen);
        t = grown;
        this.tail = t;
      }
    }
    if (t === undefined) {
      t = Buffer.allocUnsafe(Math.max(512, n));
      this.tail = t;
      this.tailLen = 0;
    }
    chunk.copy(t, this.tailLen);
    this.tailLen += n;
  }

  private flushTail(): void {
    const t = this.tail;
    if (t === undefined) return;
    if (this.tailLen > 0) this.queue.push(t.subarray(0, this.tailLen));
    this.tail = undefined;
    this.tailLen = 0;
  }

  private tooLarge(): void {
    this.queue = [];
    this.fail(new UpstreamFailure('protocol_error', RESPONSE_TOO_LARGE, undefined));
  }

  /** `keep`: the bytes received stay for partial(). */
  private fail(f: UpstreamFailure, keep = false): void {
    this.failure = f;
    this.stopWinding();
    this.unhold();
    if (!keep) {
      this.queue.length = 0;
      this.queued = 0;
      this.tail = undefined;
      this.tailLen = 0;
    }
    this.conn?.cancel(this);
    this.rejectWaiter();
  }

  private stopWinding(): void {
    if (!this.winding) return;
    this.winding = false;
    if (this.windTimer !== undefined) clearTimeout(this.windTimer);
    if (this.windImmediate !== undefined) clearImmediate(this.windImmediate);
    this.windTimer = undefined;
    this.windImmediate = undefined;
  }

  private unpause(): void {
    if (!this.paused) return;
    this.paused = false;
    this.conn?.resume(this);
  }

  private joined(): Buffer {
    this.flushTail();
    const q = this.queue;
    const out = q.length === 1 ? q[0]! : Buffer.concat(q, this.queued);
    this.queue = [];
    this.queued = 0;
    // Handed to the gateway, which decodes and sends it in the same turn (or copies it to a worker).
    this.unhold();
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
