// Paired A/B of two gateway checkouts on one mock upstream, measurements interleaved (A B B A A B …), for changes
// whose effect is smaller than the box's drift between two `npm run bench` runs; and a CPU profile summary.
//   node --import tsx native-bench/hot-path.bench.ts [--a <checkout>] [--b <checkout>] [--kinds json64,json1,stream]
//        [--reps 6] [--duration 3] [--a-no-guard] [--b-no-guard] [--a-quota] [--b-quota] [--a-node-args "<flags>"]
//        [--b-node-args "<flags>"]
//        [--semi 16] [--profile-b <dir>] [--dist]
//   node --import tsx native-bench/hot-path.bench.ts --summarise <file.cpuprofile> [--us <µs per request>] [--skip <s>]
// --a/--b: checkouts whose src/cli/main.ts is run through tsx (default: this one; an older commit can be extracted
// with `git archive <rev> src | tar -x -C <dir>` plus a node_modules symlink); with --dist, their compiled
// dist/cli/main.js instead (what production runs: tsc's output can differ from tsx's in what the GC sees). --b-no-guard: B runs with
// listen.http1_guard false (--a-no-guard: A). --a-quota/--b-quota: that side's route has a local ai-rate-limiting quota far from
// its limit. --a-node-args/--b-node-args: node flags for that side only (e.g. "--max-semi-space-size=32"). --semi N: both run with a fixed N MiB young generation and --trace-gc; allocation per
// request ≈ scavenges × N MiB ÷ requests (warm-up included). --profile-b: B runs under --cpu-prof into that dir.
// --summarise: self time of a .cpuprofile by owner (the nearest guard / upstream client / uWS front end / pipeline / body /
// metrics / quota frame above each sample; socket-write builtins and uWS respond apart), optionally in µs.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { CHAT_PATH, chatGatewayConfig, startChatMock } from './lib/chat-route.ts';
import { flag, opt } from './lib/argv.ts';
import { median } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PATH = CHAT_PATH;
const MESSAGES = [{ role: 'user', content: 'Say hello to the benchmark, politely and briefly.' }];

interface ProfileNode { id: number; callFrame: { functionName: string; url: string }; children?: number[] }
interface Profile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }

function owner(url: string): string | undefined {
  // src/ under tsx, dist/ for --dist runs.
  const m = /\/(?:src|dist)\/([a-z]+)\//.exec(url);
  if (url.includes('http1-guard')) return 'HTTP/1.x guard';
  if (url.includes('undici') || m?.[1] === 'upstream') return 'upstream client';
  if (m === null) return url.includes('prom-client') ? 'metrics' : undefined;
  switch (m[1]) {
    case 'frontend': return 'uWS front end';
    case 'pipeline': return 'pipeline';
    case 'providers': case 'tokens': case 'streaming': return 'body (parse, re-serialise, decode, meter)';
    case 'metrics': return 'metrics';
    case 'rules': case 'quota': return 'quota';
    default: return undefined;
  }
}

const WRITES = new Set(['writev', 'writeBuffer', 'writeUtf8String', 'writeLatin1String']);

export function summarise(p: Profile, skipUs: number): Map<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const out = new Map<string, number>();
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    if (t < p.startTime + skipUs) continue;
    const leaf = byId.get(p.samples[i]!)!;
    const f = leaf.callFrame.functionName;
    if (f === '(idle)') continue;
    let key: string;
    if (f === '(garbage collector)') key = 'GC (main thread)';
    else if (f === '(program)') key = 'native outside JS (uWS loop, libuv, V8)';
    else {
      let n: ProfileNode | undefined = leaf;
      let o = owner(n.callFrame.url);
      while (o === undefined && n !== undefined) {
        const up = parent.get(n.id);
        n = up === undefined ? undefined : byId.get(up);
        o = n === undefined ? undefined : owner(n.callFrame.url);
      }
      key = o ?? 'node internals (microtasks, timers, streams)';
      if (leaf.callFrame.url === '' && WRITES.has(f)) key += ': socket write';
      else if (o === 'uWS front end' && (f === 'respond' || f === 'write')) key += `: ${f} (uWS cork + send)`;
    }
    out.set(key, (out.get(key) ?? 0) + dt);
  }
  return out;
}

function printSummary(file: string, us: number, skipS: number): void {
  const rows = summarise(JSON.parse(readFileSync(file, 'utf8')) as Profile, skipS * 1e6);
  const busy = [...rows.values()].reduce((s, v) => s + v, 0);
  console.log(`${file}: ${(busy / 1e6).toFixed(2)} s busy`);
  console.log(`| where | share |${us > 0 ? ' µs |' : ''}`);
  console.log(`|---|--:|${us > 0 ? '--:|' : ''}`);
  for (const [k, v] of [...rows].sort((a, b) => b[1] - a[1])) {
    console.log(`| ${k} | ${(100 * v / busy).toFixed(1)}% |${us > 0 ? ` ${(us * v / busy).toFixed(1)} |` : ''}`);
  }
}

async function ab(): Promise<void> {
  const dirs = { A: opt('--a', ROOT), B: opt('--b', ROOT) } as const;
  const kinds = opt('--kinds', 'json64,stream').split(',');
  const reps = Number(opt('--reps', '6'));
  const durationMs = Number(opt('--duration', '3')) * 1000;
  const semi = Number(opt('--semi', '0'));
  const profileB = opt('--profile-b', '');
  const tmp = mkdtempSync(join(tmpdir(), 'sluice-hot-path-'));
  const servers: Server[] = [];
  try {
    const mock = await startChatMock(ROOT);
    servers.push(mock);
    const config = (guard: boolean, quota: boolean): string => chatGatewayConfig(mock.port, { guard, quota });
    const gw: Record<'A' | 'B', Server> = {} as Record<'A' | 'B', Server>;
    const scavenges = { A: 0, B: 0 };
    for (const k of ['A', 'B'] as const) {
      const file = join(tmp, `${k}.json`);
      writeFileSync(file, config(!(k === 'B' ? flag('--b-no-guard') : flag('--a-no-guard')), k === 'B' ? flag('--b-quota') : flag('--a-quota')));
      const extra = [
        ...(semi > 0 ? ['--trace-gc', `--min-semi-space-size=${semi}`, `--max-semi-space-size=${semi}`] : []),
        ...opt(k === 'B' ? '--b-node-args' : '--a-node-args', '').split(' ').filter((a) => a !== ''),
        ...(k === 'B' && profileB !== '' ? ['--cpu-prof', `--cpu-prof-dir=${profileB}`, '--cpu-prof-interval', '500'] : []),
      ];
      const s = await startServer({ name: `gateway ${k}`, cwd: dirs[k], ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 60_000,
        args: [...extra, ...(flag('--dist') ? [join(dirs[k], 'dist/cli/main.js')] : ['--import', 'tsx', join(dirs[k], 'src/cli/main.ts')]), 'start', '--config', file, '--port', '0', '--admin-port', '0'] });
      s.child.stdout!.on('data', (d: string) => { for (let i = d.indexOf('Scavenge'); i !== -1; i = d.indexOf('Scavenge', i + 1)) scavenges[k]++; });
      servers.push(s);
      gw[k] = s;
    }
    const load = await LoadGenerator.start();
    const bodies: Record<string, string> = {
      json64: JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32 }),
      json1: JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32 }),
      stream: JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32, stream: true }),
    };
    const cpu = new Map<string, number[]>();
    const alloc = new Map<string, number[]>();
    const warmed = new Set<string>();
    const traits = (k: 'a' | 'b'): string => [flag(`--${k}-no-guard`) ? 'http1_guard: false' : '', flag(`--${k}-quota`) ? 'local quota' : ''].filter((t) => t !== '').join(', ');
    console.log(`A ${dirs.A}${traits('a') === '' ? '' : ` (${traits('a')})`}\nB ${dirs.B}${traits('b') === '' ? '' : ` (${traits('b')})`}\nload at start ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
    for (let r = 0; r < reps; r++) {
      for (const kind of kinds) {
        for (const k of r % 2 === 0 ? (['A', 'B'] as const) : (['B', 'A'] as const)) {
          const s = gw[k];
          const stream = kind === 'stream';
          const warmupMs = warmed.has(k + kind) ? 700 : 2000;
          warmed.add(k + kind);
          const gc0 = scavenges[k];
          const res = await load.run({ origin: `http://127.0.0.1:${s.port}`, path: PATH, body: bodies[kind]!, headers: { authorization: 'Bearer sk-client' },
            connections: kind === 'json1' ? 1 : 64, warmupMs, durationMs, maxRequests: 500_000, stream, watchPids: [s.pid, mock.pid] });
          const v = res.cpuUs[0]! / (stream ? res.frames : res.requests);
          const key = `${kind} ${k}`;
          cpu.set(key, [...(cpu.get(key) ?? []), v]);
          let line = `${kind.padEnd(6)} ${k} ${v.toFixed(2)} µs/${stream ? 'frame' : 'request'}  ${res.rps.toFixed(0)} req/s  p50 ${res.p50Ms.toFixed(3)} p99 ${res.p99Ms.toFixed(3)} ms  errors ${res.errors}`;
          if (semi > 0) {
            const kb = ((scavenges[k] - gc0) * semi * 1024) / (res.rps * (warmupMs + durationMs) / 1000);
            alloc.set(key, [...(alloc.get(key) ?? []), kb]);
            line += `  ≈ ${kb.toFixed(1)} KB allocated/request`;
          }
          console.log(line);
        }
      }
    }
    await load.close();
    for (const kind of kinds) {
      const a = cpu.get(`${kind} A`)!;
      const b = cpu.get(`${kind} B`)!;
      const lower = a.filter((x, i) => b[i]! < x).length;
      console.log(`${kind}: A ${median(a).toFixed(2)}  B ${median(b).toFixed(2)}  B/A ${(median(b) / median(a)).toFixed(3)}  (B lower in ${lower} of ${a.length} pairs)` +
        (semi > 0 ? `  allocation A ${median(alloc.get(`${kind} A`)!).toFixed(1)} B ${median(alloc.get(`${kind} B`)!).toFixed(1)} KB/request` : ''));
    }
    console.log(`load at end ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = opt('--summarise', '');
  if (file !== '') printSummary(file, Number(opt('--us', '0')), Number(opt('--skip', '4')));
  else ab().then(() => process.exit(0), (err: unknown) => { console.error(err instanceof Error ? err.message : err); process.exit(1); });
}
