// Server for native-bench/guard-cost.bench.ts: a bare uWS App answering a small JSON body, alone (`direct`) or
// behind a node:net front that pipes every client connection to it over loopback (`guard`). The pipe does no
// parsing at all, so its cost is a lower bound for a strict HTTP/1.x pre-parser in front of uWS.
import { connect, createServer } from 'node:net';
import uWS from 'uWebSockets.js';

const mode = process.argv[2] === 'guard' ? 'guard' : 'direct';
const app = uWS.App();
app.any('/*', (res) => {
  res.onAborted(() => {});
  res.onData((_ab, last) => {
    if (last) res.cork(() => res.writeHeader('content-type', 'application/json').end('{"ok":true}'));
  });
});
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
