// Per-surface benchmark (issue 10 item 8): CPU per request (buffered) and per frame (streamed) of every client
// surface through Sluice against the same surface served by the mock directly, in one run; and the translation
// ratios, per frame: OpenAI client → Anthropic instance, and → Gemini instance, each against OpenAI client →
// OpenAI instance (the native pass-through). Target ≤ 1.3.
//   node --import tsx native-bench/providers.bench.ts [--reps 2] [--duration 3] [--warmup 1] [--chunks 35]
//        [--chunk-delay-ms 2] [--connections 16] [--stream-connections 16] [--max-requests 200000] [--only ids]
// Processes: the mock (lib/mock-process.ts), Sluice (src/cli/main.ts start, workers 1, every route metered by
// ai-rate-limiting far from its limit) and the load generator, each its own process, all on 127.0.0.1; CPU is
// utime+stime from /proc/<pid>/stat over the measured window (lib/load.ts). Every stream carries exactly
// --chunks content frames (one token each) in every format, so "per frame" divides by streams × chunks: the
// formats frame the same answer differently, and the upstream content frame is their common unit.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numArg } from './lib/args.ts';
import { boxBusyCores } from './lib/cpu.ts';
import { startServer, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { fmt, median, table } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const API_VERSION = '2024-10-21';

interface Args {
  reps: number;
  durationMs: number;
  warmupMs: number;
  chunks: number;
  chunkDelayMs: number;
  connections: number;
  streamConnections: number;
  maxRequests: number;
  only: Set<string> | undefined;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = {
    reps: 2, durationMs: 3000, warmupMs: 1000, chunks: 35, chunkDelayMs: 2, connections: 16, streamConnections: 16,
    maxRequests: 200_000, only: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i]!;
    const v = argv[i + 1];
    switch (f) {
      case '--reps': a.reps = Math.round(numArg(f, v, 1, 9)); i++; break;
      case '--duration': a.durationMs = numArg(f, v, 0.5, 60) * 1000; i++; break;
      case '--warmup': a.warmupMs = numArg(f, v, 0, 30) * 1000; i++; break;
      case '--chunks': a.chunks = Math.round(numArg(f, v, 1, 1000)); i++; break;
      case '--chunk-delay-ms': a.chunkDelayMs = Math.round(numArg(f, v, 0, 1000)); i++; break;
      case '--connections': a.connections = Math.round(numArg(f, v, 1, 512)); i++; break;
      case '--stream-connections': a.streamConnections = Math.round(numArg(f, v, 1, 1024)); i++; break;
      case '--max-requests': a.maxRequests = Math.round(numArg(f, v, 100, 10_000_000)); i++; break;
      case '--only': a.only = new Set((v ?? '').split(',').map((s) => s.trim())); i++; break;
      default: throw new Error(`unknown argument ${f}`);
    }
  }
  return a;
}

/** A client surface served by one instance provider. */
interface Surface {
  readonly id: string;
  readonly label: string;
  /** Sluice route prefix (its instance's provider). */
  readonly prefix: string;
  /** The client's path after the prefix (and the mock's path when direct, unless `directPath`). */
  path(stream: boolean): string;
  body(stream: boolean, chunks: number): string;
  /** The mock path of the same surface served directly, when it differs (Azure's deployment URL). */
  directPath?(stream: boolean): string;
  readonly streams: boolean;
  /** false: measured streamed only (a second stream format of a surface already measured buffered). */
  readonly buffered?: boolean;
  /** Translated: the direct baseline is the upstream's own surface (`direct` names it). */
  readonly direct?: string;
  /** Text that ends a complete stream in this surface. */
  readonly endMark: string;
}

const MESSAGES = [{ role: 'user', content: 'Describe the tides in a few sentences.' }];
const chatBody = (stream: boolean, chunks: number) => JSON.stringify({
  model: 'gpt-4o', messages: MESSAGES, max_tokens: chunks, ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
});
const geminiPath = (stream: boolean) => `/v1beta/models/gemini-bench:${stream ? 'streamGenerateContent?alt=sse' : 'generateContent'}`;

const geminiBody = (_stream: boolean, chunks: number) =>
  JSON.stringify({ contents: [{ role: 'user', parts: [{ text: MESSAGES[0]!.content }] }], generationConfig: { maxOutputTokens: chunks } });

const SURFACES: readonly Surface[] = [
  { id: 'chat', label: 'openai-chat → openai', prefix: '/oa', path: () => '/v1/chat/completions', body: chatBody, streams: true, endMark: '[DONE]' },
  {
    id: 'azure', label: 'openai-chat → azure-openai', prefix: '/az', path: () => '/v1/chat/completions', body: chatBody, streams: true, endMark: '[DONE]',
    directPath: () => `/openai/deployments/bench/chat/completions?api-version=${API_VERSION}`,
  },
  {
    id: 'messages', label: 'anthropic-messages → anthropic', prefix: '/an', path: () => '/v1/messages', streams: true, endMark: 'message_stop',
    body: (stream, chunks) => JSON.stringify({ model: 'claude-bench', max_tokens: chunks, messages: MESSAGES, ...(stream ? { stream: true } : {}) }),
  },
  {
    id: 'generate', label: 'gemini-generate → gemini', prefix: '/ge', path: geminiPath, streams: true, endMark: 'finishReason', body: geminiBody,
  },
  {
    id: 'generate-array', label: 'gemini-generate → gemini (JSON array stream)', prefix: '/ge', path: () => '/v1beta/models/gemini-bench:streamGenerateContent',
    streams: true, buffered: false, endMark: 'finishReason', body: geminiBody,
  },
  {
    id: 'responses', label: 'openai-responses → openai', prefix: '/oa', path: () => '/v1/responses', streams: true, endMark: 'response.completed',
    body: (stream, chunks) => JSON.stringify({ model: 'gpt-4o', input: MESSAGES[0]!.content, max_output_tokens: chunks, ...(stream ? { stream: true } : {}) }),
  },
  {
    id: 'embeddings', label: 'openai-embeddings → openai', prefix: '/oa', path: () => '/v1/embeddings', streams: false, endMark: '',
    body: () => JSON.stringify({ model: 'text-embedding-3-small', input: ['The tide is the rise and fall of the sea.', 'The Moon pulls on the oceans.'] }),
  },
  { id: 'chat-anthropic', label: 'openai-chat → anthropic (translated)', prefix: '/an', path: () => '/v1/chat/completions', body: chatBody, streams: true, direct: 'messages', endMark: '[DONE]' },
  { id: 'chat-gemini', label: 'openai-chat → gemini (translated)', prefix: '/ge', path: () => '/v1/chat/completions', body: chatBody, streams: true, direct: 'generate', endMark: '[DONE]' },
];

function gatewayConfig(mockPort: number): string {
  const mock = `http://127.0.0.1:${mockPort}`;
  const quota = { limit: 1_000_000_000, time_window: 3600 };
  const route = (id: string, instance: Record<string, unknown>) => ({ id, uri: `/${id}/*`, plugins: { 'ai-proxy-multi': { instances: [instance] }, 'ai-rate-limiting': quota } });
  return JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, workers: 1,
    routes: [
      route('oa', { name: 'oa', provider: 'openai', auth: { header: { Authorization: 'Bearer k' } }, options: { model: 'gpt-bench' }, override: { endpoint: mock } }),
      route('az', { name: 'az', provider: 'azure-openai', auth: { header: { 'api-key': 'k' } }, override: { endpoint: `${mock}/openai/deployments/bench/chat/completions?api-version=${API_VERSION}` } }),
      route('an', { name: 'an', provider: 'anthropic', auth: { header: { 'x-api-key': 'k' } }, options: { model: 'claude-bench' }, override: { endpoint: mock } }),
      route('ge', { name: 'ge', provider: 'gemini', auth: { header: { 'x-goog-api-key': 'k' } }, options: { model: 'gemini-bench' }, override: { endpoint: mock } }),
    ],
  });
}

interface CaseDef {
  /** `<surface id>.<d|s>` + `.s` when streaming, e.g. chat.s.st */
  readonly id: string;
  readonly surface: Surface;
  readonly sluice: boolean;
  readonly stream: boolean;
  readonly path: string;
  readonly body: string;
}

function casesFor(args: Args): CaseDef[] {
  const out: CaseDef[] = [];
  for (const stream of [false, true]) {
    for (const s of SURFACES) {
      if (stream && !s.streams) continue;
      if (!stream && s.buffered === false) continue;
      const body = s.body(stream, args.chunks);
      if (s.direct === undefined) {
        out.push({ id: `${s.id}.direct${stream ? '.stream' : ''}`, surface: s, sluice: false, stream, path: s.directPath?.(stream) ?? s.path(stream), body });
      }
      out.push({ id: `${s.id}.sluice${stream ? '.stream' : ''}`, surface: s, sluice: true, stream, path: s.prefix + s.path(stream), body });
    }
  }
  return out.filter((c) => args.only === undefined || args.only.has(c.surface.id));
}

async function probe(port: number, c: CaseDef): Promise<string | undefined> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${c.path}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: c.body, signal: AbortSignal.timeout(10_000),
    });
    const text = await r.text();
    if (r.status !== 200) return `HTTP ${r.status}: ${text.slice(0, 200)}`;
    if (c.stream && !text.includes(c.surface.endMark)) return `stream did not end with ${c.surface.endMark}: …${text.slice(-200)}`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

interface Run {
  /** µs of the server under test per request (buffered) or per upstream content frame (stream). */
  readonly cpu: number;
  /** µs of the mock per request / frame (behind Sluice, or serving directly). */
  readonly mockCpu: number;
  readonly rps: number;
  readonly foreignCores: number;
  readonly errors: number;
}

async function waitQuiet(maxMs: number): Promise<void> {
  const until = performance.now() + maxMs;
  while (performance.now() < until) if ((await boxBusyCores(300)) < 0.3) return;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const log = (s: string) => process.stderr.write(s + '\n');
  const tmp = mkdtempSync(join(tmpdir(), 'sluice-providers-bench-'));
  const removeTmp = () => rmSync(tmp, { recursive: true, force: true });
  process.once('exit', removeTmp);
  const servers: Server[] = [];
  let load: LoadGenerator | undefined;
  try {
    const mock = await startServer({
      name: 'mock-upstream', cwd: ROOT, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/,
      args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0', '--chunks', String(args.chunks),
        '--chunk-delay-ms', String(args.chunkDelayMs), '--completion-tokens', String(args.chunks)],
    });
    servers.push(mock);
    const file = join(tmp, 'sluice.json');
    writeFileSync(file, gatewayConfig(mock.port));
    const sluice = await startServer({
      name: 'sluice', cwd: ROOT, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 30_000,
      args: ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', file, '--port', '0', '--admin-port', '0'],
    });
    servers.push(sluice);

    const all = casesFor(args);
    const failed = new Map<string, string>();
    for (const c of all) {
      const why = await probe(c.sluice ? sluice.port : mock.port, c);
      if (why !== undefined) failed.set(c.id, why);
    }
    const cases = all.filter((c) => !failed.has(c.id));
    const runs = new Map<string, Run[]>(cases.map((c) => [c.id, []]));
    log(`providers benchmark: ${args.reps} rep(s) × ${cases.length} case(s), ${args.warmupMs / 1000}+${args.durationMs / 1000} s each; ` +
      `${args.connections} connections (stream ${args.streamConnections}), streams of ${args.chunks} frames every ${args.chunkDelayMs} ms`);
    load = await LoadGenerator.start();
    // One unmeasured pass over every case first: the JIT of all three processes warms up on every code path, so
    // the first cases measured are not the cold ones.
    for (const c of cases) {
      await load.run({
        origin: `http://127.0.0.1:${(c.sluice ? sluice : mock).port}`, path: c.path, body: c.body, headers: {},
        connections: c.stream ? args.streamConnections : args.connections, warmupMs: 0, durationMs: 700, maxRequests: args.maxRequests,
        stream: c.stream, watchPids: [],
      });
    }
    for (let rep = 0; rep < args.reps; rep++) {
      for (const c of cases) {
        await waitQuiet(1500);
        const server = c.sluice ? sluice : mock;
        const r = await load.run({
          origin: `http://127.0.0.1:${server.port}`, path: c.path, body: c.body, headers: {},
          connections: c.stream ? args.streamConnections : args.connections,
          warmupMs: args.warmupMs, durationMs: args.durationMs, maxRequests: args.maxRequests,
          stream: c.stream, watchPids: c.sluice ? [sluice.pid, mock.pid] : [mock.pid],
        });
        const units = c.stream ? r.requests * args.chunks : r.requests;
        const us = r.elapsedMs * 1000;
        const own = r.cpuUs.reduce((s, v) => s + v, 0) + r.selfCpuUs;
        const run: Run = {
          cpu: r.cpuUs[0]! / units,
          mockCpu: r.cpuUs[c.sluice ? 1 : 0]! / units,
          rps: r.rps,
          foreignCores: Math.max(0, (r.boxBusyUs - own) / us),
          errors: r.errors,
        };
        runs.get(c.id)!.push(run);
        log(`  rep ${rep + 1} ${c.id.padEnd(28)} ${fmt(r.rps, 0).padStart(7)} req/s  ${fmt(run.cpu, 2).padStart(8)} µs/${c.stream ? 'frame' : 'req'}` +
          `  foreign ${fmt(run.foreignCores, 2)} cores${r.errors > 0 ? `  ERRORS ${r.errors} (${r.firstError})` : ''}`);
      }
    }

    const med = (id: string, f: (r: Run) => number) => median((runs.get(id) ?? []).map(f));
    /** Median of the per-repetition ratios a/b (both cases ran in the same repetition). */
    const pairRatio = (a: string, b: string) => {
      const ra = runs.get(a);
      const rb = runs.get(b);
      if (ra === undefined || rb === undefined) return Number.NaN;
      return median(ra.map((r, i) => (rb[i] === undefined ? Number.NaN : r.cpu / rb[i]!.cpu)));
    };
    const rows: string[][] = [['surface', 'mode', 'direct: mock µs', 'Sluice µs', 'mock µs behind Sluice', 'Sluice ÷ direct', 'Sluice req/s', 'foreign cores']];
    for (const stream of [false, true]) {
      for (const s of SURFACES) {
        const sl = `${s.id}.sluice${stream ? '.stream' : ''}`;
        if (!runs.has(sl)) continue;
        const d = `${s.direct ?? s.id}.direct${stream ? '.stream' : ''}`;
        rows.push([
          s.label, stream ? 'stream, per frame' : 'buffered, per req', fmt(med(d, (r) => r.cpu), 2), fmt(med(sl, (r) => r.cpu), 2),
          fmt(med(sl, (r) => r.mockCpu), 2), fmt(pairRatio(sl, d), 2), fmt(med(sl, (r) => r.rps), 0),
          fmt(Math.max(med(sl, (r) => r.foreignCores), med(d, (r) => r.foreignCores)), 2),
        ]);
      }
    }
    console.log(`\nCPU µs of the process under test, medians of ${args.reps} run(s); "direct" = the mock serving the same surface itself`);
    console.log('(translated rows: the mock serving the upstream\'s own surface). Stream figures are per upstream content frame.\n');
    console.log(table(rows));

    const ratios = [
      { name: 'openai-chat → anthropic ÷ openai-chat → openai, CPU/frame', a: 'chat-anthropic.sluice.stream', b: 'chat.sluice.stream', target: 1.3 },
      { name: 'openai-chat → gemini ÷ openai-chat → openai, CPU/frame', a: 'chat-gemini.sluice.stream', b: 'chat.sluice.stream', target: 1.3 },
      { name: 'openai-chat → anthropic ÷ openai-chat → openai, CPU/req (buffered)', a: 'chat-anthropic.sluice', b: 'chat.sluice', target: Number.NaN },
      { name: 'openai-chat → gemini ÷ openai-chat → openai, CPU/req (buffered)', a: 'chat-gemini.sluice', b: 'chat.sluice', target: Number.NaN },
      { name: 'openai-chat → anthropic ÷ anthropic-messages → anthropic (native), CPU/frame', a: 'chat-anthropic.sluice.stream', b: 'messages.sluice.stream', target: Number.NaN },
      { name: 'openai-chat → gemini ÷ gemini-generate → gemini (native), CPU/frame', a: 'chat-gemini.sluice.stream', b: 'generate.sluice.stream', target: Number.NaN },
    ];
    console.log('\nTranslation ratios (median of per-repetition ratios; the cases of one repetition ran minutes apart at most):\n');
    console.log(table([['ratio', 'value', 'target', 'verdict'], ...ratios.map((r) => {
      const v = pairRatio(r.a, r.b);
      const verdict = !Number.isFinite(v) || !Number.isFinite(r.target) ? '' : v <= r.target ? 'PASS' : 'FAIL';
      return [r.name, fmt(v, 2), Number.isFinite(r.target) ? `≤ ${r.target}` : '(info)', verdict];
    })]));
    for (const [id, why] of failed) console.log(`\nnot measured: ${id}: ${why}`);
    const errors = [...runs.values()].flat().reduce((s, r) => s + r.errors, 0);
    if (errors > 0) console.log(`\n${errors} request errors during the measured windows (see the log above)`);
    return failed.size > 0 ? 1 : 0;
  } finally {
    await load?.close();
    for (const s of servers.reverse()) await s.stop();
    removeTmp();
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => { console.error(err instanceof Error ? err.message : err); process.exit(1); },
);
