// Start-up cost of `sluice start`: time from spawn to the first served request, and the idle RSS of the
// gateway (summed over its process tree, so a launcher + child counts whole) once it has served that request.
// The config has one route with an ai-rate-limiting quota (the tokenizer is loaded) and the default one
// worker thread. Targets (issue 9): idle RSS <= 150 MB, start to first request <= 0.6 s.
//
//   node --import tsx native-bench/startup.bench.ts [--runs 5] [--idle-ms 2000] [--cmd "<node args…>"]
//
// --cmd replaces the gateway command after `node` (default: bin/sluice.mjs, the compiled build), e.g.
// `--cmd "--import tsx src/cli/main.ts"` for the loader path, or another checkout's bin/sluice.mjs to compare.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startMockUpstream } from '../src/mock/server.ts';
import { freePort } from '../test/helpers/free-port.ts';
import { stopChild, track } from './lib/proc.ts';

const root = fileURLToPath(new URL('..', import.meta.url));

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}
const runs = Number(arg('--runs', '5'));
const idleMs = Number(arg('--idle-ms', '2000'));
const cmd = arg('--cmd', 'bin/sluice.mjs').split(' ').filter(Boolean);
const TARGET_RSS_MB = 150;
const TARGET_START_S = 0.6;

function rssKb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch { return 0; }
}

/** CPU seconds (user + system, all threads) a process has used, from /proc/<pid>/stat (clock ticks of 10 ms). */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch { return 0; }
}

/** pid and every descendant (the old launcher spawned the gateway as a child). */
function tree(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parent) if (pp === out[i]) out.push(p);
  return out;
}

async function firstServed(url: string, child: ChildProcess, deadline: number): Promise<void> {
  const body = JSON.stringify({ messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 });
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`gateway exited with ${child.exitCode}`);
    try {
      const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(2000) });
      await r.arrayBuffer();
      if (r.status === 200) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error('no request served before the deadline');
}

async function main(): Promise<void> {
  const mock = await startMockUpstream({ host: '127.0.0.1', port: 0 });
  // The mock counts prompts with its own (lazily loaded) rank table: load it now, not inside run 1's timing.
  await (await fetch(`${mock.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'warm up' }], max_tokens: 1 }),
  })).arrayBuffer();
  const dir = mkdtempSync(join(tmpdir(), 'sluice-startup-'));
  const results: { startS: number; cpuS: number; rssMb: number; procs: number }[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      const port = await freePort();
      const adminPort = await freePort();
      const file = join(dir, 'config.json');
      writeFileSync(file, JSON.stringify({
        listen: { host: '127.0.0.1', port },
        admin: { host: '127.0.0.1', port: adminPort },
        workers: 1,
        routes: [{
          id: 'quota', uri: '/v1/chat/completions', methods: ['POST'],
          plugins: {
            'ai-proxy': { provider: 'openai-compatible', options: { model: 'gpt-4o-mini' }, override: { endpoint: `${mock.url}/v1/chat/completions` } },
            'ai-rate-limiting': { limit: 1_000_000_000, time_window: 3600 },
          },
        }],
      }));
      const t0 = performance.now();
      const child = spawn(process.execPath, [...cmd, 'start', '--config', file], {
        cwd: root, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, SLUICE_LOG: 'silent' },
      });
      track(child);
      try {
        await firstServed(`http://127.0.0.1:${port}/v1/chat/completions`, child, Date.now() + 30_000);
        const startS = (performance.now() - t0) / 1000;
        // CPU used until then: on a busy shared box the wall time stretches, the CPU time much less.
        const cpuS = tree(child.pid!).reduce((s, p) => s + cpuSeconds(p), 0);
        await new Promise((r) => setTimeout(r, idleMs));
        const pids = tree(child.pid!);
        const rssMb = pids.reduce((s, p) => s + rssKb(p), 0) / 1024;
        results.push({ startS, cpuS, rssMb, procs: pids.length });
        console.log(`run ${i + 1}: start to first request ${startS.toFixed(3)} s (${cpuS.toFixed(2)} s CPU), idle RSS ${rssMb.toFixed(1)} MB (${pids.length} process${pids.length > 1 ? 'es' : ''})`);
      } finally {
        await stopChild(child, 5000);
      }
    }
  } finally {
    await mock.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const startS = median(results.map((r) => r.startS));
  const rssMb = median(results.map((r) => r.rssMb));
  const cpuS = median(results.map((r) => r.cpuS));
  console.log(`\ncommand: node ${cmd.join(' ')} start --config <quota route>`);
  console.log(`median of ${results.length}: start to first served request ${startS.toFixed(3)} s (target <= ${TARGET_START_S} s: ${startS <= TARGET_START_S ? 'met' : 'MISSED'}; ${cpuS.toFixed(2)} s CPU), ` +
    `idle RSS ${rssMb.toFixed(1)} MB (target <= ${TARGET_RSS_MB} MB: ${rssMb <= TARGET_RSS_MB ? 'met' : 'MISSED'})`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
