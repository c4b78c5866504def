// Hostile HTTP/1.x framing against a real gateway (HTTP/1.x guard + uWS front end, mock upstream), over raw
// sockets: one case per item of issue 7 §5/§9/§11, with the guard on (the default). The last group runs with
// `listen.http1_guard: false` and asserts what uWS 20.30 alone does (README "Limits"), so an upgrade that changes
// it shows up here.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { exchange, parseResponses, type RawResponse } from '../helpers/raw-http.ts';

const BODY = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }] });

function post(path = '/v1/chat/completions', extra = '', body = BODY): string {
  return `POST ${path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
}

function headerLines(n: number, size = 1): string {
  return Array.from({ length: n }, (_, i) => `x-h${i}: ${'v'.repeat(size)}\r\n`).join('');
}

/** An OpenAI-style error answer with the given status and SLC code. */
function assertError(r: RawResponse | undefined, status: number, code: string): void {
  assert.ok(r, 'expected a response');
  assert.equal(r.status, status);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.json?.error?.code, code);
  assert.equal(typeof r.json?.error?.message, 'string');
  assert.equal(typeof r.json?.error?.type, 'string');
}

// With one thread the guard serves requests itself; with two each thread's guard serves the connections it
// accepted from the one listening socket: both answer every case the same way.
for (const workers of [1, 2]) describe(`HTTP/1.x framing (raw sockets, workers: ${workers}: ${workers === 1 ? 'the guard serving' : 'each thread\'s guard serving, one listening socket'})`, () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let port: number;

  before(async () => {
    mock = await startMockUpstream({ name: 'm', chunks: 4 });
    gw = await startGateway({
      workers,
      limits: { max_body_bytes: 1024 * 1024, max_header_fields: 30, max_drain_bytes: 4 * 1024 * 1024 },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', methods: ['POST', 'HEAD'], plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }],
    });
    port = gw.handle.port;
  });

  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('answers a plain request and keeps the connection open (baseline)', async () => {
    const r = await exchange(port, post(), { responses: 1 });
    assert.equal(r.responses[0]?.status, 200);
    assert.equal(r.closed, false);
  });

  it('a few empty lines before a request line are ignored; past 16 bytes of them, 400 and close (no trickle holds a connection)', async () => {
    const ok = await exchange(port, '\r\n\n\r\n' + post(), { responses: 1 });
    assert.equal(ok.responses[0]?.status, 200);
    const r = await exchange(port, '\r\n'.repeat(9) + post(), { waitMs: 20_000 });
    assert.equal(r.responses.length, 1);
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.match(r.responses[0]!.json?.error?.message ?? '', /empty lines/);
    assert.equal(r.closed, true);
  });

  it('a 404 for a long path quotes at most 200 characters of it', async () => {
    const r = await fetch(`http://127.0.0.1:${port}/${'a'.repeat(6000)}`);
    assert.equal(r.status, 404);
    assert.equal((await r.json() as { error: { message: string } }).error.message, `no route matches /${'a'.repeat(199)}… (6001 characters)`);
  });

  it('a content-encoded body gets 415 from its head (not a later "not valid JSON"); identity or an empty value is no encoding', async () => {
    const r = await exchange(port, post('/v1/chat/completions', 'Content-Encoding: gzip\r\n'), { waitMs: 20_000 });
    assertError(r.responses[0], 415, 'SLC_UNSUPPORTED_ENCODING');
    for (const coding of ['Content-Encoding: identity\r\n', 'Content-Encoding: \r\n', 'Content-Encoding: IDENTITY \r\n']) {
      const ok = await exchange(port, post('/v1/chat/completions', coding), { responses: 1 });
      assert.equal(ok.responses[0]?.status, 200, coding);
    }
  });

  it('methods are case-sensitive: `post` is not POST (405 with Allow)', async () => {
    const r = await exchange(port, post().replace(/^POST/, 'post'), { responses: 1 });
    assertError(r.responses[0], 405, 'SLC_METHOD_NOT_ALLOWED');
    assert.equal(r.responses[0]!.headers.allow, 'POST, HEAD');
  });

  it('HTTP/1.0 requests are answered (with or without Host) and closed after the answer', async () => {
    for (const req of ['GET /nope HTTP/1.0\r\n\r\n', 'GET /nope HTTP/1.0\r\nHost: gw\r\n\r\n']) {
      const r = await exchange(port, req);
      assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
      assert.equal(r.responses[0]!.headers.connection, 'close');
      assert.equal(r.closed, true);
    }
  });

  it('HTTP/1.0 with Connection: keep-alive keeps the connection for a next request', async () => {
    const one = 'GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n';
    const r = await exchange(port, one + one.replace('/a', '/b'), { responses: 2 });
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
    assert.equal(r.responses[0]!.headers.connection, 'keep-alive');
    assert.equal(r.closed, false);
  });

  it('HTTP/1.0 POST: answered, and a streamed (chunked) answer is de-chunked and ended by closing', async () => {
    const r = await exchange(port, post().replace('HTTP/1.1', 'HTTP/1.0'), { responses: 1 });
    assert.equal(r.responses[0]?.status, 200);
    const streamBody = JSON.stringify({ model: 'x', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const s = await exchange(port, post('/v1/chat/completions', '', streamBody).replace('HTTP/1.1', 'HTTP/1.0'), { waitMs: 20_000 });
    assert.equal(s.closed, true);
    const [head, body] = [s.raw.slice(0, s.raw.indexOf('\r\n\r\n')), s.raw.slice(s.raw.indexOf('\r\n\r\n') + 4)];
    assert.match(head, /^HTTP\/1\.[01] 200/);
    assert.doesNotMatch(head, /transfer-encoding/i);
    assert.match(head, /\r\nconnection: close/i);
    assert.match(body, /^data: /);
    assert.match(body, /data: \[DONE\]\n\n$/);
  });

  it('HTTP/1.1 without Host: 400; absolute-form targets are answered as their path', async () => {
    const r = await exchange(port, 'GET /nope HTTP/1.1\r\n\r\n');
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.equal(r.closed, true);
    const a = await exchange(port, 'GET http://gw/nope HTTP/1.1\r\nHost: gw\r\n\r\n', { responses: 1 });
    assertError(a.responses[0], 404, 'SLC_NOT_FOUND');
    assert.match(a.responses[0]!.json.error.message, /\/nope/);
    // An invalid Host value (RFC 9112 §3.2), in the header or an absolute-form authority: 400, never X-Forwarded-Host.
    for (const bad of ['GET /nope HTTP/1.1\r\nHost: evil.com/../x@y\r\n\r\n', 'GET /nope HTTP/1.1\r\nHost: a b\r\n\r\n', 'GET http://u@gw/nope HTTP/1.1\r\nHost: gw\r\n\r\n', 'GET http://g"w/nope HTTP/1.1\r\nHost: gw\r\n\r\n',
      ...['example.com:abc', 'a:1:2', '*', 'evil.com,good.com', 'a;b=c', 'evil.com%2F..%2Fx', ']x[', 'gw:123456', '[v1.x]', '[evil.com]'].map((h) => `GET /nope HTTP/1.1\r\nHost: ${h}\r\n\r\n`),
      'GET http://a,b/nope HTTP/1.1\r\nHost: gw\r\n\r\n', 'GET http://a:b:c/nope HTTP/1.1\r\nHost: gw\r\n\r\n']) {
      const r = await exchange(port, bad);
      assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
      assert.equal(r.closed, true, JSON.stringify(bad));
    }
    for (const good of ['gw:9080', '[::1]:80', '127.0.0.1', 'xn--bcher-kva.example', 'example.com.', '[fe80::1%25eth0]', 'my_host:1', '']) {
      const r = await exchange(port, `GET /nope HTTP/1.1\r\nHost: ${good}\r\n\r\n`, { responses: 1 });
      assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    }
  });

  it('HTTP/2 preface and unknown versions: 505; a malformed request line: 400', async () => {
    const h2 = await exchange(port, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    assertError(h2.responses[0], 505, 'SLC_HTTP_VERSION_NOT_SUPPORTED');
    assert.equal(h2.closed, true);
    for (const bad of ['GET /x HTTP/1.1 extra\r\nHost: gw\r\n\r\n', 'G(T /x HTTP/1.1\r\nHost: gw\r\n\r\n', 'GET /x\r\n\r\n', 'GET /x HTTP/1.1\r\nHost : gw\r\n\r\n']) {
      const r = await exchange(port, bad);
      assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
      assert.equal(r.closed, true, JSON.stringify(bad));
    }
  });

  it('49 or more header lines: 431 with a JSON body (limits.max_header_fields), connection closed', async () => {
    for (const n of [48, 500]) {
      const r = await exchange(port, `GET /nope HTTP/1.1\r\nHost: gw\r\n${headerLines(n)}\r\n`);
      assertError(r.responses[0], 431, 'SLC_HEADERS_TOO_LARGE');
      assert.equal(r.closed, true);
    }
  });

  it('a client-sent x-sluice-peer header neither reaches the upstream nor sets the peer address', async () => {
    const r = await exchange(port, post('/v1/chat/completions', 'x-sluice-peer: 6.6.6.6\r\n'), { responses: 1 });
    assert.equal(r.responses[0]?.status, 200);
    const seen = mock.stats().lastRequest?.headers;
    assert.equal(seen?.['x-sluice-peer'], undefined);
    assert.equal(seen?.['x-forwarded-for'], '127.0.0.1');
  });

  it('431 with a JSON body for more header fields than limits.max_header_fields, connection closed', async () => {
    const r = await exchange(port, `GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n${headerLines(31)}\r\n`);
    assertError(r.responses[0], 431, 'SLC_HEADERS_TOO_LARGE');
    assert.equal(r.closed, true);
  });

  it('431 for a 100 KB header line (limits.max_header_line_bytes, default 8 KiB), connection closed', async () => {
    const r = await exchange(port, post('/v1/chat/completions', `x-big: ${'a'.repeat(100_000)}\r\n`));
    assertError(r.responses[0], 431, 'SLC_HEADERS_TOO_LARGE');
    assert.equal(r.closed, true);
    assert.equal(mock.stats().lastRequest?.headers['x-big'], undefined, 'never forwarded upstream');
  });

  it('431 for headers over limits.max_header_bytes in total (default 32 KiB), each line under 8 KiB', async () => {
    const r = await exchange(port, post('/v1/chat/completions', headerLines(10, 4000)));
    assertError(r.responses[0], 431, 'SLC_HEADERS_TOO_LARGE');
    assert.equal(r.closed, true);
  });

  it('400 and close for two different Content-Length values (RFC 9112 §6.3: no smuggling)', async () => {
    const r = await exchange(port, post('/v1/chat/completions', `Content-Length: ${BODY.length + 5}\r\n`));
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.equal(r.closed, true);
  });

  it('repeated identical Content-Length values are one length (RFC 9110 §8.6): answered', async () => {
    const r = await exchange(port, post('/v1/chat/completions', `Content-Length: ${BODY.length}\r\n`), { responses: 1 });
    assert.equal(r.responses[0]?.status, 200);
  });

  it('400 and close for a transfer coding other than chunked', async () => {
    const r = await exchange(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n');
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.equal(r.closed, true);
  });

  it('400 and close for Content-Length -1 / abc / 1e3 and for Content-Length with Transfer-Encoding (RFC 9112 §6.3)', async () => {
    for (const extra of ['-1', 'abc', '1e3', '']) {
      const r = await exchange(port, post().replace(`Content-Length: ${BODY.length}`, `Content-Length: ${extra}`));
      assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
      assert.equal(r.closed, true, `Content-Length: ${extra}`);
    }
    const r = await exchange(port, post('/v1/chat/completions', 'Transfer-Encoding: chunked\r\n'));
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.match(r.responses[0]!.json.error.message, /both Content-Length and Transfer-Encoding/);
    assert.equal(r.closed, true);
  });

  it('400 and close for a malformed chunked body (bad size, chunk extension), before anything is answered', async () => {
    for (const chunks of ['zz\r\nabc\r\n0\r\n\r\n', '3;ext=1\r\nabc\r\n0\r\n\r\n', '3\r\nabcd\r\n0\r\n\r\n']) {
      const r = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n${chunks}`);
      assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
      assert.equal(r.closed, true, JSON.stringify(chunks));
    }
  });

  it('a chunked body is read and answered', async () => {
    const r = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`, { responses: 1 });
    assert.equal(r.responses[0]?.status, 200);
  });

  it('HEAD answers carry Content-Length and no body, and the connection stays usable (the guard writes them)', async () => {
    for (const path of ['/nope', '/v1/chat/completions']) {
      const r = await exchange(port, `HEAD ${path} HTTP/1.1\r\nHost: gw\r\n\r\nGET /after HTTP/1.1\r\nHost: gw\r\n\r\n`, { headRequests: 1, responses: 2 });
      assert.equal(r.responses.length, 2, path);
      // 404 from the front end; the chat route's pipeline refuses an empty body (4xx).
      assert.ok(path === '/nope' ? r.responses[0]!.status === 404 : r.responses[0]!.status >= 400 && r.responses[0]!.status < 500, String(r.responses[0]!.status));
      assert.ok(Number(r.responses[0]!.headers['content-length']) > 0);
      assert.notEqual(r.responses[0]!.headers.connection?.toLowerCase(), 'close');
      // The GET's answer follows the HEAD's head directly: no body bytes came between them.
      assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
      assert.match(r.responses[1]!.json.error.message, /\/after\b/);
      assert.equal(r.closed, false);
    }
  });

  it('Expect: 100-continue: an accepted request is invited to send its body; a refused one is answered at once', async () => {
    const s = connect(port, '127.0.0.1');
    let raw = '';
    const arrived = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer; got ${JSON.stringify(raw)}`)), 10_000);
      s.on('data', (d: Buffer) => {
        raw += d.toString('latin1');
        if (raw.startsWith('HTTP/1.1 100 Continue\r\n\r\n') && parseResponses(raw.slice(25)).length === 1) { clearTimeout(timer); resolve(); }
      });
    });
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(BODY)}\r\nExpect: 100-continue\r\n\r\n`);
    const invited = Date.now() + 10_000;
    while (!raw.startsWith('HTTP/1.1 100 Continue') && Date.now() < invited) await new Promise((r) => setTimeout(r, 10));
    assert.equal(raw, 'HTTP/1.1 100 Continue\r\n\r\n', 'only the interim answer before the body');
    s.write(BODY);
    await arrived;
    s.destroy();
    assert.equal(parseResponses(raw.slice(25))[0]!.status, 200);

    const big = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: ${2 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`, { waitMs: 10_000 });
    assert.equal(big.raw.includes('100 Continue'), false);
    assertError(big.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(big.closed, true);
  });

  it('pipelined requests answered synchronously (404s) are answered in order', async () => {
    const r = await exchange(port, 'GET /a HTTP/1.1\r\nHost: gw\r\n\r\nGET /b HTTP/1.1\r\nHost: gw\r\n\r\n', { responses: 2 });
    assert.equal(r.responses.length, 2);
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
    assert.match(r.responses[0]!.json.error.message, /\/a\b/);
    assert.match(r.responses[1]!.json.error.message, /\/b\b/);
  });

  it('pipelined requests whose answers are pending are answered in order', async () => {
    const r = await exchange(port, post() + 'GET /between HTTP/1.1\r\nHost: gw\r\n\r\n' + post(), { responses: 3, waitMs: 20_000 });
    assert.equal(r.responses.length, 3);
    assert.equal(r.responses[0]!.status, 200);
    assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
    assert.equal(r.responses[2]!.status, 200);
    assert.equal(r.closed, false);
  });

  it('a client pipelining requests without reading the answers stops being read (no answers pile up in memory)', async () => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => { /* cut at the end of the test */ });
    s.pause();
    await new Promise((r) => s.once('connect', r));
    const one = Buffer.from('GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n');
    const chunk = Buffer.concat(Array.from({ length: Math.floor(65_536 / one.length) }, () => one));
    // 64 KiB of pipelined 404s at a time, each written once the last was taken, until one is not taken for 1.5 s:
    // the gateway stops reading once its answers fill the sockets towards a client that reads none of them
    // (here ~4 MiB were taken in all; a gateway that kept reading took all 24 MiB and grew by ~1 GB).
    const MAX = 384;
    let taken = 0;
    while (taken < MAX) {
      const ok = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 1500);
        s.write(chunk, () => { clearTimeout(timer); resolve(true); });
      });
      if (!ok) break;
      taken++;
    }
    assert.ok(taken < MAX, `the gateway read all ${(MAX * chunk.length) >> 20} MiB of requests whose answers nobody read`);
    // Once the client reads, every request is answered (the one write not taken included).
    const expected = (taken + 1) * (chunk.length / one.length);
    let answers = 0;
    let tail = '';
    let lastBytes = '';
    const all = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${answers} of ${expected} answers${s.destroyed ? ', connection closed' : ''}; last: ${JSON.stringify(tail)} ${JSON.stringify(lastBytes)}`)), 60_000);
      s.on('data', (d: Buffer) => {
        const text = tail + d.toString('latin1');
        lastBytes = text.slice(-400);
        for (let i = text.indexOf('HTTP/1.1 404 '); i >= 0; i = text.indexOf('HTTP/1.1 404 ', i + 1)) answers++;
        tail = text.slice(-12);
        if (answers >= expected) { clearTimeout(timer); resolve(); }
      });
    });
    s.resume();
    await all;
    s.destroy();
    assert.equal(answers, expected);
  });

  it('a body that starts in held pipelined input is read to its end (reading resumes once the held input is used)', async () => {
    // Over 64 KiB of pipelined requests: the guard holds them and pauses reading; the POST after them has the
    // last bytes of its body in a later write, which must still be read once the held input has been used.
    const gets = 'GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n'.repeat(2200);
    const full = post();
    const cut = full.length - 10;
    const r = await exchange(port, gets + full.slice(0, cut), { responses: 2201, waitMs: 30_000, feed: (s) => { setTimeout(() => s.write(full.slice(cut)), 300); } });
    assert.equal(r.responses.length, 2201);
    assert.equal(r.responses[2200]!.status, 200);
  });

  it('a head that starts at the end of held pipelined input is read to its end (no 408 for a paused client)', async () => {
    const gets = 'GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n'.repeat(2200);
    const last = 'GET /last HTTP/1.1\r\nHost: gw\r\n\r\n';
    const r = await exchange(port, gets + last.slice(0, 10), { responses: 2201, waitMs: 30_000, feed: (s) => { setTimeout(() => s.write(last.slice(10)), 300); } });
    assert.equal(r.responses.length, 2201);
    assertError(r.responses[2200], 404, 'SLC_NOT_FOUND');
    assert.match(r.responses[2200]!.json.error.message, /\/last\b/);
  });

  it('pipelined requests sent byte by byte are answered in order', async () => {
    const data = Buffer.from(post() + post(), 'latin1');
    const r = await exchange(port, Buffer.alloc(0), {
      responses: 2, waitMs: 30_000,
      feed: (s) => {
        let i = 0;
        const step = (): void => { if (i < data.length) { s.write(data.subarray(i, i + 1)); i++; setImmediate(step); } };
        step();
      },
    });
    assert.deepEqual(r.responses.map((x) => x.status), [200, 200]);
  });

  it('413 after draining the declared body (lingering close): readable by a client that sends it all first', async () => {
    const size = 3 * 1024 * 1024;
    const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: ${size}\r\n\r\n`;
    const r = await exchange(port, head, {
      feed: (s) => {
        const chunk = Buffer.alloc(256 * 1024, 'a');
        let left = size;
        const pump = (): void => {
          while (left > 0) {
            const n = Math.min(left, chunk.length);
            left -= n;
            if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { s.once('drain', pump); return; }
          }
        };
        pump();
      },
    });
    assertError(r.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(r.responses[0]!.headers.connection?.toLowerCase(), 'close');
    assert.equal(r.closed, true);
  });

  it('413 at once and close when the declared body is past limits.max_drain_bytes', async () => {
    const r = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: ${64 * 1024 * 1024}\r\n\r\n`, {
      feed: (s) => { s.write(Buffer.alloc(5 * 1024 * 1024, 'a')); },
    });
    assertError(r.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(r.closed, true);
  });

  it('413 for a chunked body that grows past max_body_bytes', async () => {
    const chunk = 'a'.repeat(512 * 1024);
    const piece = `${chunk.length.toString(16)}\r\n${chunk}\r\n`;
    const r = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n${piece.repeat(3)}0\r\n\r\n`);
    assertError(r.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(r.closed, true);
  });

  it('413 at once and close from a chunk header that takes the body past max_body_bytes, before its bytes arrive', async () => {
    // The body timeout is 60 s: an answer inside the wait comes from the chunk header, not from the body never coming.
    const head = 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n';
    const one = await exchange(port, `${head}${(2 * 1024 * 1024).toString(16)}\r\n{"model"`, { waitMs: 20_000 });
    assertError(one.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(one.closed, true);
    // Announced across chunks: 800 KiB received, a third 400 KiB chunk announced.
    const piece = `${(400 * 1024).toString(16)}\r\n${'a'.repeat(400 * 1024)}\r\n`;
    const sum = await exchange(port, `${head}${piece}${piece}${(400 * 1024).toString(16)}\r\n`, { waitMs: 20_000 });
    assertError(sum.responses[0], 413, 'SLC_BODY_TOO_LARGE');
    assert.equal(sum.closed, true);
  });

  it('a 404 with a body drains it and keeps the connection usable', async () => {
    const r = await exchange(port, post('/nope') + 'GET /again HTTP/1.1\r\nHost: gw\r\n\r\n', { responses: 2 });
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
  });

  it('paths are normalised before routing: dot segments, %2e%2e and repeated slashes reach the route', async () => {
    for (const path of ['/a/../v1/chat/completions', '/v1/%2e%2e/v1/chat/completions', '/v1/x/%2E%2E/chat/./completions', '//v1//chat/completions']) {
      const r = await exchange(port, post(path), { responses: 1 });
      assert.equal(r.responses[0]?.status, 200, path);
    }
  });

  it('400 for a path climbing above the root or with a malformed escape; an encoded slash never matches a route', async () => {
    for (const path of ['/../v1/chat/completions', '/%2e%2e/v1/chat/completions', '/v1/%zz']) {
      const r = await exchange(port, post(path));
      assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
      assert.equal(r.closed, true, path);
    }
    const r = await exchange(port, post('/v1%2Fchat/completions'), { responses: 1 });
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
  });
});

describe('front-end budgets and timeouts (raw sockets)', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let port: number;

  before(async () => {
    mock = await startMockUpstream({ name: 'm', chunks: 4 });
    gw = await startGateway({
      limits: { max_body_bytes: 1024 * 1024, max_inflight_body_bytes: 1536 * 1024 },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }],
    });
    port = gw.handle.port;
  });

  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  async function metric(name: string): Promise<number> {
    const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    return m === null ? NaN : Number(m[1]);
  }

  async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
    const deadline = Date.now() + 20_000;
    while (!(await cond())) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  it('408 and close when the body stalls longer than limits.client_body_timeout_ms', async () => {
    const gw3 = await startGateway({
      limits: { client_body_timeout_ms: 300 },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }],
    });
    try {
      const r = await exchange(gw3.handle.port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{"mod', { waitMs: 20_000 });
      assertError(r.responses[0], 408, 'SLC_REQUEST_TIMEOUT');
      assert.equal(r.closed, true);
      const text = await (await fetch(`${gw3.adminUrl}/metrics`)).text();
      assert.match(text, /^sluice_request_body_bytes_in_flight 0$/m);
      assert.match(text, /^sluice_requests_in_flight 0$/m);
    } finally {
      await gw3.close();
    }
  });

  it('503 SLC_OVERLOADED with Retry-After when request bodies in flight exceed limits.max_inflight_body_bytes', async () => {
    const size = 1024 * 1024;
    const body = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'a'.repeat(size - 60) }] });
    let sock: Socket | undefined;
    // The budget follows the bytes received: the first body arrives but for its last bytes, and stays incomplete
    // (well inside the body timeout's sweeps) while the second request arrives.
    const half = body.length - 10;
    const holder = exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body.slice(0, half)}`, {
      responses: 1, waitMs: 30_000, feed: (s) => { sock = s; },
    });
    await until(async () => (await metric('sluice_request_body_bytes_in_flight')) >= Buffer.byteLength(body), 'first body reserved');
    const second = await exchange(port, post('/v1/chat/completions', '', body));
    assertError(second.responses[0], 503, 'SLC_OVERLOADED');
    assert.equal(second.responses[0]!.headers['retry-after'], '1');
    sock!.write(body.slice(half));
    const first = await holder;
    assert.equal(first.responses[0]?.status, 200, 'the request holding the budget completes');
    await until(async () => (await metric('sluice_request_body_bytes_in_flight')) === 0, 'budget released');
  });

  it('bodies declared large and sent slowly hold only what they sent: a small request still gets through', async () => {
    const MiB = 1024 * 1024;
    const gw3 = await startGateway({
      limits: { max_body_bytes: 8 * MiB, max_inflight_body_bytes: 8 * MiB },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }],
    });
    const socks: Socket[] = [];
    try {
      // Each declares the whole budget. Before, the first held it all and every other POST got 503; later each held
      // a first slice of 256 KiB, so 32 of them did (a probe: 260 idle uploads locked out every client at the default
      // budget). Now each holds the page its bytes take.
      for (let i = 0; i < 40; i++) {
        const s = connect(gw3.handle.port, '127.0.0.1');
        s.on('error', () => undefined);
        socks.push(s);
        s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: ${8 * MiB}\r\n\r\n{"mo`);
      }
      const read = async (): Promise<number> => Number(/^sluice_request_body_bytes_in_flight (\d+)$/m.exec(await (await fetch(`${gw3.adminUrl}/metrics`)).text())?.[1]);
      await until(async () => (await read()) === 40 * 4096, 'every slow body holds a page');
      const r = await exchange(gw3.handle.port, post(), { responses: 1 });
      assert.equal(r.responses[0]?.status, 200);
    } finally {
      for (const s of socks) s.destroy();
      await gw3.close();
    }
  });

  it('a client that closes its side before its body is complete gets 400 at once, and its budget is released', async () => {
    const r = await exchange(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{"model"', {
      waitMs: 20_000, feed: (s) => { s.end(); },
    });
    assertError(r.responses[0], 400, 'SLC_BAD_REQUEST');
    assert.match(r.responses[0]!.json.error.message, /closed its side before the request body was complete/);
    await until(async () => (await metric('sluice_request_body_bytes_in_flight')) === 0, 'budget released');
  });

  it('sluice_requests_in_flight counts a running stream once and returns to 0 after it ends or aborts', async () => {
    const slow = await startMockUpstream({ name: 's', chunks: 40, chunkDelayMs: 50 });
    const gw2 = await startGateway({ routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('s', slow.url)] } } }] });
    try {
      const read = async (): Promise<number> => {
        const text = await (await fetch(`${gw2.adminUrl}/metrics`)).text();
        return Number(/^sluice_requests_in_flight (\S+)$/m.exec(text)?.[1]);
      };
      assert.equal(await read(), 0);
      const streamBody = JSON.stringify({ model: 'x', stream: true, messages: [{ role: 'user', content: 'hi' }] });
      const ac = new AbortController();
      const res = await fetch(`${gw2.url}/v1/chat/completions`, { method: 'POST', body: streamBody, headers: { 'content-type': 'application/json' }, signal: ac.signal });
      assert.equal(res.status, 200);
      assert.equal(await read(), 1);
      ac.abort();
      const deadline = Date.now() + 20_000;
      while ((await read()) !== 0) {
        if (Date.now() > deadline) assert.fail('in-flight gauge did not return to 0 after abort');
        await new Promise((r) => setTimeout(r, 25));
      }
      const done = await fetch(`${gw2.url}/v1/chat/completions`, { method: 'POST', body: streamBody, headers: { 'content-type': 'application/json' } });
      await done.text();
      assert.equal(await read(), 0);
    } finally {
      await gw2.close();
      await slow.close();
    }
  });
});

describe('HTTP/1.x guard timeouts (raw sockets)', () => {
  let gw: TestGateway;

  before(async () => {
    gw = await startGateway({ limits: { client_header_timeout_ms: 300, client_idle_timeout_ms: 400 }, routes: [] });
  });

  after(async () => { await gw?.close(); });

  it('408 with a JSON body and close when a started head stalls past limits.client_header_timeout_ms', async () => {
    const r = await exchange(gw.handle.port, 'GET /nope HTTP/1.1\r\nHost: g', { waitMs: 20_000 });
    assertError(r.responses[0], 408, 'SLC_REQUEST_TIMEOUT');
    assert.equal(r.closed, true);
  });

  it('a head completed well within limits.client_header_timeout_ms is served, whatever the sweep\'s phase', { timeout: 60_000 }, async () => {
    // Timeout 4 s, swept every 1 s: a head's clock started at the last sweep's time made the 408 come up to 1 s early.
    // Eight heads, their starts spread over a sweep period, each completed 3.3 s after it began.
    const gw2 = await startGateway({ limits: { client_header_timeout_ms: 4000, client_idle_timeout_ms: 60_000 }, routes: [] });
    try {
      const runs = Array.from({ length: 8 }, (_, i) => new Promise<void>((r) => setTimeout(r, i * 125)).then(() => exchange(gw2.handle.port, 'GET /nope HTTP/1.1\r\n', {
        waitMs: 20_000,
        feed: (s) => { setTimeout(() => s.write('Host: g\r\nConnection: close\r\n\r\n'), 3300); },
      })));
      for (const r of await Promise.all(runs)) assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    } finally {
      await gw2.close();
    }
  });

  it('an idle keep-alive connection is closed quietly after limits.client_idle_timeout_ms', async () => {
    const r = await exchange(gw.handle.port, 'GET /nope HTTP/1.1\r\nHost: gw\r\n\r\n', { waitMs: 20_000 });
    assert.equal(r.responses.length, 1);
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
    assert.equal(r.closed, true);
    assert.equal(parseResponses(r.raw).length, 1, 'nothing after the answer');
  });

  it('a connection idle longer than uWS\'s own ~10 s timeout still serves its next request', async () => {
    const gw2 = await startGateway({ limits: { client_idle_timeout_ms: 60_000 }, routes: [] });
    try {
      const r = await exchange(gw2.handle.port, 'GET /a HTTP/1.1\r\nHost: gw\r\n\r\n', {
        responses: 2, waitMs: 40_000,
        feed: (s) => { setTimeout(() => s.write('GET /b HTTP/1.1\r\nHost: gw\r\n\r\n'), 12_000); },
      });
      assert.equal(r.responses.length, 2);
      assertError(r.responses[1], 404, 'SLC_NOT_FOUND');
      assert.equal(r.closed, false);
    } finally {
      await gw2.close();
    }
  });
});

describe('listen.http1_guard: false (uWS alone; documented uWS 20.30 behaviour)', () => {
  let gw: TestGateway;
  let port: number;

  before(async () => {
    gw = await startGateway({
      listen: { host: '127.0.0.1', port: 0, http1_guard: false },
      limits: { max_header_fields: 30 },
      routes: [{ id: 'x', uri: '/x', plugins: { 'ai-proxy': { provider: 'openai-compatible', options: { model: 'm' }, override: { endpoint: 'http://127.0.0.1:9/v1/chat/completions' } } } }],
    });
    port = gw.handle.port;
  });

  after(async () => { await gw?.close(); });

  it('HTTP/1.0, a missing Host, 49+ header lines and a header name with `_` or `.` get no answer; uWS closes them after ~10 s', async () => {
    const cases = ['GET /nope HTTP/1.0\r\nHost: gw\r\n\r\n', 'GET /nope HTTP/1.1\r\n\r\n', `GET /nope HTTP/1.1\r\nHost: gw\r\n${headerLines(48)}\r\n`,
      'GET /nope HTTP/1.1\r\nHost: gw\r\nx_api_key: 1\r\n\r\n', 'GET /nope HTTP/1.1\r\nHost: gw\r\nx.a: 1\r\n\r\n'];
    const results = await Promise.all(cases.map((c) => exchange(port, c, { waitMs: 40_000 })));
    for (const [i, r] of results.entries()) {
      assert.equal(r.raw, '', `case ${i}: no bytes answered`);
      assert.equal(r.closed, true, `case ${i}: closed by uWS's timeout`);
    }
  });

  it('Content-Length: abc and Content-Length with Transfer-Encoding: closed unanswered', async () => {
    for (const req of [post().replace(`Content-Length: ${BODY.length}`, 'Content-Length: abc'), post('/x', 'Transfer-Encoding: chunked\r\n')]) {
      const r = await exchange(port, req, { waitMs: 5000 });
      assert.equal(r.raw, '');
      assert.equal(r.closed, true);
    }
  });

  it('the peer address is uWS\'s own and a client-sent x-sluice-peer is ignored (still 404 for an unknown path)', async () => {
    const r = await exchange(port, 'GET /nope HTTP/1.1\r\nHost: gw\r\nx-sluice-peer: 6.6.6.6\r\n\r\n', { responses: 1 });
    assertError(r.responses[0], 404, 'SLC_NOT_FOUND');
  });
});
