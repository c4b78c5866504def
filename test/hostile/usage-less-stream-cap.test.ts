// Hostile upstream: a stream that never reports usage and carries far more text than `tokens.max_usage`, for a request
// that sets no max_tokens (so no n × max_tokens ceiling applies). The counted completion is charged up to max_usage and
// no further, whatever the text counts: max_usage bounds a count as it bounds a report. The client still gets every byte.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { prepareRequest } from '../helpers/prepare.ts';
import { countText } from '../../src/tokens/count.ts';

const MAX_USAGE = 2_000;
const LIMIT = 1_000_000;
const FRAMES = 3_000;
const WORDS = ' alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma';
const REQUEST = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Talk for a long time.' }], stream: true };

function talkativeUpstream(): Promise<Server> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let i = 0; i < FRAMES; i++) res.write(`data: {"choices":[{"index":0,"delta":{"content":${JSON.stringify(WORDS)}}}]}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((r) => s.listen(0, '127.0.0.1', () => r(s)));
}

function countedPrompt(): number {
  const p = prepareRequest(Buffer.from(JSON.stringify(REQUEST)), { kind: 'chat', defaultMaxTokens: 256, countPrompt: true } as Parameters<typeof prepareRequest>[1]);
  assert.ok(p.ok);
  return p.promptTokens;
}

describe('a usage-less stream is charged no more completion than tokens.max_usage', () => {
  let upstream: Server;
  let gw: TestGateway;
  before(async () => {
    upstream = await talkativeUpstream();
    const url = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
    gw = await startGateway({
      tokens: { max_usage: MAX_USAGE },
      routes: [{
        id: 'talk', uri: '/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': { instances: [{ name: 'talker', provider: 'openai-compatible', override: { endpoint: `${url}/v1/chat/completions` } }] },
          'ai-rate-limiting': { limit: LIMIT, time_window: 3600 },
        },
      }],
    });
  });
  after(async () => {
    await gw?.close();
    await new Promise<void>((r) => upstream.close(() => r()));
  });

  it('charges the counted prompt plus max_usage, and relays the whole text', async () => {
    // The text counts far past the cap (so the cap, not the count, decides the charge).
    assert.ok(countText(WORDS, 'o200k_base') * FRAMES > 10 * MAX_USAGE);
    const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(REQUEST) });
    assert.equal(r.status, 200);
    const body = await r.text();
    assert.equal(body.split('"content":').length - 1, FRAMES);
    assert.match(body, /\[DONE\]/);
    const charged = countedPrompt() + MAX_USAGE;
    const deadline = Date.now() + 20_000;
    let seen = -1;
    while (Date.now() < deadline) {
      seen = await metric(gw, /^sluice_quota_tokens_charged_total\{route="talk"/);
      if (seen > 0) break;
      await new Promise((res) => setTimeout(res, 20));
    }
    assert.equal(seen, charged);
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="talk",reason="no_usage"\}/), 1);
  });
});
