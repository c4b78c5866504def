// A stream whose client stops reading and then leaves, after its upstream had already sent everything: the usage
// report waits unread in the gateway's upstream socket (paused behind the slow client). The upstream billed that
// report, so it is what the quota is charged; before, the unread rest was thrown away with the connection and the
// charge was the prompt plus the text relayed so far. A generation still running when the client leaves is cut.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { charged, eventually } from '../helpers/metrics.ts';

const PROMPT = 7;
const COMPLETION = 300_000;
const FRAMES = 1200;
const WORDS = 'hello world, this is a longer piece of streamed text. '.repeat(16);

function frame(i: number): string {
  return `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: `${i} ${WORDS}` }, finish_reason: null }] })}\n\n`;
}

interface Upstream {
  server: Server;
  /** Resolves when the last stream's bytes were all handed to the kernel (res.end's callback). */
  finished: Promise<void>;
  /** Resolves when the last slow stream's connection closed, with the frames it had written. */
  closed: Promise<number>;
}

function upstream(): Promise<Upstream> {
  let finish!: () => void;
  let close!: (n: number) => void;
  const u = {
    finished: new Promise<void>((r) => { finish = r; }),
    closed: new Promise<number>((r) => { close = r; }),
  } as Upstream;
  u.server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      if (req.url!.includes('slow')) {
        // A generation still running: a frame every 200 ms, 30 in all (6 s), unless the gateway hangs up.
        let i = 0;
        const t = setInterval(() => {
          res.write(frame(i++));
          if (i === 30) { clearInterval(t); res.end('data: [DONE]\n\n'); }
        }, 200);
        res.on('close', () => { clearInterval(t); close(i); });
        return;
      }
      for (let i = 0; i < FRAMES; i++) res.write(frame(i));
      const usage = { prompt_tokens: PROMPT, completion_tokens: COMPLETION, total_tokens: PROMPT + COMPLETION };
      res.end(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\ndata: [DONE]\n\n`, () => finish());
    });
  });
  return new Promise((r) => u.server.listen(0, '127.0.0.1', () => r(u)));
}

/** Sends a streamed request on a raw socket and stops reading after the first bytes of the answer. */
function stalledClient(port: number, path: string): Promise<Socket> {
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true });
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.once('data', () => { s.pause(); resolve(s); });
    s.on('error', reject);
    s.write(`POST ${path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
}

describe('a stream whose client leaves after the upstream finished', () => {
  let up: Upstream;
  let gw: TestGateway;

  before(async () => {
    up = await upstream();
    const { port } = up.server.address() as { port: number };
    const route = (id: string, uri: string, endpoint: string) => ({
      id, uri,
      plugins: {
        'ai-proxy': { provider: 'openai-compatible', auth: { header: { authorization: 'Bearer k' } }, override: { endpoint } },
        'ai-rate-limiting': { limit: 1_000_000_000, time_window: 3600 },
      },
    });
    gw = await startGateway({
      routes: [
        route('fast', '/v1/chat/completions', `http://127.0.0.1:${port}/v1/chat/completions`),
        route('slow', '/slow/v1/chat/completions', `http://127.0.0.1:${port}/slow/v1/chat/completions`),
      ],
    });
  });

  after(async () => {
    await gw?.close();
    up?.server.closeAllConnections();
    await new Promise((r) => up?.server.close(r));
  });

  it('is charged the usage report the upstream had sent', async () => {
    const before = await charged(gw, 'fast');
    const client = await stalledClient(gw.handle.port, '/v1/chat/completions');
    // Everything, the usage report included, is in the kernel between the upstream and the gateway.
    await up.finished;
    client.destroy();
    await eventually('the stream settled', async () => (await charged(gw, 'fast')) !== before);
    assert.equal(await charged(gw, 'fast') - before, PROMPT + COMPLETION);
  });

  it('cuts a generation still running soon after its client leaves, charging what it read', async () => {
    const before = await charged(gw, 'slow');
    const client = await stalledClient(gw.handle.port, '/slow/v1/chat/completions');
    client.destroy();
    const sent = await up.closed;
    assert.ok(sent < 30, `the upstream was hung up on before its end (${sent} of 30 frames written)`);
    await eventually('the stream settled', async () => (await charged(gw, 'slow')) !== before);
    // The prompt (counted here) plus at least the first frame's text.
    assert.ok(await charged(gw, 'slow') - before > 100);
  });
});
