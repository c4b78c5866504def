// The upstream client's dispatch handler (src/upstream/client.ts UpstreamCall) against a real node:http server
// on 127.0.0.1: abort before the headers and mid-body, backpressure (the socket pauses while a reader is not
// asking, and resumes), readAll's cap, first-byte and idle timeouts, and an unreachable upstream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UpstreamClient, headerValue, headerValues, type UpstreamCall } from '../../src/upstream/client.ts';
import { freePorts } from '../helpers/free-port.ts';
import { failureOf, until } from '../helpers/upstream-call.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

async function serve(handler: Handler): Promise<{ origin: string; server: Server; closed: Promise<void>; seen: () => number }> {
  let requests = 0;
  let closedResolve!: () => void;
  const closed = new Promise<void>((r) => { closedResolve = r; });
  const server = createServer((req, res) => {
    res.on('close', () => closedResolve());
    req.resume();
    req.on('end', () => { requests++; handler(req, res); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return { origin: `http://127.0.0.1:${port}`, server, closed, seen: () => requests };
}

async function stop(server: Server, client: UpstreamClient): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await client.close();
}

const TIMEOUTS = { connectMs: 10_000, firstByteMs: 30_000, idleMs: 30_000 };
const BODY = Buffer.from('{"q":1}');


async function readToEnd(call: UpstreamCall): Promise<number> {
  let n = 0;
  for (let c = await call.next(); c !== null; c = await call.next()) n += c.length;
  return n;
}

test('a buffered answer: status, parsed headers and the whole body', async () => {
  const { origin, server } = await serve((req, res) => {
    res.setHeader('x-multi', ['a', 'b']);
    res.writeHead(201, { 'content-type': 'application/json' });
    res.end(`{"path":"${req.url}","method":"${req.method}"}`);
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/v1/x', { 'content-type': 'application/json' }, BODY);
    await call.head();
    assert.equal(call.status, 201);
    assert.equal(headerValue(call.headers, 'content-type'), 'application/json');
    assert.deepEqual(headerValues(call.headers, 'x-multi'), ['a', 'b']);
    assert.deepEqual(JSON.parse((await call.readAll(1 << 20)).toString()), { path: '/v1/x', method: 'POST' });
    // Keep-alive: a second call on the same client works.
    const again = client.send(origin, '/v1/y', {}, BODY);
    await again.head();
    assert.equal(JSON.parse((await again.readAll(1 << 20)).toString()).path, '/v1/y');
  } finally {
    await stop(server, client);
  }
});

test('abort before the headers: head() fails as aborted at once and the upstream connection closes', async () => {
  const { origin, server, closed, seen } = await serve(() => { /* never answers */ });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/', {}, BODY);
    const head = call.head();
    // Wait until the server has the request, so the abort cuts a live connection.
    await until(() => seen() > 0, 'the request to arrive');
    call.abort();
    assert.equal((await failureOf(head)).kind, 'aborted');
    await closed;
    call.abort();
    assert.equal((await failureOf(call.readAll(10))).kind, 'aborted');
  } finally {
    await stop(server, client);
  }
});

test('abort while still waiting for a connection: fails at once', async () => {
  const { origin, server } = await serve((_req, res) => res.end('late'));
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/', {}, BODY);
    call.abort();
    assert.equal((await failureOf(call.head())).kind, 'aborted');
  } finally {
    await stop(server, client);
  }
});

test('abort mid-body: the pending next() fails as aborted and the upstream response closes', async () => {
  const { origin, server, closed } = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: one\n\n');
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/', {}, BODY);
    await call.head();
    assert.equal((await call.next())?.toString(), 'data: one\n\n');
    const pending = call.next();
    call.abort();
    assert.equal((await failureOf(pending)).kind, 'aborted');
    await closed;
  } finally {
    await stop(server, client);
  }
});

test('backpressure: an unread stream pauses the socket at the high-water mark and resumes when read', async () => {
  const TOTAL = 32 * 1024 * 1024;
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  let sent = 0;
  let blocked = false;
  const { origin, server } = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const pump = (): void => {
      blocked = false;
      while (sent < TOTAL) {
        sent += chunk.length;
        if (!res.write(chunk)) { blocked = true; res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/', {}, BODY);
    await call.head();
    await until(() => blocked && call.queuedBytes >= 64 * 1024, 'the client queue to reach its high-water mark');
    // Paused: the queue stays bounded, the server cannot finish.
    assert.ok(call.queuedBytes < 64 * 1024 + 2 * chunk.length, `${call.queuedBytes} bytes queued`);
    assert.ok(sent < TOTAL);
    assert.equal(await readToEnd(call), TOTAL);
  } finally {
    await stop(server, client);
  }
});

test('readAll over its cap fails as protocol_error and cuts the response', async () => {
  const { origin, server, closed } = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(Buffer.alloc(3 * 1024 * 1024, 0x20));
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const call = client.send(origin, '/', {}, BODY);
    await call.head();
    const f = await failureOf(call.readAll(1024 * 1024));
    assert.equal(f.kind, 'protocol_error');
    assert.match(f.message, /too large/);
    await closed;
  } finally {
    await stop(server, client);
  }
});

test('no headers within firstByteMs: timeout', async () => {
  const { origin, server } = await serve(() => { /* never answers */ });
  const client = new UpstreamClient({ ...TIMEOUTS, firstByteMs: 200 });
  try {
    assert.equal((await failureOf(client.send(origin, '/', {}, BODY).head())).kind, 'timeout');
  } finally {
    await stop(server, client);
  }
});

test('a body idle past idleMs: timeout after the first chunk', async () => {
  const { origin, server } = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: one\n\n');
  });
  const client = new UpstreamClient({ ...TIMEOUTS, idleMs: 200 });
  try {
    const call = client.send(origin, '/', {}, BODY);
    await call.head();
    assert.equal((await call.next())?.toString(), 'data: one\n\n');
    assert.equal((await failureOf(call.next())).kind, 'timeout');
  } finally {
    await stop(server, client);
  }
});

test('an unreachable upstream: connect_error', async () => {
  const [port] = await freePorts(1);
  const client = new UpstreamClient(TIMEOUTS);
  try {
    assert.equal((await failureOf(client.send(`http://127.0.0.1:${port}`, '/', {}, BODY).head())).kind, 'connect_error');
  } finally {
    await client.close();
  }
});

test('takeQueued: a chunk that came with the head is taken synchronously; none when the head came alone', async () => {
  let release!: () => void;
  const later = new Promise<void>((r) => { release = r; });
  const { origin, server } = await serve((req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    if (req.url === '/together') { res.write('data: first\n\n'); res.end(); return; }
    // The head alone, then a chunk once the test has looked.
    res.flushHeaders();
    void later.then(() => res.end('data: late\n\n'));
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const together = client.send(origin, '/together', { 'content-type': 'application/json' }, BODY);
    await together.head();
    // The head and the first bytes usually share a packet; poll until the chunk is queued, then take it synchronously.
    await until(() => together.queuedBytes > 0, 'the first chunk');
    assert.equal(together.takeQueued()?.toString(), 'data: first\n\n');
    assert.equal(together.takeQueued(), undefined);
    assert.equal(await together.next(), null);

    const alone = client.send(origin, '/alone', { 'content-type': 'application/json' }, BODY);
    await alone.head();
    assert.equal(alone.takeQueued(), undefined);
    release();
    assert.equal((await alone.next())?.toString(), 'data: late\n\n');
    assert.equal(await alone.next(), null);
  } finally {
    await stop(server, client);
  }
});

test('bodyNow: the body of an answer that came whole with its head, without a promise; undefined otherwise', async () => {
  let release: (() => void) | undefined;
  const { origin, server } = await serve((req, res) => {
    if (req.url === '/late') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '9' });
      res.write('{"late":');
      release = () => res.end('1');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"whole":true}');
  });
  const client = new UpstreamClient(TIMEOUTS);
  try {
    const whole = client.send(origin, '/whole', {}, BODY);
    await whole.head();
    let body: Buffer | undefined;
    await until(() => (body = whole.bodyNow(1 << 20)) !== undefined, 'the whole answer arrived');
    assert.equal(body!.toString(), '{"whole":true}');
    // Over its cap it is left to readAll, which fails as protocol_error.
    const capped = client.send(origin, '/whole', {}, BODY);
    await capped.head();
    await until(() => capped.queuedBytes === 14, 'the body arrived');
    assert.equal(capped.bodyNow(5), undefined);
    assert.equal((await failureOf(capped.readAll(5))).kind, 'protocol_error');
    // Not complete yet: undefined, and readAll gets the rest.
    const late = client.send(origin, '/late', {}, BODY);
    await late.head();
    assert.equal(late.bodyNow(1 << 20), undefined);
    const rest = late.readAll(1 << 20);
    await until(() => release !== undefined, 'the first part was sent');
    release!();
    assert.equal((await rest).toString(), '{"late":1');
  } finally {
    await stop(server, client);
  }
});
