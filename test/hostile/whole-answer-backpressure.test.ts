// Whole answers larger than uWS's 16 KiB cork buffer (frontend/response.ts: tryEnd, resumed from onWritable),
// through real gateway processes, guard on and off: a reader that keeps stopping gets every byte (keep-alive and
// Connection: close, two pipelined behind the guard), and /metrics larger than 16 KiB read slowly arrives whole.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { startScriptedUpstream, chatAnswer, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startSluiceProcess, type SluiceProcess } from '../helpers/sluice-process.ts';
import { freePorts } from '../helpers/free-port.ts';

const T = { timeout: 180_000 };
const BIG = 3 * 1024 * 1024;
const TEXT = Array.from({ length: BIG / 16 }, (_, i) => `w${String(i).padStart(14, '0')} `).join('');

function request(body: string, close: boolean): string {
  return `POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${close ? 'connection: close\r\n' : ''}\r\n${body}`;
}

/** Reads until `want` answers are complete (Content-Length framing) or the server closes; stops `stopMs` after every `burst` bytes. */
function slowRead(port: number, data: string, want: number, burst: number, stopMs: number, firstStopMs = 0): Promise<{ raw: Buffer; closed: boolean }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    const parts: Buffer[] = [];
    let since = 0;
    const finish = (closed: boolean): void => { clearTimeout(deadline); s.destroy(); resolve({ raw: Buffer.concat(parts), closed }); };
    const deadline = setTimeout(() => finish(false), 150_000);
    s.on('error', (e) => { clearTimeout(deadline); reject(e); });
    s.on('close', () => finish(true));
    s.on('data', (d: Buffer) => {
      parts.push(d);
      since += d.length;
      if (complete(Buffer.concat(parts)) >= want) { finish(false); return; }
      if (since >= burst) { since = 0; s.pause(); setTimeout(() => s.resume(), stopMs); }
    });
    s.write(data);
    if (firstStopMs > 0) { s.pause(); setTimeout(() => s.resume(), firstStopMs); }
  });
}

function complete(raw: Buffer): number {
  let at = 0;
  let n = 0;
  for (;;) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) return n;
    const len = /\r\ncontent-length: *(\d+)/i.exec(raw.toString('latin1', at, end));
    if (len === null) return n;
    if (raw.length < end + 4 + Number(len[1])) return n;
    at = end + 4 + Number(len[1]);
    n++;
  }
}

function bodies(raw: Buffer): { status: string; body: Buffer }[] {
  const out: { status: string; body: Buffer }[] = [];
  let at = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    assert.ok(end > 0, `a head at ${at}`);
    const head = raw.toString('latin1', at, end);
    const len = Number(/\r\ncontent-length: *(\d+)/i.exec(head)![1]);
    out.push({ status: head.slice(9, 12), body: raw.subarray(end + 4, end + 4 + len) });
    at = end + 4 + len;
  }
  return out;
}

for (const guard of [true, false]) {
  describe(`whole answers over 16 KiB, http1_guard ${guard}`, () => {
    let up: ScriptedUpstream;
    let gw: SluiceProcess;
    let port: number;
    before(async () => {
      up = await startScriptedUpstream((_q, s) => { s.write(chatAnswer(TEXT)); });
      const [p, admin] = await freePorts(2) as [number, number];
      port = p;
      gw = await startSluiceProcess(JSON.stringify({
        listen: { host: '127.0.0.1', port, http1_guard: guard }, admin: { host: '127.0.0.1', port: admin },
        limits: { client_send_timeout_ms: 3000 },
        // Routes of their own metric series, so /metrics is well past 16 KiB (the answer the last case reads slowly).
        routes: ['', '/r0', '/r1'].map((prefix, i) => ({ id: i === 0 ? 'u' : `u${i}`, uri: `${prefix}/v1/chat/completions`, plugins: { 'ai-proxy-multi': { instances: [
          { name: 'a', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` } }] } } })),
      }));
    });
    after(async () => { await gw?.stop(); await up?.close(); });

    it('3 MiB answers (two pipelined on one keep-alive connection behind the guard), then one with Connection: close, to a reader that keeps stopping', T, async () => {
      const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
      for (const close of [false, true]) {
        // uWS alone (guard off) does not take a request pipelined behind a pending answer (README "Limits").
        const data = close || !guard ? request(body, close) : request(body, false) + request(body, false);
        const want = close || !guard ? 1 : 2;
        const { raw } = await slowRead(port, data, want, 256 * 1024, 20, 300);
        const got = bodies(raw);
        assert.equal(got.length, want, `close ${close}: ${got.length} answers, ${raw.length} bytes: ${JSON.stringify(raw.toString('latin1', 0, 300))}`);
        for (const a of got) {
          assert.equal(a.status, '200');
          const content = (JSON.parse(a.body.toString('utf8')) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
          assert.ok(content === TEXT, `close ${close}: the content differs (${content.length} chars, ${TEXT.length} sent)`);
        }
      }
    });

    it('/metrics over 16 KiB, read slowly, arrives whole', T, async () => {
      for (const prefix of ['/r0', '/r1']) {
        const r = await fetch(`http://127.0.0.1:${port}${prefix}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }) });
        assert.equal(r.status, 200);
        await r.arrayBuffer();
      }
      const { raw } = await slowRead(adminPortOf(gw.configFile), 'GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n', 1, 4096, 5, 300);
      const [m] = bodies(raw);
      assert.equal(m!.status, '200');
      assert.ok(m!.body.length > 16 * 1024, `/metrics is ${m!.body.length} bytes`);
      const bad = m!.body.toString('utf8').trimEnd().split('\n').find((l) => !(l === '' || l.startsWith('#') || /^[a-z_:][a-zA-Z0-9_:]*(\{.*\})? \S+$/.test(l)));
      assert.equal(bad, undefined, 'a malformed line');
    });
  });
}

function adminPortOf(file: string): number {
  return (JSON.parse(readFileSync(file, 'utf8')) as { admin: { port: number } }).admin.port;
}
