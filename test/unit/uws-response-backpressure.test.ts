// UwsResponse against a real uWS App on a unix socket (208 KiB of kernel buffer, so a stopped reader fills it
// at once), read by a client that stops after every burst until the writer is blocked. uWebSockets.js 20.30
// loses the data of a write larger than its 16 KiB cork buffer when the cork buffer already holds bytes (a chunk
// header, a response head) and the kernel buffer is full (AsyncSocket::uncork returns before writing its
// argument when flushing the cork buffer fails): the reader got a chunk header followed by the next chunk.
// Every byte must arrive, in order, whatever the sizes written and the reader's pace.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import uWS from 'uWebSockets.js';
import { UwsResponse } from '../../src/frontend/response.ts';
import { validateConfig } from '../../src/config/validate.ts';
import type { ClientResponse } from '../../src/pipeline/http-types.ts';

/** Sizes written in turn: around and far past the 16 KiB cork buffer, and small ones in between. */
const SIZES = [40_000, 16_380, 16_384, 16_400, 70_000, 300, 17_000, 131_072, 9, 32_768, 15_000, 200_000];
const STREAM_WRITES = 160;
const SEND_BYTES = 2_000_000;

function piece(n: number, seq: number): Buffer {
  const b = Buffer.alloc(n, 0x61 + (seq % 26));
  b.write(`<${seq}>`.slice(0, n), 0, 'latin1');
  return b;
}

function streamWant(): Buffer {
  const parts: Buffer[] = [piece(50_000, -1)];
  for (let i = 0; i < STREAM_WRITES; i++) parts.push(piece(SIZES[i % SIZES.length]!, i));
  parts.push(piece(90_000, -2));
  return Buffer.concat(parts);
}

function sendWant(i: number): Buffer {
  return piece(SEND_BYTES + i * 1000, 1000 + i);
}

/** The streaming handler is waiting for the client to take more. */
let writerBlocked = false;

async function serve(path: string, res: ClientResponse): Promise<void> {
  if (path.startsWith('/send/')) {
    res.send(200, [['content-type', 'application/octet-stream']], sendWant(Number(path.slice(6))));
    return;
  }
  let ok = res.start(200, [['content-type', 'text/event-stream']], piece(50_000, -1));
  for (let i = 0; i < STREAM_WRITES; i++) {
    if (!ok) {
      const blocked = setTimeout(() => { writerBlocked = true; }, 30);
      await res.drain();
      clearTimeout(blocked);
      writerBlocked = false;
      if (res.aborted) return;
    }
    ok = res.write(piece(SIZES[i % SIZES.length]!, i));
  }
  if (!ok) await res.drain();
  res.end(piece(90_000, -2));
}

/** A uWS App answering every request through UwsResponse, on a unix socket at `path`. */
function listenUnix(path: string, sendTimeoutMs: number): Promise<() => void> {
  const app = uWS.App();
  app.any('/*', (res, req) => {
    const client = new UwsResponse(res, false, undefined, sendTimeoutMs);
    serve(req.getUrl(), client).catch(() => client.destroy());
  });
  return new Promise((resolve, reject) => {
    app.listen_unix((token) => {
      if (!token) { reject(new Error(`cannot listen on ${path}`)); return; }
      resolve(() => { uWS.us_listen_socket_close(token); (app as unknown as { close(): void }).close(); });
    }, path);
  });
}

/** Sends `requests` on one connection and reads the answers in bursts, stopping after each one until `stopped()`
 *  says the writer is blocked (or `maxStopMs` passed). Resolves with everything read when the server closes. */
function readSlowly(path: string, requests: string, burst: number, stopped: () => boolean, maxStopMs: number): Promise<Buffer> {
  const sock = connect(path);
  sock.write(requests);
  const parts: Buffer[] = [];
  let since = 0;
  return new Promise<Buffer>((resolve, reject) => {
    const deadline = setTimeout(() => { sock.destroy(); reject(new Error('no complete answer within 120 s')); }, 120_000);
    sock.on('data', (d: Buffer) => {
      parts.push(d);
      since += d.length;
      if (since < burst) return;
      since = 0;
      sock.pause();
      const until = Date.now() + maxStopMs;
      const poll = setInterval(() => {
        if (!stopped() && Date.now() < until) return;
        clearInterval(poll);
        sock.resume();
      }, 2);
    });
    sock.on('error', (e) => { clearTimeout(deadline); reject(e); });
    sock.on('close', () => { clearTimeout(deadline); resolve(Buffer.concat(parts)); });
  });
}

/** Splits `raw` into answers (head + decoded body); throws on any framing error. */
function answers(raw: Buffer): { head: string; body: Buffer }[] {
  const out: { head: string; body: Buffer }[] = [];
  let at = 0;
  while (at < raw.length) {
    const headEnd = raw.indexOf('\r\n\r\n', at);
    assert.ok(headEnd > at, `an answer head expected at ${at}: ${JSON.stringify(raw.toString('latin1', at, at + 60))}`);
    const head = raw.toString('latin1', at, headEnd);
    assert.match(head, /^HTTP\/1\.1 200 /, `answer ${out.length}: ${JSON.stringify(head.slice(0, 80))}`);
    at = headEnd + 4;
    const len = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (len !== null) {
      const n = Number(len[1]);
      assert.ok(at + n <= raw.length, `answer ${out.length}: ${n} bytes announced, ${raw.length - at} read`);
      out.push({ head, body: raw.subarray(at, at + n) });
      at += n;
      continue;
    }
    assert.match(head, /transfer-encoding: chunked/i);
    const parts: Buffer[] = [];
    for (;;) {
      const eol = raw.indexOf('\r\n', at);
      const sizeText = raw.toString('latin1', at, eol);
      assert.match(sizeText, /^[0-9a-f]+$/i, `chunk size line at ${at}: ${JSON.stringify(sizeText.slice(0, 40))}`);
      const size = parseInt(sizeText, 16);
      at = eol + 2;
      if (size === 0) { assert.equal(raw.toString('latin1', at, at + 2), '\r\n'); at += 2; break; }
      assert.ok(at + size + 2 <= raw.length, `a chunk of ${size} bytes at ${at} runs past the ${raw.length} bytes read`);
      parts.push(raw.subarray(at, at + size));
      at += size;
      assert.equal(raw.toString('latin1', at, at + 2), '\r\n', `CRLF after the chunk ending at ${at}`);
      at += 2;
    }
    out.push({ head, body: Buffer.concat(parts) });
  }
  return out;
}

describe('UwsResponse: large writes to a reader that stops', () => {
  let dir: string;
  let path: string;
  let close: (() => void) | undefined;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sluice-uws-bp-'));
    path = join(dir, 'uws.sock');
    close = await listenUnix(path, validateConfig({ routes: [] }).limits.client_send_timeout_ms);
  });
  after(() => {
    close?.();
    rmSync(dir, { recursive: true, force: true });
  });

  it(`a stream of ${STREAM_WRITES} writes of 9 B–200 KB arrives whole, twice over`, async () => {
    const want = streamWant();
    for (let round = 0; round < 2; round++) {
      const raw = await readSlowly(path, 'GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n', 64 * 1024, () => writerBlocked, 300);
      const [a] = answers(raw);
      assert.equal(a!.body.length, want.length, `round ${round}: ${a!.body.length} bytes, ${want.length} written`);
      assert.ok(a!.body.equals(want), `round ${round}: the bytes differ from those written`);
    }
  });

  it('whole answers of 2 MB (tryEnd, resumed from onWritable) arrive whole, twice over', async () => {
    for (let i = 0; i < 2; i++) {
      const raw = await readSlowly(path, `GET /send/${i} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`, 64 * 1024, () => false, 2);
      const [a] = answers(raw);
      assert.ok(a!.body.equals(sendWant(i)), `answer ${i}: ${a!.body.length} bytes, ${sendWant(i).length} sent, or other bytes`);
    }
  });
});
