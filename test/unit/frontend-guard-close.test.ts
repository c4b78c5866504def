// A client that sends `Connection: close` may read its answer until the connection ends (RFC 9112 §9.6: the
// server closes after that answer). The guard closes the client connection once the answer is complete, also a
// streamed answer (chunked, or for HTTP/1.0 delimited by the close alone) that ends turns after the request was
// read: such a client would otherwise wait for the idle timeout. The guard's server here streams in three turns.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { Guard } from '../../src/frontend/http1-guard.ts';
import { NetResponse } from '../../src/frontend/net-response.ts';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';

describe('the guard honours a client\'s Connection: close', () => {
  for (const [name, request] of [
    ['HTTP/1.1 with Connection: close', 'GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n'],
    ['HTTP/1.0 without keep-alive', 'GET /x HTTP/1.0\r\n\r\n'],
  ] as const) {
    it(`${name}: the connection ends once the streamed answer is complete`, async () => {
      const guard = new Guard({
        limits: GUARD_LIMITS,
        serve: {
          serve(wire, head) {
            const res = new NetResponse(wire, head.method === 'HEAD', head.minor === 0, head.keepAlive, false, undefined, GUARD_LIMITS.client_send_timeout_ms);
            setImmediate(() => {
              res.start(200, [['content-type', 'text/event-stream']]);
              setImmediate(() => { res.write(Buffer.from('data: ')); setImmediate(() => res.end()); });
            });
            return res;
          },
        },
      });
      try {
        const port = await guard.listen('127.0.0.1', 0);
        const text = await new Promise<string>((resolve, reject) => {
          const c = connect(port, '127.0.0.1');
          let got = '';
          // Generous next to the milliseconds it takes, far below any idle timeout.
          const deadline = setTimeout(() => { c.destroy(); reject(new Error(`not closed within 5 s; got ${JSON.stringify(got)}`)); }, 5000);
          c.on('data', (d: Buffer) => { got += d.toString('latin1'); });
          c.on('close', () => { clearTimeout(deadline); resolve(got); });
          c.write(request);
        });
        assert.match(text, /^HTTP\/1\.1 200 /);
        assert.match(text, /data: /);
      } finally {
        guard.close();
      }
    });
  }
});
