// The only place that remembers uWS's response rules: every write after an await is corked, a response
// completes exactly once, nothing touches it after onAborted, and slow clients are handled with onWritable.
// A HEAD request's answer carries the headers (and Content-Length) of the GET answer, never a body, and closes
// the connection (see respond()).
import type { HttpResponse } from 'uWebSockets.js';
import type { ClientResponse, HeaderList } from '../pipeline/http-types.ts';
import { statusLine } from './status.ts';

const NO_HEADERS: HeaderList = [];

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

  release(): void {
    this.target = undefined;
    this.headers = NO_HEADERS;
    this.body = '';
    this.chunk = undefined;
  }
}

const corked = new Corked();

function corking(target: UwsResponse): Corked {
  corked.target = target;
  corked.ok = true;
  return corked;
}

export class UwsResponse implements ClientResponse {
  aborted = false;
  done = false;
  started = false;
  private abortCb: (() => void) | undefined = undefined;
  private drainWaiters: (() => void)[] | undefined = undefined;
  private readonly res: HttpResponse;
  private readonly head: boolean;
  private finishCb: (() => void) | undefined;
  private readonly guarded: boolean;
  private readonly sendTimeoutMs: number;
  private sendTimer: NodeJS.Timeout | undefined = undefined;

  /** `onFinish` runs exactly once, when the response is complete or the client has gone. `guarded`: the HTTP/1.x
   *  guard is in front, and closes the client connection itself after an answer saying `Connection: close`.
   *  `sendTimeoutMs` (> 0): a client that takes nothing of a pending answer for this long is cut off. */
  constructor(res: HttpResponse, head = false, onFinish?: () => void, guarded = false, sendTimeoutMs = 0) {
    this.res = res;
    this.head = head;
    this.guarded = guarded;
    this.sendTimeoutMs = sendTimeoutMs;
    this.finishCb = onFinish;
    res.onAborted(() => {
      this.aborted = true;
      const cb = this.abortCb;
      this.abortCb = undefined;
      this.wakeDrainers();
      if (cb !== undefined && !this.done) cb();
      this.finish();
    });
  }

  private finish(): void {
    const cb = this.finishCb;
    if (cb === undefined) return;
    this.finishCb = undefined;
    cb();
  }

  onAbort(cb: () => void): void {
    this.abortCb = cb;
  }

  send(status: number, headers: HeaderList, body: string | Uint8Array): void {
    this.respond(status, headers, body, false);
  }

  /** Answer and close the connection: used when the rest of an oversized body will not be read. */
  sendAndClose(status: number, headers: HeaderList, body: string): void {
    this.respond(status, headers, body, true);
  }

  private respond(status: number, headers: HeaderList, body: string | Uint8Array, close: boolean): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.started = true;
    const c = corking(this);
    c.status = status;
    c.headers = headers;
    c.body = body;
    c.close = close;
    try {
      this.res.cork(UwsResponse.corkedRespond);
    } finally {
      c.release();
    }
    this.finish();
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
    else if (close && self!.guarded) {
      // uWS closing a connection it has not read to the end makes the guard's next write fail (EPIPE), which
      // can discard this answer before the guard reads it; uWS keeps reading (and dropping) the body instead.
      res.writeHeader('connection', 'close');
      res.end(body, false);
    } else res.end(body, close);
  }

  start(status: number, headers: HeaderList, first?: Uint8Array): boolean {
    if (this.aborted || this.started) return true;
    this.started = true;
    // One cork, one write: the head and a first chunk that came with the upstream's head leave together.
    const c = corking(this);
    c.status = status;
    c.headers = headers;
    c.chunk = first;
    try {
      this.res.cork(UwsResponse.corkedStart);
      return c.ok;
    } finally {
      c.release();
    }
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

  drain(): Promise<void> {
    if (this.aborted || this.done) return Promise.resolve();
    return new Promise<void>((resolve) => {
      if (this.drainWaiters === undefined) {
        this.drainWaiters = [];
        // uWS already holds the bytes write() could not send; onWritable only tells us it has room again.
        this.res.onWritable(() => {
          this.wakeDrainers();
          return true;
        });
        // A client that reads nothing would hold the answer, its upstream and its reservation forever.
        if (this.sendTimeoutMs > 0) this.sendTimer = setTimeout(() => this.sendTimedOut(), this.sendTimeoutMs);
      }
      this.drainWaiters.push(resolve);
    });
  }

  end(chunk?: Uint8Array): void {
    if (this.aborted || this.done) return;
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

  private sendTimedOut(): void {
    this.sendTimer = undefined;
    if (this.aborted || this.done) return;
    // uWS runs onAborted when it closes a connection with an answer pending: drainers wake there, the stream
    // ends as a client abort and is settled.
    this.res.close();
  }

  private wakeDrainers(): void {
    if (this.sendTimer !== undefined) { clearTimeout(this.sendTimer); this.sendTimer = undefined; }
    const waiters = this.drainWaiters;
    if (waiters === undefined) return;
    this.drainWaiters = undefined;
    for (const w of waiters) w();
  }
}
