// The only place that remembers uWS's response rules: every write after an await is corked, a response
// completes exactly once, nothing touches it after onAborted, and slow clients are handled with onWritable.
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

  constructor(res: HttpResponse) {
    this.res = res;
    res.onAborted(() => {
      this.aborted = true;
      const cb = this.abortCb;
      this.abortCb = undefined;
      this.wakeDrainers();
      if (cb !== undefined && !this.done) cb();
    });
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
      res.end(body, close);
    });
  }

  start(status: number, headers: HeaderList): void {
    if (this.aborted || this.started) return;
    this.started = true;
    const res = this.res;
    res.cork(() => {
      res.writeStatus(statusLine(status));
      for (let i = 0; i < headers.length; i++) res.writeHeader(headers[i]![0], headers[i]![1]);
    });
  }

  write(chunk: Uint8Array): boolean {
    if (this.aborted || this.done) return true;
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
      if (chunk === undefined) res.end();
      else res.end(chunk);
    });
  }

  destroy(): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.res.close();
  }

  private wakeDrainers(): void {
    const waiters = this.drainWaiters;
    if (waiters === undefined) return;
    this.drainWaiters = undefined;
    for (const w of waiters) w();
  }
}
