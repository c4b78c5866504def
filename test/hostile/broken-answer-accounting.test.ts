// Non-streamed answers cut short after the prompt reached the upstream, against real gateway processes and scripted
// upstreams: a client that goes away (while the head or the body is coming) is charged the prompt and the text
// received, recorded 499 (leaving was free before: any client could spend upstream tokens without quota); a
// broken 2xx body is a 502 charged from its counted text, never more completion than the request allowed, and
// counting a huge one costs bounded CPU. Each case is bounded in time; nothing asserts on timing.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startScriptedUpstream, type Script } from '../helpers/scripted-upstream.ts';
import { startSluiceProcess, eventually } from '../helpers/sluice-process.ts';

const ASK = { model: 'm', messages: [{ role: 'user', content: 'Tell me a long story about a lighthouse keeper' }], max_tokens: 20 };
const T = { timeout: 180_000 };
const CHARGED = /^sluice_quota_tokens_charged_total\{route="u"/;

function route(url: string, options?: Record<string, unknown>): Record<string, unknown> {
  const instance = { name: 'a', provider: 'openai-compatible', override: { endpoint: `${url}/v1/chat/completions` }, ...(options ? { options } : {}) };
  return {
    routes: [{
      id: 'u', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': { timeout: 60_000, instances: [instance] },
        'ai-rate-limiting': { limit: 10_000_000, time_window: 3600 },
      },
    }],
  };
}

const PARTIAL = '{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"one two three four five six seven eight nine ten';

describe('non-streamed answers cut short', () => {
  it('a client that goes away while its answer\'s head is awaited is charged its prompt, recorded 499', T, async () => {
    const up = await startScriptedUpstream(() => { /* the answer is still being produced */ });
    const gw = await startSluiceProcess(route(up.url));
    try {
      const body = JSON.stringify(ASK);
      const c = connect(Number(new URL(gw.url).port), '127.0.0.1');
      c.on('error', () => undefined);
      c.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      await eventually('the upstream got the request', () => up.requests.length === 1 && up.sockets.size === 1);
      c.destroy();
      await eventually('the gateway closed its upstream request', () => up.sockets.size === 0, 30_000);
      await eventually('recorded as a client abort', async () => (await gw.metric(/^sluice_http_requests_total\{route="u",instance="a",status="499"\}/)) === 1, 30_000);
      assert.ok(await gw.metric(CHARGED) >= 5, 'the prompt is charged');
      assert.equal(await gw.metric(/^sluice_usage_estimated_total\{route="u",reason="client_abort"\}/), 1);
    } finally { await gw.stop(); await up.close(); }
  });

  it('a client that goes away while a 2xx answer\'s body is arriving is charged (the answer was produced upstream)', T, async () => {
    // The upstream sends the head and part of the body, then keeps the rest (a long answer still being produced).
    const script: Script = (_q, s) => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(PARTIAL) + 5000}\r\n\r\n${PARTIAL}`);
    };
    const up = await startScriptedUpstream(script);
    const gw = await startSluiceProcess(route(up.url));
    try {
      const body = JSON.stringify(ASK);
      const port = Number(new URL(gw.url).port);
      const c = connect(port, '127.0.0.1');
      c.on('error', () => undefined);
      c.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      await eventually('the upstream got the request', () => up.requests.length === 1 && up.sockets.size === 1);
      // Let the gateway take the head and the partial body (no assert depends on it: the prompt is owed either way).
      await new Promise((r) => setTimeout(r, 500));
      c.destroy();
      await eventually('the gateway closed its upstream request', () => up.sockets.size === 0, 30_000);
      await eventually('the request is settled with a charge', async () => (await gw.metric(CHARGED)) > 0, 10_000)
        .catch(() => undefined);
      const charged = await gw.metric(CHARGED);
      const recorded = await gw.metric(/^sluice_http_requests_total\{route="u"/);
      assert.ok(charged > 0, `charged ${charged} tokens for a prompt the upstream took and answered (part of it arrived); requests recorded: ${recorded}`);
      assert.equal(await gw.metric(/^sluice_http_requests_total\{route="u",instance="a",status="499"\}/), 1, 'recorded as a client abort');
    } finally { await gw.stop(); await up.close(); }
  });

  it('a 40 MiB 2xx body that breaks off is a 502, charged from its counted text; the gateway keeps answering meanwhile', T, async () => {
    const MIB = 1024 * 1024;
    const words = 'lorem ipsum dolor sit amet '.repeat(4096);
    const script: Script = (_q, s) => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${60 * MIB}\r\n\r\n${PARTIAL}`);
      let sent = 0;
      const pump = (): void => {
        while (sent < 40 * MIB) {
          sent += words.length;
          if (!s.write(words)) { s.once('drain', pump); return; }
        }
        s.end(() => s.destroy());
      };
      pump();
    };
    const up = await startScriptedUpstream(script);
    const gw = await startSluiceProcess(route(up.url));
    try {
      const answer = fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ASK) })
        .then(async (r) => ({ status: r.status, text: await r.text() }));
      let healthy = 0;
      let done = false;
      void answer.finally(() => { done = true; });
      while (!done) {
        if ((await fetch(`${gw.adminUrl}/healthz`)).status === 200) healthy++;
        await new Promise((r) => setTimeout(r, 200));
      }
      const r = await answer;
      assert.equal(r.status, 502, r.text.slice(0, 200));
      assert.match(r.text, /SLC_UPSTREAM_ERROR/);
      assert.ok(healthy >= 1);
      assert.equal(await gw.metric(/^sluice_usage_estimated_total\{route="u",reason="upstream_broken"\}/), 1);
      // Charged more than nothing (how much more: see the max_tokens case below).
      const charged = await gw.metric(CHARGED);
      assert.ok(charged > 0, `charged ${charged}`);
      assert.ok(gw.rss() < 1024 * MIB, `RSS ${Math.round(gw.rss() / MIB)} MiB after the count`);
      console.log(`# 40 MiB broken body: charged ${charged} tokens, /healthz answered ${healthy} times meanwhile, RSS ${Math.round(gw.rss() / MIB)} MiB`);
    } finally { await gw.stop(); await up.close(); }
  });

  // 1 MiB of text after the head, then a reset: an upstream that ignored max_tokens, or sent garbage.
  const brokenMiB: Script = (_q, s) => {
    s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${4 * 1024 * 1024}\r\n\r\n${PARTIAL} ${'lorem ipsum dolor sit amet '.repeat(40_000)}`);
    setTimeout(() => s.resetAndDestroy(), 200);
  };

  it('a broken 2xx body is charged no more completion than the request allowed (max_tokens 20), whatever the upstream sent', T, async () => {
    const up = await startScriptedUpstream(brokenMiB);
    const gw = await startSluiceProcess(route(up.url));
    try {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ASK) });
      assert.equal(r.status, 502);
      await r.text();
      await eventually('charged', async () => (await gw.metric(CHARGED)) > 0);
      const charged = await gw.metric(CHARGED);
      // The prompt (~20 tokens) plus at most max_tokens (20) of completion.
      assert.ok(charged <= 60, `charged ${charged} tokens for a request with max_tokens 20 (its reservation was ~40)`);
    } finally { await gw.stop(); await up.close(); }
  });

  it('the cap is what the serving instance allowed: its options replace the client\'s max_tokens (20 → 400)', T, async () => {
    const up = await startScriptedUpstream(brokenMiB);
    const gw = await startSluiceProcess(route(up.url, { max_tokens: 400 }));
    try {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ASK) });
      assert.equal(r.status, 502);
      await r.text();
      assert.match(up.requests[0]!.body.toString(), /"max_tokens":400/, 'the upstream was asked for 400');
      await eventually('charged', async () => (await gw.metric(CHARGED)) > 0);
      const charged = await gw.metric(CHARGED);
      // The upstream could produce 400 tokens and sent far more text: the client's own 20 is not the cap.
      assert.ok(charged > 400 && charged <= 440, `charged ${charged} tokens: prompt (~20) + 400 of completion expected`);
    } finally { await gw.stop(); await up.close(); }
  });
  it('an unreachable upstream is a 502, logged once per interval (not once per request), counted per attempt', T, async () => {
    const gw = await startSluiceProcess(route('http://127.0.0.1:9'));
    try {
      for (let i = 0; i < 3; i++) {
        const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(ASK) });
        assert.equal(r.status, 502);
      }
      await eventually('the attempts are counted', async () => (await gw.metric(/^sluice_upstream_attempts_total\{route="u",instance="a",outcome="connect_error"\}/)) === 3);
      const lines = gw.logs.filter((l) => l.includes('upstream attempt failed'));
      assert.equal(lines.length, 1, gw.logs.join('\n'));
      assert.match(lines[0]!, /"kind":"connect_error"/);
    } finally { await gw.stop(); }
  });
});
