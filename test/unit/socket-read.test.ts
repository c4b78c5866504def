// core/socket-read.ts on real loopback sockets (TCP and TLS): every read reaches the callback as its own buffer, so
// chunks kept from one socket survive later reads of other sockets into the shared scratch buffer; pause() stops
// reads until resume(); 'end' and 'close' fire as with 'data'. Sockets a server accepted read the same way once
// adopted (adoptWithCopyingReads), half-open included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type AddressInfo, type OnReadOpts, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions as TlsConnectionOptions, type TLSSocket } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { adoptWithCopyingReads, copyingReads } from '../../src/core/socket-read.ts';
import { until } from '../helpers/upstream-call.ts';

const T = { timeout: 20_000 };

async function serve(onConn: (s: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer(onConn);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port };
}

/** 'first' is read; after pause(), 'second' waits in the kernel however many loop turns pass; resume() reads it. */
async function pauseHolds(c: Socket, peer: Socket, bytes: () => number): Promise<void> {
  peer.write('first');
  await until(() => bytes() === 5, "'first' read", 10_000);
  c.pause();
  peer.write('second');
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(bytes(), 5);
  c.resume();
  await until(() => bytes() === 11, "'second' read after resume()", 10_000);
}

test('chunks kept from one socket are not overwritten by later reads of other sockets', T, async (t) => {
  const peers: Socket[] = [];
  const { server, port } = await serve((s) => { peers.push(s); });
  const kept: Buffer[][] = [[], []];
  const clients = [0, 1].map((i) => connect({ host: '127.0.0.1', port, onread: copyingReads((c) => { kept[i]!.push(c); }) }));
  t.after(() => { for (const c of clients) c.destroy(); for (const p of peers) p.destroy(); server.close(); });
  await until(() => peers.length === 2, 'both connections accepted', 10_000);
  const sent: Buffer[][] = [[], []];
  // Alternate writes from the two peers, each waiting for its bytes to be read, so reads land in turn.
  for (let round = 0; round < 20; round++) {
    for (const i of [0, 1]) {
      const bytes = Buffer.alloc(1000 + round * 37 + i, 0x41 + ((round * 2 + i) % 26));
      sent[i]!.push(bytes);
      const want = sent[i]!.reduce((n, b) => n + b.length, 0);
      peers[i]!.write(bytes);
      await until(() => kept[i]!.reduce((n, b) => n + b.length, 0) === want, `socket ${i}'s bytes read`, 10_000);
    }
  }
  for (const i of [0, 1]) assert.ok(Buffer.concat(kept[i]!).equals(Buffer.concat(sent[i]!)), `socket ${i}: bytes kept differ from bytes sent`);
});

test('a large write arrives whole, across reads, in order', T, async (t) => {
  const big = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 0xff;
  const { server, port } = await serve((s) => { s.end(big); });
  const got: Buffer[] = [];
  const c = connect({ host: '127.0.0.1', port, onread: copyingReads((b) => { got.push(b); }) });
  t.after(() => { c.destroy(); server.close(); });
  await once(c, 'end');
  assert.ok(got.length > 1, 'more than one read');
  assert.ok(Buffer.concat(got).equals(big), 'bytes read differ from bytes sent');
});

test("pause() stops the callbacks until resume(); 'end' and 'close' still fire", T, async (t) => {
  let peer: Socket | undefined;
  const { server, port } = await serve((s) => { peer = s; });
  let reads = 0;
  let bytes = 0;
  const c = connect({ host: '127.0.0.1', port, onread: copyingReads((b) => { reads++; bytes += b.length; }) });
  t.after(() => { c.destroy(); peer?.destroy(); server.close(); });
  await until(() => peer !== undefined, 'the connection accepted', 10_000);
  const ended = once(c, 'end');
  const closed = once(c, 'close');
  await pauseHolds(c, peer!, () => bytes);
  peer!.end();
  await ended;
  c.end();
  await closed;
  assert.ok(reads >= 2);
});

test('over TLS: the decrypted bytes arrive whole and in order; pause() holds them until resume()', T, async (t) => {
  const dir = join(import.meta.dirname, '../fixtures/tls');
  const big = Buffer.alloc(512 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 13 + (i >> 9)) & 0xff;
  let peer: TLSSocket | undefined;
  const server = createTlsServer({ key: readFileSync(join(dir, 'self-signed.key')), cert: readFileSync(join(dir, 'self-signed.crt')) }, (s) => { peer = s; });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const got: Buffer[] = [];
  let bytes = 0;
  // tls.connect documents `onread`; @types/node's ConnectionOptions lacks it.
  const opts: TlsConnectionOptions & { onread: OnReadOpts } = { host: '127.0.0.1', port: (server.address() as AddressInfo).port,
    rejectUnauthorized: false, onread: copyingReads((b) => { got.push(b); bytes += b.length; }) };
  const c = tlsConnect(opts);
  t.after(() => { c.destroy(); peer?.destroy(); server.close(); });
  await once(c, 'secureConnect');
  await until(() => peer !== undefined, 'the connection accepted', 10_000);
  await pauseHolds(c, peer!, () => bytes);
  const ended = once(c, 'end');
  peer!.end(big);
  await ended;
  assert.ok(Buffer.concat(got).equals(Buffer.concat([Buffer.from('firstsecond'), big])), 'bytes read differ from bytes sent');
});

test('an accepted socket, adopted: reads arrive whole through the callback, pause() holds them, writes and a half-open end work', T, async (t) => {
  const adopted: Socket[] = [];
  const got: Buffer[] = [];
  let bytes = 0;
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (accepted) => {
    const s = adoptWithCopyingReads(accepted, (b) => { got.push(b); bytes += b.length; });
    assert.ok(s !== undefined, 'an open accepted socket is adopted');
    assert.ok(accepted.destroyed, 'the emptied socket is destroyed');
    adopted.push(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const c = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, allowHalfOpen: true });
  t.after(() => { c.destroy(); for (const s of adopted) s.destroy(); server.close(); });
  // Sent at once, before the server has accepted: nothing of it may be read before the socket is adopted.
  c.write('early');
  await until(() => bytes === 5, "'early' read through the callback", 10_000);
  const s = adopted[0]!;
  assert.equal(s.remoteAddress, '127.0.0.1');
  await pauseHolds(s, c, () => bytes - 5);
  const big = Buffer.alloc(256 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 11 + (i >> 10)) & 0xff;
  const ended = once(s, 'end');
  c.end(big);
  await ended;
  assert.ok(Buffer.concat(got).equals(Buffer.concat([Buffer.from('earlyfirstsecond'), big])), 'bytes read differ from bytes sent');
  // Half-open: the client ended its side and still reads what the adopted socket writes, then the end.
  const answer: Buffer[] = [];
  c.on('data', (b: Buffer) => answer.push(b));
  const cEnded = once(c, 'end');
  s.end('answer');
  await cEnded;
  assert.equal(Buffer.concat(answer).toString(), 'answer');
});

test('a socket with no handle left is not adopted', T, async (t) => {
  let result: Socket | undefined | 'unset' = 'unset';
  const server = createServer({ pauseOnConnect: true }, (accepted) => {
    accepted.destroy();
    result = adoptWithCopyingReads(accepted, () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const c = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  c.on('error', () => {});
  t.after(() => { c.destroy(); server.close(); });
  await until(() => result !== 'unset', 'the connection accepted', 10_000);
  assert.equal(result, undefined);
});
