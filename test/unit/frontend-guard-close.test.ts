// A client that sends `Connection: close` may read its answer until the connection ends (RFC 9112 §9.6: the
// server closes after that answer). The guard closes the client connection once the answer is complete, also
// when uWS's answer itself says nothing about closing (a streamed, chunked answer): before, such a client waited
// ~20 s for the end of a complete answer. The stand-in for uWS is a plain node:net server.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { Guard } from '../../src/frontend/http1-guard.ts';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';


const CHUNKED = 'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n0\r\n\r\n';

describe('the guard honours a client\'s Connection: close', () => {
  for (const [name, request] of [
    ['HTTP/1.1 with Connection: close', 'GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n'],
    ['HTTP/1.0 without keep-alive', 'GET /x HTTP/1.0\r\n\r\n'],
  ] as const) {
    it(`${name}: the connection ends once the chunked answer is complete`, async () => {
      const up = createServer((s: Socket) => {
        s.on('error', () => {});
        s.once('data', () => s.write(CHUNKED));
      });
      await new Promise<void>((r) => up.listen(0, '127.0.0.1', r));
      const guard = new Guard({ limits: GUARD_LIMITS, upstream: { host: '127.0.0.1', port: (up.address() as { port: number }).port } });
      try {
        const port = await guard.listen('127.0.0.1', 0);
        const text = await new Promise<string>((resolve, reject) => {
          const c = connect(port, '127.0.0.1');
          let got = '';
          // Generous next to the milliseconds it takes, far below the ~20 s the client used to wait.
          const deadline = setTimeout(() => { c.destroy(); reject(new Error(`not closed within 5 s; got ${JSON.stringify(got)}`)); }, 5000);
          c.on('data', (d: Buffer) => { got += d.toString('latin1'); });
          c.on('close', () => { clearTimeout(deadline); resolve(got); });
          c.write(request);
        });
        assert.match(text, /^HTTP\/1\.[01] 200 /);
        assert.match(text, /data: /);
      } finally {
        guard.close();
        up.close();
      }
    });
  }
});
