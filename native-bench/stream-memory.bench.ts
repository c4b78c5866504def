// Memory of one long usage-less stream through the gateway: RSS of the gateway process before, at peak
// while the stream runs, and after, plus what it charged against what the text counts. The upstream is a
// scripted SSE server sending `--mb` MiB of generated text in ~8 KiB content frames, without a usage chunk.
//
//   node --import tsx native-bench/stream-memory.bench.ts [--mb 64] [--root <checkout>]
//
// --root runs the gateway of another checkout (e.g. an older commit extracted with git archive) to compare.
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../test/helpers/free-port.ts';
import { countText } from '../src/tokens/count.ts';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
}

const MB = Number(arg('--mb', '64'));
const ROOT = resolve(arg('--root', fileURLToPath(new URL('..', import.meta.url))));
const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'tokens', 'stream', 'gateway', 'quota', 'window', 'upstream', 'count'];

function frameText(i: number): string {
  let s = '';
  let k = i;
  while (s.length < 8192) { s += WORDS[k % WORDS.length]! + (k % 7 === 0 ? '.\n' : ' '); k = (k * 31 + 7) % 1_000_003; }
  return s;
}

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0 : Number(m[1]) * 1024;
}

const mib = (b: number) => (b / 1048576).toFixed(1);

async function main(): Promise<void> {
  const frames = Math.ceil((MB * 1048576) / 8192);
  let sentText = 0;
  let expected = 0;
  const upstream = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', async () => {
      // The warm-up request asks for 'short': a few frames only.
      const n = Buffer.concat(parts).toString().includes('short') ? 4 : frames;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (let i = 0; i < n; i++) {
        const t = frameText(i);
        sentText += t.length;
        if (!res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: t } }] })}\n\n`)) {
          await new Promise((r) => res.once('drain', r));
        }
      }
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const upPort = (upstream.address() as { port: number }).port;
  const [port, adminPort] = await freePorts(2) as [number, number];
  const dir = mkdtempSync(join(tmpdir(), 'sluice-mem-'));
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({
    listen: { host: '127.0.0.1', port }, admin: { host: '127.0.0.1', port: adminPort }, workers: 1,
    routes: [{ id: 'long', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [{ name: 'up', provider: 'openai-compatible', override: { endpoint: `http://127.0.0.1:${upPort}/v1/chat/completions` } }] },
      'ai-rate-limiting': { limit: 1_000_000_000, time_window: 3600 },
    } }],
  }));
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), 'start', '--config', file], {
    cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, SLUICE_LOG: 'warn' },
  });
  try {
    await new Promise<void>((ok, fail) => {
      child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('sluice listening')) ok(); });
      child.once('exit', (c) => fail(new Error(`gateway exited ${c}`)));
    });
    const pid = child.pid!;
    const url = `http://127.0.0.1:${port}/v1/chat/completions`;
    const small = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'go' }], stream: true });
    const warm = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'short' }], stream: true });
    // Warm up (JIT, undici pools, the worker's tokenizer) with a short stream, then take the baseline.
    await (await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: warm })).text().catch(() => '');
    await new Promise((r) => setTimeout(r, 500));
    const before = rss(pid);
    let peak = before;
    const sampler = setInterval(() => { peak = Math.max(peak, rss(pid)); }, 50);
    sentText = 0;
    const started = performance.now();
    const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: small });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    let received = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      received += value.byteLength;
    }
    const secs = (performance.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1000));
    clearInterval(sampler);
    const after = rss(pid);
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const charged = metrics.split('\n').filter((l) => l.startsWith('sluice_quota_tokens_charged_total')).reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    const whole: string[] = [];
    for (let i = 0; i < frames; i++) whole.push(frameText(i));
    expected = countText(whole.join(''), 'o200k_base');
    console.log(`root ${ROOT}`);
    console.log(`stream: ${mib(received)} MiB received in ${secs.toFixed(1)} s, ${mib(sentText)} MiB of text`);
    console.log(`gateway RSS: before ${mib(before)} MiB, peak ${mib(peak)} MiB (+${mib(peak - before)}), after ${mib(after)} MiB`);
    console.log(`charged ${charged} tokens (warm-up included); the long stream's text counts ${expected} tokens`);
  } finally {
    child.kill('SIGKILL');
    upstream.closeAllConnections();
    upstream.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => { console.error(err); process.exit(1); });
