// Server for native-bench/guard-cost.bench.ts: a bare uWS App answering a small JSON body, alone (`direct`), behind
// a node:net front that pipes every client connection to it over loopback (`guard`), or behind the project's HTTP/1.x
// guard on a unix socket as Sluice runs it (`real <checkout>`: src/frontend/http1-guard.ts of that checkout, so the
// guard alone can be A/B'd between two checkouts). The pipe does no parsing at all, so its cost is a lower bound for
// a strict HTTP/1.x pre-parser in front of uWS.
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import uWS from 'uWebSockets.js';

// A clean exit on SIGTERM, so `--cpu-prof` writes its profile.
process.once('SIGTERM', () => process.exit(0));

const mode = process.argv[2] === 'guard' ? 'guard' : process.argv[2] === 'real' ? 'real' : 'direct';
const app = uWS.App();
app.any('/*', (res) => {
  res.onAborted(() => {});
  res.onData((_ab, last) => {
    if (last) res.cork(() => res.writeHeader('content-type', 'application/json').end('{"ok":true}'));
  });
});

if (mode === 'real') {
  const checkout = process.argv[3];
  if (checkout === undefined) { console.error('guard-server: real needs a checkout directory'); process.exit(2); }
  const url = pathToFileURL(join(resolve(checkout), 'src/frontend/http1-guard.ts')).href;
  const { Guard } = await import(url) as typeof import('../../src/frontend/http1-guard.ts');
  const dir = mkdtempSync(join(tmpdir(), 'sluice-guard-bench-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'u.sock');
  app.listen_unix((token) => {
    if (!token) { console.error('listen failed'); process.exit(1); }
    const guard = new Guard({ upstream: { path }, limits: {
      max_header_fields: 48, max_header_line_bytes: 8192, max_header_bytes: 32768, client_header_timeout_ms: 10_000, client_idle_timeout_ms: 60_000,
      client_send_timeout_ms: 10_000,
    } });
    void guard.listen('127.0.0.1', 0).then((port) => console.log(`listening ${port}`));
  }, path);
} else {
  app.listen('127.0.0.1', 0, (token) => {
    if (!token) { console.error('listen failed'); process.exit(1); }
    const uwsPort = uWS.us_socket_local_port(token);
    if (mode === 'direct') { console.log(`listening ${uwsPort}`); return; }
    const front = createServer({ noDelay: true }, (client) => {
      const back = connect({ host: '127.0.0.1', port: uwsPort, noDelay: true });
      client.pipe(back);
      back.pipe(client);
      const drop = (): void => { client.destroy(); back.destroy(); };
      client.on('error', drop);
      back.on('error', drop);
      client.on('close', drop);
      back.on('close', drop);
    });
    front.listen(0, '127.0.0.1', () => console.log(`listening ${(front.address() as { port: number }).port}`));
  });
}
