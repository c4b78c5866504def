// Large streams written to clients that stop reading for a while every MiB, several at once, through a real gateway
// process: fast upstreams, every byte checked — chunk framing, SSE framing and the frame sequence. Served by the
// HTTP/1.x guard with one thread and with two (each on its own descriptor of the one listening socket), and by the
// threads' uWS Apps with the guard off: uWS 20.30 drops the data of a large write when its cork buffer cannot be
// flushed into a full socket (a chunk header without its data, a few MB into a stream whose reader had paused;
// frontend/response.ts keeps every corked write within the cork buffer, test/unit/uws-response-backpressure.test.ts).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, createServer as createNetServer } from 'node:net';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { startSluiceProcess, type SluiceProcess } from '../helpers/sluice-process.ts';

const MIB = 1024 * 1024;

/** SSE frames numbered from 0, each `pad` characters of content, written as fast as the gateway takes them. */
async function fastUpstream(): Promise<Server> {
  const s = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      const { messages } = JSON.parse(Buffer.concat(parts).toString()) as { messages: { content: string }[] };
      const [mib, pad] = messages[0]!.content.split(' ').map(Number) as [number, number];
      const frames = Math.ceil((mib * MIB) / pad);
      const text = 'x'.repeat(pad);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let i = 0;
      const pump = (): void => {
        while (i < frames) {
          const f = `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: `${i}:${text}` }, finish_reason: null }] })}\n\n`;
          i++;
          if (!res.write(f)) { res.once('drain', pump); return; }
        }
        res.end(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage: { prompt_tokens: 5, completion_tokens: frames, total_tokens: frames + 5 } })}\n\ndata: [DONE]\n\n`);
      };
      pump();
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

/** One streamed request over a raw socket whose reader pauses `pauseMs` after every MiB; the raw bytes back. */
function pausingRead(port: number, mib: number, pad: number, pauseMs: number): Promise<Buffer> {
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: `${mib} ${pad}` }], stream: true });
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let got = 0;
    let nextPause = MIB;
    const deadline = setTimeout(() => { s.destroy(); reject(new Error(`no end after 200 s (${got} bytes)`)); }, 200_000);
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got > nextPause) {
        nextPause += MIB;
        s.pause();
        setTimeout(() => s.resume(), pauseMs);
      }
    });
    s.on('error', reject);
    s.on('close', () => { clearTimeout(deadline); resolve(Buffer.concat(chunks)); });
    s.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
}

/** Checks the answer's chunked framing, SSE framing and frame numbering; returns the numbered frames seen. */
function verify(all: Buffer): number {
  const headEnd = all.indexOf('\r\n\r\n');
  assert.ok(headEnd > 0, 'no answer head');
  assert.match(all.toString('latin1', 0, headEnd), /^HTTP\/1\.1 200 /);
  assert.match(all.toString('latin1', 0, headEnd), /transfer-encoding: chunked/i);
  const parts: Buffer[] = [];
  let p = headEnd + 4;
  for (;;) {
    const le = all.indexOf('\r\n', p);
    assert.ok(le > 0, `chunk line missing at byte ${p}`);
    const line = all.toString('latin1', p, le);
    assert.match(line, /^[0-9a-f]+$/i, `chunk size line at byte ${p}: ${JSON.stringify(line.slice(0, 40))}`);
    const size = parseInt(line, 16);
    if (size === 0) break;
    parts.push(all.subarray(le + 2, le + 2 + size));
    assert.equal(all.toString('latin1', le + 2 + size, le + 4 + size), '\r\n', `chunk at byte ${le} is not followed by CRLF`);
    p = le + 4 + size;
  }
  let expect = 0;
  const text = Buffer.concat(parts).toString('utf8');
  assert.ok(text.endsWith('data: [DONE]\n\n'), 'the stream does not end with [DONE]');
  for (const f of text.split('\n\n')) {
    if (f === '' || f === 'data: [DONE]') continue;
    assert.ok(f.startsWith('data: '), `a frame near #${expect} is not an SSE data line: ${JSON.stringify(f.slice(0, 60))}`);
    const j = JSON.parse(f.slice(6)) as { choices: { delta?: { content?: string } }[] };
    const c = j.choices[0]?.delta?.content;
    if (c === undefined) continue;
    assert.equal(Number(c.slice(0, c.indexOf(':'))), expect, 'frames out of sequence');
    expect++;
  }
  return expect;
}

/** How many of a process's descriptors are the TCP socket listening on `port` (from /proc/net/tcp and its fds). */
function listeningDescriptors(pid: number, port: number): number {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inodes = new Set<string>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // local_address is ADDR:PORT in hex; state 0A is LISTEN; the inode is the tenth field.
    if (f.length >= 10 && f[1]!.endsWith(`:${hexPort}`) && f[3] === '0A') inodes.add(f[9]!);
  }
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m !== null && inodes.has(m[1]!)) n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

const CASES = [
  { workers: 2, guard: true, what: 'the guard serving in two threads, one listening socket' },
  { workers: 1, guard: true, what: 'the guard serving (workers: 1)' },
  { workers: 2, guard: false, what: 'uWS in two threads (guard off)' },
] as const;

for (const { workers, guard, what } of CASES) describe(`${what}: large streams to paused readers arrive intact`, { timeout: 600_000 }, () => {
  let upstream: Server;
  let gw: SluiceProcess;
  before(async () => {
    upstream = await fastUpstream();
    const port = (upstream.address() as { port: number }).port;
    gw = await startSluiceProcess({
      workers,
      listen: { http1_guard: guard },
      routes: [{ id: 'fast', uri: '/v1/chat/completions', plugins: {
        'ai-proxy-multi': { instances: [{ name: 'up', provider: 'openai-compatible', override: { endpoint: `http://127.0.0.1:${port}/v1/chat/completions` } }] },
      } }],
    });
  });
  after(async () => {
    await gw?.stop();
    upstream?.closeAllConnections();
    await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
  });

  it(guard ? 'each serving thread holds its own descriptor of the listening socket' : 'each thread\'s uWS App binds the port', () => {
    assert.equal(listeningDescriptors(gw.pid, Number(new URL(gw.url).port)), workers);
  });

  it('three paused readers at once: 4–6 MiB each in small, medium and 64 KB frames, every byte in place', { timeout: 240_000 }, async () => {
    const port = Number(new URL(gw.url).port);
    const runs = await Promise.all([pausingRead(port, 4, 1000, 150), pausingRead(port, 6, 8000, 300), pausingRead(port, 6, 65_000, 100)]);
    const frames = runs.map(verify);
    assert.deepEqual(frames, [Math.ceil((4 * MIB) / 1000), Math.ceil((6 * MIB) / 8000), Math.ceil((6 * MIB) / 65_000)]);
  });

  it('the gateway stops cleanly and leaves the port free', async () => {
    const port = Number(new URL(gw.url).port);
    gw.signal('SIGTERM');
    assert.equal(await gw.exited, 0);
    await new Promise<void>((resolve, reject) => {
      const s = createNetServer();
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => s.close(() => resolve()));
    });
  });
});
