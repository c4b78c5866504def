// A raw TCP (or TLS) upstream for hostile-upstream tests: it reads each HTTP/1.1 request (head + Content-Length
// body) off a connection and hands it to a script that writes whatever bytes it likes to the socket. Every
// request is kept (head text, body, connection number, index on its connection) so tests can see exactly
// what reached the wire. Binds 127.0.0.1 only; close() destroys every open connection.
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface UpstreamRequest {
  /** The request head as received (latin1), without the blank line. */
  readonly head: string;
  /** Header names lower-cased; repeated names joined with ', '. */
  readonly headers: Record<string, string>;
  readonly body: Buffer;
  /** Which connection (0, 1, …) carried it, and its index on that connection. */
  readonly conn: number;
  readonly index: number;
}

export type Script = (req: UpstreamRequest, socket: Socket) => void;

export interface ScriptedUpstream {
  readonly url: string;
  readonly port: number;
  readonly requests: UpstreamRequest[];
  /** Connections accepted so far. */
  connections: number;
  /** Connections open now. */
  readonly sockets: Set<Socket>;
  close(): Promise<void>;
}

const TLS_DIR = join(import.meta.dirname, '..', 'fixtures', 'tls');

export async function startScriptedUpstream(script: Script, opts: { tls?: boolean; onConnection?: (s: Socket, conn: number) => void } = {}): Promise<ScriptedUpstream> {
  const requests: UpstreamRequest[] = [];
  const sockets = new Set<Socket>();
  const state = { connections: 0 };
  const onSocket = (s: Socket): void => {
    const conn = state.connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    opts.onConnection?.(s, conn);
    let acc: Buffer = Buffer.alloc(0);
    let index = 0;
    s.on('data', (d: Buffer) => {
      acc = acc.length === 0 ? d : Buffer.concat([acc, d]);
      for (;;) {
        const end = acc.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = acc.toString('latin1', 0, end);
        const headers: Record<string, string> = {};
        for (const line of head.split('\r\n').slice(1)) {
          const i = line.indexOf(':');
          if (i < 0) continue;
          const k = line.slice(0, i).trim().toLowerCase();
          const v = line.slice(i + 1).trim();
          headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
        }
        const len = Number(headers['content-length'] ?? 0);
        if (acc.length < end + 4 + len) return;
        const body = acc.subarray(end + 4, end + 4 + len);
        acc = acc.subarray(end + 4 + len);
        const req = { head, headers, body, conn, index: index++ };
        requests.push(req);
        script(req, s);
      }
    });
  };
  const server: Server = opts.tls === true
    ? createTlsServer({ key: readFileSync(join(TLS_DIR, 'self-signed.key')), cert: readFileSync(join(TLS_DIR, 'self-signed.crt')) }, onSocket)
    : createNetServer(onSocket);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `${opts.tls === true ? 'https' : 'http'}://127.0.0.1:${port}`,
    port,
    requests,
    get connections() { return state.connections; },
    set connections(n: number) { state.connections = n; },
    sockets,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/** A complete OpenAI chat completion answer with a Content-Length; `extra` head lines may be added. */
export function chatAnswer(text: string, usage = { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 }, extra = ''): string {
  const body = JSON.stringify({
    id: 'x', object: 'chat.completion', model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }], usage,
  });
  return `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
}

/** One SSE event of an OpenAI chat stream carrying `text`. */
export function sseDelta(text: string): string {
  return `data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":${JSON.stringify(text)}}}],"usage":null}\n\n`;
}

/**
 * Answers with a chunked SSE stream of 4,000-character deltas, written as fast as the socket takes them (waiting
 * for 'drain' when it is full) until `maxBytes` are written or the socket closes; `onWrite` sees each chunk's size.
 */
export function endlessSse(s: Socket, maxBytes: number, onWrite: (bytes: number) => void): void {
  s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
  const ev = Buffer.from(sseDelta('x'.repeat(4000)));
  const chunk = Buffer.concat([Buffer.from(`${ev.length.toString(16)}\r\n`), ev, Buffer.from('\r\n')]);
  let written = 0;
  const go = (): void => {
    while (!s.destroyed && written < maxBytes) {
      written += chunk.length;
      onWrite(chunk.length);
      if (!s.write(chunk)) { s.once('drain', go); return; }
    }
  };
  go();
}
