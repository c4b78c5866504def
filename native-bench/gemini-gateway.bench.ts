// Gemini surfaces through Sluice against the same surface from the mock directly, in one run, streaming:
//   gd  client → mock …:streamGenerateContent?alt=sse      (Gemini direct)
//   gn  client → Sluice → mock, the same path              (Gemini native pass-through, metered)
//   ga  as gn without alt=sse                              (Gemini native, one streamed JSON array)
//   gt  client → Sluice /v1/chat/completions → mock …:streamGenerateContent (OpenAI client, Gemini instance: translated)
//   od  client → mock /v1/chat/completions                 (OpenAI direct)
//   on  client → Sluice → mock /v1/chat/completions        (OpenAI native, the reference the gateway bench uses)
// Every process is separate (native-bench/README.md); CPU comes from /proc over the measured window. Reported per
// stream and per upstream content frame (--chunks per stream: the formats frame a stream differently, so the
// client's event count is not a common unit). The target: gt ÷ on and gt ÷ gn ≤ 1.3 per frame (issue 10 item 8).
// Usage: node --import tsx native-bench/gemini-gateway.bench.ts [--reps 3] [--duration 4] [--chunks 32]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numArg } from './lib/args.ts';
import { startServer, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { median } from './lib/stats.ts';

function flag(name: string, fallback: number, min: number, max: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? numArg(name, process.argv[i + 1], min, max) : fallback;
}

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const REPS = flag('--reps', 3, 1, 20);
const DURATION_MS = flag('--duration', 4, 1, 60) * 1000;
const CHUNKS = flag('--chunks', 32, 1, 1000);
const CONNECTIONS = flag('--connections', 8, 1, 256);
const MESSAGES = [{ role: 'user', content: 'Describe the tides in a few sentences.' }];

function config(mockPort: number): string {
  const quota = { limit: 1_000_000_000, time_window: 3600 };
  const mock = `http://127.0.0.1:${mockPort}`;
  return JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, workers: 1,
    routes: [
      { id: 'gem', uri: '/gem/*', plugins: { 'ai-proxy-multi': { instances: [{ name: 'gemini', provider: 'gemini', auth: { header: { 'x-goog-api-key': 'k' } }, options: { model: 'gemini-bench' }, override: { endpoint: mock } }] }, 'ai-rate-limiting': quota } },
      { id: 'oa', uri: '/oa/*', plugins: { 'ai-proxy-multi': { instances: [{ name: 'oa', provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer k' } }, options: { model: 'gpt-bench' }, override: { endpoint: `${mock}/v1/chat/completions` } }] }, 'ai-rate-limiting': quota } },
    ],
  });
}

interface CaseDef { id: string; name: string; sluice: boolean; path: string; body: string }

const gemBody = JSON.stringify({ contents: [{ role: 'user', parts: [{ text: MESSAGES[0]!.content }] }], generationConfig: { maxOutputTokens: CHUNKS } });
const oaBody = JSON.stringify({ model: 'bench', max_tokens: CHUNKS, messages: MESSAGES, stream: true });
const GEM = '/v1beta/models/gemini-bench:streamGenerateContent';
const CASES: CaseDef[] = [
  { id: 'gd', name: 'gemini: client → mock', sluice: false, path: `${GEM}?alt=sse`, body: gemBody },
  { id: 'gn', name: 'gemini: client → Sluice → mock (native SSE)', sluice: true, path: `/gem${GEM}?alt=sse`, body: gemBody },
  { id: 'ga', name: 'gemini: client → Sluice → mock (native JSON array)', sluice: true, path: `/gem${GEM}`, body: gemBody },
  { id: 'gt', name: 'openai client → Sluice → gemini mock (translated)', sluice: true, path: '/gem/v1/chat/completions', body: oaBody },
  { id: 'od', name: 'openai: client → mock', sluice: false, path: '/v1/chat/completions', body: oaBody },
  { id: 'on', name: 'openai: client → Sluice → mock (native)', sluice: true, path: '/oa/v1/chat/completions', body: oaBody },
];

const tmp = mkdtempSync(join(tmpdir(), 'sluice-gem-bench-'));
const servers: Server[] = [];
let load: LoadGenerator | undefined;
try {
  const mock = await startServer({
    name: 'mock-upstream', cwd: ROOT, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/,
    args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0', '--chunks', String(CHUNKS), '--chunk-delay-ms', '2', '--completion-tokens', String(CHUNKS)],
  });
  servers.push(mock);
  const file = join(tmp, 'sluice.json');
  writeFileSync(file, config(mock.port));
  const sluice = await startServer({
    name: 'sluice', cwd: ROOT, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 30_000,
    args: ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', file, '--port', '0', '--admin-port', '0'],
  });
  servers.push(sluice);
  for (const c of CASES) {
    const port = c.sluice ? sluice.port : mock.port;
    const r = await fetch(`http://127.0.0.1:${port}${c.path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: c.body, signal: AbortSignal.timeout(10_000) });
    const text = await r.text();
    if (r.status !== 200 || !(text.includes('finishReason') || text.includes('[DONE]'))) throw new Error(`${c.id}: probe failed: ${r.status} ${text.slice(0, 300)}`);
  }
  load = await LoadGenerator.start();
  const perStream = new Map<string, number[]>(CASES.map((c) => [c.id, []]));
  for (let rep = 0; rep < REPS; rep++) {
    for (const c of CASES) {
      const server = c.sluice ? sluice : mock;
      const result = await load.run({
        origin: `http://127.0.0.1:${server.port}`, path: c.path, body: c.body, headers: {}, connections: CONNECTIONS,
        warmupMs: rep === 0 ? 2000 : 1000, durationMs: DURATION_MS, maxRequests: 1_000_000, stream: true, watchPids: [server.pid],
      });
      if (result.errors > 0) throw new Error(`${c.id}: ${result.errors} errors (${result.firstError})`);
      perStream.get(c.id)!.push(result.cpuUs[0]! / result.requests);
    }
  }
  console.log(`streams of ${CHUNKS} content frames, ${CONNECTIONS} connections, median of ${REPS} × ${DURATION_MS / 1000} s; CPU of the server under test`);
  const med = (id: string) => median(perStream.get(id)!);
  for (const c of CASES) {
    console.log(`${c.id}  ${c.name.padEnd(56)} ${med(c.id).toFixed(0).padStart(6)} µs/stream  ${(med(c.id) / CHUNKS).toFixed(2).padStart(6)} µs/frame`);
  }
  const ratio = (a: string, b: string) => median(perStream.get(a)!.map((v, i) => v / perStream.get(b)![i]!));
  console.log(`gt ÷ on (translation ÷ openai native pass-through, per frame): ${ratio('gt', 'on').toFixed(2)} (target ≤ 1.3)`);
  console.log(`gt ÷ gn (translation ÷ gemini native pass-through, per frame): ${ratio('gt', 'gn').toFixed(2)} (target ≤ 1.3)`);
  console.log(`gn ÷ on (gemini native ÷ openai native): ${ratio('gn', 'on').toFixed(2)}; ga ÷ gn (JSON array ÷ SSE): ${ratio('ga', 'gn').toFixed(2)}`);
  console.log(`gn ÷ gd (Sluice ÷ the mock serving the same stream): ${ratio('gn', 'gd').toFixed(2)}; on ÷ od: ${ratio('on', 'od').toFixed(2)}`);
} finally {
  await load?.close();
  for (const s of servers.reverse()) await s.stop();
  rmSync(tmp, { recursive: true, force: true });
}
