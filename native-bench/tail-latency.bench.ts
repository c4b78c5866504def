// Latency at one request in flight, by percentile, for Sluice run with different node flags (the young generation's
// size, GC threading), beside the floor (native-bench/lib/lean-hop.ts) on the same mock upstream. One keep-alive
// connection sends small JSON requests back to back; each variant runs in a fresh gateway (guard off, local quota),
// the variants interleaved and their order reversed every other round, so the box's drift falls on all of them.
// After each run the gateway's own /metrics gives the minor GCs (scavenges) it made and their mean pause.
//   node --import tsx native-bench/tail-latency.bench.ts [--variants "<flags>|<flags>|…"] [--rounds 3] [--requests 15000]
// --variants: `|`-separated sets of node flags, `default` for none (default: "default|" + the deployed flags,
// package.json's start). Needs `npm run build` (runs dist/cli/main.js).
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../test/helpers/free-port.ts';
import { numArg } from './lib/args.ts';
import { opt } from './lib/argv.ts';
import { deployedNodeFlags } from './lib/node-flags.ts';
import { startServer, type Server } from './lib/proc.ts';
import { median } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = join(ROOT, 'dist/cli/main.js');
if (!existsSync(MAIN)) { console.error('tail-latency: dist/cli/main.js is missing (npm run build)'); process.exit(2); }
const rounds = numArg('--rounds', opt('--rounds', '3'), 1, 20);
const requests = numArg('--requests', opt('--requests', '15000'), 1000, 200_000);
const warmup = Math.min(3000, requests);
const DEPLOYED = deployedNodeFlags(ROOT);
const variants = opt('--variants', `default|${DEPLOYED.join(' ')}`).split('|').map((v) => v.trim() || 'default');
const MAX_WAIT_MS = 10_000;

const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say hello to the benchmark, politely and briefly.' }] });
const request = Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);

/** n requests one after another on one connection; ms per request. Each answer must come within MAX_WAIT_MS. */
async function measure(port: number, n: number): Promise<number[]> {
  const s = connect(port, '127.0.0.1');
  s.setNoDelay(true);
  await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); });
  const out: number[] = [];
  let acc = '';
  let t0 = 0n;
  let done: ((err?: Error) => void) | undefined;
  s.on('data', (d: Buffer) => {
    acc += d.toString('latin1');
    const h = acc.indexOf('\r\n\r\n');
    if (h < 0) return;
    const m = /\r\ncontent-length: *(\d+)/i.exec(acc.slice(0, h));
    if (m === null) { done?.(new Error('answer without content-length')); return; }
    if (acc.length - h - 4 < Number(m[1])) return;
    out.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (!acc.startsWith('HTTP/1.1 200')) { done?.(new Error(`answer ${acc.slice(0, 12)}`)); return; }
    acc = '';
    done?.();
  });
  s.on('error', (err) => done?.(err));
  try {
    for (let i = 0; i < n; i++) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no answer in time')), MAX_WAIT_MS);
        done = (err) => { clearTimeout(timer); done = undefined; if (err) reject(err); else resolve(); };
        t0 = process.hrtime.bigint();
        s.write(request);
      });
    }
  } finally {
    s.destroy();
  }
  return out;
}

function pct(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

const dir = mkdtempSync(join(tmpdir(), 'sluice-tail-'));
const servers: Server[] = [];
try {
  const mock = await startServer({ name: 'mock', cwd: ROOT, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/,
    args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0'] });
  servers.push(mock);
  const [admin] = await freePorts(1) as [number];
  const config = join(dir, 'sluice.json');
  writeFileSync(config, JSON.stringify({
    listen: { host: '127.0.0.1', port: 0, http1_guard: false }, admin: { host: '127.0.0.1', port: admin },
    routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: {
      'ai-rate-limiting': { limit: 1_000_000_000_000, time_window: 3600 },
      'ai-proxy-multi': { instances: [{ name: 'mock', provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer sk-bench' } },
        options: { model: 'gpt-4o-mini' }, override: { endpoint: `http://127.0.0.1:${mock.port}/v1/chat/completions` } }] } } }],
  }));
  console.log(`tail latency at one request in flight, ${requests} requests per run after ${warmup} unmeasured, ${rounds} round(s); ms`);
  const targets = ['floor', ...variants];
  const p99s = new Map<string, number[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < rounds; round++) {
    for (const t of round % 2 === 0 ? targets : [...targets].reverse()) {
      const flags = t === 'floor' || t === 'default' ? [] : t.split(/\s+/);
      const srv = t === 'floor'
        ? await startServer({ name: 'floor', cwd: ROOT, ready: /lean-hop listening on http:\/\/127\.0\.0\.1:(\d+)/,
          args: [...DEPLOYED, '--import', 'tsx', 'native-bench/lib/lean-hop.ts', '--upstream', String(mock.port), '--port', '0'] })
        : await startServer({ name: 'sluice', cwd: dir, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 60_000,
          args: [...flags, MAIN, 'start', '--config', config, '--port', '0', '--admin-port', String(admin)] });
      try {
        await measure(srv.port, warmup);
        const lat = (await measure(srv.port, requests)).sort((a, b) => a - b);
        let gc = '';
        if (t !== 'floor') {
          const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
          const v = (name: string) => Number(/\S+ (\S+)$/.exec(text.split('\n').find((l) => l.includes(`gc_duration_seconds_${name}{kind="minor"}`)) ?? '')?.[1]);
          gc = `  minor GCs ${v('count')} (mean ${(1000 * v('sum') / v('count')).toFixed(2)} ms)`;
        }
        p99s.get(t)!.push(pct(lat, 0.99));
        console.log(`${t.padEnd(32)} p50 ${pct(lat, 0.5).toFixed(3)}  p90 ${pct(lat, 0.9).toFixed(3)}  p99 ${pct(lat, 0.99).toFixed(3)}  ` +
          `p99.9 ${pct(lat, 0.999).toFixed(3)}  over 0.5 ms ${lat.filter((x) => x > 0.5).length}${gc}`);
      } finally {
        await srv.stop();
      }
    }
  }
  for (const [t, a] of p99s) console.log(`${t.padEnd(32)} p99 median ${median(a).toFixed(3)} ms  (${a.map((x) => x.toFixed(3)).join(', ')})`);
} finally {
  for (const s of servers.reverse()) await s.stop();
  rmSync(dir, { recursive: true, force: true });
}
