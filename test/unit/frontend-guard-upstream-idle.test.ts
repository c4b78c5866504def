// The HTTP/1.x guard closes its connection to uWS once it has been quiet for UPSTREAM_IDLE_MS, before uWS's own
// idle timeout (8–12 s) can close it under a request the guard is forwarding; the client's connection stays open
// and its next request goes over a new upstream connection. The upstream here is a plain node:net server standing
// in for uWS, so the test sees every connection the guard opens and closes.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Guard, UPSTREAM_IDLE_MS } from '../../src/frontend/http1-guard.ts';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';


const ANSWER = 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok';

interface Upstream {
  readonly server: Server;
  readonly port: number;
  opened: number;
  closed: number;
}

async function startUpstream(): Promise<Upstream> {
  const up = { opened: 0, closed: 0 } as Upstream & { server: Server; port: number };
  const server = createServer((s: Socket) => {
    up.opened++;
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      // Bodiless GETs only: answer every complete head.
      for (let i = buf.indexOf('\r\n\r\n'); i >= 0; i = buf.indexOf('\r\n\r\n')) {
        buf = buf.slice(i + 4);
        s.write(ANSWER);
      }
    });
    s.on('error', () => {});
    s.on('close', () => { up.closed++; });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  Object.assign(up, { server, port: (server.address() as { port: number }).port });
  return up;
}

/** Sends one GET on the socket and resolves with the answer's text once its 2-byte body has arrived. */
function get(sock: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (d: Buffer): void => {
      text += d.toString('latin1');
      if (text.endsWith('\r\n\r\nok')) { sock.off('data', onData); sock.off('close', onClose); resolve(text); }
    };
    const onClose = (): void => reject(new Error(`connection closed; got ${JSON.stringify(text)}`));
    sock.on('data', onData);
    sock.once('close', onClose);
    sock.write('GET /x HTTP/1.1\r\nHost: gw\r\n\r\n');
  });
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('http1 guard: quiet connections to uWS', () => {
  it(`are closed by the guard after ${UPSTREAM_IDLE_MS} ms; the client keeps its connection and the next request opens a new one`, async () => {
    const up = await startUpstream();
    const guard = new Guard({ limits: GUARD_LIMITS, upstream: { host: '127.0.0.1', port: up.port } });
    const port = await guard.listen('127.0.0.1', 0);
    const client = connect({ host: '127.0.0.1', port });
    client.on('error', () => {});
    try {
      await new Promise<void>((r) => client.once('connect', () => r()));
      assert.match(await get(client), /^HTTP\/1\.1 200 OK/);
      assert.equal(up.opened, 1);
      const since = Date.now();
      // Well before uWS's own idle close could happen (8 s at the earliest), and generous for a loaded machine.
      await until(() => up.closed === 1, UPSTREAM_IDLE_MS + 30_000, 'the guard to close the quiet upstream connection');
      assert.ok(Date.now() - since >= UPSTREAM_IDLE_MS - 1_100, 'not closed before the idle time (sweep granularity ≤ 1 s)');
      assert.equal(client.destroyed, false, 'the client connection stays open');
      assert.match(await get(client), /^HTTP\/1\.1 200 OK/);
      assert.equal(up.opened, 2, 'the next request went over a new upstream connection');
    } finally {
      client.destroy();
      guard.close();
      await new Promise((r) => up.server.close(r));
    }
  });
});
