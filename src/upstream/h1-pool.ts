// A purpose-built HTTP/1.1 client for upstream POSTs: keep-alive pools per origin over node:net / node:tls, one
// request per connection at a time, a strict incremental response parser (length, chunked, close-delimited),
// backpressure through socket pause/resume, and three timeouts (connect, first byte, idle body: deadlines behind one
// timer per thread, core/deadlines.ts). It replaces undici on the hot path: no request object, header validation pass, llhttp call-outs or timer wheel per request,
// and body chunks reach the handler as views of each read (core/socket-read.ts; docs/performance.md has the measurements).
import { connect as netConnect, isIP, type OnReadOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Deadlines, type DeadlineEntry } from '../core/deadlines.ts';
import { isToken } from '../core/http-token.ts';
import { copyingReads } from '../core/socket-read.ts';
import { parseResponseHead, type UpstreamHeaders } from './h1-head.ts';

export type FailureKind = 'connect_error' | 'timeout' | 'aborted' | 'protocol_error';

/** A failed attempt that produced no HTTP response. */
export class UpstreamFailure extends Error {
  readonly kind: FailureKind;
  constructor(kind: FailureKind, message: string, cause: unknown) {
    super(message, { cause });
    this.kind = kind;
  }
}

/** What a request's handler is told; the pool calls these in order: start, head, data…, complete | error. */
export interface ResponseHandler {
  /** The connection (or connection attempt) now carrying the request: `cancel` and `resume` go through it. */
  onStart(conn: Connection): void;
  /** Status and headers of the final (non-1xx) answer. */
  onHead(status: number, headers: UpstreamHeaders): void;
  /** A body chunk (a view of the socket's buffer); false asks to pause the socket until `conn.resume(handler)`. */
  onData(chunk: Buffer): boolean;
  onComplete(): void;
  onError(err: UpstreamFailure): void;
  /** The request, written on a connection the upstream then closed, goes once more on a new one (Connection.resend). */
  onResend(): void;
  /** Every byte of the request reached the kernel: from now on the upstream may have it whole (and bill it). */
  onWritten(): void;
}

export interface PoolOptions {
  readonly connectMs: number;
  readonly keepAlive: boolean;
  readonly keepAliveMs: number;
  readonly rejectUnauthorized: boolean;
}

/** An answer head larger than this (with 1xx heads before it) fails the request. */
export const MAX_RESPONSE_HEAD = 64 * 1024;
/** Bodies up to this size are copied behind the head and written as one buffer (see Connection.write). */
const ONE_WRITE_MAX = 16 * 1024;
const MAX_CHUNK_LINE = 4096;
const MAX_TRAILERS = 16 * 1024;
/** The server's Keep-Alive hint is cut by this much: a connection is dropped before the server drops it. */
const HINT_MARGIN_MS = 1000;
/** An idle time learned from the server's closes is forgotten after this long, then learned again (it may have changed). */
const LEARNED_IDLE_TTL_MS = 60_000;
/** A connection idle at least this long is written one event-loop turn after it is taken (Connection.send). */
const DEFER_AFTER_IDLE_MS = 1000;
/** A kept-alive connection closed this soon after a request was written to it, with no byte of answer, is the
 *  keep-alive race (see Connection.resend); later, the upstream may have worked on the request. */
const RESEND_WINDOW_MS = 500;
/** After an origin sent bytes past a complete answer, its connections are not reused for this long. */
const STRAY_NO_REUSE_MS = 60_000;
const CRLFCRLF = Buffer.from('\r\n\r\n');
const LFLF = Buffer.from('\n\n');
const LFCRLF = Buffer.from('\n\r\n');
const HOP_BY_HOP = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer', 'proxy-connection', 'expect']);

const enum St { Idle, Head, Length, Chunked, Close, Done }
const enum Ch { Size, Ext, SizeLf, Data, DataCr, DataLf, TrailerStart, Trailer, TrailerLf, EndLf }

/** Every connection's one pending timeout (connect, first byte, idle body or keep-alive park), behind one timer per thread. */
const deadlines = new Deadlines<Connection>();

/** tls.connect documents `onread` (it gets the decrypted bytes); @types/node's ConnectionOptions lacks it. */
function tlsOptions(pool: Pool, onread: OnReadOpts): ConnectionOptions & { onread: OnReadOpts } {
  return { host: pool.host, port: pool.port, servername: pool.servername, rejectUnauthorized: pool.opts.rejectUnauthorized,
    ALPNProtocols: ['http/1.1'], session: pool.tlsSession, onread };
}

/** One keep-alive connection to an origin; carries at most one request at a time. */
export class Connection implements DeadlineEntry<Connection> {
  readonly pool: Pool;
  readonly socket: Socket;
  private handler: ResponseHandler | undefined = undefined;
  /** The handler whose request is being written, until the write's callback. */
  private writing: ResponseHandler | undefined = undefined;
  /**
   * Written once the kernel has every byte (the write's callback; an error when the socket was destroyed first): a
   * request cut mid-body, or still queued in node, never reached the upstream whole. One per connection, not a
   * closure per request: a connection carries one request at a time and is reused only once it was fully written.
   */
  private readonly onFlushed = (err?: Error | null): void => {
    const h = this.writing;
    this.writing = undefined;
    if (err == null) h?.onWritten();
  };
  private connected = false;
  dead = false;
  /** In the pool's idle list. */
  parked = false;
  private st = St.Idle;
  deadline = 0;
  liveOwner: object | undefined = undefined;
  livePrev: Connection | undefined = undefined;
  liveNext: Connection | undefined = undefined;
  private bodyIdleMs = 0;
  private firstByteMs = 0;
  private paused = false;
  private reusable = false;
  private keepAliveMs = -1;
  private pendingBody: Buffer | undefined = undefined;
  private pendingHead: string | undefined = undefined;
  /** Head bytes received so far, while the head is incomplete. */
  private headAcc: Buffer | undefined = undefined;
  private headLen = 0;
  private remaining = 0;
  private ch = Ch.Size;
  private chDigits = 0;
  private chLine = 0;
  private trailerBytes = 0;
  /** Bytes of 1xx heads before this answer's final head: they count toward MAX_RESPONSE_HEAD, or a 1xx flood
   *  would keep the parser busy until the first-byte timeout (1xx heads do not restart it). */
  private infoBytes = 0;
  /** When this connection was parked, and until when it may be taken again (ms, Date.now()). */
  parkedAt = 0;
  idleUntil = 0;
  /** Taken from the idle pool after DEFER_AFTER_IDLE_MS: the request waits one event-loop turn before it is written (see send()). */
  private reused = false;
  private sendArgs: [number, number] = [0, 0];
  /** This connection carried a complete answer before (it was parked): a close before the next answer is the keep-alive race. */
  private served = false;
  /** The request written on a connection that served before, until the first byte of its answer: see resend(). */
  private resendHead: string | undefined = undefined;
  private resendBody: Buffer | undefined = undefined;
  private writtenAt = 0;

  constructor(pool: Pool) {
    this.pool = pool;
    const o = pool.opts;
    const onread = copyingReads((b) => this.onSocketData(b));
    this.socket = pool.tls ? tlsConnect(tlsOptions(pool, onread)) : netConnect({ host: pool.host, port: pool.port, noDelay: true, onread });
    const s = this.socket;
    if (pool.tls) {
      s.setNoDelay(true);
      s.once('secureConnect', () => this.onConnected());
      (s as TLSSocket).on('session', (session: Buffer) => { pool.tlsSession = session; });
    } else {
      s.once('connect', () => this.onConnected());
    }
    s.setKeepAlive(true, 60_000);
    s.on('end', () => this.onSocketEnd());
    s.on('error', (err: Error) => this.onSocketError(err));
    s.on('close', () => this.onSocketClose());
    this.arm(o.connectMs);
  }

  /** Sends one request on this connection (fresh, or taken idle from the pool). */
  send(handler: ResponseHandler, head: string, body: Buffer, firstByteMs: number, idleMs: number): void {
    this.handler = handler;
    this.st = St.Head;
    this.firstByteMs = firstByteMs;
    this.bodyIdleMs = idleMs;
    this.infoBytes = 0;
    handler.onStart(this);
    if (this.reused) {
      // A connection taken from the idle pool after a while is written one turn later, after the poll phase has
      // read what the kernel already holds for it: the server's FIN for an idle close (the keep-alive race) or
      // stray bytes, which would otherwise be read as this request's answer. Either kills the connection before
      // anything is written, and the request goes on a new one (safe: the upstream saw nothing).
      this.reused = false;
      this.st = St.Idle;
      this.pendingHead = head;
      this.pendingBody = body;
      this.sendArgs = [firstByteMs, idleMs];
      setImmediate(this.writeReused);
    } else if (this.connected) this.write(head, body);
    else { this.pendingHead = head; this.pendingBody = body; }
  }

  private readonly writeReused = (): void => {
    const head = this.pendingHead;
    if (head === undefined || this.handler === undefined) return;
    if (this.dead) { this.redispatch(); return; }
    const body = this.pendingBody!;
    this.pendingHead = undefined;
    this.pendingBody = undefined;
    this.st = St.Head;
    this.write(head, body);
  };

  /** A reused connection that died before its deferred write: the request goes, unsent, on a new connection. */
  private redispatch(): boolean {
    const h = this.handler;
    const head = this.pendingHead;
    if (h === undefined || head === undefined || !this.connected) return false;
    const body = this.pendingBody!;
    this.handler = undefined;
    this.pendingHead = undefined;
    this.pendingBody = undefined;
    this.destroy();
    this.pool.fresh().send(h, head, body, this.sendArgs[0], this.sendArgs[1]);
    return true;
  }

  /** Cuts the request `h` if this connection still carries it; the connection is closed, never reused. */
  cancel(h: ResponseHandler): void {
    if (this.handler !== h) return;
    this.handler = undefined;
    this.destroy();
  }

  /** Resumes a socket paused because `h`'s reader stopped asking. */
  resume(h: ResponseHandler): void {
    if (this.handler !== h || !this.paused) return;
    this.paused = false;
    this.socket.resume();
    if (this.st === St.Length || this.st === St.Chunked || this.st === St.Close) this.arm(this.bodyIdleMs);
  }

  /** Taken from the idle pool for a new request. */
  wake(): void {
    this.parked = false;
    // Only a connection idle a while is near the server's idle close; one parked moments ago (the busy case) is
    // written at once: a turn's wait there cost ~10 us of CPU per request (8 concurrent, loopback).
    this.reused = Date.now() - this.parkedAt >= DEFER_AFTER_IDLE_MS;
    this.socket.ref();
    this.disarm();
    this.st = St.Idle;
  }

  /** Parked in the idle pool: closed after the keep-alive time (or the server's hint, whichever is shorter). */
  park(): void {
    const hint = this.keepAliveMs >= 0 ? this.keepAliveMs - HINT_MARGIN_MS : Infinity;
    const ms = Math.min(this.pool.opts.keepAliveMs, hint, this.pool.idleLimit());
    if (ms <= 0 || this.pool.noReuse()) { this.destroy(); return; }
    this.arm(ms);
    // An idle connection alone does not keep the process alive (nor does the deadlines' timer).
    this.socket.unref();
    this.served = true;
    this.parked = true;
    this.parkedAt = Date.now();
    this.idleUntil = this.parkedAt + ms;
    this.pool.idle.push(this);
  }

  destroy(): void {
    if (this.dead) return;
    this.dead = true;
    this.disarm();
    this.socket.destroy();
  }

  private write(head: string, body: Buffer): void {
    const s = this.socket;
    this.writing = this.handler;
    this.arm(this.firstByteMs);
    if (this.served) { this.resendHead = head; this.resendBody = body; this.writtenAt = performance.now(); }
    // UTF-8, never latin1: uWS hands header values over decoded from UTF-8, and a latin1 write keeps only the low
    // byte of each character, so U+010A / U+010D would reach the wire as LF / CR (a header injected upstream).
    if (body.length <= ONE_WRITE_MAX) {
      // A small request goes as one buffer: a corked pair takes node's writev path, whose per-chunk bookkeeping
      // cost more than copying the body once.
      const n = Buffer.byteLength(head, 'utf8');
      const out = Buffer.allocUnsafe(n + body.length);
      out.write(head, 0, n, 'utf8');
      body.copy(out, n);
      s.write(out, this.onFlushed);
      return;
    }
    s.cork();
    s.write(head, 'utf8');
    s.write(body, this.onFlushed);
    s.uncork();
  }

  private onConnected(): void {
    this.connected = true;
    this.disarm();
    const head = this.pendingHead;
    if (head === undefined) return;
    const body = this.pendingBody!;
    this.pendingHead = undefined;
    this.pendingBody = undefined;
    if (this.handler !== undefined) this.write(head, body);
  }

  private arm(ms: number): void {
    deadlines.set(this, ms);
  }

  private disarm(): void {
    deadlines.clear(this);
  }

  /** The pending timeout passed (called by `deadlines`, which has already dropped it). */
  onDeadline(): void {
    if (this.handler === undefined) { this.destroy(); return; }
    const what = !this.connected ? 'connecting to the upstream timed out'
      : this.st === St.Head ? 'upstream sent no answer in time' : 'upstream body stalled';
    this.fail(new UpstreamFailure('timeout', what, undefined));
  }

  private fail(f: UpstreamFailure): void {
    const h = this.handler;
    this.handler = undefined;
    this.destroy();
    h?.onError(f);
  }

  /**
   * The upstream closed or reset a connection that had served an answer before, within RESEND_WINDOW_MS of this
   * request's write and before any byte of its answer: the keep-alive race seen too late to avoid (a server closing
   * an idle connection as the request arrived, or one that closes on a new request without saying so). The request
   * goes once more on a new connection, with what is left of its first-byte time; a new connection that fails the
   * same way fails the request. A close later than that is not resent: the upstream may have worked on the request
   * (a POST; nginx and Go's client send none again once written), and a second send could be billed twice upstream.
   */
  private resend(): boolean {
    const h = this.handler;
    const head = this.resendHead;
    if (h === undefined || head === undefined || this.st !== St.Head) return false;
    const elapsed = performance.now() - this.writtenAt;
    if (elapsed > RESEND_WINDOW_MS) return false;
    const body = this.resendBody!;
    this.resendHead = undefined;
    this.resendBody = undefined;
    this.handler = undefined;
    this.destroy();
    h.onResend();
    this.pool.fresh().send(h, head, body, Math.max(1, this.firstByteMs - Math.round(elapsed)), this.bodyIdleMs);
    return true;
  }

  private onSocketError(err: Error): void {
    if (this.redispatch() || this.resend()) return;
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const tlsRefused = this.pool.tls && !this.connected;
    const kind = code === 'ETIMEDOUT' ? 'timeout' : 'connect_error';
    this.fail(new UpstreamFailure(tlsRefused ? 'connect_error' : kind,
      this.connected ? 'upstream connection failed' : 'upstream unreachable', err));
  }

  private onSocketEnd(): void {
    // The server closed a parked connection (or one taken, its request not yet written): learn how long it keeps
    // idle connections (it gave no hint, or a longer one), so later ones are dropped before that instead of
    // racing its close with a request.
    if (this.parked || (this.connected && this.pendingHead !== undefined)) this.pool.idleClosed(Date.now() - this.parkedAt);
    if (this.redispatch() || this.resend()) return;
    if (this.st === St.Close && this.handler !== undefined) { this.finish(false); return; }
    if (this.handler === undefined) { this.destroy(); return; }
    const midBody = this.st === St.Length || this.st === St.Chunked;
    this.fail(new UpstreamFailure(midBody ? 'protocol_error' : 'connect_error',
      midBody ? 'upstream closed the connection mid-body' : 'upstream closed the connection', undefined));
  }

  private onSocketClose(): void {
    this.dead = true;
    this.disarm();
    if (!this.redispatch()) this.resend();
    if (this.handler !== undefined) this.fail(new UpstreamFailure('connect_error', 'upstream closed the connection', undefined));
    this.pool.dropped(this);
  }

  private onSocketData(b: Buffer): void {
    if (this.resendHead !== undefined) { this.resendHead = undefined; this.resendBody = undefined; }
    if (this.handler === undefined || this.st === St.Idle || this.st === St.Done) {
      // Bytes nobody asked for (a second answer, garbage on an idle connection): the connection is unusable.
      this.pool.strayBytes();
      if (this.redispatch()) return;
      this.handler = undefined;
      this.destroy();
      return;
    }
    const h = this.handler;
    let buf = b;
    let off = 0;
    while (off < buf.length && this.handler === h) {
      switch (this.st) {
        case St.Head: {
          const r = this.readHead(buf, off);
          if (r === undefined) return;
          buf = r.buf;
          off = r.off;
          break;
        }
        case St.Length: {
          const n = Math.min(this.remaining, buf.length - off);
          const chunk = off === 0 && n === buf.length ? buf : buf.subarray(off, off + n);
          off += n;
          this.remaining -= n;
          if (this.remaining === 0) {
            const more = off < buf.length;
            this.deliver(h, chunk);
            if (this.handler === h) this.finish(more);
            return;
          }
          this.deliver(h, chunk);
          break;
        }
        case St.Chunked:
          off = this.readChunked(h, buf, off);
          break;
        case St.Close:
          this.deliver(h, off === 0 ? buf : buf.subarray(off));
          off = buf.length;
          break;
        default:
          off = buf.length;
      }
    }
    if (this.handler === h && (this.st === St.Length || this.st === St.Chunked || this.st === St.Close)) {
      if (this.paused) { this.disarm(); this.socket.pause(); } else this.arm(this.bodyIdleMs);
    }
  }

  private deliver(h: ResponseHandler, chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (!h.onData(chunk)) this.paused = true;
  }

  /** Reads head bytes from buf[off..]; returns where the body starts (in buf or the head buffer), or undefined to wait. */
  private readHead(buf: Buffer, off: number): { buf: Buffer; off: number } | undefined {
    let data = buf;
    let start = off;
    let from = off;
    if (this.headAcc !== undefined) {
      // Rare: the head spans reads. One growing buffer, searched only where new bytes can complete the blank line.
      from = Math.max(0, this.headLen - 3);
      data = this.append(buf, off);
      start = 0;
    }
    for (;;) {
      const end = data.indexOf(CRLFCRLF, from);
      if (end < 0) {
        if (this.infoBytes + data.length - start > MAX_RESPONSE_HEAD) this.fail(new UpstreamFailure('protocol_error', 'upstream answer head too large', undefined));
        else if (data.indexOf(LFLF, from) >= 0 || data.indexOf(LFCRLF, from) >= 0) this.fail(new UpstreamFailure('protocol_error', 'upstream answer head has bare LF line ends', undefined));
        else this.stash(data, start);
        return undefined;
      }
      if (this.infoBytes + end - start > MAX_RESPONSE_HEAD) { this.fail(new UpstreamFailure('protocol_error', 'upstream answer head too large', undefined)); return undefined; }
      const head = parseResponseHead(data.toString('latin1', start, end));
      if (typeof head === 'string') { this.fail(new UpstreamFailure('protocol_error', `malformed upstream answer: ${head}`, undefined)); return undefined; }
      if (head.status < 200) this.infoBytes += end + 4 - start;
      start = end + 4;
      from = start;
      if (head.status < 200) {
        if (head.status === 101) { this.fail(new UpstreamFailure('protocol_error', 'upstream switched protocols', undefined)); return undefined; }
        continue;
      }
      this.headAcc = undefined;
      this.headLen = 0;
      this.reusable = head.reusable && this.pool.opts.keepAlive;
      this.keepAliveMs = head.keepAliveMs;
      const h = this.handler!;
      switch (head.framing) {
        case 'none': this.st = St.Done; break;
        case 'length': this.st = head.length === 0 ? St.Done : St.Length; this.remaining = head.length; break;
        case 'chunked': this.st = St.Chunked; this.ch = Ch.Size; this.remaining = 0; this.chDigits = 0; this.chLine = 0; this.trailerBytes = 0; break;
        default: this.st = St.Close;
      }
      this.arm(this.bodyIdleMs);
      h.onHead(head.status, head.headers);
      if (this.handler !== h) return undefined;
      if (this.st === St.Done) { this.finish(start < data.length); return undefined; }
      return { buf: data, off: start };
    }
  }

  /** Appends buf[off..] to the head buffer; returns the bytes held so far. */
  private append(buf: Buffer, off: number): Buffer {
    let acc = this.headAcc!;
    const need = this.headLen + buf.length - off;
    if (acc.length < need) {
      // Doubling, but not far past the bound: a head trickled to just under 64 KiB holds ~64 KiB, not 128.
      const grown = Buffer.allocUnsafe(Math.max(need, Math.min(2 * acc.length, MAX_RESPONSE_HEAD + 4)));
      acc.copy(grown, 0, 0, this.headLen);
      acc = grown;
      this.headAcc = acc;
    }
    buf.copy(acc, this.headLen, off);
    this.headLen = need;
    return acc.subarray(0, need);
  }

  /** Keeps data[start..] (an incomplete head) for the next read. */
  private stash(data: Buffer, start: number): void {
    const rest = data.length - start;
    const acc = this.headAcc;
    if (acc !== undefined && data.buffer === acc.buffer && data.byteOffset === acc.byteOffset) {
      if (start > 0) acc.copy(acc, 0, start, data.length);
      this.headLen = rest;
      return;
    }
    const fresh = Buffer.allocUnsafe(Math.max(1024, 2 * rest));
    data.copy(fresh, 0, start);
    this.headAcc = fresh;
    this.headLen = rest;
  }

  /** Chunked body (RFC 9112 §7.1), strictly: hex sizes ≤ 13 digits, CRLF line ends, bounded extensions and trailers. */
  private readChunked(h: ResponseHandler, buf: Buffer, off: number): number {
    let i = off;
    const n = buf.length;
    // The data of every chunk in this read goes to the handler once, at the end of the read: thousands of tiny
    // chunks would otherwise cost a call, a view and a client write each (and ~90 bytes of memory per queued
    // byte), and a view of a few bytes among kilobytes of chunk extensions, queued, would hold the whole read.
    let a = -1;
    let b = 0;
    let parts: Buffer[] | undefined;
    let total = 0;
    let bad: string | undefined;
    scan: while (i < n) {
      switch (this.ch) {
        case Ch.Data: {
          const take = Math.min(this.remaining, n - i);
          if (a < 0) { a = i; b = i + take; } else (parts ??= [buf.subarray(a, b)]).push(buf.subarray(i, i + take));
          total += take;
          i += take;
          this.remaining -= take;
          if (this.remaining === 0) this.ch = Ch.DataCr;
          continue;
        }
        case Ch.Size: {
          const c = buf[i]!;
          const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
          if (d >= 0) {
            if (++this.chDigits > 13) { bad = 'chunk size too large'; break scan; }
            this.remaining = this.remaining * 16 + d;
          } else if (this.chDigits === 0) {
            bad = 'malformed chunk size';
            break scan;
          } else if (c === 0x0d) {
            this.ch = Ch.SizeLf;
          } else if (c === 0x3b || c === 0x20 || c === 0x09) {
            this.ch = Ch.Ext;
          } else {
            bad = 'malformed chunk size';
            break scan;
          }
          break;
        }
        case Ch.Ext: {
          const c = buf[i]!;
          if (c === 0x0d) this.ch = Ch.SizeLf;
          else if ((c < 0x20 && c !== 0x09) || c === 0x7f) { bad = 'malformed chunk extension'; break scan; }
          else if (++this.chLine > MAX_CHUNK_LINE) { bad = 'chunk extension too long'; break scan; }
          break;
        }
        case Ch.SizeLf:
          if (buf[i] !== 0x0a) { bad = 'malformed chunk line end'; break scan; }
          this.chDigits = 0;
          this.chLine = 0;
          this.ch = this.remaining === 0 ? Ch.TrailerStart : Ch.Data;
          break;
        case Ch.DataCr:
          if (buf[i] !== 0x0d) { bad = 'chunk data longer than its size'; break scan; }
          this.ch = Ch.DataLf;
          break;
        case Ch.DataLf:
          if (buf[i] !== 0x0a) { bad = 'chunk data longer than its size'; break scan; }
          this.ch = Ch.Size;
          break;
        case Ch.TrailerStart:
          if (buf[i] === 0x0d) { this.ch = Ch.EndLf; break; }
          this.ch = Ch.Trailer;
          continue;
        case Ch.Trailer: {
          const c = buf[i]!;
          if (c === 0x0d) this.ch = Ch.TrailerLf;
          else if (c === 0x0a || c === 0 || ++this.trailerBytes > MAX_TRAILERS) { bad = 'malformed trailer section'; break scan; }
          break;
        }
        case Ch.TrailerLf:
          if (buf[i] !== 0x0a) { bad = 'malformed trailer section'; break scan; }
          this.ch = Ch.TrailerStart;
          break;
        case Ch.EndLf:
          if (buf[i] !== 0x0a) { bad = 'malformed chunked ending'; break scan; }
          if (total > 0) {
            this.deliverSpans(h, buf, a, b, parts, total);
            if (this.handler !== h) return n;
          }
          this.finish(i + 1 < n);
          return n;
      }
      i++;
    }
    // Data before a malformed part is still delivered: the text that came is counted and charged.
    if (total > 0) this.deliverSpans(h, buf, a, b, parts, total);
    if (bad !== undefined && this.handler === h) this.chunkError(bad);
    return n;
  }

  /** One read's chunk data: a view when it is one span of at least half the read, else one compact copy. */
  private deliverSpans(h: ResponseHandler, buf: Buffer, a: number, b: number, parts: Buffer[] | undefined, total: number): void {
    if (parts !== undefined) this.deliver(h, Buffer.concat(parts, total));
    else if (2 * total >= buf.length) this.deliver(h, a === 0 && b === buf.length ? buf : buf.subarray(a, b));
    else this.deliver(h, Buffer.from(buf.subarray(a, b)));
  }

  private chunkError(what: string): void {
    this.fail(new UpstreamFailure('protocol_error', `malformed upstream body: ${what}`, undefined));
  }

  /** The answer is complete; `extra` says bytes followed it in the same read (the connection is then unusable). */
  private finish(extra: boolean): void {
    const h = this.handler!;
    this.handler = undefined;
    this.st = St.Done;
    this.disarm();
    if (this.paused) { this.paused = false; this.socket.resume(); }
    // Bytes of the request still queued here: the server answered before reading it all (an early 413).
    if (extra) this.pool.strayBytes();
    const reuse = this.reusable && !extra && this.socket.writableLength === 0 && !this.dead && !this.pool.closed;
    if (reuse) this.park(); else this.destroy();
    h.onComplete();
  }
}

/** Keep-alive connections to one origin. */
export class Pool {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly servername: string | undefined;
  /** The Host header: the origin's host[:port]. */
  readonly hostHeader: string;
  readonly opts: PoolOptions;
  readonly idle: Connection[] = [];
  tlsSession: Buffer | undefined = undefined;
  closed = false;
  open = 0;
  private deadIdle = 0;
  private serverIdleMs = 0;
  private serverIdleAt = 0;
  private noReuseUntil = 0;
  private onEmpty: (() => void) | undefined = undefined;
  private emptied: Promise<void> | undefined = undefined;

  constructor(origin: string, opts: PoolOptions) {
    const url = new URL(origin);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`unsupported upstream scheme ${url.protocol}`);
    this.tls = url.protocol === 'https:';
    this.host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    this.port = url.port === '' ? (this.tls ? 443 : 80) : Number(url.port);
    this.servername = this.tls && isIP(this.host) === 0 ? this.host : undefined;
    this.hostHeader = url.host;
    this.opts = opts;
  }

  /** An idle connection, or a new one. */
  take(): Connection {
    const idle = this.idle;
    const now = Date.now();
    const limit = this.idleLimit();
    while (idle.length > 0) {
      const c = idle.pop()!;
      if (!c.dead) {
        // Its idle timer may not have fired yet (a busy loop runs timers late): past its time, or past what the
        // server was since seen to keep, it would race the server's close.
        if (now < c.idleUntil && now - c.parkedAt < limit) { c.wake(); return c; }
        c.parked = false;
        c.destroy();
        continue;
      }
      // Counted by dropped() already, or not yet closed (then it is no longer in the list when it is).
      if (c.parked) c.parked = false; else this.deadIdle--;
    }
    return this.fresh();
  }

  /** A new connection. */
  fresh(): Connection {
    this.open++;
    return new Connection(this);
  }

  /**
   * The server sent bytes past a complete answer. Delayed a little, such bytes reach a connection already
   * carrying the next request and are read as its answer (another client's bytes), and nothing on the wire
   * tells them from a real answer: so no connection to this origin is reused for a while.
   */
  strayBytes(): void {
    this.noReuseUntil = Date.now() + STRAY_NO_REUSE_MS;
  }

  noReuse(): boolean {
    return this.noReuseUntil !== 0 && Date.now() < this.noReuseUntil;
  }

  /** A parked connection was closed by the server after `ms` idle. */
  idleClosed(ms: number): void {
    const now = Date.now();
    // The longest such idle time seen lately: a restart closing every connection at once must not shrink it.
    if (now - this.serverIdleAt > LEARNED_IDLE_TTL_MS) this.serverIdleMs = 0;
    this.serverIdleMs = Math.max(this.serverIdleMs, ms);
    this.serverIdleAt = now;
  }

  /** How long a connection may stay parked given the server's observed idle closes (Infinity: none seen lately). */
  idleLimit(): number {
    const t = this.serverIdleMs;
    if (t === 0 || Date.now() - this.serverIdleAt > LEARNED_IDLE_TTL_MS) return Infinity;
    return t - Math.min(HINT_MARGIN_MS, t / 4);
  }

  dropped(c: Connection): void {
    this.open--;
    if (c.parked) {
      c.parked = false;
      // Parked connections that closed stay listed until taken: compact once they are half the list.
      if (++this.deadIdle * 2 > this.idle.length) {
        const live = this.idle.filter((x) => {
          if (!x.dead) return true;
          x.parked = false;
          return false;
        });
        this.idle.length = 0;
        this.idle.push(...live);
        this.deadIdle = 0;
      }
    }
    if (this.open === 0) this.onEmpty?.();
  }

  /** Closes idle connections now and resolves once the busy ones have finished. */
  close(): Promise<void> {
    this.closed = true;
    for (const c of this.idle) { c.parked = false; c.destroy(); }
    this.idle.length = 0;
    this.deadIdle = 0;
    if (this.open === 0) return Promise.resolve();
    // Closed again (a retired client, then shutdown): the same promise, or the first caller would wait forever.
    this.emptied ??= new Promise((resolve) => { this.onEmpty = resolve; });
    return this.emptied;
  }
}

const FORBIDDEN_VALUE = /[\0-\x08\x0a-\x1f\x7f]/;

/**
 * The request head, or a message saying why it cannot be sent (a header value with a control character other than
 * HTAB, a bad name or path): such a request never reaches the wire.
 */
export function requestHead(pool: Pool, path: string, headers: Readonly<Record<string, string>>, bodyLength: number): string | UpstreamFailure {
  if (path.length === 0 || path.charCodeAt(0) !== 0x2f || /[\s\0]/.test(path)) return new UpstreamFailure('protocol_error', 'invalid upstream path', undefined);
  let host = pool.hostHeader;
  let lines = '';
  for (const k in headers) {
    const v = headers[k]!;
    if (FORBIDDEN_VALUE.test(v) || !isToken(k)) return new UpstreamFailure('protocol_error', `invalid upstream request header ${isToken(k) ? k : ''}`.trimEnd(), undefined);
    const lower = k.toLowerCase();
    if (HOP_BY_HOP.has(lower)) {
      if (lower === 'host' && v !== '') host = v;
      continue;
    }
    lines += `${k}: ${v}\r\n`;
  }
  return `POST ${path} HTTP/1.1\r\nhost: ${host}\r\n${lines}content-length: ${bodyLength}\r\n${pool.opts.keepAlive ? '' : 'connection: close\r\n'}\r\n`;
}
