// Hostile client: it asks for a stream and then reads nothing. Once every buffer on the way is full the gateway
// stops reading the upstream (backpressure), and `limits.client_send_timeout_ms` later it cuts the answer: the
// upstream connection closes, the request leaves the in-flight gauge and is settled as a client abort, so neither
// the upstream nor the reservation is held forever. With the HTTP/1.x guard and without it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startSluiceProcess, eventually } from '../helpers/sluice-process.ts';
import { startScriptedUpstream, chatAnswer, endlessSse } from '../helpers/scripted-upstream.ts';

const MiB = 2 ** 20;

describe('a client that stops reading a stream is cut after client_send_timeout_ms', () => {
  for (const guard of [true, false]) {
    it(`http1_guard ${guard ? 'on' : 'off'}`, { timeout: 120_000 }, async () => {
      let written = 0;
      let streamClosed = false;
      const up = await startScriptedUpstream((req, s) => {
        if (!req.body.toString().includes('"stream":true')) { s.write(chatAnswer('warm')); return; }
        s.on('close', () => { streamClosed = true; });
        endlessSse(s, 512 * MiB, (n) => { written += n; });
      });
      const raw = {
        listen: { http1_guard: guard },
        limits: { client_send_timeout_ms: 1500 },
        routes: [{
          id: 'u', uri: '/v1/chat/completions',
          plugins: {
            'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` } }] },
            'ai-rate-limiting': { limit: 10_000_000, time_window: 3600 },
          },
        }],
      };
      const gw = await startSluiceProcess(raw);
      const client = connect(Number(new URL(gw.url).port), '127.0.0.1');
      client.on('error', () => undefined);
      try {
        const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20, stream: true });
        client.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        client.once('data', () => client.pause());
        await eventually('the upstream stream started', () => written > 0, 30_000);
        await eventually('the gateway cut the stream and closed its upstream connection', () => streamClosed, 60_000);
        assert.ok(written < 256 * MiB, `the upstream wrote ${(written / MiB).toFixed(0)} MiB`);
        await eventually('the request left the in-flight gauge', async () => (await gw.metric(/^sluice_requests_in_flight /)) === 0, 30_000);
        await eventually('the cut stream was settled as a client abort',
          async () => (await gw.metric(/^sluice_usage_estimated_total\{route="u",reason="client_abort"\}/)) === 1, 30_000);
      } finally {
        client.destroy();
        await gw.stop();
        await up.close();
      }
    });
  }
});
