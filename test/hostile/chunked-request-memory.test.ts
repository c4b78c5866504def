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
});
