// The only place that remembers uWS's response rules: every write after an await is corked, a response
// completes exactly once, nothing touches it after onAborted, and slow clients are handled with onWritable.
// A HEAD request's answer carries the headers (and Content-Length) of the GET answer, never a body, and closes
// the connection (see respond()).
import type { HttpResponse } from 'uWebSockets.js';
import type { HeaderList } from '../pipeline/http-types.ts';
import { BaseResponse, type BodySink } from './response-base.ts';
import { statusLine } from './status.ts';

const NO_HEADERS: HeaderList = [];

/**
 * uWebSockets.js 20.30 loses the data of a write that does not fit in its 16 KiB cork buffer when that buffer
 * already holds bytes (a chunk's size line, a response head) and the kernel's socket buffer is full: flushing
 * the cork buffer fails and AsyncSocket::uncork returns without writing (or buffering) its argument. A slow
 * reader then got a chunk size line followed by the next chunk (`test/unit/uws-response-backpressure.test.ts`).
 * So every corked write here fits in the cork buffer: a streamed chunk leaves in pieces of at most PIECE bytes,
 * one cork each, and a whole answer too large for one cork goes out with tryEnd(), which reports how much was
 * taken and is resumed from onWritable.
 */
const CORK_BYTES = 16 * 1024;
/** Data bytes per corked write: room left for the chunk size line and, on a first write, the Date,
 *  uWebSockets and Transfer-Encoding lines uWS adds. */
const PIECE = CORK_BYTES - 256;
/** Room for the status line and the lines uWS adds to a head (Date, uWebSockets, Content-Length). */
const HEAD_SLACK = 192;

/** An upper bound of the bytes a head takes in the cork buffer (uWS writes strings as UTF-8). */
function headBytes(headers: HeaderList): number {
  let n = HEAD_SLACK;
  for (let i = 0; i < headers.length; i++) n += headers[i]![0].length + 3 * headers[i]![1].length + 4;
  return n;
}

/**
 * The arguments of the cork callback running now. uWS runs a cork callback synchronously, so one module-level
 * argument record and UwsResponse's static callbacks replace a closure (and its context) per answer and per
 * streamed chunk. Released after each cork so that no response or chunk stays referenced.
 */
class Corked {
  target: UwsResponse | undefined = undefined;
  status = 0;
  headers: HeaderList = NO_HEADERS;
  body: string | Uint8Array = '';
  close = false;
  chunk: Uint8Array | undefined = undefined;
  ok = true;
  /** A whole answer's body sent with tryEnd (see respond()); done: all of it was taken. */
  whole: Buffer | undefined = undefined;
  wholeDone = true;

  release(): void {
    this.target = undefined;
    this.headers = NO_HEADERS;
    this.body = '';
    this.chunk = undefined;
    this.whole = undefined;
  }
}

const corked = new Corked();

function corking(target: UwsResponse): Corked {
  corked.target = target;
  corked.ok = true;
  corked.wholeDone = true;
  return corked;
}

export class UwsResponse extends BaseResponse {
  /** uWS deals with `Expect: 100-continue` before the handler runs. */
  readonly awaitingContinue = false;
  private readonly res: HttpResponse;
  /** The body of a whole answer uWS has not taken all of yet (respond() with tryEnd). */
  private rest: Buffer | undefined = undefined;
  private sentCb: (() => void) | undefined = undefined;

  /** `onFinish` runs exactly once, when the response is complete or the client has gone. `sendTimeoutMs` (> 0):
   *  a client that takes nothing of a pending answer for this long is cut off. */
  constructor(res: HttpResponse, head = false, onFinish?: () => void, sendTimeoutMs = 0) {
    super(head, onFinish, sendTimeoutMs);
    this.res = res;
    res.onAborted(() => {
      this.aborting();
      this.sent();
    });
  }

  unsent(): boolean {
    return this.rest !== undefined && !this.aborted;
  }

  onSent(cb: () => void): void {
    if (!this.unsent()) cb();
    else this.sentCb = cb;
  }

  private sent(): void {
    const cb = this.sentCb;
    if (cb === undefined) return;
    this.sentCb = undefined;
    cb();
  }

  /** The request body as uWS delivers it (each chunk valid only during the call). */
  onData(sink: BodySink): void {
    this.res.onData((ab, isLast) => sink(new Uint8Array(ab), isLast));
  }

  protected respond(status: number, headers: HeaderList, body: string | Uint8Array, close: boolean): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.started = true;
    const c = corking(this);
    c.status = status;
    c.headers = headers;
    c.body = body;
    c.close = close;
    const room = CORK_BYTES - headBytes(headers);
    const size = typeof body === 'string' ? (3 * body.length <= room ? 0 : Buffer.byteLength(body)) : body.byteLength;
    // The sendAndClose() answers (errors of the front end) are small; uWS closes after them itself.
    if (size > room && !this.head && !close) {
      c.whole = typeof body === 'string' ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    }
    try {
      this.res.cork(c.whole === undefined ? UwsResponse.corkedRespond : UwsResponse.corkedRespondWhole);
      if (!c.wholeDone && !this.aborted) this.sendRest(c.whole!);
    } finally {
      c.release();
    }
    this.finish();
  }

  private static corkedRespondWhole(this: void): void {
    const { target: self, status, headers, close, whole } = corked;
    const res = self!.res;
    res.writeStatus(statusLine(status));
    for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
    if (close) res.writeHeader('connection', 'close');
    corked.wholeDone = res.tryEnd(whole!, whole!.byteLength)[1];
  }

  /** uWS took only part of a whole answer: give it the rest as the client reads (uWS's own timeout bounds a
   *  client that reads nothing; it then runs onAborted). */
  private sendRest(body: Buffer): void {
    // Not a copy: send()'s callers hand over their body (up to the 64 MiB answer bound) and never reuse it.
    this.rest = body;
    this.res.onWritable((offset) => {
      const rest = this.rest;
      if (rest === undefined || this.aborted) return true;
      const c = corking(this);
      c.whole = rest;
      c.chunk = rest.subarray(offset);
      try {
        this.res.cork(UwsResponse.corkedRest);
        if (c.wholeDone) {
          this.rest = undefined;
          this.sent();
        }
        return c.ok;
      } finally {
        c.release();
      }
    });
  }

  private static corkedRest(this: void): void {
    const [ok, done] = corked.target!.res.tryEnd(corked.chunk!, corked.whole!.byteLength);
    corked.ok = ok;
    corked.wholeDone = done;
  }

  private static corkedRespond(this: void): void {
    const { target: self, status, headers, body, close } = corked;
    const res = self!.res;
    res.writeStatus(statusLine(status));
    for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
    // uWS 20.30's endWithoutBody leaves the connection expecting the answer still, so a next request on it
    // would be dropped: a HEAD answer says `Connection: close` and the client closes it (RFC 9112 §9.6); uWS
    // writes that header but does not close the socket itself (its idle timeout does).
    if (self!.head) res.endWithoutBody(typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength, true);
    else res.end(body, close);
  }

  start(status: number, headers: HeaderList, first?: Uint8Array): boolean {
    if (this.aborted || this.started) return true;
    this.started = true;
    // One cork, one write: the head and a first chunk that came with the upstream's head leave together,
    // when both fit in the cork buffer; a larger first chunk follows in pieces.
    let rest: Uint8Array | undefined;
    if (first !== undefined && first.byteLength > PIECE - headBytes(headers)) { rest = first; first = undefined; }
    const c = corking(this);
    c.status = status;
    c.headers = headers;
    c.chunk = first;
    let ok: boolean;
    try {
      this.res.cork(UwsResponse.corkedStart);
      ok = c.ok;
    } finally {
      c.release();
    }
    return rest === undefined ? ok : this.write(rest) && ok;
  }

  private static corkedStart(this: void): void {
    const { target: self, status, headers, chunk } = corked;
    const res = self!.res;
    res.writeStatus(statusLine(status));
    for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
    if (chunk !== undefined && !self!.head) corked.ok = res.write(chunk);
  }

  write(chunk: Uint8Array): boolean {
    if (this.aborted || this.done || this.head) return true;
    if (chunk.byteLength <= PIECE) return this.writePiece(chunk);
    let ok = true;
    for (let at = 0; at < chunk.byteLength && !this.aborted; at += PIECE) {
      ok = this.writePiece(chunk.subarray(at, Math.min(at + PIECE, chunk.byteLength))) && ok;
    }
    return ok;
  }

  private writePiece(chunk: Uint8Array): boolean {
    const c = corking(this);
    c.chunk = chunk;
    try {
      this.res.cork(UwsResponse.corkedWrite);
      return c.ok;
    } finally {
      c.release();
    }
  }

  private static corkedWrite(this: void): void {
    corked.ok = corked.target!.res.write(corked.chunk!);
  }

  /** uWS already holds the bytes write() could not send; onWritable only tells us it has room again. */
  protected override watchWritable(): void {
    this.res.onWritable(() => {
      this.wakeDrainers();
      return true;
    });
  }

  end(chunk?: Uint8Array): void {
    if (this.aborted || this.done) return;
    if (chunk !== undefined && chunk.byteLength > PIECE && !this.head) {
      this.write(chunk);
      chunk = undefined;
      if (this.aborted) return;
    }
    this.done = true;
    const c = corking(this);
    c.chunk = chunk;
    try {
      this.res.cork(UwsResponse.corkedEnd);
    } finally {
      c.release();
    }
    this.finish();
  }

  private static corkedEnd(this: void): void {
    const { target: self, chunk } = corked;
    const res = self!.res;
    if (self!.head) res.endWithoutBody(undefined, true);
    else if (chunk === undefined) res.end();
    else res.end(chunk);
  }

  destroy(): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.res.close();
    this.finish();
  }

  /** uWS runs onAborted when it closes a connection with an answer pending. */
  protected cutOff(): void {
    this.res.close();
  }
}
