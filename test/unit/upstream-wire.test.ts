// Wire-level conformance of the upstream client (src/upstream/client.ts) against scripted raw TCP upstreams:
// node:net (and node:tls) servers on 127.0.0.1 that write exact bytes, so response framing, malformed answers,
// keep-alive reuse, the request's own bytes, backpressure, timeouts and TLS are judged independently of
// node:http and of the engine under the client. Assertions are engine-neutral: status, headers, body bytes,
// UpstreamFailure.kind and the connections the server accepted (and saw closed); never error text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import {
  UpstreamClient, UpstreamFailure, headerValue, headerValues, resolveTransport,
  type FailureKind, type Transport, type UpstreamCall, type UpstreamHeaders, type UpstreamTimeouts,
} from '../../src/upstream/client.ts';
import type { InstanceConfig, InstanceTransportConfig } from '../../src/config/types.ts';
import { freePort } from '../helpers/free-port.ts';
import { failureOf, until } from '../helpers/upstream-call.ts';

const TIMEOUTS: UpstreamTimeouts = { connectMs: 5_000, firstByteMs: 10_000, idleMs: 10_000 };
const SHORT: UpstreamTimeouts = { connectMs: 5_000, firstByteMs: 300, idleMs: 300 };
const BODY = Buffer.from('{"q":1}');
const MAX = 64 * 1024 * 1024;
/** Per test: a hanging client fails its test instead of the whole file. */
const T = { timeout: 25_000 };
const EMPTY = Buffer.alloc(0);
const TLS_DIR = join(import.meta.dirname, '../fixtures/tls');

// ---------------------------------------------------------------------------------------------------------
// The scripted upstream: counts accepted connections, parses what the client sends (request head + a
// Content-Length body, repeatedly on one connection) and hands each request to the test, which answers with
// raw bytes.

interface Req {
  readonly method: string;
  readonly target: string;
  readonly version: string;
  /** As received, in order (names as sent). */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** The raw head, request line to the blank line. */
  readonly head: Buffer;
  body: Buffer;
  /** Order of its head over the whole server. */
  readonly index: number;
  /** Index on its connection. */
  readonly seq: number;
  /** Its connection's id (accept order). */
  readonly conn: number;
}

class Conn {
  closed = false;
  /** The peer sent FIN (only meaningful with allowHalfOpen). */
  ended = false;
  requests = 0;
  /** Bytes that did not parse as a request arrived. */
  bad = false;
  pending: Buffer = EMPTY;
  current: Req | undefined = undefined;
  bodyChunks: Buffer[] = [];
  bodyHave = 0;
  bodyNeed = 0;
  /** Every byte the client sent on this connection. */
  readonly raw: Buffer[] = [];
  constructor(readonly id: number, readonly socket: Socket) {}

  /** Strings are written byte for byte (latin1). */
  write(data: string | Buffer): boolean {
    if (this.socket.destroyed) return false;
    return this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }
}

interface UpstreamOptions {
  /** Called once a whole request (head and body) has arrived. */
  onRequest?: (req: Req, conn: Conn) => void;
  /** Called as soon as a request head has arrived, before its body. */
  onHead?: (req: Req, conn: Conn) => void;
  onConnection?: (conn: Conn) => void;
  tls?: boolean;
  allowHalfOpen?: boolean;
}

function header(req: Req, name: string): string[] {
  return req.headers.filter(([n]) => n.toLowerCase() === name).map(([, v]) => v);
}

function parseHead(head: Buffer, index: number, seq: number, conn: number): Req | undefined {
  const lines = head.subarray(0, head.length - 4).toString('latin1').split('\r\n');
  const m = /^([A-Z]+) (\S+) (HTTP\/\d\.\d)$/.exec(lines[0] ?? '');
  if (m === null) return undefined;
  const headers: Array<[string, string]> = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
  }
  return { method: m[1]!, target: m[2]!, version: m[3]!, headers, head, body: EMPTY, index, seq, conn };
}

class Upstream {
  accepts = 0;
  /** Request heads seen, over all connections (a request's `index`). */
  heads = 0;
  readonly conns: Conn[] = [];
  readonly requests: Req[] = [];
  origin = '';
  private server!: Server;

  constructor(private readonly opts: UpstreamOptions) {}

  async start(): Promise<this> {
    const accept = (socket: Socket): void => this.accept(socket);
    this.server = this.opts.tls === true
      ? createTlsServer({
        key: readFileSync(join(TLS_DIR, 'self-signed.key')),
        cert: readFileSync(join(TLS_DIR, 'self-signed.crt')),
        allowHalfOpen: this.opts.allowHalfOpen ?? false,
      }, accept)
      : createServer({ allowHalfOpen: this.opts.allowHalfOpen ?? false }, accept);
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    const { port } = this.server.address() as AddressInfo;
    this.origin = `${this.opts.tls === true ? 'https' : 'http'}://127.0.0.1:${port}`;
    return this;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  private accept(socket: Socket): void {
    const conn = new Conn(this.accepts++, socket);
    this.conns.push(conn);
    socket.on('error', () => { /* the client may reset; the test looks at `closed` */ });
    socket.on('end', () => { conn.ended = true; });
    socket.on('close', () => { conn.closed = true; });
    socket.on('data', (chunk: Buffer) => { conn.raw.push(chunk); this.feed(conn, chunk); });
    this.opts.onConnection?.(conn);
  }

  private feed(conn: Conn, chunk: Buffer): void {
    if (conn.bad) return;
    for (;;) {
      if (conn.current === undefined) {
        conn.pending = conn.pending.length === 0 ? chunk : Buffer.concat([conn.pending, chunk]);
        chunk = EMPTY;
        const end = conn.pending.indexOf('\r\n\r\n');
        if (end < 0) {
          if (conn.pending.length > 1024 * 1024) conn.bad = true;
          return;
        }
        const head = conn.pending.subarray(0, end + 4);
        chunk = conn.pending.subarray(end + 4);
        conn.pending = EMPTY;
        const req = parseHead(head, this.heads++, conn.requests, conn.id);
        if (req === undefined) { conn.bad = true; return; }
        const cl = header(req, 'content-length');
        conn.current = req;
        conn.bodyChunks = [];
        conn.bodyHave = 0;
        conn.bodyNeed = cl.length === 1 && /^\d+$/.test(cl[0]!) ? Number(cl[0]) : 0;
        this.opts.onHead?.(req, conn);
      }
      const take = Math.min(chunk.length, conn.bodyNeed - conn.bodyHave);
      if (take > 0) conn.bodyChunks.push(chunk.subarray(0, take));
      conn.bodyHave += take;
      chunk = chunk.subarray(take);
      if (conn.bodyHave < conn.bodyNeed) return;
      const req = conn.current;
      req.body = Buffer.concat(conn.bodyChunks);
      conn.current = undefined;
      conn.bodyChunks = [];
      conn.requests++;
      this.requests.push(req);
      this.opts.onRequest?.(req, conn);
      if (chunk.length === 0) return;
    }
  }

  async stop(): Promise<void> {
    for (const c of this.conns) c.socket.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

function ok(body: string | Buffer, extra = ''): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'latin1') : body;
  return Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${b.length}\r\n${extra}\r\n`, 'latin1'), b]);
}

/** A fresh upstream and client for one test; both are closed whatever happens. */
async function session(
  opts: UpstreamOptions, fn: (up: Upstream, client: UpstreamClient) => Promise<void>, timeouts: UpstreamTimeouts = TIMEOUTS,
): Promise<void> {
  const up = await new Upstream(opts).start();
  const client = new UpstreamClient(timeouts);
  try {
    await fn(up, client);
  } finally {
    await up.stop();
    await client.close();
  }
}

type Outcome =
  | { ok: true; status: number; headers: UpstreamHeaders; body: Buffer }
  | { ok: false; kind: FailureKind };

async function outcome(call: UpstreamCall): Promise<Outcome> {
  try {
    await call.head();
    const body = await call.readAll(MAX);
    return { ok: true, status: call.status, headers: call.headers, body };
  } catch (err) {
    assert.ok(err instanceof UpstreamFailure, `not an UpstreamFailure: ${String(err)}`);
    return { ok: false, kind: err.kind };
  }
}

async function post(client: UpstreamClient, up: Upstream, path = '/v1/x', headers: Record<string, string> = {},
  body: Buffer = BODY, transport?: Transport): Promise<Outcome> {
  return outcome(client.send(up.origin, path, headers, body, transport));
}

function assertOk(o: Outcome, body: string | Buffer, status = 200): Extract<Outcome, { ok: true }> {
  assert.ok(o.ok, `expected a response, got failure ${o.ok ? '' : o.kind}`);
  assert.equal(o.status, status);
  assert.deepEqual(o.body, typeof body === 'string' ? Buffer.from(body, 'latin1') : body);
  return o;
}

function assertFailed(o: Outcome, kinds: readonly FailureKind[]): void {
  assert.ok(!o.ok, `expected a failure (${kinds.join('|')}), got status ${o.ok ? `${o.status} body ${JSON.stringify(o.body.toString('latin1'))}` : ''}`);
  assert.ok(kinds.includes(o.kind), `failure kind ${o.kind}, expected ${kinds.join('|')}`);
}


const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 2));

/**
 * One turn of the event loop, so the client can put a finished connection back in its pool before the next
 * request; without it a request sent at once may rightly open a new one.
 */
async function settle(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
}

function transport(t: Partial<InstanceTransportConfig>): Transport {
  // resolveTransport reads only `transport`.
  const tr = resolveTransport({
    transport: { timeout_ms: undefined, ssl_verify: true, keepalive: true, keepalive_timeout_ms: 30_000, ...t },
  } as unknown as InstanceConfig);
  assert.ok(tr);
  return tr;
}

/**
 * The first request is answered with `bytes` (the connection left open, so only the client decides whether
 * to use it again); every later one with `fine`. The first must fail with one of `kinds` (or pass `accept`
 * when a response is a legitimate outcome); then the client must have closed that connection and the next
 * request must succeed on a new one.
 */
async function firstAnswer(bytes: string | Buffer, kinds: readonly FailureKind[], accept?: (o: Extract<Outcome, { ok: true }>) => void): Promise<void> {
  await session({
    onRequest: (req, conn) => { conn.write(req.index === 0 ? bytes : ok('fine')); },
  }, async (up, client) => {
    const first = await post(client, up);
    if (first.ok && accept !== undefined) accept(first);
    else assertFailed(first, kinds);
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
    assertOk(await post(client, up), 'fine');
    assert.equal(up.accepts, 2, 'the bad connection was not reused');
  });
}

// ---------------------------------------------------------------------------------------------------------
// Framing

test('Content-Length body: status, lower-cased headers, repeated names as arrays, exact bytes', T, async () => {
  await session({
    onRequest: (_req, conn) => {
      conn.write('HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Multi: a\r\nx-multi: b\r\n' +
        'X-Lead:   value\r\nX-Empty:\r\nContent-Length: 11\r\n\r\n{"a":"b c"}');
    },
  }, async (up, client) => {
    const o = assertOk(await post(client, up), '{"a":"b c"}', 201);
    assert.equal(headerValue(o.headers, 'content-type'), 'application/json');
    assert.deepEqual(headerValues(o.headers, 'x-multi'), ['a', 'b']);
    assert.equal(headerValue(o.headers, 'x-lead'), 'value');
    assert.equal(headerValue(o.headers, 'x-empty'), '');
  });
});

// RFC 9110 §5.5: leading and trailing whitespace is not part of a field value.
test('trailing whitespace (SP, HTAB) around a header value is not part of it', T, async () => {
  await session({
    onRequest: (_req, conn) => { conn.write('HTTP/1.1 200 OK\r\nX-Pad: \t spaced value \t\r\nContent-Length: 2\r\n\r\nok'); },
  }, async (up, client) => {
    assert.equal(headerValue(assertOk(await post(client, up), 'ok').headers, 'x-pad'), 'spaced value');
  });
});

const CHUNKED = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n' +
  '5;a=b\r\nhello\r\n' +
  'A\r\n0123456789\r\n' +
  'a;x="q";y\r\nabcdefghij\r\n' +
  '003\r\nxyz\r\n' +
  '0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n';
const CHUNKED_BODY = 'hello0123456789abcdefghijxyz';

test('chunked body: extensions, upper/lower hex, leading zeros, trailers; the connection is reused after', T, async () => {
  await session({
    onRequest: (req, conn) => { conn.write(req.index === 0 ? CHUNKED : ok('second')); },
  }, async (up, client) => {
    const o = assertOk(await post(client, up), CHUNKED_BODY);
    assert.equal(headerValue(o.headers, 'x-a'), '1');
    await settle();
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 1);
  });
});

test('chunked response delivered one byte per write', T, async () => {
  await session({
    onConnection: (conn) => conn.socket.setNoDelay(true),
    onRequest: (req, conn) => {
      if (req.index > 0) { conn.write(ok('second')); return; }
      void (async () => {
        for (const byte of Buffer.from(CHUNKED, 'latin1')) {
          conn.write(Buffer.of(byte));
          await new Promise((r) => setImmediate(r));
        }
      })();
    },
  }, async (up, client) => {
    assertOk(await post(client, up), CHUNKED_BODY);
    await settle();
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 1);
  });
});

test('a response split in two at every offset (Content-Length, chunked with trailers) on one connection', T, async () => {
  const responses = [
    Buffer.from('HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 11\r\n\r\nhello world', 'latin1'),
    Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\n', 'latin1'),
  ];
  const cases = responses.flatMap((r) => Array.from({ length: r.length - 1 }, (_, i) => [r, i + 1] as const));
  await session({
    onConnection: (conn) => conn.socket.setNoDelay(true),
    onRequest: (req, conn) => {
      const [r, at] = cases[req.index]!;
      conn.write(r.subarray(0, at));
      setTimeout(() => conn.write(r.subarray(at)), 1);
    },
  }, async (up, client) => {
    for (let i = 0; i < cases.length; i++) {
      await settle();
      const o = await post(client, up);
      assert.ok(o.ok && o.status === 200 && o.body.toString() === 'hello world', `split at ${cases[i]![1]}: ${JSON.stringify(o)}`);
    }
    assert.equal(up.accepts, 1);
  });
});

test('close-delimited body (no length, not chunked): the whole body up to the close; a new connection next', T, async () => {
  const body = randomBytes(200_000);
  await session({
    onRequest: (req, conn) => {
      if (req.index > 0) { conn.write(ok('second')); return; }
      conn.write('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n');
      conn.write(body.subarray(0, 1000));
      setImmediate(() => { conn.write(body.subarray(1000)); conn.socket.end(); });
    },
  }, async (up, client) => {
    assertOk(await post(client, up), body);
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
  });
});

test('204 and 304 without a length have no body; the connection is reused', T, async () => {
  const answers = ['HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n', 'HTTP/1.1 304 Not Modified\r\nX-A: 1\r\n\r\n'];
  await session({
    onRequest: (req, conn) => { conn.write(answers[req.index] ?? ok('last')); },
  }, async (up, client) => {
    assert.equal(headerValue(assertOk(await post(client, up), '', 204).headers, 'x-a'), '1');
    await settle();
    assert.equal(headerValue(assertOk(await post(client, up), '', 304).headers, 'x-a'), '1');
    await settle();
    assertOk(await post(client, up), 'last');
    assert.equal(up.accepts, 1);
  });
});

// RFC 9112 §6.3: a 304 never has a body, whatever its Content-Length (the representation's length) says.
test('304 with a Content-Length has no body (the next response is not eaten)', T, async () => {
  await session({
    onRequest: (req, conn) => { conn.write(req.index === 0 ? 'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n' : ok('second')); },
  }, async (up, client) => {
    assertOk(await post(client, up), '', 304);
    await settle();
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 1);
  });
});

test('103 Early Hints before the final response: the final status and headers only', T, async () => {
  await session({
    onRequest: (req, conn) => {
      conn.write(req.index > 0 ? ok('second')
        : 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    },
  }, async (up, client) => {
    const o = assertOk(await post(client, up), 'ok');
    assert.equal(headerValue(o.headers, 'link'), undefined);
    assertOk(await post(client, up), 'second');
  });
});

// RFC 9110 §15.2: a client MUST parse 1xx responses it did not ask for.
test('an unsolicited 100 Continue before the final response is skipped', T, async () => {
  await session({
    onRequest: (_req, conn) => { conn.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'); },
  }, async (up, client) => {
    assertOk(await post(client, up), 'ok');
  });
});

test('HTTP/1.0 response without keep-alive: complete, and the client closes the connection instead of reusing it', T, async () => {
  await session({
    onRequest: (req, conn) => { conn.write(req.index === 0 ? 'HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc' : ok('second')); },
  }, async (up, client) => {
    assertOk(await post(client, up), 'abc');
    await until(() => up.conns[0]!.closed, 'the client to close the HTTP/1.0 connection');
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
  });
});

test('HTTP/1.0 close-delimited body; and HTTP/1.0 with Connection: keep-alive may be reused', T, async () => {
  await session({
    onRequest: (req, conn) => {
      if (req.index === 0) { conn.write('HTTP/1.0 200 OK\r\n\r\nuntil close'); conn.socket.end(); return; }
      conn.write('HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nkept');
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'until close');
    assertOk(await post(client, up), 'kept');
    assertOk(await post(client, up), 'kept');
    // Reusing a 1.0 keep-alive connection is allowed, not required.
    assert.ok(up.accepts === 2 || up.accepts === 3, `${up.accepts} connections`);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Malformed responses: each must fail (never resolve a wrong body), and the connection must not be reused.

const CHUNKED_HEAD = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';

test('chunk size that is not hex: protocol_error', T, async () => {
  await firstAnswer(`${CHUNKED_HEAD}zz\r\nhello\r\n0\r\n\r\n`, ['protocol_error']);
});

test('negative chunk size: protocol_error', T, async () => {
  await firstAnswer(`${CHUNKED_HEAD}-5\r\nhello\r\n0\r\n\r\n`, ['protocol_error']);
});

test('chunk size overflowing 64 bits (20 hex digits, 2^64+5 and all F): protocol_error, not a wrapped size', T, async () => {
  await firstAnswer(`${CHUNKED_HEAD}00010000000000000005\r\nhello\r\n0\r\n\r\n`, ['protocol_error']);
  await firstAnswer(`${CHUNKED_HEAD}FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n`, ['protocol_error']);
});

test('chunk data longer than declared: protocol_error', T, async () => {
  await firstAnswer(`${CHUNKED_HEAD}3\r\nhello\r\n0\r\n\r\n`, ['protocol_error']);
});

test('chunk data not followed by CRLF: protocol_error', T, async () => {
  await firstAnswer(`${CHUNKED_HEAD}5\r\nhello0\r\n\r\n`, ['protocol_error']);
});

test('Content-Length that is not a decimal number: protocol_error', T, async () => {
  for (const cl of ['abc', '12abc', '-1', '+5', '0x5', '5 5', '5.0']) {
    await firstAnswer(`HTTP/1.1 200 OK\r\nContent-Length: ${cl}\r\n\r\nhello`, ['protocol_error']);
  }
});

test('two different Content-Length values (two fields, or a list): protocol_error', T, async () => {
  await firstAnswer('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello', ['protocol_error']);
  await firstAnswer('HTTP/1.1 200 OK\r\nContent-Length: 3, 5\r\n\r\nhello', ['protocol_error']);
});

test('Content-Length with Transfer-Encoding: chunked: never framed by the length, connection never reused', T, async () => {
  // RFC 9112 §6.3: Transfer-Encoding overrides the length, and the message "ought to be handled as an error":
  // either outcome is accepted, a body framed by the length is not.
  const chunkedOnly = (o: Extract<Outcome, { ok: true }>): void => { assertOk(o, 'hello'); };
  await firstAnswer('HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', ['protocol_error'], chunkedOnly);
  await firstAnswer('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n', ['protocol_error'], chunkedOnly);
});

test('a garbage status line: protocol_error', T, async () => {
  for (const line of ['FOO BAR', 'HTTP/1.1 abc OK', 'HTTP/1.1 20 OK', 'HTTP/1.1 2000 OK', 'SSH-2.0-OpenSSH_9.6']) {
    await firstAnswer(`${line}\r\nContent-Length: 2\r\n\r\nok`, ['protocol_error']);
  }
});

test('a header line without a colon: protocol_error', T, async () => {
  await firstAnswer('HTTP/1.1 200 OK\r\nX-A: 1\r\nNoColonHere\r\nContent-Length: 2\r\n\r\nok', ['protocol_error']);
});

test('obs-fold continuation line: protocol_error, or folded into one value with spaces', T, async () => {
  // RFC 9112 §5.2: a gateway either rejects the message or replaces each obs-fold with SP.
  await firstAnswer('HTTP/1.1 200 OK\r\nX-A: a\r\n  b\r\nContent-Length: 2\r\n\r\nok', ['protocol_error'], (o) => {
    assertOk(o, 'ok');
    assert.match(String(headerValue(o.headers, 'x-a')), /^a[ \t]+b$/);
  });
});

test('NUL in a header value: protocol_error, or replaced (never passed on)', T, async () => {
  // RFC 9110 §5.5: reject, or replace NUL with SP.
  await firstAnswer('HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok', ['protocol_error'], (o) => {
    assertOk(o, 'ok');
    assert.ok(!String(headerValue(o.headers, 'x-a')).includes('\0'));
  });
});

test('a response head past 64 KiB that never ends: protocol_error, not buffered forever', T, async () => {
  const heads = [
    (i: number) => `X-Pad-${i}: ${'a'.repeat(1000)}\r\n`,
    () => 'a'.repeat(1024),
  ];
  for (const [v, line] of heads.entries()) {
    let written = 0;
    await session({
      onRequest: (_req, conn) => {
        conn.write(v === 0 ? 'HTTP/1.1 200 OK\r\n' : 'HTTP/1.1 200 OK\r\nX-Endless: ');
        const pump = (): void => {
          while (written < 1024 * 1024 && !conn.socket.destroyed) {
            written += 1024;
            if (!conn.write(line(written))) { conn.socket.once('drain', pump); return; }
          }
        };
        pump();
      },
    }, async (up, client) => {
      assertFailed(await post(client, up), ['protocol_error']);
      await until(() => up.conns[0]!.closed, 'the client to close the connection');
    });
  }
});


/** Head, then next() until null: a stream reader's view of the same answer. */
async function streamOutcome(call: UpstreamCall): Promise<Outcome> {
  try {
    await call.head();
    const parts: Buffer[] = [];
    for (let c = await call.next(); c !== null; c = await call.next()) parts.push(c);
    return { ok: true, status: call.status, headers: call.headers, body: Buffer.concat(parts) };
  } catch (err) {
    assert.ok(err instanceof UpstreamFailure, `not an UpstreamFailure: ${String(err)}`);
    return { ok: false, kind: err.kind };
  }
}

/**
 * The first answer is `bytes`, after which the server closes (FIN, or RST with `reset`): whether read with
 * readAll or next(), the call must fail (connect_error or protocol_error), never end as if complete.
 */
async function truncated(bytes: string, reset = false): Promise<void> {
  for (const reader of [outcome, streamOutcome]) {
    await session({
      onRequest: (req, conn) => {
        if (req.index > 0) { conn.write(ok('fine')); return; }
        conn.write(bytes);
        if (reset) setImmediate(() => conn.socket.resetAndDestroy());
        else conn.socket.end();
      },
    }, async (up, client) => {
      assertFailed(await reader(client.send(up.origin, '/', {}, BODY)), ['connect_error', 'protocol_error']);
      assertOk(await post(client, up), 'fine');
    });
  }
}

test('body ends early: server closes mid Content-Length (keep-alive, Connection: close, and a reset)', T, async () => {
  await truncated(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${'a'.repeat(10)}`);
  await truncated(`HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100\r\n\r\n${'a'.repeat(10)}`);
  await truncated(`HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n${'a'.repeat(10)}`);
  await truncated(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${'a'.repeat(10)}`, true);
});

test('body ends early: server closes mid chunk', T, async () => {
  await truncated(`${CHUNKED_HEAD}10\r\nabc`);
  await truncated(`HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc`);
});

test('body ends early: server closes between chunks, before the last chunk', T, async () => {
  await truncated(`${CHUNKED_HEAD}3\r\nabc\r\n`);
  await truncated(`HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n`);
});

// ---------------------------------------------------------------------------------------------------------
// Keep-alive

test('sequential requests reuse one connection', T, async () => {
  await session({ onRequest: (req, conn) => { conn.write(ok(`r${req.index}`)); } }, async (up, client) => {
    for (let i = 0; i < 3; i++) {
      await settle();
      assertOk(await post(client, up), `r${i}`);
    }
    assert.equal(up.accepts, 1);
    assert.equal(up.conns[0]!.requests, 3);
  });
});

test('Connection: close in the response: the client closes it and opens a new connection next', T, async () => {
  await session({
    onRequest: (req, conn) => { conn.write(req.index === 0 ? ok('first', 'Connection: close\r\n') : ok('second')); },
  }, async (up, client) => {
    assertOk(await post(client, up), 'first');
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
  });
});

test('the server closes an idle kept-alive connection: the next request succeeds on a new one', T, async () => {
  await session({
    allowHalfOpen: true,
    onRequest: (req, conn) => {
      conn.write(ok(`r${req.index}`));
      if (req.index === 0) conn.socket.end();
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'r0');
    // The client has seen the FIN once it closes its own side.
    await until(() => up.conns[0]!.ended, 'the client to close its side');
    assertOk(await post(client, up), 'r1');
    assert.equal(up.accepts, 2);
  });
});

test('the server closes (FIN, or reset) after reading the request without answering: connect_error, no retry', T, async () => {
  for (const reset of [false, true]) {
    await session({
      onRequest: (_req, conn) => { if (reset) conn.socket.resetAndDestroy(); else conn.socket.end(); },
    }, async (up, client) => {
      assertFailed(await post(client, up), ['connect_error']);
      // A POST is not idempotent: it is not sent again.
      assert.equal(up.heads, 1);
    });
  }
});

test('a kept-alive connection closed (FIN, or reset) as the next request arrives: that request is sent once more on a new connection', T, async () => {
  for (const reset of [false, true]) {
    await session({
      allowHalfOpen: true,
      onRequest: (req, conn) => {
        // Answers the first request of each connection; a second one on it is dropped unanswered.
        if (req.seq === 0) conn.write(ok(`r${req.index}`));
        else if (reset) conn.socket.resetAndDestroy();
        else conn.socket.end();
      },
    }, async (up, client) => {
      assertOk(await post(client, up), 'r0');
      assertOk(await post(client, up), 'r2');
      assert.equal(up.heads, 3, 'the dropped request was sent once more');
      assert.equal(up.accepts, 2);
    });
  }
});

test('the resend is once: a new connection that fails the same way fails the request; a late drop or a started answer is never resent', T, async () => {
  // Every request after the first is dropped unanswered, on any connection.
  await session({
    onRequest: (req, conn) => { if (req.index === 0) conn.write(ok('r0')); else conn.socket.resetAndDestroy(); },
  }, async (up, client) => {
    assertOk(await post(client, up), 'r0');
    assertFailed(await post(client, up), ['connect_error']);
    assert.equal(up.heads, 3, 'sent on the kept-alive connection, then once on a new one');
  });
  // Dropped long after the write: the upstream may have worked on the request, so it is not sent again.
  await session({
    onRequest: (req, conn) => {
      if (req.seq === 0) { conn.write(ok('r0')); return; }
      setTimeout(() => conn.socket.resetAndDestroy(), 1500);
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'r0');
    assertFailed(await post(client, up), ['connect_error']);
    assert.equal(up.heads, 2, 'a request dropped 1.5 s after it was written is not resent');
  });
  // Part of the answer's head came before the reset: the upstream answered, so nothing is sent again.
  await session({
    onRequest: (req, conn) => {
      if (req.seq === 0) { conn.write(ok('r0')); return; }
      conn.socket.write('HTTP/1.1 200 OK\r\ncontent-');
      setTimeout(() => conn.socket.resetAndDestroy(), 50);
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'r0');
    assertFailed(await post(client, up), ['connect_error', 'protocol_error']);
    assert.equal(up.heads, 2);
  });
});

test('an unsolicited second response in the same packet: the connection is not reused', T, async () => {
  await session({
    onRequest: (req, conn) => {
      conn.write(req.index === 0 ? Buffer.concat([ok('first'), ok('garbage')]) : ok('second'));
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'first');
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
    assert.equal(up.conns[0]!.requests, 1);
  });
});

test('unsolicited bytes on an idle kept-alive connection: the client closes it; the next request uses a new one', T, async () => {
  await session({
    onRequest: (req, conn) => {
      conn.write(req.index === 0 ? ok('first') : ok('second'));
      if (req.index === 0) setTimeout(() => conn.write(ok('garbage')), 20);
    },
  }, async (up, client) => {
    assertOk(await post(client, up), 'first');
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
  });
});

test('Keep-Alive: timeout=1 is honoured: the client closes the idle connection; later requests use a new one', T, async () => {
  await session({
    onRequest: (req, conn) => { conn.write(ok(`r${req.index}`, 'Keep-Alive: timeout=1\r\n')); },
  }, async (up, client) => {
    assertOk(await post(client, up), 'r0');
    await until(() => up.conns[0]!.closed, 'the client to close the idle connection');
    assertOk(await post(client, up), 'r1');
    assert.equal(up.accepts, 2);
  });
});

test('transport keepalive: false: a connection per request, each closed by the client', T, async () => {
  await session({ onRequest: (req, conn) => { conn.write(ok(`r${req.index}`)); } }, async (up, client) => {
    const t = transport({ keepalive: false });
    assertOk(await post(client, up, '/', {}, BODY, t), 'r0');
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
    assertOk(await post(client, up, '/', {}, BODY, t), 'r1');
    assert.equal(up.accepts, 2);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The request side

test('the request on the wire: one HTTP/1.1 POST with path and query, host, content-length, the headers, the body', T, async () => {
  const body = Buffer.from(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'h\u00e9llo \u2028 \u{1F600}' }] }));
  const path = '/v1/chat/completions?api-version=2024-10-21&q=a%20b';
  const headers = { 'content-type': 'application/json', authorization: 'Bearer sk-test', 'x-spaces': 'a  b', 'X-Mixed-Case': 'V' };
  await session({ onRequest: (_req, conn) => { conn.write(ok('done')); } }, async (up, client) => {
    assertOk(await post(client, up, path, headers, body), 'done');
    assert.equal(up.requests.length, 1);
    const req = up.requests[0]!;
    assert.equal(req.method, 'POST');
    assert.equal(req.target, path);
    assert.equal(req.version, 'HTTP/1.1');
    assert.deepEqual(header(req, 'host'), [`127.0.0.1:${up.port}`]);
    assert.deepEqual(header(req, 'content-length'), [String(body.length)]);
    assert.deepEqual(header(req, 'transfer-encoding'), []);
    for (const [name, value] of Object.entries(headers)) assert.deepEqual(header(req, name.toLowerCase()), [value], name);
    assert.deepEqual(req.body, body);
    const conn = up.conns[0]!;
    assert.ok(!conn.bad && conn.pending.length === 0 && conn.current === undefined, 'nothing but the one request was sent');
  });
});

test('an empty request body: content-length 0 (or none), never chunked', T, async () => {
  await session({ onRequest: (_req, conn) => { conn.write(ok('done')); } }, async (up, client) => {
    assertOk(await post(client, up, '/', {}, EMPTY), 'done');
    const req = up.requests[0]!;
    assert.ok(['0', undefined].includes(header(req, 'content-length')[0]), 'content-length');
    assert.deepEqual(header(req, 'transfer-encoding'), []);
    assert.equal(req.body.length, 0);
  });
});

test('CR or LF in a header name or value never reaches the wire as a header line', T, async () => {
  const injections: Array<Record<string, string>> = [
    { 'x-a': 'v\r\nx-injected: 1' },
    { 'x-a': 'v\nx-injected: 1' },
    { 'x-a': 'v\rx-injected: 1' },
    { 'x-a\r\nx-injected': '1' },
  ];
  await session({ onRequest: (_req, conn) => { conn.write(ok('done')); } }, async (up, client) => {
    for (const h of injections) {
      let call: UpstreamCall;
      try {
        call = client.send(up.origin, '/', h, BODY);
      } catch {
        continue; // refused at send: fine
      }
      // A failure or a response are both fine: what matters is what the server received.
      await outcome(call);
    }
    assertOk(await post(client, up), 'done');
    for (const conn of up.conns) {
      const lines = Buffer.concat(conn.raw).toString('latin1').split(/\r\n|\n|\r/);
      assert.ok(!lines.some((l) => /^x-injected/i.test(l)), 'an injected header line reached the server');
    }
  });
});

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('a 4 MiB request body to an upstream that reads slowly arrives intact', T, async () => {
  const body = randomBytes(4 * 1024 * 1024);
  await session({
    onConnection: (conn) => {
      // Read in short bursts so the client's writes fill the socket and wait.
      conn.socket.pause();
      const t = setInterval(() => { conn.socket.resume(); setImmediate(() => conn.socket.pause()); }, 3);
      conn.socket.on('close', () => clearInterval(t));
    },
    onRequest: (req, conn) => { conn.write(ok(`${req.body.length} ${sha256(req.body)}`)); },
  }, async (up, client) => {
    assertOk(await post(client, up, '/', { 'content-type': 'application/octet-stream' }, body), `${body.length} ${sha256(body)}`);
  });
});

// A client that counts a Buffer body as sent once handed to the socket would pool the connection (body still
// unsent) after an early answer and reuse it.
test('413 answered early without reading the body: 413 (or a failure), and that connection is not reused', T, async () => {
  // Larger than the socket buffers can swallow, so the client is still writing when the 413 arrives.
  const big = Buffer.alloc(16 * 1024 * 1024, 0x7a);
  await session({
    onHead: (req, conn) => {
      if (req.index !== 0) return;
      conn.write('HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n');
      conn.socket.pause();
    },
    onRequest: (req, conn) => { if (req.index !== 0) conn.write(ok('second')); },
  }, async (up, client) => {
    const first = await post(client, up, '/', {}, big);
    if (first.ok) assertOk(first, '', 413);
    // Now let a client that insists on finishing the body finish it: it still must not reuse the connection.
    up.conns[0]!.socket.resume();
    await settle();
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
  });
});

// ---------------------------------------------------------------------------------------------------------
// Streaming and backpressure

test('a 16 MiB chunked response read slowly through next() arrives intact', T, async () => {
  const body = randomBytes(16 * 1024 * 1024);
  await session({
    onRequest: (_req, conn) => {
      conn.write(CHUNKED_HEAD);
      let off = 0;
      let n = 0;
      const pump = (): void => {
        while (off < body.length) {
          const piece = body.subarray(off, off + 1 + ((n++ * 7919) % 100_000));
          off += piece.length;
          if (!conn.write(Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]))) {
            conn.socket.once('drain', pump);
            return;
          }
        }
        conn.write('0\r\n\r\n');
      };
      pump();
    },
  }, async (up, client) => {
    const call = client.send(up.origin, '/', {}, BODY);
    await call.head();
    const hash = createHash('sha256');
    let total = 0;
    let reads = 0;
    for (let c = await call.next(); c !== null; c = await call.next()) {
      hash.update(c);
      total += c.length;
      if (++reads % 32 === 0) await tick();
    }
    assert.equal(total, body.length);
    assert.equal(hash.digest('hex'), sha256(body));
  });
});

test('backpressure: while next() is not called the upstream\'s writes stall; reading resumes them', T, async () => {
  const TOTAL = 128 * 1024 * 1024;
  const piece = Buffer.alloc(64 * 1024, 0x62);
  let sent = 0;
  await session({
    onRequest: (_req, conn) => {
      conn.write(`HTTP/1.1 200 OK\r\nContent-Length: ${TOTAL}\r\n\r\n`);
      const pump = (): void => {
        while (sent < TOTAL && !conn.socket.destroyed) {
          sent += piece.length;
          if (!conn.write(piece)) { conn.socket.once('drain', pump); return; }
        }
      };
      pump();
    },
  }, async (up, client) => {
    const call = client.send(up.origin, '/', {}, BODY);
    await call.head();
    // Stalled: the server made no progress over 20 consecutive polls (a machine pause can only make this pass
    // early, never fail a client that pauses).
    let last = -1;
    let still = 0;
    await until(() => {
      still = sent === last ? still + 1 : 0;
      last = sent;
      return still >= 20 || sent >= TOTAL;
    }, 'the upstream\'s writes to stall');
    const at = sent;
    assert.ok(at < TOTAL / 2, `${at} bytes went out while nobody read`);
    assert.ok(up.conns[0]!.socket.writableLength > 0, 'the server has unsent bytes');
    while (sent < at + 8 * 1024 * 1024) assert.notEqual(await call.next(), null);
    call.abort();
    await until(() => up.conns[0]!.closed, 'the aborted connection to close');
  });
});

test('abort() mid-body: the pending read fails as aborted, the connection closes and is not reused', T, async () => {
  await session({
    onRequest: (req, conn) => {
      conn.write(req.index === 0 ? 'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npart' : ok('second'));
    },
  }, async (up, client) => {
    const call = client.send(up.origin, '/', {}, BODY);
    await call.head();
    assert.equal((await call.next())?.toString(), 'part');
    const pending = call.next();
    call.abort();
    assert.equal((await failureOf(pending)).kind, 'aborted');
    await until(() => up.conns[0]!.closed, 'the aborted connection to close');
    assertOk(await post(client, up), 'second');
    // A client may also open (and close) a connection that carries nothing; what matters is where 'second' went.
    assert.notEqual(up.requests[1]!.conn, 0);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Timeouts

test('no answer within firstByteMs: timeout; the connection is closed, not reused', T, async () => {
  await session({
    onRequest: (req, conn) => { if (req.index > 0) conn.write(ok('second')); },
  }, async (up, client) => {
    const started = Date.now();
    assertFailed(await post(client, up), ['timeout']);
    assert.ok(Date.now() - started < 10_000);
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
    assertOk(await post(client, up), 'second');
    assert.equal(up.accepts, 2);
  }, SHORT);
});

test('a body that stalls past idleMs: timeout after the bytes that came', T, async () => {
  await session({
    onRequest: (_req, conn) => { conn.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart'); },
  }, async (up, client) => {
    const call = client.send(up.origin, '/', {}, BODY);
    await call.head();
    const started = Date.now();
    let got = '';
    const f = await failureOf((async () => { for (let c = await call.next(); c !== null; c = await call.next()) got += c.toString(); })());
    assert.equal(f.kind, 'timeout');
    assert.equal(got, 'part');
    assert.ok(Date.now() - started < 10_000);
    await until(() => up.conns[0]!.closed, 'the client to close the connection');
  }, SHORT);
});

test('a closed port: connect_error', T, async () => {
  const port = await freePort();
  const client = new UpstreamClient(TIMEOUTS);
  try {
    assertFailed(await outcome(client.send(`http://127.0.0.1:${port}`, '/', {}, BODY)), ['connect_error']);
  } finally {
    await client.close();
  }
});

// ---------------------------------------------------------------------------------------------------------
// TLS (test/fixtures/tls: a self-signed certificate for 127.0.0.1)

test('https with ssl_verify: false: works against a self-signed certificate, and the connection is reused', T, async () => {
  await session({ tls: true, onRequest: (req, conn) => { conn.write(ok(`r${req.index}`)); } }, async (up, client) => {
    const t = transport({ ssl_verify: false });
    assertOk(await post(client, up, '/', {}, BODY, t), 'r0');
    await settle();
    assertOk(await post(client, up, '/', {}, BODY, t), 'r1');
    assert.equal(up.accepts, 1);
  });
});

test('https with ssl_verify: true against a self-signed certificate: connect_error, nothing sent', T, async () => {
  await session({ tls: true, onRequest: (_req, conn) => { conn.write(ok('no')); } }, async (up, client) => {
    assertFailed(await post(client, up, '/', {}, BODY, transport({ ssl_verify: true })), ['connect_error']);
    assert.equal(up.heads, 0);
  });
});

test('https without a transport verifies certificates: self-signed is a connect_error', T, async () => {
  await session({ tls: true, onRequest: (_req, conn) => { conn.write(ok('no')); } }, async (up, client) => {
    assertFailed(await post(client, up), ['connect_error']);
    assert.equal(up.heads, 0);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Concurrency

test('50 concurrent requests to one origin, then 50 more: right bodies, idle connections reused', T, async () => {
  await session({
    onRequest: (req, conn) => { setImmediate(() => conn.write(ok(`id=${header(req, 'x-id')[0]}`))); },
  }, async (up, client) => {
    const wave = async (base: number): Promise<void> => {
      const outs = await Promise.all(Array.from({ length: 50 }, (_, i) => post(client, up, '/', { 'x-id': String(base + i) })));
      outs.forEach((o, i) => assertOk(o, `id=${base + i}`));
    };
    await wave(0);
    assert.ok(up.accepts <= 50, `${up.accepts} connections for 50 requests`);
    await settle();
    await wave(100);
    assert.ok(up.accepts <= 55, `${up.accepts} connections after a second wave of 50`);
    assert.equal(up.requests.length, 100);
  });
});
