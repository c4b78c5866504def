// A believed usage whose completion is far too small for the text it came with (more than 32 characters a token):
// the text is counted and the larger completion charged, buffered and streamed, chat and Responses. A report that
// fits its text is charged as reported, uncounted. The count is capped at what the request let the upstream
// produce (n × max_tokens).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually } from '../helpers/sluice-process.ts';

const LONG = 'hello '.repeat(20_000);
const SHORT = 'hi there';

function upstream(): Promise<Server> {
  const s = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as { stream?: boolean; input?: string; messages?: { content: string }[] };
      const asked = body.input ?? body.messages?.[0]?.content ?? '';
      const text = asked.includes('long') ? LONG : SHORT;
      if (body.input !== undefined) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: 'r', object: 'response', status: 'completed', output: [{ id: 'm', type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] }],
          usage: { input_tokens: 10, output_tokens: 3, total_tokens: 13 } }));
        return;
      }
      const usage = { prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 };
      if (body.stream !== true) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }], usage }));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const piece = Math.ceil(text.length / 50);
      for (let i = 0; i < text.length; i += piece) res.write(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: text.slice(i, i + piece) } }] })}\n\n`);
      res.end(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', choices: [], usage })}\n\ndata: [DONE]\n\n`);
    });
  });
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}

describe('a completion report far below its text', () => {
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

  const charged = (): Promise<number> => metric(gw, /^sluice_quota_tokens_charged_total\{route="o"/);
  const inconsistent = (): Promise<number> => metric(gw, /^sluice_usage_rejected_total\{route="o",reason="inconsistent"\}/);

  async function send(path: string, body: object): Promise<number> {
    const before = await charged();
    const res = await fetch(`${gw.url}/o${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    await eventually('settled', async () => (await charged()) > before, 30_000);
    return (await charged()) - before;
  }

  for (const [name, path, body] of [
    ['chat, buffered', '/v1/chat/completions', (w: string) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: w }] })],
    ['chat, streamed', '/v1/chat/completions', (w: string) => ({ model: 'gpt-4o', messages: [{ role: 'user', content: w }], stream: true })],
    ['Responses, buffered', '/v1/responses', (w: string) => ({ model: 'gpt-4o', input: w })],
  ] as const) {
    it(`${name}: 3 completion tokens beside 120 KB of text are not believed; beside a short answer they are`, { timeout: 60_000 }, async () => {
      const rejected = await inconsistent();
      const n = await send(path, body('long'));
      assert.ok(n >= 15_000, `charged ${n}: the text counted`);
      assert.equal(await inconsistent(), rejected + 1);
      assert.equal(await send(path, body('short')), 13, 'a report that fits its text is charged as it came');
      assert.equal(await inconsistent(), rejected + 1);
    });

    it(`${name}: the counted text is charged no more than the request let the upstream produce`, { timeout: 60_000 }, async () => {
      // Before, only a scaled count (a translated provider's) was capped: this one charged ~20,000.
      const limit = path === '/v1/responses' ? { max_output_tokens: 50 } : { max_tokens: 50 };
      assert.equal(await send(path, { ...body('long'), ...limit }), 10 + 50);
    });
  }
});

// The same check on answers translated for an OpenAI client: an Anthropic message or a Gemini answer reporting 3
// output tokens beside 120 KB of text (in text, thinking or a tool call's input) had been charged as reported.
describe('a completion report far below its text, on translated answers', () => {
  let up: Server;
  let gw: TestGateway;
  let where: 'text' | 'thinking' | 'tool' = 'text';
  let long = true;

  before(async () => {
    up = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const text = long ? LONG : SHORT;
        res.writeHead(200, { 'content-type': 'application/json' });
        if ((req.url ?? '').startsWith('/v1/messages')) {
          const block = where === 'text' ? { type: 'text', text } : where === 'thinking' ? { type: 'thinking', thinking: text, signature: 's' }
            : { type: 'tool_use', id: 't', name: 'f', input: { text } };
          res.end(JSON.stringify({ id: 'msg', type: 'message', role: 'assistant', model: 'x', content: [block], stop_reason: 'end_turn',
            usage: { input_tokens: 10, output_tokens: 3 } }));
          return;
        }
        const part = where === 'text' ? { text } : where === 'thinking' ? { text, thought: true } : { functionCall: { name: 'f', args: { text } } };
        res.end(JSON.stringify({ candidates: [{ index: 0, content: { role: 'model', parts: [part] }, finishReason: 'STOP' }],
          usageMetadata: { promptTokenCount: 10, candidatesTokenCount: 3, totalTokenCount: 13 } }));
      });
    });
    await new Promise<void>((resolve) => up.listen(0, '127.0.0.1', () => resolve()));
    gw = await startGateway({ routes: surfaceRoutes(`http://127.0.0.1:${(up.address() as AddressInfo).port}`) });
  });

  after(async () => {
    await gw?.close();
    await new Promise<void>((resolve) => up?.close(() => resolve()));
  });

  for (const route of ['a', 'g'] as const) {
    for (const w of ['text', 'thinking', 'tool'] as const) {
      it(`${route === 'a' ? 'Anthropic' : 'Gemini'} → chat, ${w}: 3 output tokens beside 120 KB are not believed; beside a short answer they are`, { timeout: 60_000 }, async () => {
        where = w;
        const charged = (): Promise<number> => metric(gw, new RegExp(`^sluice_quota_tokens_charged_total\\{route="${route}"`));
        const send = async (): Promise<number> => {
          const before = await charged();
          const res = await fetch(`${gw.url}/${route}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }] }) });
          assert.equal(res.status, 200);
          const body = await res.json() as { choices: unknown[] };
          assert.equal(body.choices.length, 1);
          await eventually('settled', async () => (await charged()) > before, 30_000);
          return (await charged()) - before;
        };
        long = true;
        const n = await send();
        assert.ok(n >= 15_000, `charged ${n}: the text counted`);
        long = false;
        assert.equal(await send(), 13, 'a report that fits its text is charged as it came');
      });
    }
  }
});
