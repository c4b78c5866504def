// A minimal keep-alive HTTP/1.1 client on net.Socket for the slow-streams case of the load generator: with
// 2,000 streams at 40k frames/s, undici's body streams cost the client ~24 µs of CPU per frame on this box, as
// much as the proxy under test, so on 2 cores the client would decide the result. This one hands each body
// chunk's bytes to a callback with no stream machinery. Bench only: one request in flight per socket, no
// pipelining, no trailers kept, no redirects.
import { connect, type Socket } from 'node:net';

export interface ResponseSink {
  head(status: number): void;
  body(buf: Buffer, start: number, end: number): void;
}

const MAX_HEAD = 64 * 1024;
const MAX_LINE = 1024;

const enum S { Head, Size, Data, DataEnd, Trailer, Length, Done }

/** Incremental parser of one HTTP/1.1 response: chunked, content-length, or no body. */
export class ResponseParser {
  private state = S.Head;
  private head = '';
  private line = '';
  private left = 0;
  status = 0;

  constructor(private readonly sink: ResponseSink) {}

  get done(): boolean { return this.state === S.Done; }

  reset(): void {
    this.state = S.Head;
    this.head = '';
    this.line = '';
    this.left = 0;
    this.status = 0;
  }

  /** Consumes bytes of the response; returns true once it is complete (later bytes are ignored). */
  feed(b: Buffer): boolean {
    let i = 0;
    while (i < b.length && this.state !== S.Done) {
      switch (this.state) {
        case S.Head: {
          const before = this.head.length;
          this.head += b.toString('latin1', i);
          const end = this.head.indexOf('\r\n\r\n');
          if (end === -1) {
            if (this.head.length > MAX_HEAD) throw new Error('response head too large');
            i = b.length;
            break;
          }
          i += end + 4 - before;
          const head = this.head.slice(0, end);
          const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
          if (m === null) throw new Error(`bad status line: ${head.slice(0, 40)}`);
          this.status = Number(m[1]);
          this.sink.head(this.status);
          const cl = /\r\ncontent-length:[ \t]*(\d+)/i.exec(head);
          if (/\r\ntransfer-encoding:[^\r]*chunked/i.test(head)) this.state = S.Size;
          else if (cl !== null && Number(cl[1]) > 0) { this.left = Number(cl[1]); this.state = S.Length; }
          else this.state = S.Done;
          break;
        }
        case S.Size:
        case S.Trailer: {
          const nl = b.indexOf(10, i);
          const stop = nl === -1 ? b.length : nl;
          this.line += b.toString('latin1', i, stop);
          if (this.line.length > MAX_LINE) throw new Error('chunk size line too long');
          i = stop;
          if (nl === -1) break;
          i++;
          const line = this.line.trim();
          this.line = '';
          if (this.state === S.Trailer) { if (line === '') this.state = S.Done; break; }
          const size = parseInt(line.split(';', 1)[0]!, 16);
          if (!Number.isFinite(size) || size < 0) throw new Error(`bad chunk size: ${line.slice(0, 20)}`);
          if (size === 0) this.state = S.Trailer;
          else { this.left = size; this.state = S.Data; }
          break;
        }
        case S.Data:
        case S.Length: {
          const n = Math.min(this.left, b.length - i);
          this.sink.body(b, i, i + n);
          i += n;
          this.left -= n;
          if (this.left === 0) {
            if (this.state === S.Length) this.state = S.Done;
            else { this.state = S.DataEnd; this.left = 2; }
          }
          break;
        }
        case S.DataEnd: {
          const n = Math.min(this.left, b.length - i);
          i += n;
          this.left -= n;
          if (this.left === 0) this.state = S.Size;
          break;
        }
        default: break;
      }
    }
    return this.state === S.Done;
  }
}

/** The bytes of a POST with a JSON body. */
export function postRequest(host: string, port: number, path: string, headers: Readonly<Record<string, string>>, body: string): Buffer {
  const b = Buffer.from(body);
  let head = `POST ${path} HTTP/1.1\r\nhost: ${host}:${port}\r\ncontent-type: application/json\r\ncontent-length: ${b.length}\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  return Buffer.concat([Buffer.from(head + '\r\n'), b]);
}

/** One keep-alive connection, one request at a time; reconnects on the next request after a failure. */
export class RawConnection {
  private socket: Socket | undefined;
  private pending: { resolve: () => void; reject: (e: Error) => void } | undefined;
  private readonly parser: ResponseParser;
  private destroyed = false;

  constructor(private readonly host: string, private readonly port: number, sink: ResponseSink, private readonly timeoutMs = 30_000) {
    this.parser = new ResponseParser(sink);
  }

  private open(): Socket {
    const s = connect({ host: this.host, port: this.port, noDelay: true });
    s.setTimeout(this.timeoutMs, () => s.destroy(new Error('socket idle timeout')));
    s.on('data', (b: Buffer) => {
      const p = this.pending;
      if (p === undefined) return;
      try {
        if (!this.parser.feed(b)) return;
      } catch (err) {
        s.destroy(err as Error);
        return;
      }
      this.pending = undefined;
      p.resolve();
    });
    const fail = (err?: Error) => {
      if (this.socket === s) this.socket = undefined;
      const p = this.pending;
      this.pending = undefined;
      p?.reject(err ?? new Error('connection closed'));
    };
    s.once('error', fail);
    s.once('close', () => fail());
    return s;
  }

  /** Sends the request; resolves when its response is complete, with the status. */
  request(bytes: Buffer): Promise<number> {
    if (this.destroyed) return Promise.reject(new Error('destroyed'));
    this.socket ??= this.open();
    this.parser.reset();
    const s = this.socket;
    return new Promise<void>((resolve, reject) => {
      this.pending = { resolve, reject };
      s.write(bytes);
    }).then(() => this.parser.status);
  }

  destroy(): void {
    this.destroyed = true;
    this.socket?.destroy();
  }
}
