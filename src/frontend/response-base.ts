// What the two client responses share (uWS's, response.ts; the guard's own, net-response.ts): a response completes
// exactly once, a client abort runs the pipeline's callback once, writers wait for drain with a send timeout,
// and the front end's release (in-flight count, body bytes) runs exactly once whichever way the response ends.
import type { ClientResponse, HeaderList } from '../pipeline/http-types.ts';

/** A request body's bytes as they arrive; the last call has isLast (an empty chunk when nothing is left). */
export type BodySink = (chunk: Uint8Array, isLast: boolean) => void;

/** 204 and 304 answers end at their head (RFC 9110 §15.3.5, §15.4.5): bytes after it would be read by the client as
 *  the start of its next answer. */
export function bodiless(status: number): boolean {
  return status === 204 || status === 304;
}

export abstract class BaseResponse implements ClientResponse {
  aborted = false;
  done = false;
  started = false;
  /** A HEAD request: the GET answer's head, never a body. */
  protected readonly head: boolean;
  private abortCb: (() => void) | undefined = undefined;
  private drainWaiters: (() => void)[] | undefined = undefined;
  private sendTimer: NodeJS.Timeout | undefined = undefined;
  private finishCb: (() => void) | undefined;
  private readonly sendTimeoutMs: number;

  /** `onFinish` runs exactly once, when the response is complete or the client has gone. `sendTimeoutMs` (> 0):
   *  a client that takes nothing of a pending answer for this long is cut off. */
  constructor(head: boolean, onFinish: (() => void) | undefined, sendTimeoutMs: number) {
    this.head = head;
    this.finishCb = onFinish;
    this.sendTimeoutMs = sendTimeoutMs;
  }

  onAbort(cb: () => void): void {
    this.abortCb = cb;
  }

  send(status: number, headers: HeaderList, body: string | Uint8Array): void {
    this.respond(status, headers, bodiless(status) ? '' : body, false);
  }

  /** Answer and close the connection: used when the rest of an oversized body will not be read. */
  sendAndClose(status: number, headers: HeaderList, body: string): void {
    this.respond(status, headers, bodiless(status) ? '' : body, true);
  }

  /** The request body goes to `sink` as it arrives. */
  abstract onData(sink: BodySink): void;
  /** `cb` hears how many bytes of a chunked body its chunk headers announced so far, where the transport parses them
   *  (the guard does; uWS does not say). */
  watchDeclared(_cb: (total: number) => void): void { /* uWS frames chunked bodies itself and does not say */ }
  /** The client waits for `100 Continue` before sending its body: a refusal can answer without reading it. */
  abstract readonly awaitingContinue: boolean;
  protected abstract respond(status: number, headers: HeaderList, body: string | Uint8Array, close: boolean): void;
  abstract start(status: number, headers: HeaderList, first?: Uint8Array): boolean;
  abstract write(chunk: Uint8Array): boolean;
  abstract end(chunk?: Uint8Array): void;
  abstract destroy(): void;
  /** Close the connection of a client that took nothing for the send timeout; its abort follows. */
  protected abstract cutOff(): void;
  /** Bytes of a whole answer sent still wait in the transport for the client (it reads slowly). */
  abstract unsent(): boolean;
  /** `cb` runs once, when the transport has handed the whole answer to the kernel or the client is gone. */
  abstract onSent(cb: () => void): void;
  /** The first writer started waiting: ask the transport to say when the client can take more. */
  protected watchWritable(): void { /* the transport calls wakeDrainers on its own event */ }

  drain(): Promise<void> {
    if (this.aborted || this.done) return Promise.resolve();
    return new Promise<void>((resolve) => {
      if (this.drainWaiters === undefined) {
        this.drainWaiters = [];
        this.watchWritable();
        // A client that reads nothing would hold the answer, its upstream and its reservation forever.
        if (this.sendTimeoutMs > 0) this.sendTimer = setTimeout(() => this.sendTimedOut(), this.sendTimeoutMs);
      }
      this.drainWaiters.push(resolve);
    });
  }

  /** The client went away before the response completed. */
  protected aborting(): void {
    if (this.aborted) return;
    this.aborted = true;
    const cb = this.abortCb;
    this.abortCb = undefined;
    this.wakeDrainers();
    if (cb !== undefined && !this.done) cb();
    this.finish();
  }

  protected finish(): void {
    const cb = this.finishCb;
    if (cb === undefined) return;
    this.finishCb = undefined;
    cb();
  }

  private sendTimedOut(): void {
    this.sendTimer = undefined;
    if (this.aborted || this.done) return;
    // Closing runs the abort: drainers wake there, the stream ends as a client abort and is settled.
    this.cutOff();
  }

  protected wakeDrainers(): void {
    if (this.sendTimer !== undefined) { clearTimeout(this.sendTimer); this.sendTimer = undefined; }
    const waiters = this.drainWaiters;
    if (waiters === undefined) return;
    this.drainWaiters = undefined;
    for (const w of waiters) w();
  }
}
