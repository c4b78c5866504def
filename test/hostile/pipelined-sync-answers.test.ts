// frontend/response.ts, guard off: answers written while uWS itself has the socket corked
// (synchronous answers in its request handler, several pipelined requests in one read) share uWS's cork buffer
// with the answers before them. When that buffer is full, uWS 20.30 flushes it to a full kernel buffer and drops
// the write that did not fit (AsyncSocket::uncork): the "every corked write fits" rule does not hold there.
// A client pipelines many requests answered synchronously (404), reads nothing until it has sent them all, then
// reads everything: every answer must arrive whole, in order. Held on uWS 20.30 (also with 200,000 requests,
// ~50 MB of answers): this pins it (20,000 requests here, ~5 MB).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startSluiceProcess, type SluiceProcess } from '../helpers/sluice-process.ts';
import { freePorts } from '../helpers/free-port.ts';

const REQUESTS = 20_000;

function pipelined(port: number, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const parts: Buffer[] = [];
    const deadline = setTimeout(() => { s.destroy(); resolve(Buffer.concat(parts)); }, 90_000);
    s.pause();
    s.on('error', (e) => { clearTimeout(deadline); reject(e); });
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('close', () => { clearTimeout(deadline); resolve(Buffer.concat(parts)); });
    // Read nothing until every request is written (the gateway's answers pile up in the kernel buffers).
    s.write(data, () => { setTimeout(() => s.resume(), 500); });
  });
}

function countAnswers(raw: Buffer): { n: number; error?: string } {
  let at = 0;
  let n = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) return { n, error: `a truncated head at ${at}` };
    const head = raw.toString('latin1', at, end);
    if (!head.startsWith('HTTP/1.1 404 ')) return { n, error: `answer ${n} at byte ${at}: ${JSON.stringify(head.slice(0, 80))}` };
    const len = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (len === null) return { n, error: `answer ${n}: no content-length` };
    const body = raw.toString('latin1', end + 4, end + 4 + Number(len[1]));
    if (!body.startsWith('{') || !body.endsWith('}')) return { n, error: `answer ${n}: body ${JSON.stringify(body.slice(0, 60))}` };
    at = end + 4 + Number(len[1]);
    n++;
  }
  return { n };
}

describe('synchronous answers to pipelined requests, guard off', () => {
  let gw: SluiceProcess;
  let port: number;
  before(async () => {
    const [p, admin] = await freePorts(2) as [number, number];
    port = p;
    gw = await startSluiceProcess(JSON.stringify({
      listen: { host: '127.0.0.1', port, http1_guard: false }, admin: { host: '127.0.0.1', port: admin },
      routes: [],
    }));
  });
  after(async () => { await gw?.stop(); });

  it(`${REQUESTS} pipelined 404s, read only after all are sent, arrive whole and in order`, async () => {
    const one = Buffer.from('GET /nope HTTP/1.1\r\nhost: x\r\n\r\n');
    // The last one asks to close, so the connection ends with the last answer.
    const last = Buffer.from('GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
    const raw = await pipelined(port, Buffer.concat([...Array.from({ length: REQUESTS - 1 }, () => one), last]));
    const got = countAnswers(raw);
    assert.equal(got.error, undefined, `after ${got.n} whole answers (${raw.length} bytes read): ${got.error}`);
    assert.equal(got.n, REQUESTS, `${raw.length} bytes read`);
  });
});
