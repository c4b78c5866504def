// ClientResponse written by the HTTP/1.x guard itself onto the client's node:net socket: with the guard on, every
// serving thread's guard serves its requests (relaying them to uWS cost two extra socket writes and reads per
// message, the floor of a guarded request: docs/performance.md).
// The connection (GuardConn) owns framing of the request side, pipelining and timeouts; this writes one answer.
import type { Socket } from 'node:net';
import type { HeaderList } from '../pipeline/http-types.ts';
import { BaseResponse, bodiless, type BodySink } from './response-base.ts';
import { statusLine } from './status.ts';

/** The client connection an answer is written to. */
export interface ResponseWire {
  readonly socket: Socket;
  /** The whole answer was handed to the socket; `close`: the connection ends after it. */
  answered(close: boolean): void;
  /** Drop the connection at once (a stream that cannot complete, a client that takes nothing). */
  cut(): void;
  /** `cb` runs once the socket has handed every byte written to the kernel, or the connection is gone. */
  whenFlushed(cb: () => void): void;
}

/** Whole answers and streamed chunks up to this size leave in one buffer: a corked pair takes node's writev path. */
const ONE_BUFFER = 16 * 1024;
const CRLF = Buffer.from('\r\n', 'latin1');
const LAST_CHUNK = Buffer.from('0\r\n\r\n', 'latin1');
const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');

/** The Date header's value, made at most once a second. */
let dateAt = 0;
let dateValue = '';
function httpDate(): string {
  const now = Date.now();
  if (now - dateAt >= 1000 || now < dateAt) {
    dateAt = now - (now % 1000);
    dateValue = new Date(dateAt).toUTCString();
  }
  return dateValue;
}

function headText(status: number, headers: HeaderList, framing: string): string {
  let s = `HTTP/1.1 ${statusLine(status)}\r\n`;
  for (let i = 0; i < headers.length; i++) s += `${headers[i]![0]}: ${headers[i]![1]}\r\n`;
  return `${s}date: ${httpDate()}\r\n${framing}\r\n`;
}

export class NetResponse extends BaseResponse {
  /** Where the request body goes (set by the front end when it reads or drains one). */
  onBody: BodySink | undefined = undefined;
  private onDeclared: ((total: number) => void) | undefined = undefined;
  private readonly wire: ResponseWire;
  /** An HTTP/1.0 client: no chunked encoding, a streamed answer ends with the connection. */
  private readonly http10: boolean;
  /** The client keeps the connection after this answer unless the answer says close. */
  private readonly keepAlive: boolean;
  /** The client sent `Expect: 100-continue` and waits before sending its body. */
  private expectContinue: boolean;

  constructor(wire: ResponseWire, head: boolean, http10: boolean, keepAlive: boolean, expectContinue: boolean,
    onFinish: (() => void) | undefined, sendTimeoutMs: number) {
    super(head, onFinish, sendTimeoutMs);
    this.wire = wire;
    this.http10 = http10;
    this.keepAlive = keepAlive;
    this.expectContinue = expectContinue && !http10;
  }

  /** The client waits for `100 Continue` before it sends the body: a refusal should answer without reading it. */
  get awaitingContinue(): boolean {
    return this.expectContinue;
  }

  /** The body will be read: a client that asked for it gets `100 Continue` first. */
  onData(sink: BodySink): void {
    this.onBody = sink;
    if (this.expectContinue) {
      this.expectContinue = false;
      if (!this.started && !this.aborted) this.wire.socket.write(CONTINUE);
    }
  }

  override watchDeclared(cb: (total: number) => void): void {
    this.onDeclared = cb;
  }

  /** The guard read a chunk header: `total` bytes of chunked body are now announced. */
  declaredBody(total: number): void {
    if (!this.done && !this.aborted) this.onDeclared?.(total);
  }

  protected respond(status: number, headers: HeaderList, body: string | Uint8Array, close: boolean): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.started = true;
    close = close || !this.keepAlive;
    const size = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
    const length = bodiless(status) ? '' : `content-length: ${size}\r\n`;
    const framing = `${length}${close ? 'connection: close\r\n' : this.http10 ? 'connection: keep-alive\r\n' : ''}`;
    const text = headText(status, headers, framing);
    const socket = this.wire.socket;
    if (this.head || size === 0) socket.write(text);
    else if (typeof body === 'string') socket.write(text + body);
    else if (size <= ONE_BUFFER) {
      const n = Buffer.byteLength(text);
      const out = Buffer.allocUnsafe(n + size);
      out.write(text, 0);
      out.set(body, n);
      socket.write(out);
    } else {
      socket.cork();
      socket.write(text);
      socket.write(body);
      socket.uncork();
    }
    this.finish();
    this.wire.answered(close);
  }

  start(status: number, headers: HeaderList, first?: Uint8Array): boolean {
    if (this.aborted || this.started) return true;
    this.started = true;
    const framing = this.http10 ? 'connection: close\r\n' : `transfer-encoding: chunked\r\n${this.keepAlive ? '' : 'connection: close\r\n'}`;
    const text = headText(status, headers, framing);
    if (first === undefined || first.byteLength === 0 || this.head) return this.wire.socket.write(text);
    const socket = this.wire.socket;
    socket.cork();
    socket.write(text);
    const ok = this.writeChunk(first);
    socket.uncork();
    return ok;
  }

  write(chunk: Uint8Array): boolean {
    if (this.aborted || this.done || this.head) return true;
    return this.writeChunk(chunk);
  }

  /** One chunk of a streamed body, framed for the client (chunked, or as it is for HTTP/1.0). */
  private writeChunk(chunk: Uint8Array): boolean {
    const n = chunk.byteLength;
    // An empty chunk would be the last-chunk marker.
    if (n === 0) return true;
    const socket = this.wire.socket;
    if (this.http10) return socket.write(chunk);
    const size = `${n.toString(16)}\r\n`;
    if (n <= ONE_BUFFER) {
      const out = Buffer.allocUnsafe(size.length + n + 2);
      out.write(size, 0, 'latin1');
      out.set(chunk, size.length);
      out[size.length + n] = 13;
      out[size.length + n + 1] = 10;
      return socket.write(out);
    }
    socket.cork();
    socket.write(size, 'latin1');
    socket.write(chunk);
    const ok = socket.write(CRLF);
    socket.uncork();
    return ok;
  }

  override drain(): Promise<void> {
    // Also when 'drain' came before this call: waiting for another would wait for nothing.
    if (!this.wire.socket.writableNeedDrain) return Promise.resolve();
    return super.drain();
  }

  /** The client's socket took what was queued ('drain'). */
  drained(): void {
    this.wakeDrainers();
  }

  end(chunk?: Uint8Array): void {
    if (this.aborted || this.done) return;
    if (!this.started) this.start(200, []);
    this.done = true;
    const socket = this.wire.socket;
    if (!this.head && chunk !== undefined && chunk.byteLength > 0) {
      socket.cork();
      this.writeChunk(chunk);
      if (!this.http10) socket.write(LAST_CHUNK);
      socket.uncork();
    } else if (!this.head && !this.http10) socket.write(LAST_CHUNK);
    this.finish();
    this.wakeDrainers();
    // An HTTP/1.0 client's stream ends with the connection.
    this.wire.answered(this.http10 || !this.keepAlive);
  }

  destroy(): void {
    if (this.aborted || this.done) return;
    this.done = true;
    this.finish();
    this.wakeDrainers();
    this.wire.cut();
  }

  unsent(): boolean {
    // What the socket holds past its high-water mark: a 'drain' then says when it was taken. Less than that (a small
    // answer the kernel could not take at once) is bounded per connection, and no 'drain' would come for it.
    return this.wire.socket.writableNeedDrain;
  }

  onSent(cb: () => void): void {
    this.wire.whenFlushed(cb);
  }

  /** The connection is gone (client closed, reset or cut) before the answer was complete. */
  abort(): void {
    this.aborting();
  }

  /** Closing the connection runs abort(). */
  protected cutOff(): void {
    this.wire.cut();
  }
}
