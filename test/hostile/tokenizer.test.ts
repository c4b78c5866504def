// Hostile input: a prompt that is one 160k-character run of a single letter, on a quota route (so it is
// tokenized), through a real `sluice start` process with one worker thread. gpt-tokenizer's own merge is
// quadratic in such a piece (~40 s); Sluice counts it in near-linear time and in slices, so unrelated ~5 KB
// requests (prepared on the same worker thread) are answered while the large one is still in flight, and the
// large one is answered too. The bound on the small requests' latency is generous (the old stall was 38 s).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startSluiceProcess, type SluiceProcess } from '../helpers/sluice-process.ts';

const MOCK = fileURLToPath(new URL('../../native-bench/lib/mock-process.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const GENEROUS_MS = 10_000;

async function startMock(args: string[]): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, ['--import', 'tsx', MOCK, '--port', '0', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m !== null) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`mock exited (${code})`)));
  });
  return { url, child };
}

function chat(content: string, stream: boolean): string {
  return JSON.stringify({ model: 'gpt-4o-mini', stream, max_tokens: 20, messages: [{ role: 'user', content }] });
}

describe('hostile: a 160k-character single-letter prompt', () => {
  let mock: { url: string; child: ChildProcess };
  let gw: SluiceProcess;

  before(async () => {
    // Streams last 20 × 100 ms after their headers: the large request stays in flight long enough to watch.
    mock = await startMock(['--chunks', '20', '--chunk-delay-ms', '100']);
    gw = await startSluiceProcess({
      workers: 1,
      routes: [{
        id: 'chat', uri: '/v1/chat/completions', methods: ['POST'],
        plugins: {
          'ai-proxy-multi': { instances: [{ name: 'mock', provider: 'openai-compatible', options: { model: 'gpt-4o-mini' }, override: { endpoint: `${mock.url}/v1/chat/completions` } }] },
          'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 },
        },
      }],
    });
  });

  after(async () => {
    await gw?.stop();
    if (mock !== undefined && mock.child.exitCode === null) {
      mock.child.kill('SIGKILL');
      await new Promise((r) => mock.child.once('exit', r));
    }
  });

  it('does not hold up unrelated ~5 KB requests, and is answered itself', async (t) => {
    const url = `${gw.url}/v1/chat/completions`;
    const headers = { 'content-type': 'application/json' };
    const smallBody = chat(`an unrelated question: ${'lorem ipsum dolor sit amet '.repeat(185)}`, false);
    assert.ok(Buffer.byteLength(smallBody) > 4096, 'over tokens.offload_bytes: prepared on the same worker thread');
    // The worker thread starts on the first offloaded request (loading its tokenizer table): not measured here.
    assert.equal((await fetch(url, { method: 'POST', headers, body: smallBody })).status, 200);
    const baseline: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      assert.equal((await fetch(url, { method: 'POST', headers, body: smallBody })).status, 200);
      baseline.push(performance.now() - t0);
    }
    let largeDone = false;
    const large = (async () => {
      const r = await fetch(url, { method: 'POST', headers, body: chat('a'.repeat(160_000), true) });
      const text = await r.text();
      largeDone = true;
      return { status: r.status, text };
    })();

    const latencies: number[] = [];
    let whileInFlight = 0;
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      const r = await fetch(url, { method: 'POST', headers, body: smallBody });
      const body = await r.json() as { choices?: unknown[] };
      latencies.push(performance.now() - t0);
      assert.equal(r.status, 200);
      assert.ok(Array.isArray(body.choices));
      if (!largeDone) whileInFlight++;
    }
    t.diagnostic(`small request latencies alone: ${baseline.map((l) => l.toFixed(0)).join(', ')} ms; with the large one in flight: ${latencies.map((l) => l.toFixed(0)).join(', ')} ms`);
    assert.ok(whileInFlight >= 1, 'at least one small request completed while the large one was in flight');
    assert.ok(Math.max(...latencies) < GENEROUS_MS, `latencies ${latencies.join(', ')}`);

    const l = await large;
    assert.equal(l.status, 200);
    assert.match(l.text, /data: \[DONE\]/);
  });
});
