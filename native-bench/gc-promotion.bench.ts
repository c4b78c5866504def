// What the compiled gateway's scavenges keep: bytes promoted to the old generation and bytes surviving per
// scavenge, and the scavenges' pause, from `node --trace-gc-nvp`, under JSON or stream load at 64 connections.
// Requests in flight survive a scavenge legitimately (tens of KB); anything that grows with the requests served
// since the previous scavenge is garbage kept alive by something old (docs/performance.md "Promoted garbage":
// a rehashing Set chained its discarded tables and ~15% of every request's bytes were promoted). Runs dist/ with
// the deployed flags: tsx's output of src/ did not show that bug.
//   node --import tsx native-bench/gc-promotion.bench.ts [--kinds json,stream] [--quota] [--no-guard]
//        [--workers 1] [--duration 4] [--connections 64]
// Needs `npm run build`. Prints, per kind, medians over the measured window's scavenges.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { numArg } from './lib/args.ts';
import { flag, opt } from './lib/argv.ts';
import { deployedNodeFlags } from './lib/node-flags.ts';
import { startServer, type Server } from './lib/proc.ts';
import { LoadGenerator } from './lib/run-load.ts';
import { CHAT_PATH, chatGatewayConfig, startChatMock } from './lib/chat-route.ts';
import { median } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const MAIN = join(ROOT, 'dist/cli/main.js');
const PATH = CHAT_PATH;
const MESSAGES = [{ role: 'user', content: 'Say hello to the benchmark, politely and briefly.' }];

interface Scavenge { pause: number; promoted: number; survived: number; allocated: number }

/** The `gc=s` records of --trace-gc-nvp output (one line each: `key=value` pairs). */
export function scavenges(text: string): Scavenge[] {
  const out: Scavenge[] = [];
  for (const line of text.split('\n')) {
    if (!/ ms: pause=[0-9.]+ .*\bgc=s /.test(line)) continue;
    const field = (k: string): number => Number(new RegExp(` ${k}=([0-9.]+)`).exec(line)?.[1] ?? Number.NaN);
    out.push({ pause: field('pause'), promoted: field('promoted'), survived: field('new_space_survived'), allocated: field('allocated') });
  }
  return out;
}

async function main(): Promise<void> {
  if (!existsSync(MAIN)) { console.error('gc-promotion: dist/cli/main.js is missing (npm run build)'); process.exit(2); }
  const kinds = opt('--kinds', 'json,stream').split(',').filter((k) => k === 'json' || k === 'stream');
  const durationMs = numArg('--duration', opt('--duration', '4'), 1, 30) * 1000;
  const connections = numArg('--connections', opt('--connections', '64'), 1, 512);
  const workers = numArg('--workers', opt('--workers', '1'), 1, 8);
  const tmp = mkdtempSync(join(tmpdir(), 'sluice-gc-'));
  const servers: Server[] = [];
  try {
    const mock = await startChatMock(ROOT);
    servers.push(mock);
    const file = join(tmp, 'config.json');
    writeFileSync(file, chatGatewayConfig(mock.port, { guard: !flag('--no-guard'), quota: flag('--quota'), workers }));
    const gw = await startServer({ name: 'gateway', cwd: ROOT, ready: /sluice listening on http:\/\/127\.0\.0\.1:(\d+)/, timeoutMs: 60_000,
      args: [...deployedNodeFlags(ROOT), '--trace-gc-nvp', MAIN, 'start', '--config', file, '--port', '0', '--admin-port', '0'] });
    servers.push(gw);
    let out = '';
    gw.child.stdout!.on('data', (d: string) => { if (out.length < 16 * 1024 * 1024) out += d; });
    const load = await LoadGenerator.start();
    console.log(`compiled gateway, node ${deployedNodeFlags(ROOT).join(' ')}, workers ${workers}, ${connections} connections, ` +
      `guard ${flag('--no-guard') ? 'off' : 'on'}${flag('--quota') ? ', local quota' : ''}`);
    for (const kind of kinds) {
      const stream = kind === 'stream';
      const body = JSON.stringify({ model: 'bench', messages: MESSAGES, max_tokens: 32, ...(stream ? { stream: true } : {}) });
      const spec = { origin: `http://127.0.0.1:${gw.port}`, path: PATH, body, headers: { authorization: 'Bearer sk-client' },
        connections, warmupMs: 0, stream, watchPids: [gw.pid] };
      // Warm-up first (JIT, pools), then the window whose scavenges count.
      await load.run({ ...spec, durationMs: 2000, maxRequests: 200_000 });
      const from = out.length;
      const res = await load.run({ ...spec, durationMs, maxRequests: 500_000 });
      await new Promise((r) => setTimeout(r, 200));
      const s = scavenges(out.slice(from));
      if (s.length === 0) { console.log(`${kind}: no scavenge in the window (${res.requests} requests)`); continue; }
      const kb = (v: number): string => (v / 1024).toFixed(1);
      const promotedTotal = s.reduce((t, x) => t + x.promoted, 0);
      console.log(`${kind.padEnd(6)} ${res.requests} requests, ${s.length} scavenges: per scavenge promoted ${kb(median(s.map((x) => x.promoted)))} KB, ` +
        `survived ${kb(median(s.map((x) => x.survived)))} KB, allocated ${kb(median(s.map((x) => x.allocated)))} KB, pause ${median(s.map((x) => x.pause)).toFixed(2)} ms; ` +
        `promoted per request ${(promotedTotal / res.requests).toFixed(0)} B`);
    }
    await load.close();
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
