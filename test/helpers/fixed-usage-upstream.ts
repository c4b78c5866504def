// A minimal OpenAI-compatible upstream (node:http on loopback) whose answers (JSON, or SSE when the request
// streams, usage in the last frame) carry a usage object
// chosen by the test: cached-token details, Anthropic cache fields, exact totals. The mock upstream computes
// usage itself; compatibility cases need the usage shapes real providers send.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FixedUsageUpstream {
  readonly url: string;
  /** The usage the next answers carry; tests may swap it between requests. */
  usage: Record<string, unknown>;
  requests: number;
  close(): Promise<void>;
}

export async function startFixedUsageUpstream(usage: Record<string, unknown>): Promise<FixedUsageUpstream> {
  const state = { usage, requests: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      state.requests++;
      let stream = false;
      try { stream = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { stream?: unknown }).stream === true; } catch { /* answered as JSON */ }
      if (stream) {
        const frame = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;
        const base = { id: `chatcmpl-${state.requests}`, object: 'chat.completion.chunk', created: 1, model: 'fixed' };
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(frame({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: 'ok' }, finish_reason: null }] })
          + frame({ ...base, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })
          + frame({ ...base, choices: [], usage: state.usage }) + 'data: [DONE]\n\n');
        return;
      }
      const body = JSON.stringify({
        id: `chatcmpl-${state.requests}`, object: 'chat.completion', created: 1, model: 'fixed',
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage: state.usage,
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    get usage() { return state.usage; },
    set usage(u) { state.usage = u; },
    get requests() { return state.requests; },
    set requests(n) { state.requests = n; },
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
