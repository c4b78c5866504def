// limits.max_client_connections: the guard holds at most that many client connections open; one accepted past it is
// closed at once, without being read, and counted (reason connection_limit). Closing a connection frees its place;
// the gateway takes the limit from its config and reports refusals in /metrics.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';
import { okGuard } from '../helpers/ok-guard.ts';
import { until } from '../helpers/upstream-call.ts';
import { startGateway } from '../helpers/gateway.ts';

const T = { timeout: 60_000 };

/** Sends one keep-alive request and resolves with the answer's text once it is complete. */
function ask(c: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const deadline = setTimeout(() => reject(new Error(`no answer within 10 s; got ${JSON.stringify(got)}`)), 10_000);
    const onData = (d: Buffer): void => {
      got += d.toString('latin1');
      if (got.endsWith('ok')) { clearTimeout(deadline); c.off('data', onData); resolve(got); }
    };
    c.on('data', onData);
    c.write('GET /x HTTP/1.1\r\nHost: gw\r\n\r\n');
  });
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const c = connect(port, '127.0.0.1', () => resolve(c));
    c.on('error', reject);
  });
}

it('past max_client_connections a new connection is closed at accept; a freed place is taken again', T, async () => {
  const rejected: string[] = [];
  const guard = okGuard({ ...GUARD_LIMITS, max_client_connections: 3 }, (reason) => rejected.push(reason));
  const clients: Socket[] = [];
  try {
    const port = await guard.listen('127.0.0.1', 0);
    for (let i = 0; i < 3; i++) {
      const c = await open(port);
      clients.push(c);
      assert.match(await ask(c), /^HTTP\/1\.1 200 /);
    }
    await until(() => guard.conns.size === 3, 'three connections held', 10_000);
    // The fourth: accepted by the kernel, then closed by the guard without an answer.
    const extra = await open(port).catch(() => undefined);
    if (extra !== undefined) {
      clients.push(extra);
      let got = '';
      extra.on('data', (d: Buffer) => { got += d.toString('latin1'); });
      extra.on('error', () => {});
      extra.write('GET /x HTTP/1.1\r\nHost: gw\r\n\r\n');
      await until(() => extra.destroyed || extra.readableEnded, 'the connection past the limit closed', 10_000);
      assert.equal(got, '');
    }
    await until(() => rejected.length === 1, 'the refusal counted', 10_000);
    assert.deepEqual(rejected, ['connection_limit']);
    // The three held connections still serve.
    for (const c of clients.slice(0, 3)) assert.match(await ask(c), /^HTTP\/1\.1 200 /);
    // One closes: its place is free for a new connection.
    clients[0]!.destroy();
    await until(() => guard.conns.size === 2, 'the closed connection left', 10_000);
    const next = await open(port);
    clients.push(next);
    assert.match(await ask(next), /^HTTP\/1\.1 200 /);
    assert.equal(rejected.length, 1);
  } finally {
    for (const c of clients) c.destroy();
    guard.close();
  }
});

it('the gateway applies limits.max_client_connections and counts a refused connection in /metrics', T, async () => {
  const gw = await startGateway({ limits: { max_client_connections: 2 } });
  const clients: Socket[] = [];
  try {
    const port = Number(new URL(gw.url).port);
    for (let i = 0; i < 2; i++) clients.push(await open(port));
    const extra = await open(port).catch(() => undefined);
    if (extra !== undefined) {
      clients.push(extra);
      extra.on('error', () => {});
      await until(() => extra.destroyed || extra.readableEnded, 'the connection past the limit closed', 10_000);
    }
    const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    assert.match(text, /sluice_frontend_rejected_total\{reason="connection_limit"\} 1\b/);
  } finally {
    for (const c of clients) c.destroy();
    await gw.close();
  }
});
