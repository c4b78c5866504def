// The floor of a metering proxy in uWS + Node (issue 11's "minimal" rows), measured in the same run as nginx and
// Sluice: uWS in front, a hand-written keep-alive HTTP/1.1 client on net.Socket behind, and the least metering
// work a token gateway does per request — the body parsed and re-serialised with the instance's model, the
// answer's usage read, one token counter, three quota headers. Nothing else: no routing, validation, fallbacks,
// timeouts, metrics, streams or error answers beyond a 502. JSON answers with Content-Length only (what the mock
// sends for non-streaming requests). Bench only.
// Usage: node --import tsx native-bench/lib/lean-hop.ts --upstream <port> [--port 0]
// Prints `lean-hop listening on http://127.0.0.1:<port>`.
import { connect, type Socket } from 'node:net';
import uWS from 'uWebSockets.js';
import type { HttpResponse } from 'uWebSockets.js';
import { flag } from './args.ts';

const upstreamPort = flag('--upstream', 0, 1, 65535);
if (upstreamPort === 0) { process.stderr.write('lean-hop: --upstream <port> is required\n'); process.exit(2); }
const port = flag('--port', 0, 0, 65535);
const HEAD = `POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:${upstreamPort}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-bench\r\ncontent-length: `;
const LIMIT = 1_000_000_000_000;
const WINDOW_S = 3600;
let used = 0;

interface Pending { readonly res: HttpResponse; aborted: boolean }

/** One keep-alive upstream connection, one request at a time. */
class Conn {
  private readonly socket: Socket;
  private pending: Pending | undefined;
  private acc: Buffer | undefined;
  private bodyAt = -1;
  private need = 0;
  private status = 0;
  dead = false;

  constructor() {
    this.socket = connect({ host: '127.0.0.1', port: upstreamPort, noDelay: true });
    this.socket.on('data', (d: Buffer) => this.onData(d));
    this.socket.on('error', () => this.fail());
    this.socket.on('close', () => this.fail());
  }

  send(p: Pending, body: string): void {
    this.pending = p;
    this.acc = undefined;
    this.bodyAt = -1;
    this.socket.write(`${HEAD}${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }

  private onData(d: Buffer): void {
    const buf = this.acc === undefined ? d : Buffer.concat([this.acc, d]);
    if (this.bodyAt < 0) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) { this.acc = buf; return; }
      const head = buf.toString('latin1', 0, end);
      this.status = Number(head.slice(9, 12));
      const m = /\r\ncontent-length: *(\d+)/i.exec(head);
      if (m === null) { this.socket.destroy(); return; }
      this.bodyAt = end + 4;
      this.need = Number(m[1]);
    }
    if (buf.length - this.bodyAt < this.need) { this.acc = buf; return; }
    const body = buf.subarray(this.bodyAt, this.bodyAt + this.need);
    const p = this.pending!;
    this.pending = undefined;
    this.acc = undefined;
    idle.push(this);
    answer(p, this.status, body);
  }

  private fail(): void {
    if (this.dead) return;
    this.dead = true;
    const p = this.pending;
    this.pending = undefined;
    if (p !== undefined && !p.aborted) p.res.cork(() => { p.res.writeStatus('502 Bad Gateway').end(); });
  }
}

const idle: Conn[] = [];

function take(): Conn {
  for (let c = idle.pop(); c !== undefined; c = idle.pop()) if (!c.dead) return c;
  return new Conn();
}

function answer(p: Pending, status: number, body: Buffer): void {
  if (p.aborted) return;
  const usage = (JSON.parse(body.toString('utf8')) as { usage?: { total_tokens?: number } }).usage;
  const total = usage?.total_tokens;
  if (typeof total === 'number' && Number.isInteger(total) && total >= 0) used += total;
  const reset = WINDOW_S - (Math.floor(Date.now() / 1000) % WINDOW_S);
  p.res.cork(() => {
    p.res.writeStatus(status === 200 ? '200 OK' : `${status} Status`)
      .writeHeader('content-type', 'application/json')
      .writeHeader('x-ratelimit-limit-tokens', String(LIMIT))
      .writeHeader('x-ratelimit-remaining-tokens', String(Math.max(0, LIMIT - used)))
      .writeHeader('x-ratelimit-reset-tokens', `${reset}s`)
      .end(body);
  });
}

uWS.App().post('/*', (res, req) => {
  req.getHeader('authorization');
  const p: Pending = { res, aborted: false };
  res.onAborted(() => { p.aborted = true; });
  const parts: Buffer[] = [];
  res.onData((ab, last) => {
    parts.push(Buffer.from(ab.slice(0)));
    if (!last) return;
    const obj = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
    delete obj.model;
    const tail = JSON.stringify(obj);
    take().send(p, `{"model":"gpt-4o-mini"${tail.length > 2 ? ',' : ''}${tail.slice(1)}`);
  });
}).listen('127.0.0.1', port, (ls) => {
  if (ls === false) { process.stderr.write('lean-hop: listen failed\n'); process.exit(1); }
  console.log(`lean-hop listening on http://127.0.0.1:${uWS.us_socket_local_port(ls)}`);
});
