// What a socket read costs the reading process: node's 'data' path (a 64 KiB allocation shrunk to the read, a
// Buffer, Readable.push, an emit) against core/socket-read.ts (one scratch buffer, each read copied out), in
// rounds interleaved in one process against one answering server in a child process. CPU is this process's.
// --tls: over TLS (test/fixtures/tls), the decrypted bytes read either way; each round's 64 handshakes count in both.
//   node --import tsx native-bench/socket-read.bench.ts [--connections 64] [--requests 20000] [--rounds 12] [--tls]
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type OnReadOpts, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { copyingReads } from '../src/core/socket-read.ts';
import { flag, opt } from './lib/argv.ts';
import { median } from './lib/stats.ts';

const ANSWER = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}');
const REQUEST = Buffer.from('POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}');

const TLS = flag('--tls');
const TLS_DIR = fileURLToPath(new URL('../test/fixtures/tls/', import.meta.url));

if (flag('--serve')) {
  // One answer per read: the client sends one request at a time per connection.
  const onConn = (s: Socket): void => { s.on('data', () => { s.write(ANSWER); }); s.on('error', () => {}); };
  const server = TLS
    ? createTlsServer({ key: readFileSync(`${TLS_DIR}self-signed.key`), cert: readFileSync(`${TLS_DIR}self-signed.crt`) }, onConn)
    : createServer({ noDelay: true }, onConn);
  server.listen(0, '127.0.0.1', () => process.send!((server.address() as AddressInfo).port));
} else {
  const connections = Math.max(1, Math.min(1000, Number(opt('--connections', '64'))));
  const requests = Math.max(1000, Math.min(1_000_000, Number(opt('--requests', '20000'))));
  const rounds = Math.max(2, Math.min(50, Number(opt('--rounds', '12'))));
  const child = fork(fileURLToPath(import.meta.url), ['--serve', ...(TLS ? ['--tls'] : [])], { execArgv: ['--import', 'tsx'] });
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('server did not start')), 20_000);
    child.once('message', (p) => { clearTimeout(t); resolve(p as number); });
  });
  type Mode = 'data' | 'copying';
  let sink = 0;
  // One round: `requests` answers over `connections` keep-alive connections; µs of this process's CPU per answer.
  const round = (mode: Mode): Promise<number> => new Promise((resolve, reject) => {
    let done = 0;
    let finished = false;
    const socks: Socket[] = [];
    const t0 = process.cpuUsage();
    const timer = setTimeout(() => { for (const s of socks) s.destroy(); reject(new Error('round timed out')); }, 60_000);
    const onAnswer = (s: Socket, b: Buffer): void => {
      sink += b[b.length - 1]!;
      if (++done < requests) { s.write(REQUEST); return; }
      if (finished) return;
      finished = true;
      const u = process.cpuUsage(t0);
      clearTimeout(timer);
      for (const x of socks) x.destroy();
      resolve((u.user + u.system) / requests);
    };
    for (let i = 0; i < connections; i++) {
      const onread = mode === 'copying' ? copyingReads((b) => onAnswer(s, b)) : undefined;
      // tls.connect documents `onread`; @types/node's ConnectionOptions lacks it.
      const tlsOpts: ConnectionOptions & { onread?: OnReadOpts } = { host: '127.0.0.1', port, rejectUnauthorized: false, ...(onread ? { onread } : {}) };
      const s: Socket = TLS ? tlsConnect(tlsOpts) : connect({ host: '127.0.0.1', port, noDelay: true, ...(onread ? { onread } : {}) });
      if (mode === 'data') s.on('data', (b: Buffer) => onAnswer(s, b));
      s.on('error', () => {});
      s.once(TLS ? 'secureConnect' : 'connect', () => s.write(REQUEST));
      socks.push(s);
    }
  });
  await round('data');
  await round('copying');
  const r: Record<Mode, number[]> = { data: [], copying: [] };
  for (let i = 0; i < rounds; i++) for (const m of (i % 2 === 0 ? ['data', 'copying'] : ['copying', 'data']) as Mode[]) r[m].push(await round(m));
  let lower = 0;
  for (let i = 0; i < rounds; i++) if (r.copying[i]! < r.data[i]!) lower++;
  const a = median(r.data);
  const b = median(r.copying);
  console.log(`${TLS ? 'TLS' : 'TCP'} socket reads, ${connections} connections, ${requests} answers a round, ${rounds} rounds interleaved (CPU of the reading process):`);
  console.log(`  'data' events            ${a.toFixed(2)} µs/answer`);
  console.log(`  core/socket-read.ts      ${b.toFixed(2)} µs/answer  (${(b - a).toFixed(2)} µs, ×${(b / a).toFixed(3)}; lower in ${lower} of ${rounds} rounds)`);
  if (sink < 0) console.log(sink);
  child.kill();
}
