// HTTP/1.x guard: a node:net front on the public port that parses request framing strictly and serves each
// request itself, through the front end's checks (server.ts serveInGuard) and NetResponse. It exists because
// uWS 20.30 decides some cases before Sluice's handler runs and answers none of them (README "Limits"): HTTP/1.0,
// 49+ header lines, invalid or conflicting Content-Length / Transfer-Encoding, a request pipelined behind a
// pending answer, and its fixed ~10 s head and idle timeouts. The guard answers those itself (400/408/431/505
// with an OpenAI-style JSON body), takes pipelined requests one at a time, and has its own head, idle and send
// timeouts. Body bytes are handed to the request being served as they arrive.
import { createServer, type Server, type Socket } from 'node:net';
import { STATUS_CODES } from 'node:http';
import { SluiceError, toErrorBody, type ErrorCode } from '../core/errors.ts';
import { isHostValue, TCHAR } from '../core/http-token.ts';
import { LiveList, type LiveEntry } from '../core/live-list.ts';
import { adoptWithCopyingReads } from '../core/socket-read.ts';
import type { NetResponse, ResponseWire } from './net-response.ts';

export interface GuardLimits {
  readonly max_header_fields: number;
  readonly max_header_line_bytes: number;
  readonly max_header_bytes: number;
  readonly client_header_timeout_ms: number;
  readonly client_idle_timeout_ms: number;
  /** A client that reads none of its answers this long is cut off. */
  readonly client_send_timeout_ms: number;
  /** Open client connections past which a new one is closed at accept (each idle one holds ~6-7 KB and a descriptor). */
  readonly max_client_connections: number;
  /** Accepted connections the kernel queues for this listener (listen(2)'s backlog; node's default is 511). */
  readonly listen_backlog: number;
}

export type HeadLimits = Pick<GuardLimits, 'max_header_fields' | 'max_header_line_bytes' | 'max_header_bytes'>;

/** A parsed, validated request head. Offsets are relative to the buffer given to parseRequestHead. */
export interface RequestHead {
  readonly method: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  readonly minor: 0 | 1;
  /** Offset just past the blank line that ends the head. */
  readonly end: number;
  readonly framing: 'none' | 'length' | 'chunked';
  readonly length: number;
  /** The client keeps the connection after this request. */
  readonly keepAlive: boolean;
  /** Request-target in origin-form (an absolute-form target's path and query). */
  readonly target: string;
  /** Per header line: name start, colon, value start, value end (trimmed), offsets into the parsed buffer. */
  readonly lines: readonly number[];
  readonly host: string | undefined;
}

export interface HeadError {
  readonly error: ErrorCode;
  readonly message: string;
}

export type HeadResult = RequestHead | HeadError;

const CR = 13;
const LF = 10;
const SP = 32;
const HT = 9;

/**
 * Where the head that starts at 0 ends (just past its blank line), tolerating bare LF line ends (RFC 9112 §2.2);
 * or -1 with `resume`, the offset to scan from when more bytes arrive (so a head fed byte by byte is scanned once).
 */
export function findHeadEnd(buf: Buffer, from: number): { end: number; resume: number } {
  let i = from;
  for (;;) {
    const lf = buf.indexOf(LF, i);
    if (lf < 0) return { end: -1, resume: buf.length };
    if (lf + 1 >= buf.length) return { end: -1, resume: lf };
    const next = buf[lf + 1];
    if (next === LF) return { end: lf + 2, resume: lf };
    if (next === CR) {
      if (lf + 2 >= buf.length) return { end: -1, resume: lf };
      if (buf[lf + 2] === LF) return { end: lf + 3, resume: lf };
    }
    i = lf + 1;
  }
}

function headErr(error: ErrorCode, message: string): HeadError {
  return { error, message };
}

/** Case-insensitive compare of buf[s, s+name.length) with a lower-case ASCII name. */
function nameIs(buf: Buffer, s: number, len: number, name: string): boolean {
  if (len !== name.length) return false;
  for (let i = 0; i < len; i++) if ((buf[s + i]! | 0x20) !== name.charCodeAt(i)) return false;
  return true;
}

function hasToken(list: string, token: string): boolean {
  for (const part of list.toLowerCase().split(',')) if (part.trim() === token) return true;
  return false;
}

/**
 * Parses and validates the complete head in buf[0, end) (end from findHeadEnd): request line, header lines,
 * limits (431), framing per RFC 9112 §6.3 (400), version (505 for anything but HTTP/1.0 and HTTP/1.1).
 */
export function parseRequestHead(buf: Buffer, end: number, limits: HeadLimits): HeadResult {
  // Request line.
  let eol = buf.indexOf(LF, 0);
  let lineEnd = eol > 0 && buf[eol - 1] === CR ? eol - 1 : eol;
  const lineLen = lineEnd;
  if (lineLen > limits.max_header_line_bytes) return headErr('SLC_HEADERS_TOO_LARGE', `request line longer than ${limits.max_header_line_bytes} bytes`);
  const sp1 = buf.indexOf(SP, 0);
  if (sp1 <= 0 || sp1 >= lineEnd) return headErr('SLC_BAD_REQUEST', 'malformed request line');
  for (let i = 0; i < sp1; i++) if (TCHAR[buf[i]!] === 0) return headErr('SLC_BAD_REQUEST', 'malformed request method');
  const sp2 = buf.indexOf(SP, sp1 + 1);
  if (sp2 < 0 || sp2 >= lineEnd || sp2 === sp1 + 1) {
    const v = buf.toString('latin1', sp1 + 1, lineEnd);
    if (v.startsWith('HTTP/') || sp2 === sp1 + 1) return headErr('SLC_BAD_REQUEST', 'malformed request line');
    return headErr('SLC_BAD_REQUEST', 'malformed request line (HTTP/0.9 is not supported)');
  }
  for (let i = sp1 + 1; i < sp2; i++) {
    const c = buf[i]!;
    if (c <= SP || c === 0x7f) return headErr('SLC_BAD_REQUEST', 'malformed request-target');
  }
  let minor: 0 | 1;
  if (lineEnd - sp2 - 1 === 8 && buf[sp2 + 1] === 0x48 && buf[sp2 + 2] === 0x54 && buf[sp2 + 3] === 0x54 && buf[sp2 + 4] === 0x50
    && buf[sp2 + 5] === 0x2f && buf[sp2 + 6] === 0x31 && buf[sp2 + 7] === 0x2e && (buf[sp2 + 8] === 0x31 || buf[sp2 + 8] === 0x30)) {
    minor = buf[sp2 + 8] === 0x31 ? 1 : 0;
  } else {
    const v = buf.toString('latin1', sp2 + 1, lineEnd);
    if (/^HTTP\/\d(\.\d)?$/.test(v)) return headErr('SLC_HTTP_VERSION_NOT_SUPPORTED', `${v} is not supported on this port (HTTP/1.0 and HTTP/1.1 only)`);
    return headErr('SLC_BAD_REQUEST', 'malformed HTTP version');
  }
  const method = buf.toString('latin1', 0, sp1);
  let target = buf.toString('latin1', sp1 + 1, sp2);
  let host: string | undefined;
  if (target.charCodeAt(0) !== 0x2f) {
    // absolute-form (RFC 9112 §3.2.2): the target's authority replaces Host; its path and query are the target.
    const m = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(target);
    if (m !== null && m[1] !== '' && isHostValue(m[1]!)) {
      host = m[1];
      target = m[2] === '' ? '/' : m[2]!.startsWith('?') ? `/${m[2]}` : m[2]!;
    } else if (!(target === '*' && method === 'OPTIONS')) {
      return headErr('SLC_BAD_REQUEST', 'malformed request-target');
    }
  }
  // Header lines.
  let total = lineLen + 2;
  let fields = 0;
  let lengths: string[] | undefined;
  let te: string | undefined;
  let conn: string | undefined;
  let hosts = 0;
  const lines: number[] = [];
  let at = eol + 1;
  while (at < end) {
    eol = buf.indexOf(LF, at);
    lineEnd = eol > at && buf[eol - 1] === CR ? eol - 1 : eol;
    if (lineEnd === at) break;
    const first = buf[at]!;
    if (first === SP || first === HT) return headErr('SLC_BAD_REQUEST', 'obsolete line folding in a header field');
    const colon = buf.indexOf(0x3a, at);
    if (colon < 0 || colon >= lineEnd || colon === at) return headErr('SLC_BAD_REQUEST', 'malformed header line');
    for (let i = at; i < colon; i++) if (TCHAR[buf[i]!] === 0) return headErr('SLC_BAD_REQUEST', 'malformed header field name');
    let vs = colon + 1;
    let ve = lineEnd;
    for (let i = vs; i < ve; i++) {
      const c = buf[i]!;
      if ((c < SP && c !== HT) || c === 0x7f) return headErr('SLC_BAD_REQUEST', 'invalid character in a header field value');
    }
    while (vs < ve && (buf[vs] === SP || buf[vs] === HT)) vs++;
    while (ve > vs && (buf[ve - 1] === SP || buf[ve - 1] === HT)) ve--;
    fields++;
    const nameLen = colon - at;
    // The line as sent: whitespace around the value counts too (padding would otherwise pass the limits).
    const len = Math.max(nameLen + 2 + ve - vs, lineEnd - at);
    if (len > limits.max_header_line_bytes) return headErr('SLC_HEADERS_TOO_LARGE', `request has a header line longer than ${limits.max_header_line_bytes} bytes`);
    total += len + 2;
    const c0 = buf[at]! | 0x20;
    if (c0 === 0x63) {
      if (nameIs(buf, at, nameLen, 'content-length')) (lengths ??= []).push(buf.toString('latin1', vs, ve));
      else if (nameIs(buf, at, nameLen, 'connection')) { const v = buf.toString('latin1', vs, ve); conn = conn === undefined ? v : `${conn},${v}`; }
    } else if (c0 === 0x74 && nameIs(buf, at, nameLen, 'transfer-encoding')) {
      const v = buf.toString('latin1', vs, ve);
      te = te === undefined ? v : `${te},${v}`;
    } else if (c0 === 0x68 && nameIs(buf, at, nameLen, 'host')) {
      hosts++;
      // host[:port] (RFC 9112 §3.2: an invalid value is a 400); it becomes X-Forwarded-Host upstream.
      if (!isHostValue(buf.toString('latin1', vs, ve))) return headErr('SLC_BAD_REQUEST', 'invalid Host header');
    }
    lines.push(at, colon, vs, ve);
    at = eol + 1;
  }
  if (fields > limits.max_header_fields) return headErr('SLC_HEADERS_TOO_LARGE', `request has more than ${limits.max_header_fields} header fields`);
  if (total > limits.max_header_bytes) return headErr('SLC_HEADERS_TOO_LARGE', `request has headers larger than ${limits.max_header_bytes} bytes`);
  if (hosts > 1) return headErr('SLC_BAD_REQUEST', 'more than one Host header');
  if (hosts === 0 && host === undefined && minor === 1) return headErr('SLC_BAD_REQUEST', 'HTTP/1.1 request without Host');
  // Framing, RFC 9112 §6.1/§6.3.
  let framing: RequestHead['framing'] = 'none';
  let length = 0;
  if (te !== undefined) {
    if (lengths !== undefined) return headErr('SLC_BAD_REQUEST', 'request has both Content-Length and Transfer-Encoding');
    if (minor === 0) return headErr('SLC_BAD_REQUEST', 'Transfer-Encoding in an HTTP/1.0 request');
    if (te.trim().toLowerCase() !== 'chunked') return headErr('SLC_BAD_REQUEST', 'unsupported Transfer-Encoding (only chunked)');
    framing = 'chunked';
  } else if (lengths !== undefined) {
    let declared = -1;
    for (const l of lengths) {
      for (const part of l.split(',')) {
        const p = part.trim();
        if (p.length === 0 || p.length > 15) return headErr('SLC_BAD_REQUEST', 'invalid Content-Length');
        for (let i = 0; i < p.length; i++) {
          const c = p.charCodeAt(i);
          if (c < 0x30 || c > 0x39) return headErr('SLC_BAD_REQUEST', 'invalid Content-Length');
        }
        const n = Number(p);
        if (declared < 0) declared = n;
        else if (n !== declared) return headErr('SLC_BAD_REQUEST', 'conflicting Content-Length values');
      }
    }
    length = declared;
    framing = declared > 0 ? 'length' : 'none';
  }
  const keepAlive = conn === undefined ? minor === 1 : minor === 1 ? !hasToken(conn, 'close') : hasToken(conn, 'keep-alive');
  return { method, minor, end, framing, length, keepAlive, target, lines, host };
}

/**
 * Incremental chunked request-body scanner (RFC 9112 §7.1). `push` consumes buf[start, end) and returns the offset
 * just past the last chunk's terminator, -1 when it needs more bytes, or -2 on a framing error. Strict: CRLF only,
 * no chunk extensions or trailer fields (refused with 400: parsers that read them differently are how bodies are
 * smuggled). `data` receives the payload; `declared` the sum of the chunk sizes read so far, at each new chunk, so a
 * body over its limit is refused from its chunk header rather than after the bytes arrive (or never do).
 */
export class ChunkedScanner {
  private state = 0; // 0 size, 1 size LF, 2 data, 3 data CR, 4 data LF, 5 trailer start, 6 final LF
  private size = 0;
  private digits = 0;
  private total = 0;
  private readonly data: ((buf: Buffer, s: number, e: number) => void) | undefined;
  private readonly declared: ((total: number) => void) | undefined;

  constructor(data?: (buf: Buffer, s: number, e: number) => void, declared?: (total: number) => void) {
    this.data = data;
    this.declared = declared;
  }

  push(buf: Buffer, start: number, end: number): number {
    let i = start;
    while (i < end) {
      const c = buf[i]!;
      switch (this.state) {
        case 0: {
          const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : (c | 0x20) >= 0x61 && (c | 0x20) <= 0x66 ? (c | 0x20) - 0x57 : -1;
          if (d >= 0) {
            if (++this.digits > 8) return -2;
            this.size = this.size * 16 + d;
            i++;
            break;
          }
          if (this.digits === 0) return -2;
          if (c === CR) { this.state = 1; i++; break; }
          return -2;
        }
        case 1:
          if (c !== LF) return -2;
          i++;
          this.digits = 0;
          this.state = this.size === 0 ? 5 : 2;
          if (this.size > 0) {
            this.total += this.size;
            this.declared?.(this.total);
          }
          break;
        case 2: {
          const n = Math.min(this.size, end - i);
          this.data?.(buf, i, i + n);
          this.size -= n;
          i += n;
          if (this.size === 0) this.state = 3;
          break;
        }
        case 3:
          if (c !== CR) return -2;
          this.state = 4;
          i++;
          break;
        case 4:
          if (c !== LF) return -2;
          this.state = 0;
          i++;
          break;
        case 5:
          if (c !== CR) return -2;
          this.state = 6;
          i++;
          break;
        case 6:
          if (c !== LF) return -2;
          this.state = 0;
          this.size = 0;
          return i + 1;
        default:
          return -2;
      }
    }
    return -1;
  }
}

/** A complete response of the guard's own, JSON body, connection closed. */
export function errorResponse(err: SluiceError, withBody: boolean): Buffer {
  const body = toErrorBody(err);
  return Buffer.from(`HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? 'Error'}\r\ncontent-type: application/json\r\n`
    + `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${withBody ? body : ''}`, 'latin1');
}

/** Serves the requests the guard parsed (server.ts serveInGuard). */
export interface GuardServer {
  /** One request: `buf` holds its head (read it now: the buffer is reused); the answer goes through `wire`. */
  serve(wire: ResponseWire, head: RequestHead, buf: Buffer, peer: string): NetResponse;
}

export interface GuardOptions {
  readonly limits: GuardLimits;
  readonly serve: GuardServer;
  /** Counts the guard's own refusals (same metric as the front end's). */
  readonly onReject?: (reason: string) => void;
}

/** Most unparsed bytes held from a client while its previous request is answered; beyond, reading pauses. */
const HOLD_BYTES = 64 * 1024;
/** Empty-line bytes tolerated before a request line (RFC 9112 §2.2 asks for at least one CRLF). */
const MAX_BLANK_BYTES = 16;
/** After the guard closes a connection, how long the client's remaining input is read and discarded. */
const LINGER_MS = 2000;

/** Timeouts use one coarse sweep for all connections rather than a timer per connection. */
let coarseNow = performance.now();

const EMPTY = Buffer.alloc(0);

class GuardConn implements ResponseWire, LiveEntry<GuardConn> {
  private readonly g: Guard;
  private readonly client: Socket;
  private readonly peer: string;
  /** The answer being written. */
  private cur: NetResponse | undefined = undefined;
  /** Client input is being processed: an answer completed meanwhile leaves the next request to that loop. */
  private inInput = false;
  /** Since when the next request waits for the client to read its answers (0: not waiting). */
  private drainSince = 0;
  // Request side.
  private inBuf: Buffer | undefined;
  /** Backing store that inBuf is a view of when bytes were appended (see hold()). */
  private inStore: Buffer | undefined;
  private inStoreUsed = 0;
  private scanFrom = 0;
  private reqBody: 'none' | 'length' | 'chunked' = 'none';
  private reqLeft = 0;
  private reqChunks: ChunkedScanner | undefined;
  private headSince = 0;
  lastActive = coarseNow;
  /** When the connection last became idle (opened, or an answer written): empty lines do not move it. */
  private idleFrom = coarseNow;
  /** Empty-line bytes skipped since then (bounded: a trickle of them must not hold a connection forever). */
  private blankBytes = 0;
  // The request being served whose answer is not complete.
  private inFlight = false;
  private curHead = false;
  private curKeepAlive = true;
  // Connection state.
  private closing = false;
  private clientEnded = false;
  private pausedHold = false;
  /** whenFlushed callbacks waiting for the client to take what was written. */
  private flushed: (() => void)[] | undefined = undefined;
  liveOwner: object | undefined = undefined;
  livePrev: GuardConn | undefined = undefined;
  liveNext: GuardConn | undefined = undefined;

  constructor(g: Guard, client: Socket) {
    this.g = g;
    this.client = client;
    this.peer = client.remoteAddress ?? '';
    client.setNoDelay(true);
    client.on('end', () => this.onClientEnd());
    client.on('error', () => this.destroy());
    client.on('close', () => this.destroy());
    client.on('drain', () => {
      this.cur?.drained();
      if (this.flushed !== undefined && this.client.writableLength === 0) this.runFlushed();
      if (this.drainSince !== 0) {
        this.drainSince = 0;
        this.headSince = performance.now();
        this.next();
      }
    });
  }

  get socket(): Socket {
    return this.client;
  }

  /** Called by the sweeper. */
  tick(now: number): void {
    const limits = this.g.limits;
    if (this.drainSince !== 0) {
      if (this.closing) return;
      // The socket drained without this connection hearing of it: go on.
      if (!this.client.writableNeedDrain) { this.drainSince = 0; this.headSince = now; this.next(); return; }
      if (now - this.drainSince >= limits.client_send_timeout_ms) this.destroy();
      return;
    }
    if (this.closing || this.inFlight || this.reqBody !== 'none') return;
    if (this.inBuf !== undefined && this.inBuf.length > 0) {
      if (now - this.headSince >= limits.client_header_timeout_ms) {
        this.refuse('header_timeout', new SluiceError('SLC_REQUEST_TIMEOUT', `request head not complete within ${limits.client_header_timeout_ms} ms`), false);
      }
    } else if (now - this.lastActive >= limits.client_idle_timeout_ms) {
      this.closing = true;
      this.client.end();
      this.linger();
    }
  }

  /** Every read of the client socket, its own buffer (core/socket-read.ts). */
  onClient(d: Buffer): void {
    this.lastActive = coarseNow;
    if (this.closing) return;
    this.inInput = true;
    try {
      this.onClientData(d);
    } finally {
      this.inInput = false;
    }
  }

  private onClientData(d: Buffer): void {
    if (this.reqBody !== 'none') {
      const used = this.forwardBody(d);
      if (used < 0 || used === d.length) return;
      d = d.subarray(used);
    }
    this.hold(d);
    this.next();
  }

  /**
   * Appends client bytes to the held input in amortised linear time: the store's spare capacity doubles, so a head
   * trickled in byte by byte is copied O(n) times in total, not O(n²).
   */
  private hold(d: Buffer): void {
    const cur = this.inBuf;
    // A head begins: its clock starts now, not at the last sweep (the coarse time lags by up to a sweep period, and
    // the head timeout would fire that much early).
    if (cur === undefined || cur.length === 0) { this.inBuf = d; this.headSince = performance.now(); return; }
    const store = this.inStore;
    if (store !== undefined && cur.buffer === store.buffer && cur.byteOffset + cur.length === store.byteOffset + this.inStoreUsed
      && this.inStoreUsed + d.length <= store.length) {
      d.copy(store, this.inStoreUsed);
      this.inStoreUsed += d.length;
      this.inBuf = store.subarray(cur.byteOffset - store.byteOffset, this.inStoreUsed);
      return;
    }
    const next = Buffer.allocUnsafeSlow(Math.max(2 * (cur.length + d.length), 4096));
    cur.copy(next, 0);
    d.copy(next, cur.length);
    this.inStore = next;
    this.inStoreUsed = cur.length + d.length;
    this.inBuf = next.subarray(0, this.inStoreUsed);
  }

  /** Parses and serves held requests while no answer is pending. */
  private next(): void {
    const nested = this.inInput;
    this.inInput = true;
    try {
      this.nextHeld();
    } finally {
      this.inInput = nested;
    }
  }

  private nextHeld(): void {
    while (!this.closing && !this.inFlight && this.reqBody === 'none') {
      let buf = this.inBuf;
      if (buf === undefined || buf.length === 0) {
        this.inBuf = undefined;
        this.holdResume();
        if (this.clientEnded) this.finish();
        return;
      }
      // Answers are written whole whether or not the client reads them: a client that pipelines requests without
      // reading would grow them without bound. Its next request waits until it reads (its input past HOLD_BYTES
      // pauses), up to client_send_timeout_ms.
      if (this.client.writableNeedDrain) {
        if (this.drainSince === 0) this.drainSince = coarseNow;
        this.holdCheck();
        return;
      }
      // Empty lines before a request line are ignored (RFC 9112 §2.2), a few of them: they neither count as
      // activity for the idle timeout nor, past MAX_BLANK_BYTES, keep the connection at all.
      let skip = 0;
      while (skip < buf.length && (buf[skip] === CR || buf[skip] === LF)) skip++;
      if (skip > 0) {
        this.blankBytes += skip;
        if (this.blankBytes > MAX_BLANK_BYTES) {
          this.refuse('framing', new SluiceError('SLC_BAD_REQUEST', `more than ${MAX_BLANK_BYTES} bytes of empty lines before a request line`), false);
          return;
        }
        buf = buf.subarray(skip);
        this.inBuf = buf;
        this.scanFrom = Math.max(0, this.scanFrom - skip);
        if (buf.length === 0) {
          this.lastActive = this.idleFrom;
          continue;
        }
      }
      const limits = this.g.limits;
      const found = findHeadEnd(buf, this.scanFrom);
      if (found.end < 0) {
        this.scanFrom = found.resume;
        if (buf.length > limits.max_header_bytes + 4) {
          this.refuse('headers_too_large', new SluiceError('SLC_HEADERS_TOO_LARGE', `request has headers larger than ${limits.max_header_bytes} bytes`), false);
        } else if (this.clientEnded) {
          this.finish();
        } else {
          // All that is held is the start of a head (bounded by max_header_bytes): its rest must be read, even
          // from a client paused for holding too much (it got 408 after client_header_timeout_ms instead).
          this.holdResume();
        }
        return;
      }
      this.scanFrom = 0;
      const head = parseRequestHead(buf, found.end, limits);
      if ('error' in head) {
        const reason = head.error === 'SLC_HEADERS_TOO_LARGE' ? 'headers_too_large' : head.error === 'SLC_HTTP_VERSION_NOT_SUPPORTED' ? 'http_version' : 'framing';
        this.refuse(reason, new SluiceError(head.error, head.message), buf.subarray(0, 5).toString('latin1') === 'HEAD ');
        return;
      }
      this.serveHead(buf, head);
      let rest = buf.subarray(head.end);
      this.inBuf = undefined;
      this.headSince = coarseNow;
      if (rest.length > 0 && this.reqBody !== 'none') {
        const used = this.forwardBody(rest);
        if (used < 0) return;
        rest = rest.subarray(used);
      }
      // Nothing held any more: reading goes on (the rest of this body or the next request is still to come; a
      // client paused for holding too much would otherwise stay paused). The loop goes on: the request may be
      // answered already.
      if (rest.length > 0) { this.inBuf = rest; this.holdCheck(); } else this.holdResume();
    }
    this.holdCheck();
  }


  /** The front end reads the head now and its body as it arrives. */
  private serveHead(buf: Buffer, head: RequestHead): void {
    this.inFlight = true;
    this.curHead = head.method === 'HEAD';
    this.curKeepAlive = head.keepAlive;
    this.reqBody = head.framing;
    this.reqLeft = head.length;
    this.reqChunks = head.framing === 'chunked'
      ? new ChunkedScanner((b, s, e) => this.bodyData(b.subarray(s, e), false), (total) => this.cur?.declaredBody(total))
      : undefined;
    const res = this.g.serve.serve(this, head, buf, this.peer);
    // Answered at once (a refusal of a request without a body to read).
    if (res.done || res.aborted) return;
    this.cur = res;
    if (head.framing === 'none') this.bodyData(EMPTY, true);
  }

  private bodyData(chunk: Buffer, isLast: boolean): void {
    const cur = this.cur;
    if (cur !== undefined && !cur.done && !cur.aborted) cur.onBody?.(chunk, isLast);
  }

  /** ResponseWire: the answer was handed to the client's socket. */
  answered(close: boolean): void {
    this.cur = undefined;
    this.inFlight = false;
    this.lastActive = coarseNow;
    this.idleFrom = coarseNow;
    this.blankBytes = 0;
    if (close || !this.curKeepAlive) {
      this.closing = true;
      this.client.end();
      this.linger();
      return;
    }
    // A pipelined head held in part starts its clock now (see hold()).
    this.headSince = this.inBuf !== undefined && this.inBuf.length > 0 ? performance.now() : coarseNow;
    // Inside onClient the loop there goes on to the next held request; otherwise (an answer that came later)
    // start it here.
    if (!this.inInput) this.next();
  }

  /** ResponseWire: drop the connection. */
  cut(): void {
    this.destroy();
  }

  /** ResponseWire: runs `cb` when the client's socket holds nothing more for the kernel, or is gone. */
  whenFlushed(cb: () => void): void {
    if (this.client.writableLength === 0 || this.client.destroyed) { cb(); return; }
    (this.flushed ??= []).push(cb);
  }

  private runFlushed(): void {
    const f = this.flushed;
    if (f === undefined) return;
    this.flushed = undefined;
    for (const cb of f) cb();
  }

  /** Hands the request-body bytes at the start of d to the request being served; returns how many bytes of d the
   *  body used, or -1 after a refusal. */
  private forwardBody(d: Buffer): number {
    if (this.reqBody === 'length') {
      const n = Math.min(this.reqLeft, d.length);
      this.reqLeft -= n;
      if (this.reqLeft === 0) this.reqBody = 'none';
      if (n > 0) this.bodyData(n === d.length ? d : d.subarray(0, n), this.reqBody === 'none');
      return n;
    }
    // A chunked body's data goes out through its scanner's callback.
    const r = this.reqChunks!.push(d, 0, d.length);
    if (r === -2) {
      this.g.onReject?.('framing');
      this.failRequest(new SluiceError('SLC_BAD_REQUEST', 'malformed chunked request body'));
      return -1;
    }
    if (r === -1) return d.length;
    this.reqBody = 'none';
    this.reqChunks = undefined;
    this.bodyData(EMPTY, true);
    return r;
  }

  /** Held bytes beyond the bound pause the client until the pending answer is complete. */
  private holdCheck(): void {
    if (!this.pausedHold && this.inBuf !== undefined && this.inBuf.length > HOLD_BYTES) {
      this.pausedHold = true;
      this.client.pause();
    }
  }

  private holdResume(): void {
    if (this.pausedHold) { this.pausedHold = false; this.client.resume(); }
  }

  private onClientEnd(): void {
    this.clientEnded = true;
    // A client that closes its side while its answer is still coming has gone (nginx records a 499 here too):
    // abort now, so the upstream stops generating tokens nobody reads, instead of after two failed writes.
    if (this.inFlight && this.reqBody === 'none') { this.destroy(); return; }
    // Its body can never be complete: refused now, rather than held (with its share of the body budget) until the
    // body timeout.
    if (this.inFlight) { this.failRequest(new SluiceError('SLC_BAD_REQUEST', 'the client closed its side before the request body was complete')); return; }
    if (!this.inFlight && this.reqBody === 'none' && (this.inBuf === undefined || this.inBuf.length === 0)) this.finish();
    else if (!this.inFlight && this.reqBody === 'none') this.next();
  }

  /** The client finished sending and everything it asked for was answered. */
  private finish(): void {
    if (this.closing) return;
    this.closing = true;
    this.client.end();
  }

  /** The guard's own answer; the connection closes after it. */
  private refuse(reason: string, err: SluiceError, head: boolean): void {
    this.g.onReject?.(reason);
    this.closing = true;
    this.inBuf = undefined;
    this.inStore = undefined;
    this.client.end(errorResponse(err, !head));
    this.linger();
  }

  /** A request being served turned out malformed (its chunked body): answer it unless its answer has started. */
  private failRequest(err: SluiceError): void {
    const cur = this.cur;
    this.cur = undefined;
    const started = cur?.started === true;
    cur?.abort();
    if (!started) { this.refuse('framing', err, this.curHead); return; }
    this.destroy();
  }

  /** Reads and discards what the client still sends after the answer, so it reads the answer instead of a reset. */
  private linger(): void {
    this.client.resume();
    setTimeout(() => this.destroy(), LINGER_MS).unref();
  }

  /** A request is still being answered, or bytes of its answer still wait in the client socket's buffer. */
  get busy(): boolean {
    return this.inFlight || this.client.writableLength > 0;
  }

  destroy(): void {
    this.closing = true;
    this.client.destroy();
    this.g.conns.delete(this);
    const cur = this.cur;
    this.cur = undefined;
    cur?.abort();
    this.runFlushed();
  }
}

export class Guard {
  readonly limits: GuardLimits;
  readonly serve: GuardServer;
  readonly onReject: ((reason: string) => void) | undefined;
  /** Not a Set: connections come and go per request for clients without keep-alive (core/live-list.ts). */
  readonly conns = new LiveList<GuardConn>();
  readonly server: Server;
  private readonly timer: NodeJS.Timeout;

  constructor(opts: GuardOptions) {
    this.limits = opts.limits;
    this.serve = opts.serve;
    this.onReject = opts.onReject;
    // Paused on accept: each socket moves, before its first read, to one that reads without node's stream path.
    this.server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (accepted) => {
      if (this.conns.size >= this.limits.max_client_connections) {
        accepted.destroy();
        this.onReject?.('connection_limit');
        return;
      }
      let c: GuardConn | undefined;
      const client = adoptWithCopyingReads(accepted, (chunk) => c!.onClient(chunk));
      if (client === undefined) { accepted.destroy(); return; }
      c = new GuardConn(this, client);
      this.conns.add(c);
    });
    const every = Math.max(10, Math.min(1000, Math.floor(Math.min(opts.limits.client_header_timeout_ms, opts.limits.client_idle_timeout_ms) / 4)));
    this.timer = setInterval(() => {
      coarseNow = performance.now();
      for (const c of this.conns.entries()) c.tick(coarseNow);
    }, every);
    this.timer.unref();
  }

  /** Binds host:port exclusively (no SO_REUSEPORT); rejects with node's errno error. */
  listen(host: string, port: number): Promise<number> {
    return this.start({ host, port, exclusive: true });
  }

  /** Listens on a descriptor of a socket another thread bound (listener-share.ts); resolves with its port. */
  adopt(listener: object): Promise<number> {
    return this.start(listener);
  }

  // A burst of new connections while the thread is busy queues in the kernel up to the backlog; past it their SYNs
  // are dropped and each client waits a 1 s retransmit (node's default backlog, 511, overflowed at 2,000 slow
  // streams opened within a second). A shared listener is listened on again by each thread, with the same backlog.
  private start(what: object): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen(what, this.limits.listen_backlog, () => {
        this.server.off('error', onError);
        this.server.on('error', () => { /* accept errors (EMFILE) are transient */ });
        resolve((this.server.address() as { port: number }).port);
      });
    });
  }

  stopListening(): void {
    if (this.server.listening) this.server.close();
  }

  /**
   * Resolves once no connection is busy (or after graceMs). At shutdown the gateway's requests can have ended
   * while their answers' last bytes still wait in the client sockets; closing then would reset those clients.
   */
  async quiesce(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && this.conns.entries().some((c) => c.busy)) await new Promise((r) => setTimeout(r, 10));
  }

  close(): void {
    clearInterval(this.timer);
    this.stopListening();
    for (const c of this.conns.entries()) c.destroy();
  }
}
