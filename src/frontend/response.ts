// The only place that remembers uWS's response rules: every write after an await is corked, a response
// completes exactly once, nothing touches it after onAborted, and slow clients are handled with onWritable.
// A HEAD request's answer carries the headers (and Content-Length) of the GET answer, never a body, and closes
// the connection (see respond()).
import type { HttpResponse } from 'uWebSockets.js';
import type { ClientResponse, HeaderList } from '../pipeline/http-types.ts';
import { statusLine } from './status.ts';

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

  /** `onFinish` runs exactly once, when the response is complete or the client has gone. `guarded`: the HTTP/1.x
   *  guard is in front, and closes the client connection itself after an answer saying `Connection: close`. */
  constructor(res: HttpResponse, head = false, onFinish?: () => void, guarded = false) {
    this.res = res;
    this.head = head;
    this.guarded = guarded;
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
    const res = this.res;
    res.cork(() => {
      res.writeStatus(statusLine(status));
      for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
      // uWS 20.30's endWithoutBody leaves the connection expecting the answer still, so a next request on it
      // would be dropped: a HEAD answer says `Connection: close` and the client closes it (RFC 9112 §9.6); uWS
      // writes that header but does not close the socket itself (its idle timeout does).
      if (this.head) res.endWithoutBody(typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength, true);
      else if (close && this.guarded) {
        // uWS closing a connection it has not read to the end makes the guard's next write fail (EPIPE), which
        // can discard this answer before the guard reads it; uWS keeps reading (and dropping) the body instead.
        res.writeHeader('connection', 'close');
        res.end(body, false);
      } else res.end(body, close);
    });
    this.finish();
  }

  start(status: number, headers: HeaderList, first?: Uint8Array): boolean {
    if (this.aborted || this.started) return true;
    this.started = true;
    const res = this.res;
    let ok = true;
    // One cork, one write: the head and a first chunk that came with the upstream's head leave together.
    res.cork(() => {
      res.writeStatus(statusLine(status));
      for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
      if (first !== undefined && !this.head) ok = res.write(first);
    });
    return ok;
  }

  write(chunk: Uint8Array): boolean {
    if (this.aborted || this.done || this.head) return true;
    let ok = true;
    const res = this.res;
    res.cork(() => { ok = res.write(chunk); });
    return ok;
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
      }
      this.drainWaiters.push(resolve);
    });
  }

  end(chunk?: Uint8Array): void {
    if (this.aborted || this.done) return;
    this.done = true;
    const res = this.res;
    res.cork(() => {
      if (this.head) res.endWithoutBody(undefined, true);
      else if (chunk === undefined) res.end();
      else res.end(chunk);
    });
    this.finish();
  }

  destroy(): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.res.close();
    this.finish();
  }

  private wakeDrainers(): void {
    const waiters = this.drainWaiters;
    if (waiters === undefined) return;
    this.drainWaiters = undefined;
    for (const w of waiters) w();
  }
}
