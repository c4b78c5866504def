// Memory cost of what clients can make a gateway hold: RSS of a real `sluice start` process per idle
// keep-alive connection, per open stream (a slow mock stream through the gateway), and per tracked quota key
// (a local-policy rules route keyed by `${http_x_user}`, one distinct value per request). Each figure is the
// RSS growth over N items divided by N, read from /proc/<pid>/status while the items are held.
//   node --import tsx native-bench/memory.bench.ts [--connections 2000] [--streams 500] [--keys 20000]
import { setMaxListeners } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { numArg } from './lib/args.ts';
import { startServer, type Server } from './lib/proc.ts';
import { fmt, table } from './lib/stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const CONNECTIONS = flag('--connections') === undefined ? 2000 : numArg('--connections', flag('--connections'), 10, 20_000);
const STREAMS = flag('--streams') === undefined ? 500 : numArg('--streams', flag('--streams'), 10, 5000);
const KEYS = flag('--keys') === undefined ? 20_000 : numArg('--keys', flag('--keys'), 100, 500_000);

function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? Number.NaN : Number(m[1]) * 1024;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** RSS after it stops moving (allocations settle), sampled every 200 ms, at most ~3 s. */
async function settledRss(pid: number): Promise<number> {
  let prev = rssBytes(pid);
  for (let i = 0; i < 15; i++) {
    await sleep(200);
    const cur = rssBytes(pid);
    if (Math.abs(cur - prev) < 64 * 1024) return cur;
    prev = cur;
  }
  return prev;
}

function openIdle(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.once('error', reject);
    s.write('GET /healthz-not-a-route HTTP/1.1\r\nHost: b\r\n\r\n');
    s.once('data', () => resolve(s));
  });
}

const dir = mkdtempSync(join(tmpdir(), 'sluice-mem-'));
let mock: Server | undefined;
let gw: Server | undefined;
const sockets: Socket[] = [];
const rows: string[][] = [['what', 'N', 'RSS before', 'RSS held', 'per item']];
const mb = (b: number) => `${fmt(b / 1024 / 1024)} MiB`;
try {
  mock = await startServer({
    name: 'mock', cwd: ROOT, ready: /listening on http:\/\/127\.0\.0\.1:(\d+)/,
    args: ['--import', 'tsx', 'src/cli/main.ts', 'mock-upstream', '--port', '0', '--chunks', '60', '--chunk-delay-ms', '1000'],
  });
  const config = join(dir, 'sluice.yaml');
  const endpoint = `http://127.0.0.1:${mock.port}/v1/chat/completions`;
  writeFileSync(config, JSON.stringify({
    // The body budget is raised so all ten 7 MiB bodies are served (the default 64 MiB would refuse some with 503).
    limits: { max_quota_keys: 10_000_000, max_inflight_body_bytes: 128 * 1024 * 1024 },
    routes: [
      { id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [{ name: 'm', provider: 'openai-compatible', options: { model: 'm' }, override: { endpoint } }] } } },
      {
        id: 'quota', uri: '/quota/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': { instances: [{ name: 'm', provider: 'openai-compatible', options: { model: 'm' }, override: { endpoint } }] },
          'ai-rate-limiting': { policy: 'local', limit: 1_000_000_000, time_window: 3600, rules: [{ key: '${http_x_user}', count: 1_000_000, time_window: 3600 }] },
        },
      },
    ],
  }));
  gw = await startServer({
    name: 'gateway', cwd: ROOT, ready: /sluice listening on http:\/\/[^:]+:(\d+)/,
    args: ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', config, '--port', '0', '--admin-port', '0'],
  });
  const pid = gw.pid;
  const origin = `http://127.0.0.1:${gw.port}`;

  // Idle keep-alive connections (uWS closes them after ~10 s idle: open and read within that).
  let before = await settledRss(pid);
  for (let i = 0; i < CONNECTIONS; i += 200) {
    const batch = await Promise.all(Array.from({ length: Math.min(200, CONNECTIONS - i) }, () => openIdle(gw!.port)));
    sockets.push(...batch);
  }
  let held = await settledRss(pid);
  rows.push(['idle keep-alive connection', String(CONNECTIONS), mb(before), mb(held), `${fmt((held - before) / CONNECTIONS / 1024, 2)} KiB`]);
  for (const s of sockets.splice(0)) s.destroy();
  await sleep(1000);

  // Open streams: each is held by the slow mock (60 frames, 1 s apart) while RSS is read.
  const agent = new Agent({ connections: STREAMS + 10, pipelining: 1 });
  before = await settledRss(pid);
  const streamBody = JSON.stringify({ model: 'x', stream: true, messages: [{ role: 'user', content: 'Tell me a story.' }] });
  const ac = new AbortController();
  setMaxListeners(STREAMS + 10, ac.signal);
  const open = await Promise.all(Array.from({ length: STREAMS }, () => request(`${origin}/v1/chat/completions`, {
    method: 'POST', body: streamBody, headers: { 'content-type': 'application/json' }, dispatcher: agent, signal: ac.signal,
  })));
  // Read each stream's first frame so every one is flowing.
  for (const r of open) r.body.on('error', () => {}).on('data', () => {});
  held = await settledRss(pid);
  rows.push(['open stream (slow SSE)', String(STREAMS), mb(before), mb(held), `${fmt((held - before) / STREAMS / 1024, 2)} KiB`]);
  ac.abort();
  await agent.close().catch(() => {});
  await sleep(1500);

  // Tracked quota keys: one distinct x-user per request, 32 requests in flight.
  const keyAgent = new Agent({ connections: 32 });
  before = await settledRss(pid);
  const body = JSON.stringify({ model: 'x', max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] });
  let next = 0;
  let failed = 0;
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (next < KEYS) {
      const i = next++;
      const r = await request(`${origin}/quota/v1/chat/completions`, {
        method: 'POST', body, headers: { 'content-type': 'application/json', 'x-user': `user-${i}` }, dispatcher: keyAgent,
      });
      if (r.statusCode !== 200) failed++;
      await r.body.dump();
    }
  }));
  await keyAgent.close();
  held = await settledRss(pid);
  rows.push([`tracked quota key (${failed} failed)`, String(KEYS), mb(before), mb(held), `${fmt((held - before) / KEYS, 0)} B`]);

  // Ten concurrent 7 MiB bodies (issue 7 §9): peak RSS growth while they are read, parsed and proxied.
  const bigAgent = new Agent({ connections: 10 });
  await sleep(1000);
  before = await settledRss(pid);
  let peak = before;
  const sampler = setInterval(() => { peak = Math.max(peak, rssBytes(pid)); }, 10);
  const big = JSON.stringify({ model: 'x', max_tokens: 4, messages: [{ role: 'user', content: 'a '.repeat(3.5 * 1024 * 1024) }] });
  const statuses = await Promise.all(Array.from({ length: 10 }, async () => {
    const r = await request(`${origin}/v1/chat/completions`, { method: 'POST', body: big, headers: { 'content-type': 'application/json' }, dispatcher: bigAgent });
    await r.body.dump();
    return r.statusCode;
  }));
  clearInterval(sampler);
  await bigAgent.close();
  const served = statuses.filter((st) => st === 200).length;
  rows.push([`concurrent 7 MiB bodies (${served} of 10 served)`, String(served), mb(before), `${mb(peak)} peak`, mb((peak - before) / Math.max(1, served))]);
} finally {
  for (const s of sockets) s.destroy();
  await gw?.stop();
  await mock?.stop();
  rmSync(dir, { recursive: true, force: true });
}
console.log(table(rows));
console.log('RSS growth per item while held; includes V8 heap headroom, so small N overstates it.');
