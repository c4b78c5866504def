// What the HTTP/1.x guard (src/frontend/http1-guard.ts) costs per request, in two parts:
// 1. bare uWS answering a small POST, direct vs. behind a pass-through node:net pipe in the same process (the
//    floor of any node:net front) vs. behind the project's guard on a unix socket (native-bench/lib/guard-server.ts);
// 2. Sluice itself proxying to the mock upstream with `listen.http1_guard: true` vs `false`, alternated per run.
// CPU is the server process's utime+stime per request over the measured window (the gateway process only; the
// mock runs in its own process).
//   node --import tsx native-bench/guard-cost.bench.ts [--connections 32] [--duration-ms 5000] [--runs 3] [--pipe-runs 0]
//   node --import tsx native-bench/guard-cost.bench.ts --ab <checkout> [--ab-b <checkout>] [--connections 32] [--duration-ms 5000] [--runs 6]
// --ab: only a paired A/B of the guard alone (src/frontend/http1-guard.ts of <checkout> as A, --ab-b or this one as B) in front of
// bare uWS on a unix socket, measured A B B A … so drift cancels; prints both medians and how many pairs B won.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numArg } from './lib/args.ts';
import type { LoadResult } from './lib/load.ts';
import { startServer } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { fmt, median, table } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const connections = flag('--connections') === undefined ? 32 : numArg('--connections', flag('--connections'), 1, 512);
const durationMs = flag('--duration-ms') === undefined ? 5000 : numArg('--duration-ms', flag('--duration-ms'), 500, 120_000);
const runs = flag('--runs') === undefined ? 3 : numArg('--runs', flag('--runs'), 1, 10);
/** Runs of part 1 (the pass-through pipe); 0 skips it. */
const pipeRuns = flag('--pipe-runs') === undefined ? runs : numArg('--pipe-runs', flag('--pipe-runs'), 0, 10);

const abFrom = flag('--ab');
const abB = flag('--ab-b') ?? ROOT;

const body = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'What is 1+1?' }] });

/** One run of native-bench/lib/guard-server.ts in the given mode (and checkout): its load result and CPU µs per request. */
async function guardServerRun(load: LoadGenerator, mode: 'direct' | 'guard' | 'real', checkout: string): Promise<{ r: LoadResult; us: number }> {
  const server = await startServer({ name: mode, args: ['--import', 'tsx', 'native-bench/lib/guard-server.ts', mode, checkout], cwd: ROOT, ready: /listening (\d+)/ });
  try {
    const r = await load.run({
      origin: `http://127.0.0.1:${server.port}`, path: '/v1/chat/completions', body,
      headers: { 'content-type': 'application/json' }, connections, warmupMs: 1000, durationMs,
      maxRequests: 2_000_000, stream: false, watchPids: [server.pid],
    });
    return { r, us: r.cpuUs[0]! / r.requests };
  } finally {
    await server.stop();
  }
}

if (abFrom !== undefined) {
  const abLoad = await LoadGenerator.start();
  const us: Record<'A' | 'B', number[]> = { A: [], B: [] };
  try {
    for (let run = 0; run < runs; run++) {
      for (const side of run % 2 === 0 ? ['A', 'B'] as const : ['B', 'A'] as const) {
        const { r, us: cpuUs } = await guardServerRun(abLoad, 'real', side === 'A' ? abFrom : abB);
        us[side].push(cpuUs);
        console.log(`${side} ${fmt(cpuUs)} µs/request  ${fmt(r.rps, 0)} req/s  errors ${r.errors}`);
      }
    }
  } finally {
    await abLoad.close();
  }
  const wins = us.B.filter((b, i) => b < us.A[i]!).length;
  console.log(`guard alone: A ${fmt(median(us.A))}  B ${fmt(median(us.B))} µs/request  B/A ${fmt(median(us.B) / median(us.A), 3)}  (B lower in ${wins} of ${runs} pairs)`);
  process.exit(0);
}
const load = await LoadGenerator.start();
const rows: string[][] = [['mode', 'req/s', 'p50 / p99 ms', 'CPU µs/req']];
const cpu: Record<string, number[]> = { direct: [], guard: [], real: [] };
try {
  for (let run = 0; run < pipeRuns; run++) {
    for (const mode of ['direct', 'guard', 'real'] as const) {
      const { r, us } = await guardServerRun(load, mode, ROOT);
      cpu[mode]!.push(us);
      rows.push([`${mode} (run ${run + 1})`, fmt(r.rps, 0), `${fmt(r.p50Ms)} / ${fmt(r.p99Ms)}`, fmt(us)]);
    }
  }
} finally {
  await load.close();
}
console.log(table(rows));
const d = median(cpu.direct!);
const g = median(cpu.guard!);
const real = median(cpu.real!);
console.log(`median CPU per request: direct ${fmt(d)} µs, pass-through pipe ${fmt(g)} µs (adds ${fmt(g - d)} µs, ${fmt(g / d, 2)}× bare uWS), `
  + `the HTTP/1.x guard on a unix socket ${fmt(real)} µs (adds ${fmt(real - d)} µs, ${fmt(real / d, 2)}×)`);

// Part 2: Sluice with the guard on and off.
const PATH = '/v1/chat/completions';
const tmp = mkdtempSync(join(tmpdir(), 'sluice-guard-bench-'));
const sRows: string[][] = [['Sluice', 'req/s', 'p50 / p99 ms', 'CPU µs/req', 'errors']];
const sCpu: Record<string, number[]> = { off: [], on: [] };
const load2 = await LoadGenerator.start();
const mock = await startServer({ name: 'mock-upstream', cwd: ROOT, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/, args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0'] });
try {
  for (let run = 0; run < runs; run++) {
    for (const mode of ['off', 'on'] as const) {
      const file = join(tmp, `${mode}.json`);
      writeFileSync(file, JSON.stringify({
        listen: { host: '127.0.0.1', port: 0, http1_guard: mode === 'on' }, admin: { host: '127.0.0.1', port: 0 },
        routes: [{ id: 'chat', uri: PATH, methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [{
          name: 'mock', provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer sk-bench' } },
          options: { model: 'gpt-4o-mini' }, override: { endpoint: `http://127.0.0.1:${mock.port}${PATH}` } }] } } }],
      }));
      const server = await startServer({
        name: `sluice-guard-${mode}`, cwd: ROOT, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 30_000,
        args: ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', file, '--port', '0', '--admin-port', '0'],
      });
      try {
        const r = await load2.run({
          origin: `http://127.0.0.1:${server.port}`, path: PATH, body, headers: { 'content-type': 'application/json' },
          connections, warmupMs: 1000, durationMs, maxRequests: 2_000_000, stream: false, watchPids: [server.pid],
        });
        const us = r.cpuUs[0]! / r.requests;
        sCpu[mode]!.push(us);
        sRows.push([`guard ${mode} (run ${run + 1})`, fmt(r.rps, 0), `${fmt(r.p50Ms)} / ${fmt(r.p99Ms)}`, fmt(us), String(r.errors)]);
      } finally {
        await server.stop();
      }
    }
  }
} finally {
  await mock.stop();
  await load2.close();
  rmSync(tmp, { recursive: true, force: true });
}
console.log(table(sRows));
const off = median(sCpu.off!);
const on = median(sCpu.on!);
// Each run pairs off and on back to back, so the median of the per-run ratios cancels load that drifts across runs.
const paired = median(sCpu.on!.map((v, i) => v / sCpu.off![i]!));
console.log(`median Sluice CPU per request: guard off ${fmt(off)} µs, guard on ${fmt(on)} µs, the guard adds ${fmt(on - off)} µs (ratio of medians ${fmt(on / off, 2)}, median of paired ratios ${fmt(paired, 2)})`);
