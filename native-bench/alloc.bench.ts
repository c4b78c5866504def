// Where the gateway's heap allocation per request goes. The gateway runs in a host process of its own (this file
// with --host: startSluice in-process, workers 1), the mock upstream and the load generator in theirs, so the
// host's heap holds the gateway's allocations only. Per kind (small JSON request, 32-chunk stream):
//   1. warm-up (JIT), unmeasured;
//   2. scavenges × the fixed young generation (--semi MiB) ÷ requests: total bytes through new space;
//   3. the sampling heap profiler (node:inspector, samplingInterval --interval bytes, objects collected by minor
//      and major GCs kept), its scaled self sizes ÷ requests: KB per request by function, and the total.
// Requests are counted by the gateway itself (sluice_http_requests_total), in windows bounded in time and count.
//   node --import tsx native-bench/alloc.bench.ts [--kinds json,stream] [--duration 4] [--semi 2] [--interval 512]
//        [--dirs <checkout>[,<checkout>…]] [--reps 1] [--top 25] [--no-guard] [--connections 64] [--tree <substring>] [--no-inline] [--survivors]
// The profiler records physical frames: a function TurboFan inlined is counted in its caller. --no-inline runs
// the gateway with --no-turbo-inlining to attribute exactly (totals then rise a little: less escape analysis).
// --dirs: measure those checkouts' src/ (e.g. one extracted with `git archive <rev> src | tar -x -C <dir>` plus a
// node_modules symlink; default this one), each in its own host, windows interleaved (A B, B A, …) over --reps.
// --survivors: the profile keeps only objects that survived a scavenge (promoted, or young at the end), i.e. what
// makes scavenges and full GCs cost; objects still young at the end are a bias of one young generation's worth.
// --tree: also print the allocating stacks (3 frames up) of leaf functions whose name contains the substring.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { stopChild, track, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { CHAT_PATH, chatGatewayConfig, startChatMock } from './lib/chat-route.ts';
import { flag, opt } from './lib/argv.ts';

const SELF = fileURLToPath(import.meta.url);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PATH = CHAT_PATH;
const MESSAGES = [{ role: 'user', content: 'Say hello to the benchmark, politely and briefly.' }];

interface CallFrame { functionName: string; url: string; lineNumber: number; columnNumber: number }
interface HeapNode { callFrame: CallFrame; selfSize: number; id: number; children: HeapNode[] }

type ToHost = { cmd: 'count' } | { cmd: 'start'; profile: boolean; interval: number; survivors: boolean } | { cmd: 'stop' } | { cmd: 'exit' };
interface Stopped { requests: number; scavenges: number; majors: number; profile?: HeapNode }

// ---------------------------------------------------------------- host: the gateway under measurement

async function host(configFile: string, root: string): Promise<void> {
  const { Session } = await import('node:inspector');
  const { findSourceMap } = await import('node:module');
  const { PerformanceObserver, constants } = await import('node:perf_hooks');
  const src = (f: string): string => pathToFileURL(join(root, 'src', f)).href;
  await import(src('providers/registry.ts'));
  const { loadConfigFile } = await import(src('config/load.ts')) as typeof import('../src/config/load.ts');
  const { startSluice } = await import(src('app.ts')) as typeof import('../src/app.ts');
  const handle = await startSluice(loadConfigFile(configFile), { port: 0, adminPort: 0 });
  const metric = handle.metrics.registry.getSingleMetric('sluice_http_requests_total')!;
  const answered = async (): Promise<number> => (await metric.get()).values.reduce((s, v) => s + v.value, 0);
  let scavenges = 0;
  let majors = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) scavenges++;
      else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++;
    }
  }).observe({ entryTypes: ['gc'] });
  const session = new Session();
  session.connect();
  const post = <T>(method: string, params?: object): Promise<T> =>
    new Promise((resolve, reject) => session.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))));
  await post('HeapProfiler.enable');
  let start = { requests: 0, scavenges: 0, majors: 0, profile: false };
  process.on('message', (msg: ToHost) => {
    void (async () => {
      if (msg.cmd === 'start') {
        start = { requests: await answered(), scavenges, majors, profile: msg.profile };
        if (msg.profile) {
          await post('HeapProfiler.startSampling', { samplingInterval: msg.interval, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: !msg.survivors });
        }
        process.send!({ started: true, port: handle.port });
      } else if (msg.cmd === 'stop') {
        let profile: HeapNode | undefined;
        if (start.profile) profile = toSource((await post<{ profile: { head: HeapNode } }>('HeapProfiler.stopSampling')).profile.head, findSourceMap);
        // Scavenges are read once the observer has had its turn (entries are delivered asynchronously).
        await new Promise((r) => setTimeout(r, 50));
        const out: Stopped = { requests: await answered() - start.requests, scavenges: scavenges - start.scavenges, majors: majors - start.majors, profile };
        process.send!(out);
      } else if (msg.cmd === 'count') {
        process.send!({ port: handle.port });
      } else if (msg.cmd === 'exit') {
        await handle.close({ drainMs: 1000 });
        process.exit(0);
      }
    })().catch((err: unknown) => { console.error(err); process.exit(1); });
  });
  process.send!({ port: handle.port });
}

// ---------------------------------------------------------------- attribution

type FindMap = (url: string) => { findEntry(line: number, col: number): { originalLine?: number; originalColumn?: number } } | undefined;

/** tsx compiles each file to other lines; its inline source maps (--enable-source-maps) give the .ts line back. */
function toSource(n: HeapNode, find: FindMap): HeapNode {
  const f = n.callFrame;
  if (f.url.includes('/src/') && !f.url.includes('/node_modules/')) {
    try {
      const e = find(f.url)?.findEntry(f.lineNumber, f.columnNumber);
      if (e?.originalLine !== undefined) n.callFrame = { ...f, lineNumber: e.originalLine, columnNumber: e.originalColumn ?? 0 };
    } catch { /* keep the generated position */ }
  }
  for (const c of n.children) toSource(c, find);
  return n;
}

const PROJECT = /\/(src|node_modules)\//;

/** A frame's place, shortened: src/… or the package name, or node's own module. */
function place(f: CallFrame): string {
  const u = f.url;
  if (u === '') return '(native)';
  const i = u.indexOf('/src/');
  if (i >= 0 && !u.includes("/node_modules/")) return `${u.slice(i + 1)}:${f.lineNumber + 1}`;
  const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(u);
  if (m !== null) return `${m[1]}/${m[2]!.split('/').pop()}:${f.lineNumber + 1}`;
  return `${u.replace(/^node:/, '')}:${f.lineNumber + 1}`;
}

function owner(f: CallFrame): string | undefined {
  const u = f.url;
  if (u.includes('http1-guard')) return 'frontend/http1-guard';
  if (u.includes('/node_modules/undici/')) return 'undici';
  if (u.includes('/node_modules/')) { const m = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u); return m?.[1]; }
  const i = u.indexOf('/src/');
  if (i >= 0) return u.slice(i + 5).replace(/\.ts$/, '');
  return undefined;
}

interface Breakdown {
  total: number;
  /** Nearest project frame (function @ place) → bytes, the leaf's own name attached when it is not a project frame. */
  byFunction: Map<string, number>;
  /** Owning file (nearest project frame) → bytes. */
  byFile: Map<string, number>;
  stacks: Map<string, number>;
}

function breakdown(head: HeapNode, treeFilter: string): Breakdown {
  const out: Breakdown = { total: 0, byFunction: new Map(), byFile: new Map(), stacks: new Map() };
  const add = (m: Map<string, number>, k: string, v: number): void => { m.set(k, (m.get(k) ?? 0) + v); };
  const walk = (n: HeapNode, path: HeapNode[]): void => {
    path.push(n);
    if (n.selfSize > 0) {
      out.total += n.selfSize;
      let proj: HeapNode | undefined;
      for (let i = path.length - 1; i >= 0; i--) if (PROJECT.test(path[i]!.callFrame.url)) { proj = path[i]; break; }
      const leaf = n.callFrame;
      const leafName = leaf.functionName || '(anonymous)';
      let key: string;
      if (proj === undefined) key = `${leafName} @ ${place(leaf)} (no project frame)`;
      else {
        const p = proj.callFrame;
        key = `${p.functionName || '(anonymous)'} @ ${place(p)}`;
        if (proj !== n) key += `  ← ${leafName}${leaf.url === '' ? '' : ` @ ${place(leaf)}`}`;
      }
      add(out.byFunction, key, n.selfSize);
      add(out.byFile, proj === undefined ? '(node internals / runtime)' : owner(proj.callFrame) ?? place(proj.callFrame), n.selfSize);
      if (treeFilter !== '' && leafName.includes(treeFilter)) {
        const s = path.slice(-4).map((x) => `${x.callFrame.functionName || '(anon)'}@${place(x.callFrame)}`).join(' > ');
        add(out.stacks, s, n.selfSize);
      }
    }
    for (const c of n.children) walk(c, path);
    path.pop();
  };
  walk(head, []);
  return out;
}

// ---------------------------------------------------------------- orchestration

function send<T>(child: ChildProcess, msg: ToHost, timeoutMs = 60_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.off('message', on); reject(new Error(`host gave no answer to ${msg.cmd}`)); }, timeoutMs);
    const on = (m: T): void => { clearTimeout(timer); resolve(m); };
    child.once('message', on);
    child.send(msg);
  });
}

interface Host { readonly dir: string; readonly child: ChildProcess; readonly port: number }

async function startHost(dir: string, configFile: string, semi: number): Promise<Host> {
  const child = fork(SELF, ['--host', configFile, dir], {
    cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    execArgv: ['--import', 'tsx', '--enable-source-maps', `--min-semi-space-size=${semi}`, `--max-semi-space-size=${semi}`,
      ...(flag('--no-inline') ? ['--no-turbo-inlining'] : [])],
  });
  track(child);
  const { port } = await new Promise<{ port: number }>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`gateway host ${dir} did not start`)), 60_000);
    child.once('message', (m: { port: number }) => { clearTimeout(t); resolve(m); });
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`gateway host ${dir} exited (${code})`)); });
  });
  return { dir, child, port };
}

/** Per checkout and kind: KB per unit from scavenges and from samples, each rep; bytes by key summed over reps. */
interface Tally { gcKb: number[]; sampledKb: number[]; cpuUs: number[]; frames: number[]; units: number; all: Breakdown }

function merge(into: Breakdown, b: Breakdown): void {
  into.total += b.total;
  for (const k of ['byFunction', 'byFile', 'stacks'] as const) for (const [key, v] of b[k]) into[k].set(key, (into[k].get(key) ?? 0) + v);
}

const med = (xs: number[]): number => { const a = [...xs].sort((x, y) => x - y); return a.length === 0 ? NaN : a.length % 2 === 1 ? a[a.length >> 1]! : (a[a.length / 2 - 1]! + a[a.length / 2]!) / 2; };

async function main(): Promise<void> {
  const kinds = opt('--kinds', 'json,stream').split(',');
  const durationMs = Number(opt('--duration', '4')) * 1000;
  const semi = Number(opt('--semi', '2'));
  const interval = Number(opt('--interval', '512'));
  const top = Number(opt('--top', '25'));
  const reps = Number(opt('--reps', '1'));
  const connections = Number(opt('--connections', '64'));
  const tree = opt('--tree', '');
  const guard = !flag('--no-guard');
  const dirs = opt('--dirs', opt('--dir', ROOT)).split(',');
  const tmp = mkdtempSync(join(tmpdir(), 'sluice-alloc-'));
  const servers: Server[] = [];
  const hosts: Host[] = [];
  let load: LoadGenerator | undefined;
  try {
    const mock = await startChatMock(ROOT);
    servers.push(mock);
    const file = join(tmp, 'config.json');
    writeFileSync(file, chatGatewayConfig(mock.port, { guard, quota: false }));
    for (const d of dirs) hosts.push(await startHost(d, file, semi));
    load = await LoadGenerator.start();
    const bodies: Record<string, string> = {
      json: JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32 }),
      stream: JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32, stream: true }),
    };
    console.log(`${connections} connections, young generation ${semi} MiB, sampling every ${interval} B, http1_guard ${guard}` +
      `${flag('--no-inline') ? ', --no-turbo-inlining' : ''}, ${reps} rep(s) interleaved`);
    for (const [i, h] of hosts.entries()) console.log(`${String.fromCharCode(65 + i)} = ${h.dir}`);
    console.log(`load at start ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
    for (const kind of kinds) {
      const stream = kind === 'stream';
      const unit = stream ? 'stream' : 'request';
      const run = (h: Host, ms: number) => load!.run({ origin: `http://127.0.0.1:${h.port}`, path: PATH, body: bodies[kind]!, headers: { authorization: 'Bearer sk-client' },
        connections, warmupMs: 0, durationMs: ms, maxRequests: 400_000, stream, watchPids: [h.child.pid!] });
      const tallies = hosts.map((): Tally => ({ gcKb: [], sampledKb: [], cpuUs: [], frames: [], units: 0, all: breakdown({ callFrame: { functionName: '', url: '', lineNumber: 0, columnNumber: 0 }, selfSize: 0, id: 0, children: [] }, '') }));
      for (const h of hosts) await run(h, 3000);
      for (let r = 0; r < reps; r++) {
        const order = r % 2 === 0 ? hosts.map((_, i) => i) : hosts.map((_, i) => hosts.length - 1 - i);
        for (const i of order) {
          const h = hosts[i]!;
          const t = tallies[i]!;
          // Scavenges × young generation: everything allocated in new space (objects pretenured or large go elsewhere).
          await send(h.child, { cmd: 'start', profile: false, interval, survivors: false });
          const plain = await run(h, durationMs);
          const s1 = await send<Stopped>(h.child, { cmd: 'stop' });
          t.gcKb.push((s1.scavenges * semi * 1024) / s1.requests);
          t.cpuUs.push(plain.cpuUs[0]! / plain.requests);
          if (stream && plain.requests > 0) t.frames.push(plain.frames / plain.requests);
          await send(h.child, { cmd: 'start', profile: true, interval, survivors: flag('--survivors') });
          await run(h, durationMs);
          const s2 = await send<Stopped>(h.child, { cmd: 'stop' });
          const b = breakdown(s2.profile!, tree);
          t.sampledKb.push(b.total / 1024 / s2.requests);
          t.units += s2.requests;
          merge(t.all, b);
          console.log(`${kind} ${String.fromCharCode(65 + i)} rep ${r + 1}: ${s1.requests} ${unit}s, ${s1.scavenges} scavenges ≈ ${t.gcKb.at(-1)!.toFixed(1)} KB/${unit}; ` +
            `sampled ${t.sampledKb.at(-1)!.toFixed(2)} KB/${unit} over ${s2.requests}; CPU ${t.cpuUs.at(-1)!.toFixed(1)} µs/${unit}`);
        }
      }
      for (const [i, t] of tallies.entries()) {
        const b = t.all;
        const kb = (v: number): string => (v / 1024 / t.units).toFixed(2);
        const fr = stream ? med(t.frames) : 0;
        console.log(`\n== ${kind} ${String.fromCharCode(65 + i)} (${hosts[i]!.dir}): medians over ${t.gcKb.length} rep(s): scavenges × ${semi} MiB ${med(t.gcKb).toFixed(1)} KB/${unit}` +
          `${stream ? ` (${(med(t.gcKb) * 1024 / fr).toFixed(0)} B/frame, ${fr.toFixed(1)} frames each)` : ''}, sampled ${med(t.sampledKb).toFixed(2)} KB/${unit}, CPU ${med(t.cpuUs).toFixed(1)} µs/${unit}`);
        console.log(`   | owning file (nearest project frame) | KB/${unit} | share |\n   |---|--:|--:|`);
        for (const [k, v] of [...b.byFile].sort((x, y) => y[1] - x[1]).slice(0, 20)) console.log(`   | ${k} | ${kb(v)} | ${(100 * v / b.total).toFixed(1)}% |`);
        console.log(`   | function (nearest project frame ← allocating leaf) | KB/${unit} | share |\n   |---|--:|--:|`);
        for (const [k, v] of [...b.byFunction].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`   | ${k} | ${kb(v)} | ${(100 * v / b.total).toFixed(1)}% |`);
        if (tree !== '') {
          console.log(`   stacks of leaves matching "${tree}":`);
          for (const [k, v] of [...b.stacks].sort((x, y) => y[1] - x[1]).slice(0, top)) console.log(`   ${kb(v)} KB  ${k}`);
        }
      }
    }
    console.log('\n(`__name`: tsx\'s keepNames helper, run per closure created; the built dist/ has none.)');
    console.log(`load at end ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
  } finally {
    await load?.close();
    for (const h of hosts) {
      if (h.child.exitCode === null) {
        h.child.send({ cmd: 'exit' } satisfies ToHost);
        await stopChild(h.child, 5000);
      }
    }
    await Promise.all(servers.map((s) => s.stop()));
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === SELF) {
  if (process.argv[2] === '--host') host(process.argv[3]!, process.argv[4]!).catch((err: unknown) => { console.error(err); process.exit(1); });
  else main().then(() => process.exit(0), (err: unknown) => { console.error(err instanceof Error ? err.message : err); process.exit(1); });
}
