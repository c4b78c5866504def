// frontend/listener-share.ts: a second descriptor of a listening socket, got through a helper process, serves the
// same port; each closes independently (the socket goes with the last), and a descriptor that is not a listening
// socket fails with a clear error instead of hanging.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server } from 'node:net';
import { openSync, closeSync } from 'node:fs';
import { closeListener, listenerFd, shareListener } from '../../src/frontend/listener-share.ts';

function listening(s: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => resolve((s.address() as { port: number }).port));
  });
}

/** 'accepted by <name>' from whichever server took the connection, or the connect error's code. */
function probe(port: number): Promise<string> {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1');
    let got = '';
    c.on('data', (d: Buffer) => { got += d.toString(); });
    c.on('end', () => resolve(got));
    c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

const named = (name: string) => createServer((c) => c.end(`accepted by ${name}`));
const close = (s: Server) => new Promise<void>((r) => s.close(() => r()));

describe('listener-share', () => {
  it('a shared descriptor serves the port; each closes alone; the socket goes with the last', async () => {
    const first = named('first');
    const port = await listening(first);
    const second = named('second');
    const listener = await shareListener(listenerFd(first));
    assert.notEqual(listener.fd, listenerFd(first));
    await new Promise<void>((resolve) => second.listen(listener, () => resolve()));
    assert.equal((second.address() as { port: number }).port, port);

    await close(first);
    for (let i = 0; i < 5; i++) assert.equal(await probe(port), 'accepted by second');
    // Still bound: another exclusive listener on the port is refused.
    const intruder = createServer();
    await assert.rejects(new Promise<void>((resolve, reject) => {
      intruder.once('error', reject);
      intruder.listen({ host: '127.0.0.1', port, exclusive: true }, () => resolve());
    }), { code: 'EADDRINUSE' });

    await close(second);
    assert.equal(await probe(port), 'ECONNREFUSED');
  });

  it('a descriptor that is no listening socket is refused with a clear error', async () => {
    const fd = openSync('/dev/null', 'r');
    try {
      await assert.rejects(shareListener(fd, 10_000), /cannot share the listening socket with a serving thread/);
    } finally {
      closeSync(fd);
    }
  });

  it('a handle never listened on is closed without listening', async () => {
    const first = named('first');
    const port = await listening(first);
    const listener = await shareListener(listenerFd(first));
    await closeListener(listener);
    await close(first);
    assert.equal(await probe(port), 'ECONNREFUSED');
  });
});
