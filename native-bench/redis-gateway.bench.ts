// Gateway-level benchmark of the Redis quota design (issue 4 item 6), through real Sluice processes: a
// redis-server, the mock upstream, Sluice gateways and the load generators each run in a process of their own.
//
// 1. Far from the limit: Redis commands and round trips per gateway request, and gateway req/s, for
//    `policy: redis` batched (flush every 100 ms, the default; 50 ms shown too), the same policy in synchronous mode (flush_interval_ms 0:
//    one INCRBY round trip per admission, settlements written every tick: the per-request INCRBY
//    baseline), and `policy: local`. Commands come from Redis itself (INFO stats / commandstats deltas),
//    requests and round trips from each gateway's /metrics (sluice_http_requests_total,
//    sluice_redis_flushes_total + sluice_quota_sync_admissions_total).
// 2. Overshoot: 4 gateway processes share one quota (200,000 tokens per hour), requests of about 40–60
//    tokens spread round-robin over the 4 ports under saturating concurrent load until every gateway
//    rejects consistently. Tokens admitted (usage.total_tokens of the 200 answers) divided by the limit,
//    for the batched design, the synchronous mode, and per-replica local counters.
//
// Usage: node --import tsx native-bench/redis-gateway.bench.ts [--quick] [--reps n] [--duration s]
// Bounded: about 2 minutes (a hard stop aborts at 170 s); 127.0.0.1 only; every child process and the
// redis-server are stopped at the end, on error and on Ctrl-C.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { freePorts } from '../test/helpers/free-port.ts';
import { parseInfo, redisCall, startRedis, type RedisServerHandle } from '../test/helpers/redis-topology.ts';
import { startServer, stopChild, track, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { fmt, median, table } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const PATH = '/v1/chat/completions';
const HARD_STOP_MS = 170_000;
const MESSAGES = [{ role: 'user', content: 'Say hello to the benchmark, politely and briefly.' }];

interface Args { quick: boolean; reps: number; durationMs: number; warmupMs: number; connections: number }

function parseArgs(argv: readonly string[]): Args {
  const quick = argv.includes('--quick');
  const a: Args = { quick, reps: quick ? 1 : 3, durationMs: quick ? 2_000 : 3_000, warmupMs: 1_000, connections: 64 };
  for (let i = 0; i < argv.length; i++) {
    const v = Number(argv[i + 1]);
    if (argv[i] === '--reps' && Number.isInteger(v) && v >= 1 && v <= 5) { a.reps = v; i++; }
    else if (argv[i] === '--duration' && v >= 0.5 && v <= 10) { a.durationMs = v * 1000; i++; }
  }
  return a;
}

// ---------------------------------------------------------------------------------------------------------
// Gateways

/** `batched` uses the default flush interval (100 ms); `batched-50` shows the interval knob. */
type Policy = 'batched' | 'batched-50' | 'synchronous' | 'local';

const POLICY_LABEL: Record<Policy, string> = {
  batched: 'policy redis, batched (flush every 100 ms, default)',
  'batched-50': 'policy redis, batched (flush every 50 ms)',
  synchronous: 'policy redis, synchronous (flush_interval_ms 0)',
  local: 'policy local (per process)',
};

const FLUSH_MS: Record<Policy, number> = { batched: 100, 'batched-50': 50, synchronous: 0, local: 100 };

function gatewayConfig(policy: Policy, mockPort: number, redisPort: number, limit: number): string {
  const rate: Record<string, unknown> = { limit, time_window: 3600 };
  if (policy !== 'local') Object.assign(rate, { policy: 'redis', redis_host: '127.0.0.1', redis_port: redisPort, redis_timeout: 1000 });
  return JSON.stringify({
    listen: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    workers: 1,
    redis_batching: { flush_interval_ms: FLUSH_MS[policy] },
    routes: [{
      id: 'chat', uri: PATH, methods: ['POST'],
      plugins: {
        'ai-proxy-multi': {
          instances: [{
            name: 'mock', provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer sk-bench' } },
            options: { model: 'gpt-4o-mini' }, override: { endpoint: `http://127.0.0.1:${mockPort}${PATH}` },
          }],
        },
        'ai-rate-limiting': rate,
      },
    }],
  });
}

interface Gateway { readonly server: Server; readonly adminPort: number }

async function startGateway(dir: string, name: string, config: string): Promise<Gateway> {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, config);
  // The readiness line's first port is the main one; the admin port is chosen here so it is known too.
  const [adminPort] = await freePorts(1);
  const server = await startServer({
    name, cwd: ROOT, timeoutMs: 30_000, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/,
    args: ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', file, '--port', '0', '--admin-port', String(adminPort)],
    env: { ...process.env, SLUICE_LOG: 'silent' },
  });
  return { server, adminPort: adminPort! };
}

/** Sum of every series of a counter in a Prometheus text exposition. */
function metricTotal(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || (line[name.length] !== '{' && line[name.length] !== ' ')) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

interface GatewayCounters { requests: number; flushes: number; sync: number; commands: number }

async function gatewayCounters(g: Gateway): Promise<GatewayCounters> {
  const text = await (await fetch(`http://127.0.0.1:${g.adminPort}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
  return {
    requests: metricTotal(text, 'sluice_http_requests_total'),
    flushes: metricTotal(text, 'sluice_redis_flushes_total'),
    sync: metricTotal(text, 'sluice_quota_sync_admissions_total'),
    commands: metricTotal(text, 'sluice_redis_commands_total'),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Redis counters

interface RedisCounters { total: number; byCommand: Map<string, number> }

async function redisCounters(redis: RedisServerHandle): Promise<RedisCounters> {
  const stats = parseInfo(await redisCall(redis, ['info', 'stats']));
  const cmd = parseInfo(await redisCall(redis, ['info', 'commandstats']));
  const byCommand = new Map<string, number>();
  for (const [k, v] of Object.entries(cmd)) {
    const m = /calls=(\d+)/.exec(v);
    if (k.startsWith('cmdstat_') && m !== null) byCommand.set(k.slice(8), Number(m[1]));
  }
  return { total: Number(stats.total_commands_processed), byCommand };
}

/** Commands between two snapshots, without the INFO calls of the snapshots themselves. */
function redisDelta(a: RedisCounters, b: RedisCounters): { total: number; quota: Map<string, number> } {
  const quota = new Map<string, number>();
  for (const [k, v] of b.byCommand) {
    if (k === 'info') continue;
    const d = v - (a.byCommand.get(k) ?? 0);
    if (d > 0) quota.set(k, d);
  }
  const infos = (b.byCommand.get('info') ?? 0) - (a.byCommand.get('info') ?? 0);
  return { total: b.total - a.total - infos, quota };
}

// ---------------------------------------------------------------------------------------------------------
// Part 2 load: a child process of its own, round-robin over the gateways' ports, summing admitted usage

interface OvershootJob {
  readonly ports: readonly number[];
  readonly connectionsPerPort: number;
  /** Stop once every port answered this many 429s in a row. */
  readonly rejectRun: number;
  readonly maxMs: number;
}

interface OvershootResult {
  readonly admittedTokens: number;
  readonly ok: number;
  readonly rejected: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly elapsedMs: number;
  readonly spent: boolean;
}

const bodyFor = (maxTokens: number): string => JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: maxTokens });

async function overshootLoad(job: OvershootJob): Promise<OvershootResult> {
  const pools = job.ports.map((p) => new Pool(`http://127.0.0.1:${p}`, { connections: job.connectionsPerPort, pipelining: 1 }));
  // max_tokens 30–50 on a prompt of about 17 tokens: 47–67 tokens per request, reserved and used alike.
  const bodies = Array.from({ length: 21 }, (_, i) => Buffer.from(bodyFor(30 + i)));
  const headers = { 'content-type': 'application/json', authorization: 'Bearer sk-client' };
  const run = job.ports.map(() => 0);
  let admitted = 0;
  let ok = 0;
  let rejected = 0;
  let errors = 0;
  let firstError: string | undefined;
  let next = 0;
  const t0 = performance.now();
  const done = (): boolean => run.every((r) => r >= job.rejectRun) || performance.now() - t0 > job.maxMs;
  const loop = async (): Promise<void> => {
    while (!done()) {
      const k = next++ % pools.length;
      try {
        const res = await pools[k]!.request({ path: PATH, method: 'POST', headers, body: bodies[Math.floor(Math.random() * bodies.length)]! });
        const text = await res.body.text();
        if (res.statusCode === 200) {
          const usage = (JSON.parse(text) as { usage?: { total_tokens?: number } }).usage;
          admitted += usage?.total_tokens ?? 0;
          ok++;
          run[k] = 0;
        } else if (res.statusCode === 429) {
          rejected++;
          run[k]!++;
        } else {
          errors++;
          firstError ??= `HTTP ${res.statusCode}: ${text.slice(0, 120)}`;
          await sleep(5);
        }
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
        await sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: job.connectionsPerPort * pools.length }, loop));
  const elapsedMs = performance.now() - t0;
  await Promise.all(pools.map((p) => p.destroy()));
  return { admittedTokens: admitted, ok, rejected, errors, firstError, elapsedMs, spent: run.every((r) => r >= job.rejectRun) };
}

function runOvershootChild(job: OvershootJob): Promise<OvershootResult> {
  const child: ChildProcess = fork(SELF, ['--overshoot-load'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(child);
  return new Promise<OvershootResult>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('overshoot load gave no result')), job.maxMs + 30_000);
    child.on('message', (m: { ready?: boolean; result?: OvershootResult; error?: string }) => {
      if (m.ready === true) child.send(job);
      else if (m.result !== undefined) { clearTimeout(timer); resolve(m.result); }
      else if (m.error !== undefined) { clearTimeout(timer); reject(new Error(m.error)); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`overshoot load exited (${code})`)); });
  }).finally(() => stopChild(child));
}

// ---------------------------------------------------------------------------------------------------------

interface RateRow {
  policy: Policy;
  rps: number[];
  cpuUs: number[];
  requests: number;
  commands: number;
  roundTrips: number;
  byCommand: Map<string, number>;
  errors: number;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const hardStop = setTimeout(() => {
    process.stderr.write('redis-gateway bench: hard time limit reached, aborting\n');
    process.exit(1);
  }, HARD_STOP_MS);
  hardStop.unref();
  const dir = mkdtempSync(join(tmpdir(), 'sluice-redis-gw-'));
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeDir);
  const log = (s: string) => process.stderr.write(s + '\n');
  const servers: Server[] = [];
  let load: LoadGenerator | undefined;
  let redis: RedisServerHandle | undefined;
  try {
    redis = await startRedis();
    const mock = await startServer({
      name: 'mock-upstream', cwd: ROOT, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/,
      args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0'],
    });
    servers.push(mock);

    // -------------------------------------------------------------------------------------------------
    // Part 1
    const far = 1_000_000_000_000;
    const policies: Policy[] = ['local', 'batched', 'synchronous', 'batched-50'];
    const gws = new Map<Policy, Gateway>();
    for (const p of policies) {
      const g = await startGateway(dir, `rate-${p}`, gatewayConfig(p, mock.port, redis.port, far));
      servers.push(g.server);
      gws.set(p, g);
    }
    load = await LoadGenerator.start();
    const body = bodyFor(16);
    for (const [p, g] of gws) {
      const res = await fetch(`http://127.0.0.1:${g.server.port}${PATH}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(10_000) });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${p} gateway answered ${res.status}: ${text.slice(0, 200)}`);
    }
    log(`part 1: ${args.reps} rep(s) × ${policies.length} gateways, ${args.warmupMs / 1000}+${args.durationMs / 1000} s each, ${args.connections} connections`);
    // One unmeasured pass first: the JIT of every gateway and of the load generator warms up.
    for (const g of gws.values()) {
      await load.run({
        origin: `http://127.0.0.1:${g.server.port}`, path: PATH, body, headers: { authorization: 'Bearer sk-client' },
        connections: args.connections, warmupMs: 1_500, durationMs: 500, maxRequests: 2_000_000, stream: false, watchPids: [],
      });
    }
    const rows = new Map<Policy, RateRow>(policies.map((p) => [p, { policy: p, rps: [], cpuUs: [], requests: 0, commands: 0, roundTrips: 0, byCommand: new Map(), errors: 0 }]));
    for (let rep = 0; rep < args.reps; rep++) {
      // Rotate the order so a drifting box favours none of them.
      const order = policies.map((_, i) => policies[(i + rep) % policies.length]!);
      for (const p of order) {
        const g = gws.get(p)!;
        const running = load.run({
          origin: `http://127.0.0.1:${g.server.port}`, path: PATH, body, headers: { authorization: 'Bearer sk-client' },
          connections: args.connections, warmupMs: args.warmupMs, durationMs: args.durationMs, maxRequests: 2_000_000,
          stream: false, watchPids: [g.server.pid],
        });
        // Steady state: the counts start once the warm-up is over (a counter idle for more than 3 flush
        // intervals is refreshed synchronously by its first requests, a one-off per burst, not per request).
        await sleep(args.warmupMs + 100);
        const r0 = await redisCounters(redis);
        const g0 = await gatewayCounters(g);
        const result = await running;
        // Let the last settlements reach Redis (two flush intervals) before the closing snapshot.
        await sleep(220);
        const g1 = await gatewayCounters(g);
        const r1 = await redisCounters(redis);
        const d = redisDelta(r0, r1);
        const row = rows.get(p)!;
        row.rps.push(result.rps);
        row.cpuUs.push(result.cpuUs[0]! / result.requests);
        row.requests += g1.requests - g0.requests;
        row.commands += d.total;
        row.roundTrips += g1.flushes - g0.flushes + (g1.sync - g0.sync);
        for (const [k, v] of d.quota) row.byCommand.set(k, (row.byCommand.get(k) ?? 0) + v);
        row.errors += result.errors;
        log(`  rep ${rep + 1} ${POLICY_LABEL[p].padEnd(48)} ${fmt(result.rps, 0).padStart(7)} req/s  ${fmt(d.total / (g1.requests - g0.requests), 4)} commands/request` +
          (result.errors > 0 ? `  ERRORS ${result.errors} (${result.firstError})` : ''));
      }
    }
    await load.close();
    load = undefined;
    for (const g of gws.values()) {
      await g.server.stop();
      servers.splice(servers.indexOf(g.server), 1);
    }

    const localRps = median(rows.get('local')!.rps);
    const perRep = (p: Policy) => median(rows.get(p)!.rps.map((v, i) => v / rows.get('local')!.rps[i]!));
    console.log(`\n## 1. Through the gateway, far from the limit (${args.connections} connections, closed loop, ${args.reps} × ${args.durationMs / 1000} s after ${args.warmupMs / 1000} s of warm-up; commands from Redis INFO, requests and round trips from the gateway's metrics)\n`);
    console.log(table([
      ['gateway', 'requests', 'Redis commands', 'commands / request', 'round trips / request', 'req/s (median)', 'req/s ÷ local', 'gateway CPU µs/req', 'commands seen by Redis', 'errors'],
      ...policies.map((p) => {
        const r = rows.get(p)!;
        const cmds = [...r.byCommand].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ');
        return [POLICY_LABEL[p], fmt(r.requests, 0), fmt(r.commands, 0), fmt(r.commands / r.requests, 4), fmt(r.roundTrips / r.requests, 4),
          fmt(median(r.rps), 0), p === 'local' ? '1.000' : fmt(perRep(p), 3), fmt(median(r.cpuUs), 1), cmds || '—', String(r.errors)];
      }),
    ]));
    const batched = rows.get('batched')!;
    const batchedCmd = batched.commands / batched.requests;
    console.log(`\nbatched: ${fmt(batchedCmd, 4)} commands/request (target ≤ 0.01: ${batchedCmd <= 0.01 ? 'PASS' : 'FAIL'}), ` +
      `${fmt(perRep('batched'), 3)} of the local policy's req/s (target ≥ 0.95: ${perRep('batched') >= 0.95 ? 'PASS' : 'FAIL'}; local ${fmt(localRps, 0)} req/s)`);

    // -------------------------------------------------------------------------------------------------
    // Part 2
    const limit = 200_000;
    const replicas = 4;
    const connectionsPerPort = 16;
    console.log(`\n## 2. Overshoot: ${replicas} gateway processes, one quota of ${fmt(limit, 0)} tokens per hour, requests of 47–67 tokens round-robin over the ${replicas} ports, ${connectionsPerPort * replicas} concurrent, until every gateway rejects 40 in a row\n`);
    const orows: string[][] = [['quota policy', 'tokens admitted', 'admitted / limit', 'admitted requests', 'rejected', 'errors', 'sync admissions', 'Redis consumed', 'seconds']];
    const ratios = new Map<Policy, number>();
    for (const p of ['batched', 'batched-50', 'synchronous', 'local'] as Policy[]) {
      await redisCall(redis, ['flushall']);
      const group = await Promise.all(Array.from({ length: replicas }, (_, i) => startGateway(dir, `quota-${p}-${i}`, gatewayConfig(p, mock.port, redis!.port, limit))));
      try {
        const res = await runOvershootChild({ ports: group.map((g) => g.server.port), connectionsPerPort, rejectRun: 40, maxMs: args.quick ? 20_000 : 30_000 });
        await sleep(150);
        let sync = 0;
        for (const g of group) sync += (await gatewayCounters(g)).sync;
        let stored = Number.NaN;
        if (p !== 'local') {
          const keys = await redisCall(redis, ['keys', 'sluice:v1:*:c']) as string[];
          stored = 0;
          for (const k of keys) stored += Number(await redisCall(redis, ['get', k]) ?? 0);
        }
        const ratio = res.admittedTokens / limit;
        ratios.set(p, ratio);
        orows.push([POLICY_LABEL[p] + (res.spent ? '' : ' (NOT SPENT in time)'), fmt(res.admittedTokens, 0), fmt(ratio, 4), fmt(res.ok, 0), fmt(res.rejected, 0),
          res.errors > 0 ? `${res.errors} (${res.firstError})` : '0', fmt(sync, 0), Number.isNaN(stored) ? '—' : fmt(stored, 0), fmt(res.elapsedMs / 1000, 1)]);
        log(`  ${POLICY_LABEL[p]}: admitted ${res.admittedTokens} tokens (${fmt(ratio, 4)} × limit) in ${fmt(res.elapsedMs / 1000, 1)} s`);
      } finally {
        await Promise.all(group.map((g) => g.server.stop()));
      }
    }
    console.log(table(orows));
    const b = ratios.get('batched')!;
    console.log(`\nbatched overshoot ratio: ${fmt(b, 4)} (target ≤ 1.05: ${b <= 1.05 ? 'PASS' : 'FAIL'}, stretch ≤ 1.01: ${b <= 1.01 ? 'PASS' : 'FAIL'}); ` +
      `synchronous ${fmt(ratios.get('synchronous')!, 4)}; per-replica local counters ${fmt(ratios.get('local')!, 4)}`);
    return 0;
  } finally {
    clearTimeout(hardStop);
    await Promise.all([...servers.map((s) => s.stop()), load?.close()]);
    await redis?.stop();
    removeDir();
  }
}

if (process.argv.includes('--overshoot-load')) {
  process.on('message', (job: OvershootJob) => {
    overshootLoad(job).then(
      (result) => process.send!({ result }),
      (err: unknown) => process.send!({ error: (err as Error).stack ?? String(err) }),
    );
  });
  process.once('disconnect', () => process.exit(0));
  process.send!({ ready: true });
} else {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => { console.error(err instanceof Error ? err.stack ?? err.message : err); process.exit(1); },
  );
}
