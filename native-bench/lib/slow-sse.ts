// A lean slow-stream upstream for the 2,000-slow-streams case of gateway.bench.ts. src/mock spends a timer, a
// JSON.stringify and a write per frame (≈ 35 µs of CPU on this box) and listens with Node's default backlog of
// 511: at 40k frames/s offered it would need more CPU than the 2-core box has left and drop SYNs, so the case
// would measure the mock. This one sends the same OpenAI chat chunks (pre-encoded) from one interval timer that
// serves every stream in 10 phase buckets, listens with a backlog of 4096, and otherwise behaves like the mock:
// role frame, `max_tokens` content frames `--delay-ms` apart, finish frame, usage chunk only with
// stream_options.include_usage, [DONE]. A request whose `user` field is `bench-delay-<ms>` gets its frames that
// many ms apart instead (the idle streams of the RSS case; `user` is a standard field every proxy forwards).
// Usage: node --import tsx native-bench/lib/slow-sse.ts [--port 0] [--delay-ms 50]
// Prints `slow-sse listening on http://127.0.0.1:<port>`.
import { createServer, type ServerResponse } from 'node:http';

function arg(name: string, fallback: string): number {
  const i = process.argv.indexOf(name);
  const n = Number(i >= 0 ? process.argv[i + 1] : fallback);
  if (!Number.isInteger(n) || n < 0 || n > 65535) { process.stderr.write(`slow-sse: ${name} must be an integer in 0..65535\n`); process.exit(2); }
  return n;
}

const port = arg('--port', '0');
const delayMs = Math.max(5, arg('--delay-ms', '50'));
// A timing wheel of 5 ms slots covering 4 s: a stream is served when its slot comes round.
const TICK_MS = 5;
const SLOTS = 800;
const MAX_FRAMES = 10_000;
const MAX_BODY = 1 << 20;

const head = '{"id":"chatcmpl-slow","object":"chat.completion.chunk","created":1700000000,"model":"bench","system_fingerprint":"fp_mock","choices":';
const ROLE = Buffer.from(`data: ${head}[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}\n\n`);
const TOKEN = Buffer.from(`data: ${head}[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}\n\n`);
const FINISH = `data: ${head}[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]}\n\n`;
const DONE = 'data: [DONE]\n\n';

interface Stream {
  readonly res: ServerResponse; left: number; readonly frames: number; readonly usage: boolean; readonly prompt: number;
  /** Slots between frames, and the slot the stream waits in now. */
  readonly every: number; slot: number;
}

const wheel: Set<Stream>[] = Array.from({ length: SLOTS }, () => new Set());
let tick = 0;
const schedule = (s: Stream): void => {
  s.slot = (tick + s.every) % SLOTS;
  wheel[s.slot]!.add(s);
};
setInterval(() => {
  tick = (tick + 1) % SLOTS;
  const due = wheel[tick]!;
  if (due.size === 0) return;
  wheel[tick] = new Set();
  for (const s of due) {
    s.res.write(TOKEN);
    if (--s.left > 0) { schedule(s); continue; }
    const usage = s.usage
      ? `data: ${head}[],"usage":{"prompt_tokens":${s.prompt},"completion_tokens":${s.frames},"total_tokens":${s.prompt + s.frames}}}\n\n`
      : '';
    s.res.end(FINISH + usage + DONE);
  }
}, TICK_MS);

const server = createServer((req, res) => {
  const parts: Buffer[] = [];
  let size = 0;
  req.on('data', (b: Buffer) => {
    size += b.length;
    if (size > MAX_BODY) { res.writeHead(413).end(); req.destroy(); return; }
    parts.push(b);
  });
  req.on('end', () => {
    let body: { user?: unknown; max_tokens?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown }; messages?: unknown } = {};
    try { body = JSON.parse(Buffer.concat(parts).toString('utf8')) as typeof body; } catch { /* defaults */ }
    const frames = typeof body.max_tokens === 'number' && Number.isInteger(body.max_tokens) ? Math.min(MAX_FRAMES, Math.max(1, body.max_tokens)) : 100;
    // A rough prompt size: the answer only needs a plausible, stable number.
    const prompt = Math.max(1, Math.round(JSON.stringify(body.messages ?? '').length / 4));
    if (body.stream !== true) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        id: 'chatcmpl-slow', object: 'chat.completion', created: 1700000000, model: 'bench',
        choices: [{ index: 0, message: { role: 'assistant', content: ' tok'.repeat(frames).trim() }, finish_reason: 'length' }],
        usage: { prompt_tokens: prompt, completion_tokens: frames, total_tokens: prompt + frames },
      }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
    res.write(ROLE);
    const asked = typeof body.user === 'string' ? /^bench-delay-(\d+)$/.exec(body.user) : null;
    const delay = asked === null ? delayMs : Number(asked[1]);
    const every = Math.min(SLOTS - 1, Math.max(1, Math.round(delay / TICK_MS)));
    const s: Stream = { res, left: frames, frames, usage: body.stream_options?.include_usage === true, prompt, every, slot: 0 };
    schedule(s);
    res.once('close', () => wheel[s.slot]!.delete(s));
  });
});
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  const a = server.address() as { port: number };
  process.stdout.write(`slow-sse listening on http://127.0.0.1:${a.port}\n`);
});
const stop = (): void => { server.closeAllConnections(); server.close(() => process.exit(0)); };
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
