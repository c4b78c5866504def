// The upstream client's response-head parser (src/upstream/h1-head.ts): what frames the body, when the
// connection may be reused, and which heads are refused. Wire behaviour is in upstream-wire.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { headerValue, headerValues, parseResponseHead, type ResponseHead } from '../../src/upstream/h1-head.ts';

function ok(s: string): ResponseHead {
  const h = parseResponseHead(s);
  assert.equal(typeof h, 'object', `refused: ${String(h)}`);
  return h as ResponseHead;
}

function refused(s: string): string {
  const h = parseResponseHead(s);
  assert.equal(typeof h, 'string', `accepted: ${JSON.stringify(h)}`);
  return h as string;
}

test('a length-framed HTTP/1.1 answer is reusable; headers are lower-cased, in order, a repeated name once per line', () => {
  const h = ok('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nSet-Cookie: a=1\r\nset-cookie: b=2');
  assert.equal(h.status, 200);
  assert.equal(h.framing, 'length');
  assert.equal(h.length, 12);
  assert.equal(h.reusable, true);
  assert.equal(headerValue(h.headers, 'content-type'), 'application/json');
  assert.deepEqual(headerValues(h.headers, 'set-cookie'), ['a=1', 'b=2']);
  assert.deepEqual(h.headers, ['content-type', 'application/json', 'content-length', '12', 'set-cookie', 'a=1', 'set-cookie', 'b=2']);
});

test('values are trimmed of surrounding whitespace; an empty reason phrase and no reason at all are accepted', () => {
  assert.equal(headerValue(ok('HTTP/1.1 200 \r\nX-A: \t v \t\r\nContent-Length: 0').headers, 'x-a'), 'v');
  assert.equal(ok('HTTP/1.1 204').status, 204);
});

test('chunked wins over a length, and the connection is then never reused', () => {
  const h = ok('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked');
  assert.equal(h.framing, 'chunked');
  assert.equal(h.reusable, false);
  const c = ok('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked');
  assert.equal(c.framing, 'chunked');
  assert.equal(c.reusable, true);
});

test('chunked that is not the final coding is refused; an unknown final coding reads until close', () => {
  refused('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip');
  const h = ok('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip');
  assert.equal(h.framing, 'close');
  assert.equal(h.reusable, false);
});

test('Content-Length: equal repeats are one length; different, signed, spaced-inside or huge values are refused', () => {
  assert.equal(ok('HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7').length, 7);
  assert.equal(ok('HTTP/1.1 200 OK\r\nContent-Length: 7, 7').length, 7);
  refused('HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8');
  refused('HTTP/1.1 200 OK\r\nContent-Length: -1');
  refused('HTTP/1.1 200 OK\r\nContent-Length: +5');
  refused('HTTP/1.1 200 OK\r\nContent-Length: 1 2');
  refused('HTTP/1.1 200 OK\r\nContent-Length: 0x10');
  refused('HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999');
  // 16 digits, but past Number.MAX_SAFE_INTEGER: no exact length.
  refused('HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999');
  assert.equal(ok('HTTP/1.1 200 OK\r\nContent-Length: 9007199254740991').length, Number.MAX_SAFE_INTEGER);
});

test('no framing: read until close, never reused; 204, 304 and 1xx have no body', () => {
  const h = ok('HTTP/1.1 200 OK\r\nContent-Type: text/plain');
  assert.equal(h.framing, 'close');
  assert.equal(h.reusable, false);
  for (const s of [204, 304, 103, 100]) assert.equal(ok(`HTTP/1.1 ${s} X\r\nContent-Length: 10`).framing, 'none');
  // What a 204 announced (a length it may not have, a transfer coding) may follow: the connection is not reused.
  assert.equal(ok('HTTP/1.1 204 X\r\nContent-Length: 10').reusable, false);
  assert.equal(ok('HTTP/1.1 204 X\r\nTransfer-Encoding: chunked').reusable, false);
  assert.equal(ok('HTTP/1.1 304 X\r\nTransfer-Encoding: chunked').reusable, false);
  assert.equal(ok('HTTP/1.1 204 X\r\nContent-Length: 0').reusable, true);
  assert.equal(ok('HTTP/1.1 304 X\r\nContent-Length: 10').reusable, true, "a 304's length is the representation's");
  assert.equal(ok('HTTP/1.1 204 X').reusable, true);
});

test('Connection: close and HTTP/1.0 answers are not reused; the Keep-Alive hint is read', () => {
  assert.equal(ok('HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0').reusable, false);
  assert.equal(ok('HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0').reusable, false);
  assert.equal(ok('HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 0').reusable, true);
  assert.equal(ok('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 0').keepAliveMs, 5000);
  assert.equal(ok('HTTP/1.1 200 OK\r\nKeep-Alive: max=100\r\nContent-Length: 0').keepAliveMs, -1);
  assert.equal(ok('HTTP/1.1 200 OK\r\nContent-Length: 0').keepAliveMs, -1);
});

test('malformed heads are refused: status line, versions, names, folding, controls', () => {
  for (const s of [
    'HTTP/1.1 20 OK', 'HTTP/1.1 2000 OK', 'HTTP/1.1 abc OK', 'HTTP/2 200 OK', 'HTTP/1.2 200 OK', 'HTTP/1.1  200 OK',
    'HTTP/1.1 099 X', 'ICY 200 OK', 'HTTP/1.1 200OK', 'HTTP/1.1 200 O\u0000K',
    'HTTP/1.1 200 OK\r\nNo colon here', 'HTTP/1.1 200 OK\r\nBad Name: x', 'HTTP/1.1 200 OK\r\n: empty name',
    'HTTP/1.1 200 OK\r\nX-A: one\r\n two', 'HTTP/1.1 200 OK\r\nX-A: a\u0000b', 'HTTP/1.1 200 OK\r\nX-A: a\u0001b',
    'HTTP/1.1 200 OK\r\nX-A: a\u007fb',
    'HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0', 'HTTP/1.1 200 O\rK\r\nContent-Length: 0', 'HTTP/1.1 200 OK\r\nX-A: a\r',
    'HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 0', 'HTTP/1.1 200 OK\r\nX-\u00e9: a',
  ]) refused(s);
});

test('values with bytes past ASCII are read as UTF-8 (relayed as UTF-8, they keep their bytes); bytes that are not UTF-8 become U+FFFD', () => {
  const latin1 = (bytes: Buffer): string => bytes.toString('latin1');
  const utf8 = Buffer.from('attachment; filename="café ☕.txt"', 'utf8');
  const h = ok(`HTTP/1.1 200 OK\r\nContent-Disposition: ${latin1(utf8)}\r\nX-Raw: a${latin1(Buffer.from([0xe9]))}b\r\nX-Plain: ok\r\nContent-Length: 0`);
  const v = headerValue(h.headers, 'content-disposition')!;
  assert.equal(v, 'attachment; filename="café ☕.txt"');
  assert.ok(Buffer.from(v, 'utf8').equals(utf8), 'written as UTF-8, the value is the bytes the upstream sent');
  assert.equal(headerValue(h.headers, 'x-raw'), 'a\ufffdb');
  assert.equal(headerValue(h.headers, 'x-plain'), 'ok');
  // What no UTF-8 decoding can give: a line break. Overlong and truncated sequences of CR/LF stay replacement characters.
  for (const bytes of [[0xc0, 0x8d], [0xc0, 0x8a], [0xe0, 0x80, 0x8a], [0xc4], [0xc4, 0x0a]]) {
    const r = parseResponseHead(`HTTP/1.1 200 OK\r\nX-A: ${latin1(Buffer.from(bytes))}\r\nContent-Length: 0`);
    if (typeof r === 'string') continue;
    const x = headerValue(r.headers, 'x-a')!;
    assert.ok(!/[\r\n\0]/.test(x), `bytes ${bytes.join(',')} gave ${JSON.stringify(x)}`);
  }
});

test('names like __proto__ and constructor are plain fields', () => {
  const h = ok('HTTP/1.1 200 OK\r\n__proto__: x\r\nconstructor: y\r\nContent-Length: 0');
  assert.deepEqual(h.headers, ['__proto__', 'x', 'constructor', 'y', 'content-length', '0']);
  assert.equal(headerValue(h.headers, '__proto__'), 'x');
  assert.equal(headerValue(h.headers, 'constructor'), 'y');
});

test('parsing is linear: a 60 KiB head of many fields and a long value parse at once', () => {
  const lines = Array.from({ length: 2000 }, (_, i) => `X-${i}: ${'v'.repeat(20)}`);
  const h = ok(`HTTP/1.1 200 OK\r\n${lines.join('\r\n')}\r\nX-Long: ${' '.repeat(10_000)}v${' '.repeat(10_000)}\r\nContent-Length: 0`);
  assert.equal(headerValue(h.headers, 'x-1999'), 'v'.repeat(20));
  assert.equal(headerValue(h.headers, 'x-long'), 'v');
});
