// Front end: accepts connections (through the HTTP/1.x guard, or a uWS App with the guard off), turns each request
// into a ClientRequest/ClientResponse pair, checks the request head (header limits, framing, path), reads the body
// under a byte limit and a global in-flight budget, and hands it to the gateway. uWebSockets.js is imported in
// this folder only.
//
// What uWS 20.30 does before our handler runs cannot be changed here (docs/architecture.md §2, README
// "Limits"): it answers only `HTTP/1.1` request lines (HTTP/1.0, absolute-form targets and requests without
// Host wait unanswered until its 10 s timeout), cannot parse 49 or more header lines (same wait; closed at
// once past 4 KiB of headers), closes a connection with an invalid Content-Length or both Content-Length and
// Transfer-Encoding without a response, closes a connection that pipelines a request while an earlier answer is
// still pending, and times out request heads and idle keep-alive connections after a fixed ~10 s. So by default
// the HTTP/1.x guard (http1-guard.ts) holds the public port and serves requests itself through this module's
// checks (serveInGuard, NetResponse), in every serving thread; a uWS App serves only with `listen.http1_guard: false`.
import { isAscii } from 'node:buffer';
import { createServer as createHttpServer, type ServerResponse } from 'node:http';
import { createServer } from 'node:net';
import uWS from 'uWebSockets.js';
import type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket } from 'uWebSockets.js';
import type { LimitsConfig } from '../config/types.ts';
import { SluiceError, toErrorBody } from '../core/errors.ts';
import { isIdentityCoding } from '../core/http-token.ts';
import { LiveList, type LiveEntry } from '../core/live-list.ts';
import type { Metrics } from '../metrics/registry.ts';
import type { Accepted, ClientRequest, RequestSink } from '../pipeline/http-types.ts';
import { errorHeaders, errorText, sendError } from '../pipeline/error-response.ts';
import { UwsResponse } from './response.ts';
import { NetResponse, type ResponseWire } from './net-response.ts';
import type { BaseResponse } from './response-base.ts'; // UwsResponse or the guard's NetResponse
import { normalizePath } from '../core/request-path.ts';
import { Guard, type RequestHead } from './http1-guard.ts';
import { closeListener, listenerFd, shareListener } from './listener-share.ts';
import { LocalByteBudget, SharedByteBudget, type ByteBudget } from '../core/byte-budget.ts';

/** A listening port the front end opened: stop accepting, close, share, wind down. */
export interface Listening {
  readonly port: number;
  /** Stop accepting new connections; open ones keep being served. */
  stopListening(): void;
  /** Close every connection. */
  close(): void;
  /** The guard's listening socket's descriptor, for the process's other serving threads to share
   *  (FrontendOptions.shareFd); read only when another thread needs it (libuv's handle, not node's typings). */
  shareableFd?(): number;
  /** Wait (at most graceMs) until no answer is still being written to a client, so close() cuts none short. */
  quiesce?(graceMs: number): Promise<void>;
  /** Requests whose body is still arriving: in flight for a drain, though the gateway has not seen them yet. */
  receiving?(): number;
  /** At the end of a drain: answer every request whose body is still arriving 503 and close its connection. */
  cutReceiving?(): number;
}

/** A listen or admin port that cannot be bound: a startup error, never a silent second listener. */
export class ListenError extends Error {
  /** EADDRINUSE, EACCES, EADDRNOTAVAIL, … as node:net reports for the same address, or 'UNKNOWN'. */
  readonly code: string;
  readonly host: string;
  readonly port: number;

  constructor(what: string, host: string, port: number, code: string) {
    const why = code === 'EADDRINUSE'
      ? 'address already in use (another process, perhaps another sluice, is listening there)'
      : code === 'EACCES' ? 'permission denied' : code === 'EADDRNOTAVAIL' ? 'address not available on this host' : 'cannot listen';
    super(`${what} ${host}:${port}: ${why} [${code}]`);
    this.name = 'ListenError';
    this.code = code;
    this.host = host;
    this.port = port;
  }
}

export type FrontendLimits = Pick<LimitsConfig,
  'max_inflight_body_bytes' | 'max_header_fields' | 'max_header_line_bytes' | 'max_header_bytes' | 'max_drain_bytes' | 'client_body_timeout_ms'
  | 'client_header_timeout_ms' | 'client_idle_timeout_ms' | 'client_send_timeout_ms' | 'max_client_connections' | 'listen_backlog'>;

export type FrontendMetrics = Pick<Metrics, 'requestsInFlight' | 'bodyBytesInFlight' | 'frontendRejected'>;

export interface FrontendOptions {
  readonly host: string;
  readonly port: number;
  readonly limits: FrontendLimits;
  readonly metrics?: FrontendMetrics;
  /** Share the port with other listeners (SO_REUSEPORT). Only for Sluice's own per-thread Apps, by design;
   *  the default binds exclusively, so a second gateway on a taken port fails to start. */
  readonly reusePort?: boolean;
  /** Put the HTTP/1.x guard (http1-guard.ts) on the port, serving requests itself in this thread. Default true. */
  readonly http1Guard?: boolean;
  /** Serve on this thread's own descriptor of the listening socket another thread of the process bound (its
   *  `Listening.shareableFd()`; listener-share.ts) instead of binding host:port. With the guard only. */
  readonly shareFd?: number;
  /** Serving threads: the process-wide body budget's shared cell (body-budget.ts); otherwise this App's own. */
  readonly bodyBudget?: SharedArrayBuffer;
}

/** Fails fast when uWS fell back to its slow `ws` shim instead of the native binary. */
export function assertNativeUws(): void {
  const mod = uWS as unknown as Record<string, unknown>;
  if (typeof mod.SSLApp !== 'function' || typeof mod.getParts !== 'function') {
    throw new Error('uWebSockets.js native binary did not load (a JS fallback is active); refusing to start');
  }
}

const LISTEN_EXCLUSIVE = 1;
const LISTEN_DEFAULT = 0;

/** uWS says only "false" when a bind fails; node:net tells why for the same address. */
function bindErrorCode(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'UNKNOWN'));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve('UNKNOWN')));
  });
}

function listen(app: TemplatedApp, what: string, host: string, port: number, reusePort: boolean): Promise<Listening> {
  return new Promise((resolve, reject) => {
    // The native listen takes (host, port, options, cb); the typings only declare (port, options, cb).
    const listenWithOptions = app.listen as unknown as (h: string, p: number, o: number, cb: (t: us_listen_socket | false) => void) => void;
    listenWithOptions.call(app, host, port, reusePort ? LISTEN_DEFAULT : LISTEN_EXCLUSIVE, (token) => {
      if (!token) {
        bindErrorCode(host, port).then((code) => reject(new ListenError(what, host, port, code)), reject);
        return;
      }
      let listening = true;
      const stopListening = () => {
        if (listening) uWS.us_listen_socket_close(token);
        listening = false;
      };
      resolve({
        port: uWS.us_socket_local_port(token),
        stopListening,
        // close() exists on the native App (20.30) but is missing from its typings.
        close: () => { stopListening(); (app as unknown as { close(): void }).close(); },
      });
    });
  });
}

/** Something waiting for request-body bytes; the sweeper calls `expire` after `client_body_timeout_ms` of silence. */
interface Waiting extends LiveEntry<Waiting> {
  lastActivity: number;
  expire(): void;
  /** A request body being read (not a refused one being drained): shutdown waits for it, then cuts it. */
  readonly receiving?: boolean;
  cut?(): void;
}

/** One coarse interval instead of a timer per request: most bodies arrive with their head. */
class BodyTimeouts {
  private readonly waiting = new LiveList<Waiting>();
  private readonly timeoutMs: number;
  private readonly timer: NodeJS.Timeout;

  constructor(timeoutMs: number) {
    this.timeoutMs = timeoutMs;
    this.timer = setInterval(() => this.sweep(), Math.max(10, Math.min(1000, Math.floor(timeoutMs / 4))));
    this.timer.unref();
  }

  add(w: Waiting): void {
    this.waiting.add(w);
  }

  delete(w: Waiting): void {
    this.waiting.delete(w);
  }

  private sweep(): void {
    if (this.waiting.size === 0) return;
    const deadline = performance.now() - this.timeoutMs;
    for (const w of this.waiting.entries()) {
      if (w.lastActivity > deadline) continue;
      this.waiting.delete(w);
      w.expire();
    }
  }

  receiving(): number {
    let n = 0;
    for (const w of this.waiting.entries()) if (w.receiving === true) n++;
    return n;
  }

  cutReceiving(): number {
    let n = 0;
    for (const w of this.waiting.entries()) {
      if (w.receiving !== true) continue;
      this.waiting.delete(w);
      w.cut?.();
      n++;
    }
    return n;
  }

  stop(): void {
    clearInterval(this.timer);
    this.waiting.clear();
  }
}

interface Front {
  readonly sink: RequestSink;
  readonly limits: FrontendLimits;
  readonly metrics: FrontendMetrics | undefined;
  readonly budget: ByteBudget;
  readonly timeouts: BodyTimeouts;
}

interface BodyHold {
  bytes: number;
}

/** What the head says about the body, after framing checks. */
interface Head {
  readonly request: ClientRequest;
  /** Declared Content-Length; undefined for chunked or absent. */
  readonly declared: number | undefined;
  /** A body follows (Content-Length > 0 or chunked). */
  readonly hasBody: boolean;
}

/** A head the front end refuses: `close` when the connection cannot be trusted afterwards. */
interface Refusal {
  readonly err: SluiceError;
  readonly reason: string;
  /** Framing unknown: answer and close at once, no drain. */
  readonly framing: boolean;
  readonly hasBody: boolean;
  /** The body's Content-Length, when known: past max_drain_bytes the refusal answers from the head. */
  readonly declared?: number;
}

const DIGITS = /^\d{1,15}$/;

function refuse(reason: string, err: SluiceError, framing: boolean, hasBody: boolean, declared?: number): Refusal {
  return { err, reason, framing, hasBody, declared };
}

/**
 * Reads the uWS request synchronously (it dies at the first await) and checks header limits and body framing:
 * RFC 9112 §6.3 — Content-Length with Transfer-Encoding, differing or non-numeric Content-Length values, and a
 * transfer coding other than chunked are 400 with the connection closed.
 */
/**
 * readHead's scan of the header lines: one module-level state and callback, since uWS calls forEach's callback
 * synchronously, instead of a closure and a context of its variables per request.
 */
class HeadScan {
  headers: Record<string, string> = {};
  total = 0;
  longest = 0;
  fields = 0;
  lengths: string[] | undefined = undefined;
  single: string | undefined = undefined;
  te: string | undefined = undefined;
}

const scan = new HeadScan();

function scanHeader(k: string, v: string): void {
  scan.fields++;
  const line = k.length + 2 + v.length;
  scan.total += line + 2;
  if (line > scan.longest) scan.longest = line;
  if (k === 'content-length') {
    // One plain decimal value (nearly every request) needs no array and no split.
    if (scan.lengths === undefined && scan.single === undefined && DIGITS.test(v)) scan.single = v;
    else {
      const lengths = scan.lengths ??= [];
      if (scan.single !== undefined) { lengths.push(scan.single); scan.single = undefined; }
      lengths.push(v.trim());
    }
  } else if (k === 'transfer-encoding') scan.te = scan.te === undefined ? v : `${scan.te}, ${v}`;
  const headers = scan.headers;
  const prev = headers[k];
  headers[k] = prev === undefined ? v : joinField(k, prev, v);
}

/** A repeated field's lines as one value: ', ' (RFC 9110), except Cookie's, which are '; '-separated pairs (RFC 9113
 *  §8.2.3, as nginx joins them), so `${cookie_x}` finds its pair on any line. */
function joinField(name: string, prev: string, value: string): string {
  return name === 'cookie' ? `${prev}; ${value}` : `${prev}, ${value}`;
}

const NO_HEADERS: Record<string, string> = {};

/** Fills `headers` from the request's header lines; the scan's totals are read from the result at once. */
function scanHeaders(req: HttpRequest, headers: Record<string, string>, requestLine: number): HeadScan {
  scan.headers = headers;
  scan.total = requestLine + 2;
  scan.longest = requestLine;
  scan.fields = 0;
  scan.lengths = scan.single = scan.te = undefined;
  req.forEach(scanHeader);
  scan.headers = NO_HEADERS;
  return scan;
}

function readHead(front: Front, res: HttpResponse, req: HttpRequest, method: string, startedAt: number): Head | Refusal {
  const limits = front.limits;
  const headers: Record<string, string> = {};
  const url = req.getUrl();
  const query = req.getQuery() ?? '';
  // Request line as sent: "METHOD SP target SP HTTP/1.1".
  const requestLine = method.length + url.length + (query === '' ? 0 : query.length + 1) + 10;
  const { total, longest, fields, lengths, single, te } = scanHeaders(req, headers, requestLine);
  scan.lengths = undefined;
  const hasBody = te !== undefined || (single !== undefined ? single !== '0' : lengths !== undefined && lengths[0] !== '0');
  if (fields > limits.max_header_fields || longest > limits.max_header_line_bytes || total > limits.max_header_bytes) {
    const what = fields > limits.max_header_fields ? `more than ${limits.max_header_fields} header fields`
      : longest > limits.max_header_line_bytes ? `a header line longer than ${limits.max_header_line_bytes} bytes`
        : `headers larger than ${limits.max_header_bytes} bytes`;
    return refuse('headers_too_large', new SluiceError('SLC_HEADERS_TOO_LARGE', `request has ${what}`), false, hasBody);
  }
  let declared: number | undefined;
  if (te !== undefined) {
    if (lengths !== undefined || single !== undefined) return refuse('framing', new SluiceError('SLC_BAD_REQUEST', 'request has both Content-Length and Transfer-Encoding'), true, true);
    if (te.trim().toLowerCase() !== 'chunked') return refuse('framing', new SluiceError('SLC_BAD_REQUEST', 'unsupported Transfer-Encoding (only chunked)'), true, true);
  } else if (lengths !== undefined) {
    // Repeated fields or a list ("5, 5"): equal values are one length (RFC 9110 §8.6); differing ones are how
    // requests are smuggled past a proxy that reads another one than uWS (which takes the first).
    for (const l of lengths) {
      for (const part of l.split(',')) {
        const p = part.trim();
        if (!DIGITS.test(p)) return refuse('framing', new SluiceError('SLC_BAD_REQUEST', 'invalid Content-Length'), true, true);
        const n = Number(p);
        if (declared === undefined) declared = n;
        else if (n !== declared) return refuse('framing', new SluiceError('SLC_BAD_REQUEST', 'conflicting Content-Length values'), true, true);
      }
    }
    headers['content-length'] = String(declared);
  } else if (single !== undefined) {
    declared = Number(single);
    if (single.length > 1 && single.charCodeAt(0) === 0x30) headers['content-length'] = String(declared);
  }
  const path = normalizePath(url);
  if (path === undefined) return refuse('bad_path', new SluiceError('SLC_BAD_REQUEST', 'malformed request path'), false, hasBody, declared);
  return {
    request: {
      method,
      path,
      query,
      headers,
      remoteAddr: Buffer.from(res.getRemoteAddressAsText()).toString('latin1'),
      startedAt,
    },
    declared,
    hasBody,
  };
}

/**
 * Refuse a request whose body is unwanted: read what is left of it, discarding it, up to `max_drain_bytes` and
 * while it keeps arriving, then answer (nginx's lingering close, done in the order uWS allows: a uWS response
 * cannot close its connection after it has ended). A client still sending (Node's fetch, undici, the openai SDK,
 * curl) so reads the answer instead of EPIPE or a reset. `close`: the connection is closed with the answer
 * (413, 431, 503, 400); otherwise (404, 405) it stays usable. Past the drain bound the answer goes out with the
 * connection closed at once.
 */
class Refuser {
  private drained: number;
  private readonly front: Front;
  private readonly client: BaseResponse;
  private readonly err: SluiceError;
  private readonly close: boolean;
  private readonly waiting: Waiting;

  constructor(front: Front, client: BaseResponse, err: SluiceError, close: boolean, already: number) {
    this.front = front;
    this.client = client;
    this.err = err;
    this.close = close;
    this.drained = already;
    this.waiting = { lastActivity: performance.now(), expire: () => this.answer(true), liveOwner: undefined, livePrev: undefined, liveNext: undefined };
    front.timeouts.add(this.waiting);
  }

  /** The client went away: nothing is left to answer. */
  gone(): void {
    this.front.timeouts.delete(this.waiting);
  }

  /** One body chunk of `n` bytes arrived. */
  feed(n: number, isLast: boolean): void {
    if (this.client.aborted || this.client.done) { this.front.timeouts.delete(this.waiting); return; }
    this.drained += n;
    this.waiting.lastActivity = performance.now();
    if (isLast) this.answer(this.close);
    else if (this.drained > this.front.limits.max_drain_bytes) this.answer(true);
  }

  private answer(close: boolean): void {
    this.front.timeouts.delete(this.waiting);
    answer(this.client, this.err, close);
  }
}

function answer(client: BaseResponse, err: SluiceError, close: boolean): void {
  if (close) client.sendAndClose(err.status, errorHeaders(err), errorText(err));
  else sendError(client, err);
}

function refuseBody(front: Front, client: BaseResponse, err: SluiceError, close: boolean, hasBody: boolean, declared?: number): void {
  if (!hasBody) { answer(client, err, close); return; }
  // The client has not sent its body yet, or declared one larger than a drain reads: answer now and close.
  if (client.awaitingContinue || (declared !== undefined && declared > front.limits.max_drain_bytes)) { answer(client, err, true); return; }
  const r = new Refuser(front, client, err, close, 0);
  client.onAbort(() => r.gone());
  client.onData((chunk, isLast) => r.feed(chunk.byteLength, isLast));
}

/** The least a body's buffer takes (a page), unless its declared length is less. */
const RESERVE_MIN = 4096;

function overloaded(): SluiceError {
  return new SluiceError('SLC_OVERLOADED', 'too many request-body bytes in flight; retry shortly', { headers: { 'retry-after': '1' } });
}

function tooLarge(max: number): SluiceError {
  return new SluiceError('SLC_BODY_TOO_LARGE', `request body exceeds ${max} bytes`);
}

function handle(front: Front, res: HttpResponse, req: HttpRequest): void {
  const startedAt = performance.now();
  const method = req.getMethod().toUpperCase();
  const metrics = front.metrics;
  metrics?.requestsInFlight.inc();
  // Body bytes this request holds in the budget, released once when its response finishes or aborts.
  const hold: BodyHold = { bytes: 0 };
  const client = new UwsResponse(res, method === 'HEAD', finisher(front, hold), front.limits.client_send_timeout_ms);
  const head = readHead(front, res, req, method, startedAt);
  if (!('request' in head)) {
    metrics?.frontendRejected.inc({ reason: head.reason });
    if (head.framing) answer(client, head.err, true);
    else refuseBody(front, client, head.err, true, head.hasBody, head.declared);
    return;
  }
  admit(front, client, hold, head.request, head.declared, head.hasBody);
}

/** Releases what a request holds (its in-flight count, its body bytes) once its response finishes or aborts. */
function finisher(front: Front, hold: BodyHold): () => void {
  return () => {
    front.metrics?.requestsInFlight.dec();
    if (hold.bytes > 0) { front.budget.release(hold.bytes); hold.bytes = 0; }
  };
}

/**
 * A request the HTTP/1.x guard parsed and serves in its own thread: its head was validated there (limits, framing,
 * version), so what is left is what readHead does after those checks. `buf` is read synchronously.
 */
function serveInGuard(front: Front, wire: ResponseWire, head: RequestHead, buf: Buffer, peer: string): NetResponse {
  const startedAt = performance.now();
  // Methods are case-sensitive (RFC 9110 §9.1): `post` is not POST. (uWS 20.30 lowercases them, so its path cannot tell.)
  const method = head.method;
  front.metrics?.requestsInFlight.inc();
  const hold: BodyHold = { bytes: 0 };
  const headers = headerRecord(wire, head, buf);
  const hasBody = head.framing !== 'none';
  const expect = headers.expect;
  const client = new NetResponse(wire, method === 'HEAD', head.minor === 0, head.keepAlive,
    hasBody && expect !== undefined && expect.toLowerCase() === '100-continue', finisher(front, hold), front.limits.client_send_timeout_ms);
  const target = head.target;
  const q = target.indexOf('?');
  const path = normalizePath(q < 0 ? target : target.slice(0, q));
  if (path === undefined) {
    front.metrics?.frontendRejected.inc({ reason: 'bad_path' });
    refuseBody(front, client, new SluiceError('SLC_BAD_REQUEST', 'malformed request path'), true, hasBody, head.framing === 'length' ? head.length : undefined);
    return client;
  }
  const request: ClientRequest = { method, path, query: q < 0 ? '' : target.slice(q + 1), headers, remoteAddr: peer, startedAt };
  admit(front, client, hold, request, head.framing === 'chunked' ? undefined : head.length, hasBody);
  return client;
}

/** The head's fields as the pipeline reads them: lower-case names, repeated ones joined (joinField), values UTF-8
 *  (as uWS decodes them), Host from an absolute-form target. */
function headerRecord(wire: ResponseWire, head: RequestHead, buf: Buffer): Record<string, string> {
  const headers: Record<string, string> = {};
  const lines = head.lines;
  if (lines.length > 0) {
    // One string for every field, sliced per name and value: two native decodes per field cost more. Values are
    // UTF-8, so a head with any byte past ASCII decodes its values one by one.
    const from = lines[0]!;
    const to = lines[lines.length - 1]!;
    const ascii = isAscii(buf.subarray(from, to));
    const text = buf.toString('latin1', from, to);
    for (let i = 0; i < lines.length; i += 4) {
      const name = text.slice(lines[i]! - from, lines[i + 1]! - from).toLowerCase();
      const value = ascii ? text.slice(lines[i + 2]! - from, lines[i + 3]! - from) : buf.toString('utf8', lines[i + 2]!, lines[i + 3]!);
      const prev = headers[name];
      headers[name] = prev === undefined ? value : joinField(name, prev, value);
    }
  }
  if (head.host !== undefined) headers.host = head.host;
  else if (headers.host === undefined) headers.host = wire.socket.localAddress ?? 'localhost';
  // Repeated equal lengths ("5, 5") or leading zeros: the one length the guard framed the body by.
  if (head.framing === 'length') headers['content-length'] = String(head.length);
  return headers;
}

/** The reason label of a refusal at route lookup (bounded: one per error code). */
const REFUSED_AT_ACCEPT: Partial<Record<string, string>> = {
  SLC_NOT_FOUND: 'not_found',
  SLC_METHOD_NOT_ALLOWED: 'method_not_allowed',
  SLC_SHUTTING_DOWN: 'shutting_down',
};

/** A refusal of the front end's own, its body in the format of the client API the path belongs to (an Anthropic
 *  SDK reads a 413 as an Anthropic error); a body the error already carries stays. */
function styled(front: Front, path: string, err: SluiceError): SluiceError {
  err.body ??= errorText(err, front.sink.errorFormat(path));
  return err;
}

/** Route and method check, body limits and budget, then the body is read and the gateway runs. */
function admit(front: Front, client: BaseResponse, hold: BodyHold, request: ClientRequest, declared: number | undefined, hasBody: boolean): void {
  const metrics = front.metrics;
  // A gzip (or other) encoded body would only fail later as "not valid JSON": say what is wrong, from the head.
  const encoding = request.headers['content-encoding'];
  if (hasBody && encoding !== undefined && !isIdentityCoding(encoding)) {
    metrics?.frontendRejected.inc({ reason: 'content_encoding' });
    refuseBody(front, client, styled(front, request.path, new SluiceError('SLC_UNSUPPORTED_ENCODING', 'Content-Encoding is not supported on request bodies: send the JSON as it is')), true, hasBody, declared);
    return;
  }
  let accepted: Accepted | SluiceError;
  try {
    accepted = front.sink.accept(request);
  } catch (err) {
    accepted = new SluiceError('SLC_INTERNAL', undefined, { cause: err });
  }
  if (accepted instanceof SluiceError) {
    // 404, 405 (a 401 is counted by its route): the connection stays usable once the (bounded) body is read.
    const reason = REFUSED_AT_ACCEPT[accepted.code];
    if (reason !== undefined) metrics?.frontendRejected.inc({ reason });
    refuseBody(front, client, styled(front, request.path, accepted), false, hasBody, declared);
    return;
  }
  const gate = accepted;
  if (declared !== undefined && declared > gate.maxBodyBytes) {
    metrics?.frontendRejected.inc({ reason: 'body_too_large' });
    refuseBody(front, client, styled(front, request.path, tooLarge(gate.maxBodyBytes)), true, true, declared);
    return;
  }
  // A declared length reserves nothing until its bytes come (BodyReader.data): clients that declare large bodies
  // and send a byte now and then hold a page each, not the budget (260 of them at 256 KiB each had held all of it).
  readBody(front, client, hold, gate, request, declared);
}

/** Body bytes are copied into one buffer grown by doubling as they come (a body that comes in one read: once). */
function readBody(front: Front, client: BaseResponse, hold: BodyHold, gate: Accepted, request: ClientRequest, declared: number | undefined): void {
  const reader = new BodyReader(front, client, hold, gate, request, declared);
  front.timeouts.add(reader);
  // Until the body is complete (the pipeline then sets its own): a client gone mid-body frees the body at once.
  client.onAbort(() => reader.gone());
  if (declared === undefined) client.watchDeclared((total) => reader.declared(total));
  client.onData((chunk, isLast) => reader.data(chunk, isLast));
}

/** One request's body as it arrives: the sweeper's Waiting entry and the state of uWS's onData in one object,
 *  rather than closures over a context of their own per request. */
class BodyReader implements Waiting {
  lastActivity = performance.now();
  liveOwner: object | undefined = undefined;
  livePrev: Waiting | undefined = undefined;
  liveNext: Waiting | undefined = undefined;
  /**
   * The body's bytes so far, in one buffer grown by doubling (at least a page, at most the declared length or the
   * limit), which the body budget holds whole: the budget is the memory. A Buffer per chunk had cost ~100 bytes of
   * heap per 1-byte chunk (a probe's 8 MB body of 1-byte chunks took 1.1 GB); a buffer of the declared length at
   * once cost a full GC each (V8 counts it as external memory), and idle uploads held more than the budget said.
   */
  private buf: Buffer | undefined = undefined;
  private size = 0;
  private failed = false;
  private refuser: Refuser | undefined = undefined;
  private readonly front: Front;
  private readonly client: BaseResponse;
  private readonly hold: BodyHold;
  private readonly gate: Accepted;
  private readonly request: ClientRequest;
  /** Content-Length; -1 for a chunked body. */
  private readonly declaredBytes: number;

  constructor(front: Front, client: BaseResponse, hold: BodyHold, gate: Accepted, request: ClientRequest, declared: number | undefined) {
    this.front = front;
    this.client = client;
    this.hold = hold;
    this.gate = gate;
    this.request = request;
    this.declaredBytes = declared ?? -1;
  }

  get receiving(): boolean {
    return !this.failed && !this.client.aborted;
  }

  /** The client went away mid-body: its bytes and its sweeper entry go now, not when the body timeout would have
   *  expired it (a client aborting large uploads held memory past the budget, which its finish had released). */
  gone(): void {
    this.failed = true;
    this.buf = undefined;
    this.front.timeouts.delete(this);
    this.refuser?.gone();
  }

  /** Shutdown's drain ended before the body did. */
  cut(): void {
    if (this.receiving) this.failNow('shutting_down', new SluiceError('SLC_SHUTTING_DOWN'));
  }

  expire(): void {
    this.failNow('body_timeout', new SluiceError('SLC_REQUEST_TIMEOUT', `no request-body bytes for ${this.front.limits.client_body_timeout_ms} ms`));
  }

  /** Refused before the rest of the body is read: answered now, and the connection closed. */
  private failNow(reason: string, err: SluiceError): void {
    this.failed = true;
    this.buf = undefined;
    this.front.timeouts.delete(this);
    this.front.metrics?.frontendRejected.inc({ reason });
    answer(this.client, styled(this.front, this.request.path, err), true);
  }

  /** Refused mid-body (over the limit or the budget) with `already` bytes read before this chunk of `n`: what is
   *  still coming is drained, then the error answers. */
  private refuse(err: SluiceError, already: number, n: number, isLast: boolean): void {
    const front = this.front;
    styled(front, this.request.path, err);
    this.failed = true;
    front.timeouts.delete(this);
    front.metrics?.frontendRejected.inc({ reason: err.code === 'SLC_OVERLOADED' ? 'overloaded' : 'body_too_large' });
    this.buf = undefined;
    this.refuser = new Refuser(front, this.client, err, true, already);
    this.refuser.feed(n, isLast);
  }

  /** A chunked body announced `total` bytes: past the limit it is refused now, as nginx does, not once they arrive. */
  declared(total: number): void {
    if (this.failed || this.refuser !== undefined || this.client.aborted || total <= this.gate.maxBodyBytes) return;
    this.failNow('body_too_large', tooLarge(this.gate.maxBodyBytes));
  }

  data(chunk: Uint8Array, isLast: boolean): void {
    const n = chunk.byteLength;
    const front = this.front;
    if (this.refuser !== undefined) { this.refuser.feed(n, isLast); return; }
    if (this.failed || this.client.aborted) { front.timeouts.delete(this); return; }
    this.lastActivity = performance.now();
    if (n > 0) {
      // uWS and the guard frame a Content-Length body by it: neither delivers more than declared.
      const size = this.size + n;
      let buf = this.buf;
      if (buf === undefined || size > buf.length) {
        const max = this.gate.maxBodyBytes;
        if (size > max) { this.refuse(tooLarge(max), this.size, n, isLast); return; }
        const len = Math.min(this.declaredBytes >= 0 ? this.declaredBytes : max, Math.max(size, 2 * (buf?.length ?? 0), RESERVE_MIN));
        if (!front.budget.tryReserve(len - this.hold.bytes)) { this.refuse(overloaded(), this.size, n, isLast); return; }
        this.hold.bytes = len;
        const grown = Buffer.allocUnsafe(len);
        if (buf !== undefined) buf.copy(grown, 0, 0, this.size);
        this.buf = buf = grown;
      }
      // A copy: uWS reuses its chunk's memory, the guard its held input.
      buf.set(chunk, this.size);
      this.size = size;
    }
    if (!isLast) return;
    front.timeouts.delete(this);
    const b = this.buf;
    this.buf = undefined;
    const full = b === undefined ? Buffer.alloc(0) : b.length === this.size ? b : b.subarray(0, this.size);
    run(this.gate, this.request, this.client, full);
  }
}

function run(gate: Accepted, req: ClientRequest, res: BaseResponse, body: Buffer): void {
  let out: void | Promise<void>;
  try {
    out = gate.run(req, res, body);
  } catch (err) {
    fail(res, err);
    return;
  }
  if (out !== undefined) out.catch((err: unknown) => fail(res, err));
}

function fail(res: BaseResponse, err: unknown): void {
  if (res.done || res.aborted) return;
  if (res.started) { res.destroy(); return; }
  sendError(res, err instanceof SluiceError ? err : new SluiceError('SLC_INTERNAL', undefined, { cause: err }));
}

export async function startFrontend(sink: RequestSink, opts: FrontendOptions): Promise<Listening> {
  assertNativeUws();
  const front: Front = {
    sink,
    limits: opts.limits,
    metrics: opts.metrics,
    budget: opts.bodyBudget !== undefined
      ? new SharedByteBudget(opts.bodyBudget, opts.limits.max_inflight_body_bytes, opts.metrics?.bodyBytesInFlight)
      : new LocalByteBudget(opts.limits.max_inflight_body_bytes, opts.metrics?.bodyBytesInFlight),
    timeouts: new BodyTimeouts(opts.limits.client_body_timeout_ms),
  };
  if (opts.http1Guard !== false) return startServingGuard(front, opts);
  const app = uWS.App();
  app.any('/*', (res, req) => handle(front, res, req));
  let l: Listening;
  try {
    l = await listen(app, 'listen', opts.host, opts.port, opts.reusePort === true);
  } catch (err) {
    front.timeouts.stop();
    throw err;
  }
  return {
    port: l.port, stopListening: l.stopListening, close: () => { front.timeouts.stop(); l.close(); }, quiesce: () => Promise.resolve(),
    receiving: () => front.timeouts.receiving(), cutReceiving: () => front.timeouts.cutReceiving(),
  };
}

/**
 * The guard on the public port serving every request itself, no uWS App: on the port it binds, or (another serving
 * thread's) on its own descriptor of that socket (`shareFd`).
 */
async function startServingGuard(front: Front, opts: FrontendOptions): Promise<Listening> {
  if (opts.reusePort === true) throw new Error('reusePort needs listen.http1_guard: false (node:net on Node 20 cannot share a port)');
  const guard = new Guard({
    limits: opts.limits,
    serve: { serve: (wire, head, buf, peer) => serveInGuard(front, wire, head, buf, peer) },
    onReject: (reason) => front.metrics?.frontendRejected.inc({ reason }),
  });
  let port: number;
  try {
    if (opts.shareFd === undefined) {
      port = await guard.listen(opts.host, opts.port);
    } else {
      const listener = await shareListener(opts.shareFd);
      try {
        port = await guard.adopt(listener);
      } catch (err) {
        await closeListener(listener);
        throw err;
      }
    }
  } catch (err) {
    guard.close();
    front.timeouts.stop();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === undefined && opts.shareFd !== undefined) throw err;
    throw new ListenError('listen', opts.host, opts.port, code ?? 'UNKNOWN');
  }
  return {
    port,
    shareableFd: () => listenerFd(guard.server),
    stopListening: () => guard.stopListening(),
    close: () => { guard.close(); front.timeouts.stop(); },
    quiesce: (graceMs) => guard.quiesce(graceMs),
    receiving: () => front.timeouts.receiving(),
    cutReceiving: () => front.timeouts.cutReceiving(),
  };
}

/**
 * SO_REUSEPORT lets any socket of the same user join a port. Serving threads listening that way on the public
 * port (guard off) first take this lock, an abstract unix socket named after the port, so a second Sluice on
 * the same port is refused as an exclusive bind would be, whatever host it names (so two threaded Sluices on
 * different addresses cannot share a port either). Linux only (abstract sockets), like SO_REUSEPORT.
 */
export function lockListenAddress(host: string, port: number): Promise<{ release(): void }> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => reject(new ListenError('listen', host, port, err.code ?? 'UNKNOWN')));
    // Named after the port alone: another spelling of the address (`localhost`, `127.1`) or a wildcard host
    // would otherwise take a different lock and join the same socket through SO_REUSEPORT.
    s.listen({ path: `\0sluice:port:${port}` }, () => {
      s.removeAllListeners('error');
      s.on('error', () => { /* a lock socket nobody connects to */ });
      resolve({ release: () => { if (s.listening) s.close(); } });
    });
  });
}

export interface AdminHandlers {
  metrics(): Promise<{ contentType: string; body: string }>;
  ready(): boolean;
}

/** Admin connections open at once: scrapers and probes, a handful; past it a connection is closed at accept. */
const ADMIN_MAX_CONNECTIONS = 256;
/** Whole request heads within this long, idle keep-alive connections closed after it. */
const ADMIN_TIMEOUT_MS = 10_000;

/**
 * The admin listener: /metrics for Prometheus, /healthz (process alive), /readyz (able to serve). node:http, not
 * uWS: probes speak what they like (HAProxy's httpchk and many monitors send HTTP/1.0, which uWS 20.30 leaves
 * unanswered), and node's parser answers malformed or oversized heads itself; admin traffic is light.
 */
export function startAdmin(handlers: AdminHandlers, host: string, port: number): Promise<Listening> {
  const json = (res: ServerResponse, status: number, body: string, head: boolean, extra: Record<string, string> = {}): void => {
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extra });
    res.end(head ? undefined : body);
  };
  const fail = (res: ServerResponse, err: SluiceError, head: boolean): void => json(res, err.status, toErrorBody(err), head, err.headers);
  const server = createHttpServer({ requestTimeout: ADMIN_TIMEOUT_MS, headersTimeout: ADMIN_TIMEOUT_MS, keepAliveTimeout: ADMIN_TIMEOUT_MS }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    // GET and HEAD (load balancers probe with either; a HEAD answer has the GET's headers and no body), else 405.
    const head = req.method === 'HEAD';
    if (path !== '/metrics' && path !== '/healthz' && path !== '/readyz') { fail(res, new SluiceError('SLC_NOT_FOUND'), head); return; }
    if (req.method !== 'GET' && !head) {
      fail(res, new SluiceError('SLC_METHOD_NOT_ALLOWED', `method ${clippedMethod(req.method ?? '')} not allowed on ${path}`, { headers: { allow: 'GET, HEAD' } }), false);
      return;
    }
    if (path === '/healthz') { json(res, 200, '{"status":"ok"}', head); return; }
    if (path === '/readyz') {
      const ok = handlers.ready();
      json(res, ok ? 200 : 503, ok ? '{"status":"ready"}' : '{"status":"not ready"}', head);
      return;
    }
    handlers.metrics().then(
      (m) => {
        res.writeHead(200, { 'content-type': m.contentType, 'content-length': Buffer.byteLength(m.body) });
        res.end(head ? undefined : m.body);
      },
      (err: unknown) => fail(res, new SluiceError('SLC_INTERNAL', undefined, { cause: err }), head),
    );
  });
  server.maxConnections = ADMIN_MAX_CONNECTIONS;
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => reject(new ListenError('admin', host, port, err.code ?? 'UNKNOWN'));
    server.once('error', onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', onError);
      server.on('error', () => { /* accept errors (EMFILE) are transient */ });
      const stopListening = (): void => { if (server.listening) server.close(); };
      resolve({
        port: (server.address() as { port: number }).port,
        stopListening,
        close: () => { stopListening(); server.closeAllConnections(); },
      });
    });
  });
}

function clippedMethod(m: string): string {
  return m.length > 20 ? `${m.slice(0, 20)}…` : m;
}
