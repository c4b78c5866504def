// Hostile upstream: one stream event past the 1 MiB event bound (a chat delta, an Anthropic text delta, a Gemini
// frame, SSE or JSON array). The stream is cut (the client's connection too: it is a 502), and what the event held is
// charged as produced text within the request's completion cap; before, such a stream was charged its prompt alone.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually } from '../helpers/sluice-process.ts';

const HUGE = 'word '.repeat(240_000);
const MAX_TOKENS = 4000;

function upstream(): Promise<Server> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const url = req.url ?? '';
      if (url.startsWith('/v1/messages')) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(`event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { id: 'm', type: 'message', role: 'assistant', model: 'x', content: [], usage: { input_tokens: 10, output_tokens: 1 } } })}\n\n`);
        res.write(`event: content_block_start\ndata: ${JSON.stringify({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })}\n\n`);
        res.end(`event: content_block_delta\ndata: ${JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: HUGE } })}\n\n`);
      } else if (url.includes(':streamGenerateContent')) {
        const frame = JSON.stringify({ candidates: [{ index: 0, content: { role: 'model', parts: [{ text: HUGE }] } }], usageMetadata: { promptTokenCount: 10, totalTokenCount: 10 } });
        if (url.includes('alt=sse')) {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.end(`data: ${frame}\r\n\r\n`);
        } else {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(`[${frame}]`);
        }
      } else {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: HUGE } }] })}\n\n`);
      }
    });
  });
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}

describe('a stream event past the size bound is charged as produced text', () => {
  let up: Server;
  let gw: TestGateway;
  before(async () => {
    up = await upstream();
    gw = await startGateway({ routes: surfaceRoutes(`http://127.0.0.1:${(up.address() as AddressInfo).port}`) });
  });
  after(async () => {
    await gw?.close();
    await new Promise<void>((resolve) => up?.close(() => resolve()));
  });

  const chat = { model: 'x', messages: [{ role: 'user', content: 'hi' }], stream: true, max_tokens: MAX_TOKENS };
  const gemini = { contents: [{ role: 'user', parts: [{ text: 'hi' }] }], generationConfig: { maxOutputTokens: MAX_TOKENS } };
  for (const [name, route, path, body] of [
    ['OpenAI chat', 'o', '/v1/chat/completions', chat],
    ['Anthropic Messages', 'a', '/v1/messages', { model: 'x', messages: [{ role: 'user', content: 'hi' }], stream: true, max_tokens: MAX_TOKENS }],
    ['Anthropic → chat', 'a', '/v1/chat/completions', chat],
    ['Gemini SSE', 'g', '/v1beta/models/x:streamGenerateContent?alt=sse', gemini],
    ['Gemini JSON array', 'g', '/v1beta/models/x:streamGenerateContent', gemini],
    ['Gemini → chat', 'g', '/v1/chat/completions', chat],
  ] as const) {
    it(`${name}: charged the prompt plus the capped completion`, { timeout: 60_000 }, async () => {
      const charged = (): Promise<number> => metric(gw, new RegExp(`^sluice_quota_tokens_charged_total\\{route="${route}"`));
      const before = await charged();
      const res = await fetch(`${gw.url}/${route}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(res.status, 200);
      await res.arrayBuffer().catch(() => undefined);
      await eventually('settled', async () => (await charged()) > before, 30_000);
      const n = (await charged()) - before;
      assert.ok(n >= MAX_TOKENS && n <= MAX_TOKENS + 200, `charged ${n}`);
    });
  }
});

// Without a completion cap the count itself is checked: the event's text as far as it came, once, and no more than
// its text (a Gemini image frame's base64 data is no text: it had been charged as ~944,000 tokens).
describe('an oversized event is counted by its text', () => {
  let up: Server;
  let gw: TestGateway;
  const IMAGE = 'iVBORw0KGgo'.repeat(110_000);
  before(async () => {
    up = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        if ((req.url ?? '').includes(':streamGenerateContent')) {
          res.end(`data: ${JSON.stringify({ candidates: [{ index: 0, content: { role: 'model', parts: [{ text: 'Here is your image' }, { inlineData: { mimeType: 'image/png', data: IMAGE } }] } }],
            usageMetadata: { promptTokenCount: 10, candidatesTokenCount: 1300, totalTokenCount: 1310 } })}\r\n\r\n`);
        } else {
          res.end(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: HUGE } }] })}\n\n`);
        }
      });
    });
    await new Promise<void>((resolve) => up.listen(0, '127.0.0.1', () => resolve()));
    gw = await startGateway({ routes: surfaceRoutes(`http://127.0.0.1:${(up.address() as AddressInfo).port}`) });
  });
  after(async () => {
    await gw?.close();
    await new Promise<void>((resolve) => up?.close(() => resolve()));
  });

  async function send(route: string, path: string, body: object): Promise<number> {
    const charged = (): Promise<number> => metric(gw, new RegExp(`^sluice_quota_tokens_charged_total\\{route="${route}"`));
    const before = await charged();
    const res = await fetch(`${gw.url}/${route}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    await res.arrayBuffer().catch(() => undefined);
    await eventually('settled', async () => (await charged()) > before, 30_000);
    return (await charged()) - before;
  }

  it('OpenAI chat, no max_tokens: the text that came (over 1 MiB of "word "), counted once', { timeout: 60_000 }, async () => {
    const n = await send('o', '/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'hi' }], stream: true });
    // At least the 1 MiB held before the bound (~209,000 tokens of "word "), at most the whole text's 240,000.
    assert.ok(n >= 200_000 && n <= 240_100, `charged ${n}`);
  });

  it('Gemini, an image frame past the bound: its text and the reported prompt, not the base64', { timeout: 60_000 }, async () => {
    const n = await send('g', '/v1beta/models/x:streamGenerateContent?alt=sse', { contents: [{ role: 'user', parts: [{ text: 'draw' }] }] });
    assert.ok(n < 200, `charged ${n}`);
  });
});
