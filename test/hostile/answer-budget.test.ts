// Hostile upstreams: buffered (non-streamed) answers are held whole while they arrive, up to 64 MiB each. All of
// them together are bounded by limits.max_inflight_answer_bytes for the whole process: past it the answer being
// read is cut with 503 SLC_OVERLOADED (Retry-After: 1) and charged its prompt plus what arrived (an error answer:
// 503 too, not billed), the others go on,
// and the gauge sluice_upstream_answer_bytes_in_flight returns to 0. Once per serving-thread layout: with
// `workers: 2` the two answers can be held by different threads and the limit still holds for the process.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { startGateway, post, type TestGateway } from '../helpers/gateway.ts';
import { eventually, metric } from '../helpers/metrics.ts';

const MIB = 1024 * 1024;
const LIMIT = 64 * MIB;
const PIECE = 'a'.repeat(MIB);

/** Answers with a chat completion of `x-size` MiB of content: all but its last bytes at once, the rest on release. */
async function bigAnswers(): Promise<{ server: Server; url: string; sent: () => number; release: () => void }> {
  let sent = 0;
  const held: ServerResponse[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const mib = Number(req.headers['x-size']);
      res.writeHead(Number(req.headers['x-status'] ?? 200), { 'content-type': 'application/json' });
      res.write('{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"');
      for (let i = 0; i < mib; i++) res.write(PIECE);
      sent++;
      held.push(res);
      res.on('error', () => undefined);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const release = () => {
    for (const res of held.splice(0)) {
      res.end('"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}');
    }
  };
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, sent: () => sent, release };
}

for (const workers of [1, 2]) {
  describe(`buffered answers in flight are bounded for the process (workers: ${workers})`, () => {
    let up: Awaited<ReturnType<typeof bigAnswers>>;
    let gw: TestGateway;
    before(async () => {
      up = await bigAnswers();
      gw = await startGateway({
        workers,
        limits: { max_inflight_answer_bytes: LIMIT },
        routes: [{
          id: 'big', uri: '/v1/chat/completions',
          plugins: {
            'ai-proxy-multi': { instances: [{ name: 'up', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` }, forward_headers: ['x-size', 'x-status'] }] },
            'ai-rate-limiting': { limit: 1_000_000, time_window: 3600 },
          },
        }],
      });
    });
    after(async () => {
      up.release();
      await gw?.close();
      await new Promise<void>((r) => up.server.close(() => r()));
    });

    it('the answer that would pass the budget is cut with 503; the one held goes on; nothing stays reserved', async () => {
      const req = { model: 'm', messages: [{ role: 'user', content: 'Write a very long answer' }], max_tokens: 100 };
      const gauge = () => metric(gw, /^sluice_upstream_answer_bytes_in_flight /);
      const first = post(`${gw.url}/v1/chat/completions`, req, { 'x-size': '40' });
      await eventually('the first answer is held', async () => up.sent() === 1 && await gauge() >= 39 * MIB);
      const second = await post(`${gw.url}/v1/chat/completions`, req, { 'x-size': '40' });
      assert.equal(second.status, 503, second.text);
      assert.equal(second.body.error.code, 'SLC_OVERLOADED');
      assert.equal(second.headers.get('retry-after'), '1');
      // An error answer cut the same way is the gateway's overload too, not an upstream fault (and not billed).
      const error = await post(`${gw.url}/v1/chat/completions`, req, { 'x-size': '40', 'x-status': '500' });
      assert.equal(error.status, 503, error.text);
      assert.equal(error.body.error.code, 'SLC_OVERLOADED');
      assert.equal(error.headers.get('retry-after'), '1');
      assert.ok(await gauge() <= LIMIT, 'the budget holds');
      up.release();
      const done = await first;
      assert.equal(done.status, 200);
      assert.equal(done.body.choices[0].message.content.length, 40 * MIB);
      await eventually('the gauge returns to 0', async () => await gauge() === 0);
      // The cut answer was produced upstream: its prompt (and what arrived, within its cap) is charged.
      assert.ok(await metric(gw, /^sluice_usage_estimated_total\{route="big",reason="overloaded"\}/) === 1);
      assert.ok(await metric(gw, /^sluice_quota_tokens_charged_total\{route="big"/) > 30);
    });
  });
}
