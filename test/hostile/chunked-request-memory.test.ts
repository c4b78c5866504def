// A chunked request body of tiny chunks: held in one buffer, not a Buffer per chunk. Before, each 1-byte chunk cost
// ~100 bytes of heap (a probe's 8 MB body took 1.1 GB of RSS; eight of them within max_inflight_body_bytes
// exhausted the heap and killed the process). A gateway process per case, RSS from /proc, guard on and off.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { peakGrowth, startSluiceProcess } from '../helpers/sluice-process.ts';
import { startScriptedUpstream, chatAnswer } from '../helpers/scripted-upstream.ts';

const MiB = 1024 * 1024;
const BODY = 2 * MiB;
const T = { timeout: 180_000 };

/** Sends `body` chunked, one byte per chunk, in large writes; resolves with the answer's status. */
function tinyChunked(port: number, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    s.setTimeout(120_000, () => s.destroy(new Error('no answer in 120 s')));
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    s.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(got)?.[1] ?? 0)));
    s.on('error', reject);
    s.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n');
    let off = 0;
    const pump = (): void => {
      while (off < body.length) {
        const parts: string[] = [];
        for (let j = 0; j < 16_384 && off < body.length; j++) parts.push(`1\r\n${body[off++]}\r\n`);
        if (off >= body.length) parts.push('0\r\n\r\n');
        if (!s.write(parts.join(''))) { s.once('drain', pump); return; }
      }
    };
    pump();
  });
}


describe('a chunked request body of 1-byte chunks', () => {
  for (const guard of [true, false]) {
    it(`http1_guard ${guard}: ${BODY / MiB} MiB in 1-byte chunks is served, RSS growing by a few times the body, not ~100×`, T, async () => {
      const up = await startScriptedUpstream((_req, s) => { s.write(chatAnswer('ok')); });
      const gw = await startSluiceProcess({
        listen: { http1_guard: guard },
        routes: [{ id: 'u', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` } }] } } }],
      });
      try {
        const port = Number(new URL(gw.url).port);
        const pre = '{"model":"m","messages":[{"role":"user","content":"';
        const post = '"}]}';
        const body = pre + 'a'.repeat(BODY - pre.length - post.length) + post;
        // Warm up before the RSS baseline: the first requests load parts lazily, and the first large body starts
        // the tokenizer's worker threads (tens of MiB each under tsx). The same body, sent whole.
        for (let i = 0; i < 3; i++) assert.equal(await tinyChunked(port, JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'warm' }] })), 200);
        for (let i = 0; i < 2; i++) {
          const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body.replace('"content":"a', `"content":"${i}`) });
          assert.equal(r.status, 200);
          await r.arrayBuffer();
        }
        let status = 0;
        const growth = await peakGrowth(gw, tinyChunked(port, body).then((s) => { status = s; }));
        assert.equal(status, 200);
        // Before: ~300 MiB for 2 MiB. Now the body's buffer (at most twice it), its string and the prompt count.
        assert.ok(growth < 64 * MiB, `RSS grew by ${(growth / MiB).toFixed(0)} MiB for a ${BODY / MiB} MiB body`);
      } finally { await gw.stop(); await up.close(); }
    });
  }

  it('uploads aborted mid-body free their buffers at once: RSS stays flat, each counted once (not again at the body timeout)', T, async () => {
    const up = await startScriptedUpstream((_req, s) => { s.write(chatAnswer('ok')); });
    const gw = await startSluiceProcess({
      // Long enough for the 40 aborts to run within it (their buffers were held that long), short enough to wait past.
      limits: { client_body_timeout_ms: 8000 },
      routes: [{ id: 'u', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` } }] } } }],
    });
    try {
      const port = Number(new URL(gw.url).port);
      const DECLARED = 6 * MiB;
      const piece = Buffer.alloc(MiB, 0x61);
      /** Declares 6 MiB, sends 4 MiB (chunked or not), then goes away once the gateway has read them. */
      const abortOne = (chunked: boolean): Promise<void> => new Promise((resolve) => {
        const s = connect(port, '127.0.0.1');
        s.on('error', () => undefined);
        s.on('close', () => resolve());
        s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${DECLARED}`}\r\n\r\n`);
        for (let i = 0; i < 4; i++) s.write(chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece);
        s.write('', () => setTimeout(() => s.destroy(), 50));
      });
      for (let i = 0; i < 4; i++) await abortOne(i % 2 === 0);
      const base = gw.rss();
      for (let i = 0; i < 40; i++) await abortOne(i % 2 === 0);
      const growth = gw.rss() - base;
      // Before: each abort's buffer stayed until client_body_timeout_ms expired it (+230 MB per 40 aborts at 60 s).
      assert.ok(growth < 96 * MiB, `RSS grew by ${(growth / MiB).toFixed(0)} MiB over 40 aborted 4 MiB uploads`);
      // Past the body timeout: none of them is counted again as a body timeout.
      await new Promise((r) => setTimeout(r, 10_000));
      assert.equal(await gw.metric(/^sluice_frontend_rejected_total\{reason="body_timeout"\}/), 0);
    } finally { await gw.stop(); await up.close(); }
  });
});
