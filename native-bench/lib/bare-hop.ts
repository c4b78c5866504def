// Baseline (b): the cheapest uWS + undici proxy hop, with no gateway logic at all. It reads the request body,
// forwards it with one undici Pool to the upstream, and relays status + body; an SSE answer is streamed through
// frame by frame with backpressure (pause the upstream body while uWS cannot take more).
// Usage: node --import tsx native-bench/lib/bare-hop.ts --upstream http://127.0.0.1:<port> [--port 0] [--parse-in-worker]
// --parse-in-worker first sends every body to a 1-thread piscina pool for a JSON.parse and forwards it once the
// answer is back: the "fan every request out to a worker" design (uws-threads.bench.ts case (c)).
// Prints `bare-hop listening on http://127.0.0.1:<port>`.
import type { Readable } from 'node:stream';
import uWS from 'uWebSockets.js';
import type { HttpResponse, us_listen_socket } from 'uWebSockets.js';
import { Pool } from 'undici';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) { process.stderr.write(`bare-hop: ${name} is required\n`); process.exit(2); }
  return v;
}

const upstream = arg('--upstream');
const port = Number(arg('--port', '0'));
// No connection cap: an HTTP/1.1 stream holds its connection for its whole life (performance.md §2.6).
const pool = new Pool(upstream, { connections: null, pipelining: 1 });
const offload = process.argv.includes('--parse-in-worker') ? (await import('./parse-offload.ts')).startParseOffload(1) : undefined;

const STATUS: Record<number, string> = { 200: '200 OK', 400: '400 Bad Request', 404: '404 Not Found', 429: '429 Too Many Requests', 500: '500 Internal Server Error', 502: '502 Bad Gateway' };
const statusLine = (s: number): string => STATUS[s] ?? `${s} Status`;

interface Exchange {
  aborted: boolean;
  headersSent: boolean;
  upstreamBody: Readable | undefined;
  readonly ac: AbortController;
}

function badGateway(res: HttpResponse, ex: Exchange): void {
  if (ex.aborted) return;
  // Mid-stream failure: the status is gone already, so the only honest signal left is cutting the connection.
  if (ex.headersSent) { res.close(); return; }
  res.cork(() => {
    res.writeStatus('502 Bad Gateway').writeHeader('content-type', 'application/json')
      .end('{"error":{"message":"upstream failed","type":"server_error","code":"bad_gateway"}}');
  });
}

async function forward(res: HttpResponse, ex: Exchange, path: string, contentType: string, body: Buffer): Promise<void> {
  const up = await pool.request({
    path,
    method: 'POST',
    headers: { 'content-type': contentType, authorization: 'Bearer sk-bench' },
    body,
    signal: ex.ac.signal,
  });
  if (ex.aborted) { up.body.destroy(); return; }
  const ctRaw = up.headers['content-type'];
  const ct = typeof ctRaw === 'string' ? ctRaw : 'application/json';
  const status = statusLine(up.statusCode);

  if (!ct.startsWith('text/event-stream')) {
    const parts: Buffer[] = [];
    for await (const chunk of up.body) parts.push(chunk as Buffer);
    if (ex.aborted) return;
    const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    res.cork(() => { res.writeStatus(status).writeHeader('content-type', ct).end(out); });
    return;
  }

  const src = up.body;
  ex.upstreamBody = src;
  ex.headersSent = true;
  res.cork(() => { res.writeStatus(status).writeHeader('content-type', ct).writeHeader('cache-control', 'no-cache'); });
  await new Promise<void>((resolve, reject) => {
    src.on('data', (chunk: Buffer) => {
      if (ex.aborted) return;
      let ok = true;
      res.cork(() => { ok = res.write(chunk); });
      if (!ok) {
        // uWS already buffered the chunk; stop reading upstream until the client drains it.
        src.pause();
        res.onWritable(() => { src.resume(); return true; });
      }
    });
    src.once('end', () => {
      if (!ex.aborted) res.cork(() => { res.end(); });
      resolve();
    });
    src.once('error', reject);
  });
}

const app = uWS.App().any('/*', (res, req) => {
  const ex: Exchange = { aborted: false, headersSent: false, upstreamBody: undefined, ac: new AbortController() };
  res.onAborted(() => {
    ex.aborted = true;
    ex.ac.abort();
    ex.upstreamBody?.destroy();
  });
  // req is only valid synchronously: read what is needed now.
  const path = req.getUrl();
  const contentType = req.getHeader('content-type') || 'application/json';
  const parts: Buffer[] = [];
  res.onData((ab, isLast) => {
    parts.push(Buffer.from(ab.slice(0)));
    if (!isLast) return;
    const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    if (offload === undefined) forward(res, ex, path, contentType, body).catch(() => badGateway(res, ex));
    else offload.parse(body).then(() => forward(res, ex, path, contentType, body)).catch(() => badGateway(res, ex));
  });
});

app.listen('127.0.0.1', port, (token: us_listen_socket | false) => {
  if (!token) { process.stderr.write(`bare-hop: cannot listen on 127.0.0.1:${port}\n`); process.exit(1); }
  process.stdout.write(`bare-hop listening on http://127.0.0.1:${uWS.us_socket_local_port(token)}\n`);
  const stop = (): void => {
    uWS.us_listen_socket_close(token);
    void Promise.allSettled([pool.destroy(), offload?.close()]).finally(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
});
