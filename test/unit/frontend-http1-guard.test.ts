// The HTTP/1.x guard's head parser and chunked scanner: validation per RFC 9112, limits, fragmented input, and a
// property that arbitrary bytes never throw.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ChunkedScanner, findHeadEnd, parseRequestHead, type HeadLimits, type HeadResult, type RequestHead } from '../../src/frontend/http1-guard.ts';

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
  it('a plain HTTP/1.1 request: method, version, keep-alive, framing, target and header offsets', () => {
    const text = 'POST /v1/x?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n';
    const h = ok(text);
    assert.equal(h.method, 'POST');
    assert.equal(h.minor, 1);
    assert.equal(h.keepAlive, true);
    assert.equal(h.framing, 'length');
    assert.equal(h.length, 5);
    assert.equal(h.end, text.length);
    assert.equal(h.target, '/v1/x?a=1');
    assert.equal(h.host, undefined);
    const [ns, colon, vs, ve] = h.lines;
    assert.deepEqual([text.slice(ns, colon), text.slice(vs, ve)], ['Host', 'gw']);
    assert.equal(h.lines.length, 8);
  });

  it('HTTP/1.0: keep-alive only when asked; Host not required', () => {
    const h = ok('GET /nope HTTP/1.0\r\n\r\n');
    assert.equal(h.minor, 0);
    assert.equal(h.keepAlive, false);
    assert.equal(ok('GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n').keepAlive, true);
    assert.equal(ok('GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n').keepAlive, false);
  });

  it('absolute-form becomes origin-form with its authority as Host', () => {
    const a = ok('GET http://example.com:8080/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n');
    assert.equal(a.target, '/v1/x?q=1');
    assert.equal(a.host, 'example.com:8080');
    assert.equal(ok('GET http://h HTTP/1.1\r\n\r\n').target, '/');
    assert.equal(ok('GET http://h?q HTTP/1.1\r\n\r\n').target, '/?q');
  });

  it('bare LF heads are accepted, with value offsets that leave out the line end', () => {
    const text = 'GET / HTTP/1.1\nHost: gw \n\n';
    const h = ok(text);
    assert.equal(h.end, text.length);
    assert.equal(text.slice(h.lines[2], h.lines[3]), 'gw');
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
    assert.equal(same.framing, 'length');
    assert.equal(ok('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 03\r\n\r\n').length, 3);
    assert.equal(ok('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n').framing, 'none');
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
    // max_header_fields (48) fields fit, Host included.
    assert.equal(ok(`GET / HTTP/1.1\r\nHost: a\r\n${lines(47)}\r\n`).lines.length, 4 * 48);
    assert.equal(ok(`GET / HTTP/1.1\r\nHost: a\r\n${'accept: x\r\n'.repeat(47)}\r\n`).lines.length, 4 * 48);
    // Whitespace around a value is part of the line: padding does not get a line or a head past the limits.
    err(`GET / HTTP/1.1\r\nHost: a\r\nx-pad: ${' '.repeat(9000)}v\r\n\r\n`, 'SLC_HEADERS_TOO_LARGE');
    err(`GET / HTTP/1.1\r\nHost: a\r\nx-pad: v${'\t'.repeat(9000)}\r\n\r\n`, 'SLC_HEADERS_TOO_LARGE');
    err(`GET / HTTP/1.1\r\nHost: a\r\n${Array.from({ length: 5 }, (_, i) => `x-${i}: ${' '.repeat(8000)}v\r\n`).join('')}\r\n`, 'SLC_HEADERS_TOO_LARGE');
    assert.equal(ok(`GET / HTTP/1.1\r\nHost: a\r\nx:${'a'.repeat(8189)}\r\n\r\n`).lines.length, 8, 'name: value counted as sent, a line of 8192');
  });
});

describe('http1 guard: ChunkedScanner', () => {
  it('finds the end of a chunked body, fed whole or byte by byte', () => {
    const body = Buffer.from('5\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\nNEXT');
    assert.equal(new ChunkedScanner().push(body, 0, body.length), body.length - 4);
    const s = new ChunkedScanner();
    let end = -1;
    for (let i = 0; i < body.length && end < 0; i++) end = s.push(body, i, i + 1);
    assert.equal(end, body.length - 4);
  });

  it('refuses extensions, trailers, bad sizes and missing CRLF; hands on the payload, fed whole or byte by byte', () => {
    for (const bad of ['5;x=1\r\nhello\r\n0\r\n\r\n', '0\r\nX: y\r\n\r\n', 'g\r\n', '5\r\nhelloX\r\n', '5\nhello\r\n', '123456789\r\n', '\r\n',
      '0\r\n\n', '0 \r\n\r\n']) {
      assert.equal(new ChunkedScanner().push(Buffer.from(bad), 0, bad.length), -2, JSON.stringify(bad));
    }
    const text = Buffer.from('3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n');
    for (const step of [text.length, 1]) {
      const parts: string[] = [];
      const s = new ChunkedScanner((b, st, e) => parts.push(b.toString('latin1', st, e)));
      let end = -1;
      for (let i = 0; i < text.length && end < 0; i += step) end = s.push(text, i, Math.min(text.length, i + step));
      assert.equal(end, text.length);
      assert.equal(parts.join(''), 'abcde');
    }
  });

  it('announces the running sum of chunk sizes at each chunk header, before the chunk\'s bytes (the last chunk adds nothing)', () => {
    const text = Buffer.from('3\r\nabc\r\n1A\r\n' + 'x'.repeat(26) + '\r\n0\r\n\r\n');
    for (const step of [text.length, 1]) {
      const events: string[] = [];
      const s = new ChunkedScanner((b, st, e) => events.push(b.toString('latin1', st, e)), (total) => events.push(`=${total}`));
      let end = -1;
      for (let i = 0; i < text.length && end < 0; i += step) end = s.push(text, i, Math.min(text.length, i + step));
      assert.equal(end, text.length);
      const joined = events.join('|');
      assert.match(joined, /^=3\|a.*=29\|x/);
      assert.deepEqual(events.filter((e) => e.startsWith('=')), ['=3', '=29']);
    }
  });
});

describe('http1 guard: arbitrary input', () => {
  it('never throws on arbitrary bytes, fed whole or in pieces', () => {
    const headish = fc.oneof(
      fc.uint8Array({ maxLength: 300 }),
      fc.array(fc.constantFrom('GET ', 'POST ', '/', 'http://h', ' HTTP/1.1', ' HTTP/1.0', '\r\n', '\n', '\r', ':', ' ', 'Host: a', 'Content-Length: ',
        'Transfer-Encoding: chunked', '1', '-', ',', 'X-A: 1', 'Connection: keep-alive', '\0', '\u00ff'), { maxLength: 40 })
        .map((a) => new Uint8Array(Buffer.from(a.join(''), 'latin1'))),
    );
    fc.assert(fc.property(headish, fc.integer({ min: 1, max: 50 }), (bytes, step) => {
      const buf = Buffer.from(bytes);
      let resume = 0;
      for (let n = Math.min(step, buf.length); ; n = Math.min(n + step, buf.length)) {
        const f = findHeadEnd(buf.subarray(0, n), resume);
        if (f.end >= 0) {
          const r = parseRequestHead(buf, f.end, { max_header_fields: 10, max_header_line_bytes: 100, max_header_bytes: 200 });
          if (!('error' in r)) for (const o of r.lines) assert.ok(o >= 0 && o <= f.end);
          break;
        }
        resume = f.resume;
        if (n >= buf.length) break;
      }
      const s = new ChunkedScanner(() => {});
      for (let i = 0; i < buf.length; i += step) if (s.push(buf, i, Math.min(buf.length, i + step)) !== -1) break;
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
