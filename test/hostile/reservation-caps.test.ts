// Hostile input: one client asking for max_tokens = 2^53 − 1 (and n = 128) on a shared quota. The reservation
// is capped (per model where known, else tokens.max_reservation), so while that stream is in flight other
// clients on the same quota are still admitted; past what every instance's known model can give, the request
// gets OpenAI's 400 with param max_tokens; n and max_tokens are validated (400, param named).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { startGateway, post, type TestGateway } from '../helpers/gateway.ts';

const HUGE = 2 ** 53 - 1;

describe('hostile: max_tokens 2^53 − 1 on a shared quota', () => {
  let upstream: Server;
  let upstreamUrl: string;
  const held: ServerResponse[] = [];
  let gw: TestGateway;

  before(async () => {
    // Answers at once, except streams sent with x-hold: those stay open until the test ends them.
    upstream = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (b: Buffer) => parts.push(b));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as { stream?: boolean };
        const usage = '{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}';
        if (body.stream === true) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: {"choices":[{"index":0,"delta":{"content":"tok tok tok"}}]}\n\n');
          const finish = (): void => { res.write(`data: {"choices":[],"usage":${usage}}\n\n`); res.end('data: [DONE]\n\n'); };
          if (req.headers['x-hold'] === '1') held.push(Object.assign(res, { finish })); else finish();
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"tok tok tok"},"finish_reason":"stop"}],"usage":${usage}}`);
      });
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const addr = upstream.address() as { port: number };
    upstreamUrl = `http://127.0.0.1:${addr.port}/v1/chat/completions`;
    const instance = (model: string) => ({
      name: 'up', provider: 'openai-compatible', options: { model }, override: { endpoint: upstreamUrl }, forward_headers: ['x-hold'],
    });
    gw = await startGateway({
      tokens: { max_reservation: 20_000 },
      routes: [
        { id: 'known', uri: '/known/chat/completions', plugins: { 'ai-proxy-multi': { instances: [instance('gpt-4o-mini')] }, 'ai-rate-limiting': { limit: 50_000, time_window: 3600 } } },
        { id: 'unknown', uri: '/unknown/chat/completions', plugins: { 'ai-proxy-multi': { instances: [instance('local-llm')] }, 'ai-rate-limiting': { limit: 50_000, time_window: 3600 } } },
      ],
    });
  });

  after(async () => {
    for (const r of held) (r as ServerResponse & { finish(): void }).finish();
    await gw?.close();
    await new Promise<void>((r) => upstream.close(() => r()));
  });

  const messages = [{ role: 'user', content: 'hello' }];

  it('past every known instance model: 400 with param max_tokens, as OpenAI answers', async () => {
    const r = await post(`${gw.url}/known/chat/completions`, { model: 'x', messages, max_tokens: HUGE });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.type, 'invalid_request_error');
    assert.equal(r.body.error.param, 'max_tokens');
    assert.equal(r.body.error.code, 'SLC_BAD_REQUEST');
    assert.match(r.body.error.message, /^max_tokens is too large: 9007199254740991\. This model supports at most 16384 completion tokens/);
    const mct = await post(`${gw.url}/known/chat/completions`, { messages, max_completion_tokens: 16385 });
    assert.equal(mct.status, 400);
    assert.equal(mct.body.error.param, 'max_completion_tokens');
    assert.equal((await post(`${gw.url}/known/chat/completions`, { messages, max_tokens: 16384 })).status, 200);
  });

  it('n and max_tokens are validated: 400 naming the param', async () => {
    for (const [field, v] of [['n', 0], ['n', 129], ['n', 2.5], ['n', '3'], ['max_tokens', 0], ['max_tokens', -1], ['max_completion_tokens', 1.5]] as const) {
      const r = await post(`${gw.url}/unknown/chat/completions`, { messages, [field]: v });
      assert.equal(r.status, 400, `${field}=${v}`);
      assert.equal(r.body.error.param, field);
    }
  });

  it('a held stream asking 2^53 − 1 tokens × 128 choices does not lock the quota for other clients', async () => {
    const locker = fetch(`${gw.url}/unknown/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-hold': '1' },
      body: JSON.stringify({ messages, max_tokens: HUGE, n: 128, stream: true }),
    });
    const lockerRes = await locker;
    assert.equal(lockerRes.status, 200, 'admitted: its reservation is capped at tokens.max_reservation (20000)');
    // Its headers are out, so its reservation is held while the stream stays open.
    assert.equal(held.length, 1);
    for (let i = 0; i < 3; i++) {
      const other = await post(`${gw.url}/unknown/chat/completions`, { messages, max_tokens: 100 });
      assert.equal(other.status, 200, 'another client on the same quota is still admitted');
    }
    (held.pop() as ServerResponse & { finish(): void }).finish();
    assert.match(await lockerRes.text(), /\[DONE\]/);
  });
});
