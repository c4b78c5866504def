// A scripted RESP server for failure cases only (it never stores anything):
//   hang   accepts and reads commands but never answers;
//   error  answers every command with `-ERR fault injected`;
//   close  closes every connection right after accept.
// The mode can change at runtime. Switching to 'error' answers the commands swallowed while hanging (so every
// command still gets exactly one reply, in order); switching to 'close' also drops the open connections.
import { createServer, type AddressInfo, type Socket } from 'node:net';

export type FaultMode = 'hang' | 'error' | 'close';

export interface FaultServer {
  readonly port: number;
  mode: FaultMode;
  /** Connections accepted so far (including those closed at once in 'close' mode). */
  readonly connections: number;
  /** Complete commands received so far. */
  readonly commands: number;
  close(): Promise<void>;
}

const ERROR_REPLY = '-ERR fault injected\r\n';
/** A client that sends this much without completing a command is broken; drop it rather than buffer forever. */
const MAX_BUFFERED = 64 * 1024 * 1024;
const CR = 0x0d;
const LF = 0x0a;

interface Conn {
  readonly socket: Socket;
  buf: Buffer;
  /** Commands received in 'hang' mode and not answered yet. */
  unanswered: number;
}

/** Length of the first complete command in `buf` (RESP array of bulk strings, or an inline line), 0 if incomplete, -1 if malformed. */
function commandLength(buf: Buffer): number {
  if (buf.length === 0) return 0;
  if (buf[0] !== 0x2a /* '*' */) {
    const nl = buf.indexOf(LF);
    return nl < 0 ? 0 : nl + 1;
  }
  const headerEnd = buf.indexOf('\r\n');
  if (headerEnd < 0) return 0;
  const count = Number(buf.toString('latin1', 1, headerEnd));
  if (!Number.isInteger(count)) return -1;
  let pos = headerEnd + 2;
  for (let i = 0; i < count; i++) {
    if (pos >= buf.length) return 0;
    if (buf[pos] !== 0x24 /* '$' */) return -1;
    const lenEnd = buf.indexOf('\r\n', pos);
    if (lenEnd < 0) return 0;
    const len = Number(buf.toString('latin1', pos + 1, lenEnd));
    if (!Number.isInteger(len) || len < 0) return -1;
    pos = lenEnd + 2 + len;
    if (pos + 2 > buf.length) return 0;
    if (buf[pos] !== CR || buf[pos + 1] !== LF) return -1;
    pos += 2;
  }
  return pos;
}

class ScriptedServer implements FaultServer {
  readonly port: number;
  connections = 0;
  commands = 0;
  private current: FaultMode;
  private readonly open = new Set<Conn>();
  private readonly server: ReturnType<typeof createServer>;

  constructor(server: ReturnType<typeof createServer>, mode: FaultMode) {
    this.server = server;
    this.current = mode;
    this.port = (server.address() as AddressInfo).port;
    server.on('connection', (socket) => this.accept(socket));
  }

  get mode(): FaultMode {
    return this.current;
  }

  set mode(next: FaultMode) {
    this.current = next;
    for (const conn of this.open) {
      if (next === 'close') conn.socket.destroy();
      else if (next === 'error' && conn.unanswered > 0) {
        conn.socket.write(ERROR_REPLY.repeat(conn.unanswered));
        conn.unanswered = 0;
      }
    }
  }

  private accept(socket: Socket): void {
    this.connections++;
    if (this.current === 'close') {
      socket.destroy();
      return;
    }
    const conn: Conn = { socket, buf: Buffer.alloc(0), unanswered: 0 };
    this.open.add(conn);
    socket.on('data', (chunk: Buffer) => this.receive(conn, chunk));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.open.delete(conn));
  }

  private receive(conn: Conn, chunk: Buffer): void {
    conn.buf = conn.buf.length === 0 ? chunk : Buffer.concat([conn.buf, chunk]);
    let replies = 0;
    for (;;) {
      const len = commandLength(conn.buf);
      if (len < 0) {
        conn.socket.destroy();
        return;
      }
      if (len === 0) break;
      conn.buf = conn.buf.subarray(len);
      this.commands++;
      if (this.current === 'error') replies++;
      else conn.unanswered++;
    }
    if (conn.buf.length > MAX_BUFFERED) conn.socket.destroy();
    else if (replies > 0) conn.socket.write(ERROR_REPLY.repeat(replies));
  }

  close(): Promise<void> {
    for (const conn of this.open) conn.socket.destroy();
    this.open.clear();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Start a fault server on a free 127.0.0.1 port. */
export function startFaultServer(mode: FaultMode): Promise<FaultServer> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      server.removeListener('error', reject);
      resolve(new ScriptedServer(server, mode));
    });
  });
}
