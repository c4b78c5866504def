// The HTTP/1.x guard's head parser and chunked scanner: validation per RFC 9112, limits, fragmented input, and a
// property that arbitrary bytes never throw.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { buildHead, ChunkedScanner, findHeadEnd, parseRequestHead, UWS_MAX_HEADER_LINES, type HeadLimits, type HeadResult, type RequestHead } from '../../src/frontend/http1-guard.ts';

const LIMITS: HeadLimits = { max_header_fields: 48, max_header_line_bytes: 8192, max_header_bytes: 32768 };

function parse(text: string, limits = LIMITS): HeadResult | undefined {
  const buf = Buffer.from(text, 'latin1');
  const f = findHeadEnd(buf, 0);
  return f.end < 0 ? undefined : parseRequestHead(buf, f.end, limits);
}

function ok(text: string): RequestHead {
  const r = parse(text);
  assert.ok(r !== undefined && !('error' in r), `expected a head: ${JSON.stringify(r)}`);
  return r;
}

function err(text: string, code: string): void {
  const r = parse(text);
  assert.ok(r !== undefined && 'error' in r, `expected an error for ${JSON.stringify(text)}`);
  assert.equal(r.error, code, r.message);
}

describe('http1 guard: findHeadEnd', () => {
  it('finds CRLFCRLF and bare-LF ends', () => {
    assert.equal(findHeadEnd(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY'), 0).end, 27);
    assert.equal(findHeadEnd(Buffer.from('GET / HTTP/1.1\nHost: a\n\nBODY'), 0).end, 24);
    assert.equal(findHeadEnd(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n'), 0).end, -1);
  });

  it('a head fed byte by byte is found at the same offset, scanning each byte a bounded number of times', () => {
    const text = Buffer.from('POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}');
    let resume = 0;
    let end = -1;
    for (let n = 1; n <= text.length && end < 0; n++) {
      const f = findHeadEnd(text.subarray(0, n), resume);
      assert.ok(f.resume >= resume - 0 || f.end >= 0);
      resume = f.resume;
      end = f.end;
    }
    assert.equal(end, text.length - 2);
    const head = parseRequestHead(text, end, LIMITS) as RequestHead;
    assert.equal(head.framing, 'length');
    assert.equal(head.length, 2);
  });
});

describe('http1 guard: parseRequestHead', () => {
  it('a plain HTTP/1.1 request is forwarded as sent (no rewrite)', () => {
    const h = ok('POST /v1/x?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n');
    assert.equal(h.method, 'POST');
    assert.equal(h.minor, 1);
    assert.equal(h.rewrite, false);
    assert.equal(h.keepAlive, true);
    assert.equal(h.framing, 'length');
    assert.equal(h.length, 5);
    assert.equal(h.blankAt, h.end - 2);
  });

  it('HTTP/1.0 is rewritten to HTTP/1.1 with Host and Connection: close added, and keep-alive only when asked', () => {
    const h = ok('GET /nope HTTP/1.0\r\n\r\n');
    assert.equal(h.minor, 0);
    assert.equal(h.keepAlive, false);
    assert.equal(h.rewrite, true);
    const out = buildHead(h, 'x-sluice-peer: 1.2.3.4\r\n\r\n', '127.0.0.1').toString('latin1');
    assert.equal(out, 'GET /nope HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\nx-sluice-peer: 1.2.3.4\r\n\r\n');
    assert.equal(ok('GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n').keepAlive, true);
  });

  it('a client-sent x-sluice-peer is removed; absolute-form becomes origin-form with its authority as Host', () => {
    const h = ok('GET /a HTTP/1.1\r\nHost: gw\r\nX-Sluice-Peer: 6.6.6.6\r\n\r\n');
    assert.equal(h.rewrite, true);
    assert.doesNotMatch(buildHead(h, 'x-sluice-peer: 1.1.1.1\r\n\r\n', 'd').toString(), /6\.6\.6\.6/);
    const a = ok('GET http://example.com:8080/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n');
    assert.equal(a.target, '/v1/x?q=1');
    assert.match(buildHead(a, '\r\n', 'd').toString(), /^GET \/v1\/x\?q=1 HTTP\/1\.1\r\nHost: example\.com:8080\r\n/);
    assert.equal(ok('GET http://h HTTP/1.1\r\n\r\n').target, '/');
  });

  it('bare LF heads are accepted and rewritten with CRLF', () => {
    const h = ok('GET / HTTP/1.1\nHost: gw\n\n');
    assert.equal(h.rewrite, true);
    assert.equal(buildHead(h, 'p: 1\r\n\r\n', 'd').toString(), 'GET / HTTP/1.1\r\nHost: gw\r\np: 1\r\n\r\n');
  });

  it('framing errors (RFC 9112 §6.3): 400', () => {
    for (const cl of ['-1', 'abc', '1e3', '', '0x10', '1 2', '12345678901234567']) err(`POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ${cl}\r\n\r\n`, 'SLC_BAD_REQUEST');
    err('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n', 'SLC_BAD_REQUEST');
    err('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n', 'SLC_BAD_REQUEST');
    err('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n', 'SLC_BAD_REQUEST');
    err('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 'SLC_BAD_REQUEST');
    err('POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n', 'SLC_BAD_REQUEST');
    const same = ok('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n');
    assert.equal(same.length, 3);
    assert.equal(same.rewrite, true);
    assert.equal(buildHead(same, '\r\n', 'd').toString().match(/Content-Length/g)?.length, 1);
    assert.equal(ok('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n').framing, 'chunked');
  });

  it('request line and header syntax: 400; other versions: 505', () => {
    err('PRI * HTTP/2.0\r\n\r\n', 'SLC_HTTP_VERSION_NOT_SUPPORTED');
    err('GET / HTTP/1.2\r\nHost: a\r\n\r\n', 'SLC_HTTP_VERSION_NOT_SUPPORTED');
    for (const bad of ['GET /\r\n\r\n', 'GET  / HTTP/1.1\r\nHost: a\r\n\r\n', 'G@T / HTTP/1.1\r\nHost: a\r\n\r\n', 'GET x HTTP/1.1\r\nHost: a\r\n\r\n',
      'GET / http/1.1\r\nHost: a\r\n\r\n', 'GET / HTTP/1.1\r\nHost : a\r\n\r\n', 'GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n', 'GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n', 'GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n',
      'GET / HTTP/1.1\r\n\r\n', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n']) {
      err(bad, 'SLC_BAD_REQUEST');
    }
    ok('OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n');
  });

  it('header limits: 431', () => {
    const lines = (n: number): string => Array.from({ length: n }, (_, i) => `x-${i}: v\r\n`).join('');
    err(`GET / HTTP/1.1\r\nHost: a\r\n${lines(48)}\r\n`, 'SLC_HEADERS_TOO_LARGE');
    err(`GET / HTTP/1.1\r\nHost: a\r\nx: ${'a'.repeat(9000)}\r\n\r\n`, 'SLC_HEADERS_TOO_LARGE');
    err(`GET /${'a'.repeat(9000)} HTTP/1.1\r\nHost: a\r\n\r\n`, 'SLC_HEADERS_TOO_LARGE');
    err(`GET / HTTP/1.1\r\nHost: a\r\n${Array.from({ length: 10 }, (_, i) => `x-${i}: ${'v'.repeat(4000)}\r\n`).join('')}\r\n`, 'SLC_HEADERS_TOO_LARGE');
    // 48 fields fit the limit; with the peer header that is 49 lines for uWS, so repeated names are folded.
    const folded = ok(`GET / HTTP/1.1\r\nHost: a\r\n${'accept: x\r\n'.repeat(47)}\r\n`);
    assert.equal(folded.rewrite, true);
    assert.ok(folded.fields!.length + 1 <= UWS_MAX_HEADER_LINES);
    err(`GET / HTTP/1.1\r\nHost: a\r\n${lines(47)}\r\n`, 'SLC_HEADERS_TOO_LARGE');
    assert.equal(ok(`GET / HTTP/1.1\r\nHost: a\r\n${lines(46)}\r\n`).rewrite, false);
  });
});

describe('http1 guard: ChunkedScanner', () => {
  it('finds the end of a chunked body, fed whole or byte by byte', () => {
    const body = Buffer.from('5\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\nNEXT');
    assert.equal(new ChunkedScanner(true).push(body, 0, body.length), body.length - 4);
    const s = new ChunkedScanner(true);
    let end = -1;
    for (let i = 0; i < body.length && end < 0; i++) end = s.push(body, i, i + 1);
    assert.equal(end, body.length - 4);
  });

  it('strict mode refuses extensions, trailers, bad sizes and missing CRLF; lenient mode de-chunks', () => {
    for (const bad of ['5;x=1\r\nhello\r\n0\r\n\r\n', '0\r\nX: y\r\n\r\n', 'g\r\n', '5\r\nhelloX\r\n', '5\nhello\r\n', '123456789\r\n', '\r\n']) {
      assert.equal(new ChunkedScanner(true).push(Buffer.from(bad), 0, bad.length), -2, JSON.stringify(bad));
    }
    const parts: string[] = [];
    const s = new ChunkedScanner(false, (b, st, e) => parts.push(b.toString('latin1', st, e)));
    const text = Buffer.from('3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n');
    assert.equal(s.push(text, 0, text.length), text.length);
    assert.equal(parts.join(''), 'abcde');
  });
});

describe('http1 guard: arbitrary input', () => {
  it('never throws on arbitrary bytes, fed whole or in pieces', () => {
    const headish = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.array(fc.constantFrom('GET ', 'POST ', '/', 'http://h', ' HTTP/1.1', ' HTTP/1.0', '\r\n', '\n', '\r', ':', ' ', 'Host: a', 'Content-Length: ',
        'Transfer-Encoding: chunked', '1', '-', ',', 'x-sluice-peer: 1', 'Connection: keep-alive', '\0', '\u00ff'), { maxLength: 40 })
        .map((a) => new Uint8Array(Buffer.from(a.join(''), 'latin1'))),
    );
    fc.assert(fc.property(headish, fc.integer({ min: 1, max: 50 }), (bytes, step) => {
      const buf = Buffer.from(bytes);
      let resume = 0;
      for (let n = Math.min(step, buf.length); ; n = Math.min(n + step, buf.length)) {
        const f = findHeadEnd(buf.subarray(0, n), resume);
        if (f.end >= 0) {
          const r = parseRequestHead(buf, f.end, { max_header_fields: 10, max_header_line_bytes: 100, max_header_bytes: 200 });
          if (!('error' in r)) buildHead(r, 'p: 1\r\n\r\n', 'd');
          break;
        }
        resume = f.resume;
        if (n >= buf.length) break;
      }
      const s = new ChunkedScanner(true);
      for (let i = 0; i < buf.length; i += step) if (s.push(buf, i, Math.min(buf.length, i + step)) !== -1) break;
      new ChunkedScanner(false, () => {}).push(buf, 0, buf.length);
    }), { numRuns: 500 });
  });
});

describe('http1 guard: config', () => {
  it('listen.http1_guard defaults to true, takes a boolean, and the guard timeouts have defaults', async () => {
    const { ConfigError, validateConfig } = await import('../../src/config/validate.ts');
    const c = validateConfig({}, {});
    assert.equal(c.listen.http1_guard, true);
    assert.equal(c.limits.client_header_timeout_ms, 10000);
    assert.equal(c.limits.client_idle_timeout_ms, 60000);
    assert.equal(validateConfig({ listen: { http1_guard: false } }, {}).listen.http1_guard, false);
    assert.throws(() => validateConfig({ listen: { http1_guard: 'yes' } }, {}), (e: unknown) => e instanceof ConfigError && e.issues.some((i) => i.path === 'listen.http1_guard'));
    assert.throws(() => validateConfig({ admin: { http1_guard: true } }, {}), ConfigError);
    assert.throws(() => validateConfig({ limits: { client_header_timeout_ms: 0 } }, {}), ConfigError);
  });
});
