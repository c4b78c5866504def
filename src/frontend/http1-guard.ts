// HTTP/1.x guard: a node:net front on the public port that parses request and response framing strictly and
// relays each connection to uWS over a private socket. It exists because uWS 20.30 decides some cases before
// Sluice's handler runs and answers none of them (README "Limits"): HTTP/1.0, 49+ header lines, invalid or
// conflicting Content-Length / Transfer-Encoding, a request pipelined behind a pending answer, and its fixed ~10 s
// head and idle timeouts. The guard answers those itself (400/408/431/505 with an OpenAI-style JSON body),
// rewrites HTTP/1.0 requests to HTTP/1.1 (and their answers back), forwards pipelined requests one at a time,
// and passes the peer address to uWS in a private header. Bodies are streamed through, never buffered whole.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { STATUS_CODES } from 'node:http';
import { SluiceError, toErrorBody, type ErrorCode } from '../core/errors.ts';
import { TCHAR } from '../core/http-token.ts';
import { copyingReads } from '../core/socket-read.ts';
import type { NetResponse, ResponseWire } from './net-response.ts';

/** Private header carrying the client's address to uWS; a client-sent copy is removed first. */
export const PEER_HEADER = 'x-sluice-peer';
/** uWS 20.30 parses at most this many header lines; a 49th closes the connection unanswered. */
export const UWS_MAX_HEADER_LINES = 48;

export interface GuardLimits {
  readonly max_header_fields: number;
  readonly max_header_line_bytes: number;
  readonly max_header_bytes: number;
  readonly client_header_timeout_ms: number;
  readonly client_idle_timeout_ms: number;
  /** A client that reads none of its answers this long is cut off (when the guard serves requests itself). */
  readonly client_send_timeout_ms: number;
}

export type HeadLimits = Pick<GuardLimits, 'max_header_fields' | 'max_header_line_bytes' | 'max_header_bytes'>;

/** A parsed, validated request head. Offsets are relative to the buffer given to parseRequestHead. */
export interface RequestHead {
  readonly method: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  readonly minor: 0 | 1;
  /** Offset just past the blank line that ends the head. */
  readonly end: number;
  /** Offset where the blank line starts: bytes [0, blankAt) are request line and header lines. */
  readonly blankAt: number;
  readonly framing: 'none' | 'length' | 'chunked';
  readonly length: number;
  /** The client keeps the connection after this request. */
  readonly keepAlive: boolean;
  /** The head must be rebuilt before uWS may see it (HTTP/1.0, bare LF, absolute-form, a client-sent peer header,
   *  too many lines for uWS). */
  readonly rewrite: boolean;
  /** Request-target for uWS (origin-form). */
  readonly target: string;
  /** Header lines as [name, value] (value trimmed); only filled when `rewrite` for uWS. */
  readonly fields: [string, string][] | undefined;
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
 * `forUws`: the head is relayed to uWS, so it must fit uWS's 48 lines and a rewrite needs `fields`; a head the
 * guard serves itself needs neither.
 */
export function parseRequestHead(buf: Buffer, end: number, limits: HeadLimits, forUws = true): HeadResult {
  // Request line.
  let eol = buf.indexOf(LF, 0);
  let lineEnd = eol > 0 && buf[eol - 1] === CR ? eol - 1 : eol;
  let bareLF = lineEnd === eol;
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
  let rewrite = bareLF || minor === 0;
  let host: string | undefined;
  if (target.charCodeAt(0) !== 0x2f) {
    // absolute-form (RFC 9112 §3.2.2): the target's authority replaces Host; uWS answers only origin-form.
    const m = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(target);
    if (m !== null && m[1] !== '' && !m[1]!.includes('@')) {
      host = m[1];
      target = m[2] === '' ? '/' : m[2]!.startsWith('?') ? `/${m[2]}` : m[2]!;
      rewrite = true;
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
  let peer = false;
  const lines: number[] = [];
  let at = eol + 1;
  let blankAt = end;
  while (at < end) {
    eol = buf.indexOf(LF, at);
    lineEnd = eol > at && buf[eol - 1] === CR ? eol - 1 : eol;
    if (lineEnd === eol) bareLF = true;
    if (lineEnd === at) { blankAt = at; break; }
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
    const len = nameLen + 2 + ve - vs;
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
    } else if (c0 === 0x78 && nameIs(buf, at, nameLen, PEER_HEADER)) {
      peer = true;
      rewrite = true;
    }
    lines.push(at, colon, vs, ve);
    at = eol + 1;
  }
  if (fields > limits.max_header_fields) return headErr('SLC_HEADERS_TOO_LARGE', `request has more than ${limits.max_header_fields} header fields`);
  if (total > limits.max_header_bytes) return headErr('SLC_HEADERS_TOO_LARGE', `request has headers larger than ${limits.max_header_bytes} bytes`);
  if (hosts > 1) return headErr('SLC_BAD_REQUEST', 'more than one Host header');
  if (hosts === 0 && host === undefined && minor === 1) return headErr('SLC_BAD_REQUEST', 'HTTP/1.1 request without Host');
  if (host !== undefined && hosts === 1) rewrite = true;
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
    if (lengths.length > 1 || lengths[0]!.includes(',')) rewrite = true;
    length = declared;
    framing = declared > 0 ? 'length' : 'none';
  }
  const keepAlive = conn === undefined ? minor === 1 : minor === 1 ? !hasToken(conn, 'close') : hasToken(conn, 'keep-alive');
  if (!forUws) return { method, minor, end, blankAt, framing, length, keepAlive, rewrite, target, fields: undefined, lines, host };
  // uWS parses at most 48 lines: ours (peer, and for HTTP/1.0 Host and Connection) come on top of the client's.
  const added = 1 + (hosts === 0 ? 1 : 0) + (minor === 0 && !keepAlive ? 1 : 0) - (peer ? 1 : 0);
  if (fields + added > UWS_MAX_HEADER_LINES) rewrite = true;
  let out: [string, string][] | undefined;
  if (rewrite) {
    out = [];
    let sawLength = false;
    for (let i = 0; i < lines.length; i += 4) {
      const name = buf.toString('latin1', lines[i]!, lines[i + 1]!);
      const lower = name.toLowerCase();
      if (lower === PEER_HEADER) continue;
      let value = buf.toString('latin1', lines[i + 2]!, lines[i + 3]!);
      if (lower === 'content-length') {
        if (sawLength) continue;
        sawLength = true;
        value = String(length);
      }
      if (lower === 'host' && host !== undefined) value = host;
      out.push([name, value]);
    }
    if (out.length + added > UWS_MAX_HEADER_LINES) {
      // Fold repeated names into one line (RFC 9110 §5.3), as the front end joins them anyway.
      const byName = new Map<string, [string, string]>();
      const folded: [string, string][] = [];
      for (const f of out) {
        const k = f[0].toLowerCase();
        const prev = byName.get(k);
        if (prev === undefined) { const c: [string, string] = [f[0], f[1]]; byName.set(k, c); folded.push(c); } else prev[1] = `${prev[1]}, ${f[1]}`;
      }
      out = folded;
      if (out.length + added > UWS_MAX_HEADER_LINES) {
        return headErr('SLC_HEADERS_TOO_LARGE', `request has more than ${UWS_MAX_HEADER_LINES - added} distinct header fields`);
      }
    }
  }
  return { method, minor, end, blankAt, framing, length, keepAlive, rewrite, target, fields: out, lines, host };
}

/** Serialises a rewritten head for uWS: HTTP/1.1, CRLF, Host and Connection added when missing, peer last. */
export function buildHead(h: RequestHead, peerLine: string, defaultHost: string): Buffer {
  let s = `${h.method} ${h.target} HTTP/1.1\r\n`;
  let hasHost = false;
  for (const [k, v] of h.fields!) {
    if (k.length === 4 && k.toLowerCase() === 'host') hasHost = true;
    s += `${k}: ${v}\r\n`;
  }
  if (!hasHost) s += `host: ${h.host ?? defaultHost}\r\n`;
  if (h.minor === 0 && !h.keepAlive) s += 'connection: close\r\n';
  return Buffer.from(s + peerLine, 'latin1');
}

/**
 * Incremental chunked-body scanner (RFC 9112 §7.1). `push` consumes buf[start, end) and returns the offset just
 * past the last chunk's terminator, -1 when it needs more bytes, or -2 on a framing error. Strict for requests
 * (CRLF only, no chunk extensions or trailer fields: the bytes go to uWS as they are, so nothing it could read
 * differently passes); `data` receives the payload when de-chunking (HTTP/1.0 clients).
 */
export class ChunkedScanner {
  private state = 0; // 0 size, 1 size LF, 2 data, 3 data CR, 4 data LF, 5 trailer start, 6 final LF, 7 ext, 8 trailer line
  private size = 0;
  private digits = 0;
  private readonly strict: boolean;
  private readonly data: ((buf: Buffer, s: number, e: number) => void) | undefined;

  constructor(strict: boolean, data?: (buf: Buffer, s: number, e: number) => void) {
    this.strict = strict;
    this.data = data;
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
          if (!this.strict && (c === 0x3b || c === SP || c === HT)) { this.state = 7; i++; break; }
          return -2;
        }
        case 7:
          if (c === CR) this.state = 1;
          else if (c === LF) return -2;
          i++;
          break;
        case 1:
          if (c !== LF) return -2;
          i++;
          this.digits = 0;
          this.state = this.size === 0 ? 5 : 2;
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
          if (c === CR) { this.state = 6; i++; break; }
          if (this.strict) return -2;
          this.state = 8;
          i++;
          break;
        case 8:
          if (c === LF) this.state = 5;
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

/** Where uWS listens privately. */
export type UwsEndpoint = { readonly path: string } | { readonly host: string; readonly port: number };

/** Serves the requests the guard parsed, in the guard's own thread, instead of relaying them to uWS. */
export interface GuardServer {
  /** One request: `buf` holds its head (read it now: the buffer is reused); the answer goes through `wire`. */
  serve(wire: ResponseWire, head: RequestHead, buf: Buffer, peer: string): NetResponse;
}

export interface GuardOptions {
  readonly limits: GuardLimits;
  /** Where uWS listens; several (one per serving thread) take new client connections in turn. */
  readonly upstream?: UwsEndpoint | readonly UwsEndpoint[];
  /** Serve requests here instead (`upstream` is then unused). */
  readonly serve?: GuardServer;
  /** Counts the guard's own refusals (same metric as the front end's). */
  readonly onReject?: (reason: string) => void;
}

/** Connection attempts to a full uWS accept queue before the guard answers 503 itself (~1.9 s in all). */
const UP_RETRIES = 40;
/** Most unparsed bytes held from a client while its previous request is answered; beyond, reading pauses. */
const HOLD_BYTES = 64 * 1024;
/** Longest response head accepted from uWS. */
const MAX_RESPONSE_HEAD = 64 * 1024;
/**
 * A connection to uWS left quiet this long is closed by the guard. uWS closes idle connections itself after its
 * fixed 10 s timeout, which its 4 s timer ticks make fire 8–12 s after the last activity; a request the guard
 * forwarded just as that close crossed it would be lost (the client saw "other side closed"). Closing first, at
 * 4 s, leaves the race no window: the next request opens a new loopback connection (~0.1 ms).
 */
export const UPSTREAM_IDLE_MS = 4_000;
/** After the guard closes a connection, how long the client's remaining input is read and discarded. */
const LINGER_MS = 2000;

const RESPONSE_HEAD_END = Buffer.from('\r\n\r\n', 'latin1');

/** Timeouts use one coarse sweep for all connections rather than a timer per connection. */
let coarseNow = performance.now();

const EMPTY = Buffer.alloc(0);

class GuardConn implements ResponseWire {
  private readonly g: Guard;
  private readonly client: Socket;
  private up: Socket | undefined;
  private readonly peer: string;
  private readonly peerLine: string;
  /** The answer being written when the guard serves requests itself (Guard.serve). */
  private cur: NetResponse | undefined = undefined;
  /** Client input is being processed: an answer completed meanwhile leaves the next request to that loop. */
  private inInput = false;
  /** Since when the next request waits for the client to read its answers (0: not waiting). */
  private drainSince = 0;
  private peerBuf: Buffer | undefined;
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
  // The request forwarded to uWS whose response is not complete.
  private inFlight = false;
  private curHead = false;
  private curMinor: 0 | 1 = 1;
  private curKeepAlive = true;
  // Response side.
  private resBuf: Buffer | undefined;
  private resBody: 'none' | 'length' | 'chunked' | 'close' = 'none';
  private resLeft = 0;
  private resChunks: ChunkedScanner | undefined;
  private resClose = false;
  private resStarted = false;
  private inResBody = false;
  // Connection state.
  private closing = false;
  private clientEnded = false;
  private pausedUp = false;
  private pausedHold = false;
  private pausedBody = false;
  private corkedUp: Socket | undefined;
  /** Bytes written to a unix-socket relay connection not yet connected (see openUp). */
  private upPending: Buffer[] | undefined = undefined;
  private upRetry = false;
  private upAttempts = 0;

  constructor(g: Guard, client: Socket) {
    this.g = g;
    this.client = client;
    this.peer = client.remoteAddress ?? '';
    this.peerLine = `${PEER_HEADER}: ${this.peer}\r\n\r\n`;
    client.setNoDelay(true);
    client.on('data', (d: Buffer) => this.onClient(d));
    client.on('end', () => this.onClientEnd());
    client.on('error', () => this.destroy());
    client.on('close', () => this.destroy());
    client.on('drain', () => {
      this.cur?.drained();
      if (this.up !== undefined && this.pausedUp) { this.pausedUp = false; this.up.resume(); }
      if (this.drainSince !== 0) {
        this.drainSince = 0;
        this.headSince = coarseNow;
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
      this.dropUp();
      this.linger();
    } else if (this.up !== undefined && now - this.lastActive >= UPSTREAM_IDLE_MS) {
      this.dropUp();
    }
  }

  private onClient(d: Buffer): void {
    this.lastActive = coarseNow;
    if (this.closing) return;
    this.inInput = true;
    try {
      this.onClientData(d);
    } finally {
      this.inInput = false;
    }
    this.uncorkUp();
  }

  private onClientData(d: Buffer): void {
    if (this.reqBody !== 'none') {
      const used = this.forwardBody(d, 0);
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
    if (cur === undefined || cur.length === 0) { this.inBuf = d; this.headSince = coarseNow; return; }
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

  /** Parses and forwards held requests while no answer is pending. */
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
      // Served here, answers are written whole whether or not the client reads them: a client that pipelines
      // requests without reading would grow them without bound. Its next request waits until it reads (its
      // input past HOLD_BYTES pauses), up to client_send_timeout_ms.
      if (this.g.serve !== undefined && this.client.writableNeedDrain) {
        if (this.drainSince === 0) this.drainSince = coarseNow;
        this.holdCheck();
        return;
      }
      // Empty lines before a request line are ignored (RFC 9112 §2.2).
      let skip = 0;
      while (skip < buf.length && (buf[skip] === CR || buf[skip] === LF)) skip++;
      if (skip > 0) {
        buf = buf.subarray(skip);
        this.inBuf = buf;
        this.scanFrom = Math.max(0, this.scanFrom - skip);
        if (buf.length === 0) continue;
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
      const head = parseRequestHead(buf, found.end, limits, this.g.serve === undefined);
      if ('error' in head) {
        const reason = head.error === 'SLC_HEADERS_TOO_LARGE' ? 'headers_too_large' : head.error === 'SLC_HTTP_VERSION_NOT_SUPPORTED' ? 'http_version' : 'framing';
        this.refuse(reason, new SluiceError(head.error, head.message), buf.subarray(0, 5).toString('latin1') === 'HEAD ');
        return;
      }
      this.forwardHead(buf, head);
      let rest = buf.subarray(head.end);
      this.inBuf = undefined;
      this.headSince = coarseNow;
      if (rest.length > 0 && this.reqBody !== 'none') {
        const used = this.forwardBody(rest, 0);
        if (used < 0) return;
        rest = rest.subarray(used);
      }
      // Nothing held any more: reading goes on (the rest of this body or the next request is still to come; a
      // client paused for holding too much would otherwise stay paused). The loop goes on: a request served here
      // may be answered already.
      if (rest.length > 0) { this.inBuf = rest; this.holdCheck(); } else this.holdResume();
    }
    this.holdCheck();
  }

  private forwardHead(buf: Buffer, head: RequestHead): void {
    if (this.g.serve !== undefined) { this.serveHead(buf, head); return; }
    const up = this.upstream();
    this.begin(head, head.framing === 'chunked' ? new ChunkedScanner(true) : undefined);
    // Head and the body bytes that came with it leave in one writev (uncorked at the end of the client's read).
    if (this.corkedUp === undefined) { up.cork(); this.corkedUp = up; }
    if (head.rewrite) {
      this.upWrite(up, buildHead(head, this.peerLine, this.client.localAddress ?? 'localhost'));
    } else {
      this.upWrite(up, buf.subarray(0, head.blankAt));
      this.upWrite(up, this.peerBuf ??= Buffer.from(this.peerLine, 'latin1'));
    }
  }

  /** A request is under way: its answer is pending, its body (framed by `chunks` when chunked) is next. */
  private begin(head: RequestHead, chunks: ChunkedScanner | undefined): void {
    this.inFlight = true;
    this.curHead = head.method === 'HEAD';
    this.curMinor = head.minor;
    this.curKeepAlive = head.keepAlive;
    this.resStarted = false;
    this.inResBody = false;
    this.reqBody = head.framing;
    this.reqLeft = head.length;
    this.reqChunks = chunks;
  }

  /** The guard serves the request itself: the front end reads the head now and its body as it arrives. */
  private serveHead(buf: Buffer, head: RequestHead): void {
    this.begin(head, head.framing === 'chunked' ? new ChunkedScanner(true, (b, s, e) => this.bodyData(b.subarray(s, e), false)) : undefined);
    const res = this.g.serve!.serve(this, head, buf, this.peer);
    // Answered at once (a refusal of a request without a body to read).
    if (res.done || res.aborted) return;
    this.cur = res;
    if (head.framing === 'none') this.bodyData(EMPTY, true);
  }

  private bodyData(chunk: Buffer, isLast: boolean): void {
    const cur = this.cur;
    if (cur !== undefined && !cur.done && !cur.aborted) cur.onBody?.(chunk, isLast);
  }

  /** ResponseWire: an answer the guard served was handed to the client's socket. */
  answered(close: boolean): void {
    this.cur = undefined;
    this.inFlight = false;
    this.lastActive = coarseNow;
    if (close || !this.curKeepAlive) {
      this.closing = true;
      this.client.end();
      this.linger();
      return;
    }
    this.headSince = coarseNow;
    // Inside onClient the loop there goes on to the next held request; otherwise (an answer that came later)
    // start it here.
    if (!this.inInput) this.next();
  }

  /** ResponseWire: drop the connection. */
  cut(): void {
    this.destroy();
  }

  private uncorkUp(): void {
    const up = this.corkedUp;
    this.corkedUp = undefined;
    up?.uncork();
  }

  /** Forwards request-body bytes from d[start..] (to uWS, or to the request served here); returns how many bytes of
   *  d the body used, or -1 after a refusal. */
  private forwardBody(d: Buffer, start: number): number {
    const chunked = this.reqBody === 'chunked';
    let end: number;
    if (!chunked) {
      const n = Math.min(this.reqLeft, d.length - start);
      this.reqLeft -= n;
      end = start + n;
      if (this.reqLeft === 0) this.reqBody = 'none';
    } else {
      const r = this.reqChunks!.push(d, start, d.length);
      if (r === -2) {
        this.g.onReject?.('framing');
        this.failRequest(new SluiceError('SLC_BAD_REQUEST', 'malformed chunked request body'));
        return -1;
      }
      end = r === -1 ? d.length : r;
      if (r >= 0) { this.reqBody = 'none'; this.reqChunks = undefined; }
    }
    const bytes = end > start ? (start === 0 && end === d.length ? d : d.subarray(start, end)) : undefined;
    if (this.g.serve !== undefined) {
      // Served here: a chunked body's data went out through its scanner's callback; a framed one's is these bytes.
      const last = this.reqBody === 'none';
      if (!chunked && bytes !== undefined) this.bodyData(bytes, last);
      else if (chunked && last) this.bodyData(EMPTY, true);
      return end;
    }
    if (bytes !== undefined && !this.upWrite(this.upstream(), bytes) && !this.pausedBody) {
      this.pausedBody = true;
      this.client.pause();
    }
    return end;
  }


  /** Held bytes beyond the bound pause the client until the pending answer is complete. */
  private holdCheck(): void {
    if (!this.pausedHold && this.inBuf !== undefined && this.inBuf.length > HOLD_BYTES) {
      this.pausedHold = true;
      this.client.pause();
    }
  }

  private holdResume(): void {
    if (this.pausedHold) { this.pausedHold = false; if (!this.pausedBody) this.client.resume(); }
  }

  private upstream(): Socket {
    if (this.up !== undefined) return this.up;
    return this.openUp();
  }

  private openUp(): Socket {
    const ep = this.g.endpoint();
    const unix = 'path' in ep;
    // uWS's answers are read through copyingReads (no stream machinery per read); the client's side cannot be:
    // node:net servers take no `onread` for the sockets they accept.
    const onread = copyingReads((d) => this.onUp(up, d));
    const up: Socket = unix ? connect({ path: ep.path, onread }) : connect({ host: ep.host, port: ep.port, noDelay: true, onread });
    this.up = up;
    if (unix) {
      // A unix socket whose accept queue is full refuses at once (EAGAIN) where TCP would retry its SYN: keep
      // what is written until connected, to send it again on a new connection (bounded: past the socket's
      // high-water mark the client is paused).
      this.upPending = [];
      up.once('connect', () => { if (this.up === up) { this.upPending = undefined; this.upAttempts = 0; } });
    }
    up.on('drain', () => {
      if (!this.pausedBody) return;
      this.pausedBody = false;
      if (!this.pausedHold && !this.closing) this.client.resume();
    });
    up.on('error', (err: NodeJS.ErrnoException) => {
      if (up === this.up && this.upPending !== undefined && err.code === 'EAGAIN') this.upRetry = true;
      /* 'close' follows */
    });
    up.on('close', () => this.onUpClose(up));
    return up;
  }

  private upWrite(up: Socket, b: Buffer): boolean {
    if (this.upPending !== undefined && up === this.up) this.upPending.push(b);
    return up.write(b);
  }

  /** uWS's accept queue was full: connect again shortly and send what the refused connection held. */
  private retryUp(): void {
    const pending = this.upPending ?? [];
    this.upPending = undefined;
    if (++this.upAttempts > UP_RETRIES) {
      this.up = undefined;
      if (!this.resStarted) this.refuse('overloaded', new SluiceError('SLC_OVERLOADED', 'the gateway could not take the connection in time'), this.curHead);
      else this.destroy();
      return;
    }
    setTimeout(() => {
      if (this.closing) return;
      const up = this.openUp();
      let full = false;
      for (const b of pending) full = !this.upWrite(up, b) || full;
      if (this.pausedBody && !full) {
        this.pausedBody = false;
        if (!this.pausedHold) this.client.resume();
      }
    }, Math.min(50, 2 ** this.upAttempts)).unref();
  }

  private onUp(up: Socket, d: Buffer): void {
    if (up !== this.up) return;
    // An answer's head and body (and a next pipelined request's head to uWS) leave in one writev each.
    this.client.cork();
    this.onUpData(d);
    this.client.uncork();
    this.uncorkUp();
  }

  private onUpData(d: Buffer): void {
    let at = 0;
    while (at < d.length) {
      // Bytes with no request pending (a body uWS sent after a HEAD answer, say) are dropped.
      if (!this.inFlight) return;
      if (!this.inResBody) {
        const used = this.onResponseHead(d, at);
        if (used < 0) return;
        at = used;
        continue;
      }
      at = this.onResponseBody(d, at);
    }
  }

  /** Accumulates and parses a response head; returns the offset after it, or -1 when more bytes are needed. */
  private onResponseHead(d: Buffer, at: number): number {
    let buf: Buffer;
    let base: number;
    if (this.resBuf === undefined) { buf = d; base = at; } else { buf = Buffer.concat([this.resBuf, d.subarray(at)]); base = 0; }
    const endIdx = buf.indexOf(RESPONSE_HEAD_END, base);
    if (endIdx < 0) {
      if (buf.length - base > MAX_RESPONSE_HEAD) { this.destroy(); return -1; }
      this.resBuf = base === 0 ? buf : buf.subarray(base);
      return -1;
    }
    const headEnd = endIdx + 4;
    const consumed = this.resBuf === undefined ? headEnd : d.length - (buf.length - headEnd);
    this.resBuf = undefined;
    const status = (buf[base + 9]! - 0x30) * 100 + (buf[base + 10]! - 0x30) * 10 + (buf[base + 11]! - 0x30);
    if (status >= 100 && status < 200) {
      if (status === 101) { this.destroy(); return -1; }
      if (this.curMinor === 1) this.write(buf.subarray(base, headEnd));
      return consumed;
    }
    let length = -1;
    let chunked = false;
    let close = false;
    let i = buf.indexOf(LF, base) + 1;
    while (i < endIdx) {
      const eol = buf.indexOf(LF, i);
      const c0 = buf[i]! | 0x20;
      if (c0 === 0x63 || c0 === 0x74) {
        const colon = buf.indexOf(0x3a, i);
        const nl = colon - i;
        if (nl === 14 && nameIs(buf, i, nl, 'content-length')) length = Number(buf.toString('latin1', colon + 1, eol - 1).trim());
        else if (nl === 17 && nameIs(buf, i, nl, 'transfer-encoding')) chunked = hasToken(buf.toString('latin1', colon + 1, eol - 1), 'chunked');
        else if (nl === 10 && nameIs(buf, i, nl, 'connection')) close = hasToken(buf.toString('latin1', colon + 1, eol - 1), 'close');
      }
      i = eol + 1;
    }
    this.resClose = close;
    if (this.curHead || status === 204 || status === 304) this.resBody = 'none';
    else if (chunked) this.resBody = 'chunked';
    else if (length >= 0) { this.resBody = length > 0 ? 'length' : 'none'; this.resLeft = length; } else this.resBody = 'close';
    this.resStarted = true;
    if (this.curMinor === 0) {
      this.write(this.http10Head(buf, base, endIdx));
      this.resChunks = this.resBody === 'chunked' ? new ChunkedScanner(false, (b, s, e) => this.write(b.subarray(s, e))) : undefined;
    } else {
      this.write(buf === d && base === at && headEnd === d.length ? d : buf.subarray(base, headEnd));
      this.resChunks = this.resBody === 'chunked' ? new ChunkedScanner(false) : undefined;
    }
    if (this.resBody === 'none') { this.responseDone(); return consumed; }
    this.inResBody = true;
    return consumed;
  }

  /** The head of an answer to an HTTP/1.0 client: no Transfer-Encoding, and Connection telling what follows. */
  private http10Head(buf: Buffer, base: number, endIdx: number): Buffer {
    const keep = this.curKeepAlive && !this.resClose && this.resBody !== 'chunked' && this.resBody !== 'close';
    if (!keep) this.resClose = true;
    let s = '';
    let i = base;
    const first = buf.indexOf(LF, base);
    s += buf.toString('latin1', base, first + 1);
    i = first + 1;
    while (i < endIdx) {
      const eol = buf.indexOf(LF, i);
      const colon = buf.indexOf(0x3a, i);
      const nl = colon - i;
      if (!(nl === 17 && nameIs(buf, i, nl, 'transfer-encoding')) && !(nl === 10 && nameIs(buf, i, nl, 'connection'))) s += buf.toString('latin1', i, eol + 1);
      i = eol + 1;
    }
    s += keep ? 'connection: keep-alive\r\n\r\n' : 'connection: close\r\n\r\n';
    return Buffer.from(s, 'latin1');
  }

  private onResponseBody(d: Buffer, at: number): number {
    let end: number;
    if (this.resBody === 'length') {
      const n = Math.min(this.resLeft, d.length - at);
      this.resLeft -= n;
      end = at + n;
      this.write(at === 0 && end === d.length ? d : d.subarray(at, end));
      if (this.resLeft === 0) this.responseDone();
      return end;
    }
    if (this.resBody === 'chunked') {
      const r = this.resChunks!.push(d, at, d.length);
      if (r === -2) { this.destroy(); return d.length; }
      end = r === -1 ? d.length : r;
      if (this.curMinor === 1) this.write(at === 0 && end === d.length ? d : d.subarray(at, end));
      if (r >= 0) this.responseDone();
      return end;
    }
    this.write(at === 0 ? d : d.subarray(at));
    return d.length;
  }

  private write(b: Buffer): void {
    if (!this.client.write(b) && this.up !== undefined && !this.pausedUp) {
      this.pausedUp = true;
      this.up.pause();
    }
  }

  private responseDone(): void {
    this.inFlight = false;
    this.inResBody = false;
    this.resChunks = undefined;
    this.lastActive = coarseNow;
    // Either side said close (RFC 9112 §9.6): the client may be reading until the connection ends.
    if (this.resClose || !this.curKeepAlive) {
      this.closing = true;
      this.client.end();
      this.dropUp();
      this.linger();
      return;
    }
    this.headSince = coarseNow;
    this.next();
  }

  private onUpClose(up: Socket): void {
    if (up !== this.up) return;
    if (this.upRetry) { this.upRetry = false; this.retryUp(); return; }
    this.upAttempts = 0;
    this.up = undefined;
    this.pausedUp = false;
    if (this.closing) return;
    if (this.inFlight) {
      if (this.inResBody && this.resBody === 'close') { this.resClose = true; this.responseDone(); return; }
      // uWS closed without (a complete) answer: the client sees the same.
      this.destroy();
      return;
    }
    // uWS's own idle timeout closed a quiet connection: the next request opens a new one.
    if (this.reqBody !== 'none') this.destroy();
  }

  private onClientEnd(): void {
    this.clientEnded = true;
    // A client that closes its side while its answer is still coming has gone (nginx records a 499 here too):
    // abort now, so the upstream stops generating tokens nobody reads, instead of after two failed writes.
    if (this.inFlight && this.reqBody === 'none') { this.destroy(); return; }
    if (!this.inFlight && this.reqBody === 'none' && (this.inBuf === undefined || this.inBuf.length === 0)) this.finish();
    else if (!this.inFlight && this.reqBody === 'none') { this.next(); this.uncorkUp(); }
  }

  /** The client finished sending and everything it asked for was answered. */
  private finish(): void {
    if (this.closing) return;
    this.closing = true;
    this.client.end();
    this.dropUp();
  }

  /** The guard's own answer; the connection closes after it. */
  private refuse(reason: string, err: SluiceError, head: boolean): void {
    this.g.onReject?.(reason);
    this.closing = true;
    this.inBuf = undefined;
    this.inStore = undefined;
    this.client.end(errorResponse(err, !head));
    this.dropUp();
    this.linger();
  }

  /** A request already partly forwarded turned out malformed: answer it if uWS has not started to. */
  private failRequest(err: SluiceError): void {
    this.dropUp();
    const cur = this.cur;
    this.cur = undefined;
    const started = this.resStarted || cur?.started === true;
    cur?.abort();
    if (!started) { this.refuse('framing', err, this.curHead); return; }
    this.destroy();
  }

  private dropUp(): void {
    const up = this.up;
    this.up = undefined;
    this.pausedUp = false;
    up?.destroy();
  }

  /** Reads and discards what the client still sends after the answer, so it reads the answer instead of a reset. */
  private linger(): void {
    this.client.resume();
    setTimeout(() => this.destroy(), LINGER_MS).unref();
  }

  /** A response is still being relayed, or bytes of one still wait in the client socket's buffer. */
  get busy(): boolean {
    return this.inFlight || this.client.writableLength > 0;
  }

  destroy(): void {
    this.closing = true;
    this.client.destroy();
    this.dropUp();
    this.g.conns.delete(this);
    const cur = this.cur;
    this.cur = undefined;
    cur?.abort();
  }
}

export class Guard {
  readonly limits: GuardLimits;
  readonly serve: GuardServer | undefined;
  private readonly upstreams: readonly UwsEndpoint[];
  private turn = 0;
  readonly onReject: ((reason: string) => void) | undefined;
  readonly conns = new Set<GuardConn>();
  readonly server: Server;
  private readonly timer: NodeJS.Timeout;

  constructor(opts: GuardOptions) {
    this.limits = opts.limits;
    this.serve = opts.serve;
    this.upstreams = opts.upstream === undefined ? [] : Array.isArray(opts.upstream) ? opts.upstream : [opts.upstream as UwsEndpoint];
    if (this.upstreams.length === 0 && this.serve === undefined) throw new Error('the guard needs at least one uWS endpoint or a server');
    this.onReject = opts.onReject;
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
      const c = new GuardConn(this, client);
      this.conns.add(c);
    });
    const every = Math.max(10, Math.min(1000, Math.floor(Math.min(opts.limits.client_header_timeout_ms, opts.limits.client_idle_timeout_ms) / 4)));
    this.timer = setInterval(() => {
      coarseNow = performance.now();
      for (const c of this.conns) c.tick(coarseNow);
    }, every);
    this.timer.unref();
  }

  /** The uWS endpoint for a new relay connection: each in turn (one per serving thread). */
  endpoint(): UwsEndpoint {
    const eps = this.upstreams;
    if (eps.length === 1) return eps[0]!;
    const ep = eps[this.turn]!;
    this.turn = (this.turn + 1) % eps.length;
    return ep;
  }

  /** Binds host:port exclusively (no SO_REUSEPORT); rejects with node's errno error. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port, exclusive: true }, () => {
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
   * Resolves once no connection is relaying an answer (or after graceMs). At shutdown the gateway's requests can
   * have ended while the guard still forwards their last bytes; closing then would reset those clients.
   */
  async quiesce(graceMs: number): Promise<void> {
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && [...this.conns].some((c) => c.busy)) await new Promise((r) => setTimeout(r, 10));
  }

  close(): void {
    clearInterval(this.timer);
    this.stopListening();
    for (const c of [...this.conns]) c.destroy();
  }
}
