// The container image and the compose stack (compose.yaml): builds the image from the Dockerfile
// (scripts/docker-build.sh; local base stand-ins where no registry is reachable), starts two gateway replicas,
// Redis and the mock upstream, sends a streamed and a non-streamed request through each replica, checks that
// both replicas charge one quota held in Redis, then stops the stack while a stream is in flight and checks
// that the stream completes and every container exits 0.
// Needs Docker and docker compose (v2 plugin or v1 docker-compose), so it runs only with SLUICE_DOCKER_TEST=1
// (.ci/run sets it when it can start Docker, as a separate step); `npm test` skips it and says so.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../helpers/free-port.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const enabled = process.env.SLUICE_DOCKER_TEST === '1';
const skip = enabled ? false : 'needs Docker: run with SLUICE_DOCKER_TEST=1 (.ci/run does when Docker can be started)';
const project = `sluice-test-${process.pid}`;
const LIMIT = 1_000_000;
let compose: string[] = [];
let env: NodeJS.ProcessEnv = {};
let ports: { gw1: number; gw2: number; admin1: number; admin2: number };
let up = false;

function run(cmd: string, args: string[], timeoutMs = 120_000): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', timeout: timeoutMs, env });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

function dc(args: string[], timeoutMs?: number): { status: number | null; out: string } {
  return run(compose[0]!, [...compose.slice(1), '-p', project, '-f', 'compose.yaml', ...args], timeoutMs);
}

/** Like dc, without blocking the event loop (requests in flight keep being read meanwhile). */
function dcAsync(args: string[], timeoutMs: number): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(compose[0]!, [...compose.slice(1), '-p', project, '-f', 'compose.yaml', ...args], { cwd: root, env });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (status) => { clearTimeout(timer); resolve({ status, out }); });
  });
}

/**
 * Rejects after `ms` on a ref'd timer. Needed around fetch: a connection that docker-proxy accepts before the
 * container listens can leave undici's fetch pending with no handle keeping the event loop alive (its own
 * AbortSignal.timeout timer is unref'd), and the test would end as "event loop has already resolved".
 */
function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms); });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await withDeadline(probe(), 15_000, what).catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

interface Answer { status: number; remaining: number; totalTokens: number; text: string }

function chat(port: number, stream: boolean, headers: Record<string, string> = {}): Promise<Answer> {
  return withDeadline(chatOnce(port, stream, headers), 60_000, `request to :${port}`);
}

async function chatOnce(port: number, stream: boolean, headers: Record<string, string>): Promise<Answer> {
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({
      messages: [{ role: 'user', content: 'How many replicas share this quota?' }],
      max_tokens: 12,
      ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
    }),
    signal: AbortSignal.timeout(55_000),
  });
  const text = await r.text();
  let totalTokens = 0;
  if (stream) {
    const m = /"usage":\{[^}]*"total_tokens":(\d+)/.exec(text);
    totalTokens = m ? Number(m[1]) : 0;
  } else if (r.status === 200) {
    totalTokens = (JSON.parse(text) as { usage: { total_tokens: number } }).usage.total_tokens;
  }
  return { status: r.status, remaining: Number(r.headers.get('x-ratelimit-remaining-tokens')), totalTokens, text };
}

/**
 * A slow stream on a connection of its own (not a pooled keep-alive one the server may be closing), with a
 * promise that resolves once its first bytes arrived: the request is then in flight at the gateway.
 */
function slowStream(port: number): { started: Promise<void>; done: Promise<{ status: number; text: string; endedAt: number }> } {
  let started!: () => void;
  const startedP = new Promise<void>((r) => { started = r; });
  const done = new Promise<{ status: number; text: string; endedAt: number }>((resolve, reject) => {
    const req = request({
      host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions', agent: false,
      headers: { 'content-type': 'application/json', 'x-mock-chunks': '30', 'x-mock-chunk-delay-ms': '200' },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { text += d; started(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text, endedAt: Date.now() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify({ messages: [{ role: 'user', content: 'drain me' }], max_tokens: 30, stream: true }));
  });
  return { started: withDeadline(startedP, 60_000, 'first bytes of the slow stream'), done: withDeadline(done, 120_000, 'the slow stream') };
}

before(async () => {
  if (!enabled) return;
  assert.equal(run('docker', ['info']).status, 0, 'docker info failed: is dockerd running?');
  if (run('docker', ['compose', 'version']).status === 0) compose = ['docker', 'compose'];
  else if (run('docker-compose', ['version']).status === 0) compose = ['docker-compose'];
  else assert.fail('neither `docker compose` nor `docker-compose` is installed');
  const [gw1, gw2, admin1, admin2] = await freePorts(4);
  ports = { gw1: gw1!, gw2: gw2!, admin1: admin1!, admin2: admin2! };
  env = {
    ...process.env,
    SLUICE_PORT_1: String(ports.gw1), SLUICE_PORT_2: String(ports.gw2),
    SLUICE_ADMIN_PORT_1: String(ports.admin1), SLUICE_ADMIN_PORT_2: String(ports.admin2),
    UPSTREAM_API_KEY: 'sk-compose-test',
  };
});

after(() => {
  if (up) dc(['down', '-v', '--remove-orphans', '-t', '5'], 120_000);
});

test('the image builds from the Dockerfile (local base stand-ins where no registry is reachable)', { skip, timeout: 1_500_000 }, () => {
  const b = run('bash', ['scripts/docker-build.sh', 'sluice:local'], 1_450_000);
  assert.equal(b.status, 0, b.out.slice(-4000));
  const inspect = run('docker', ['image', 'inspect', 'sluice:local', '--format', '{{.Config.User}}|{{json .Config.ExposedPorts}}|{{json .Config.Entrypoint}}|{{.Size}}']);
  assert.equal(inspect.status, 0, inspect.out);
  const [user, exposed, entrypoint, size] = inspect.out.trim().split('|');
  assert.equal(user, 'node');
  assert.match(exposed!, /"9080\/tcp"/);
  assert.match(exposed!, /"9091\/tcp"/);
  assert.match(entrypoint!, /tini/);
  console.log(`image sluice:local: ${(Number(size) / 1e6).toFixed(0)} MB`);
  // Nothing from the build stage's CA, no sources, no dev dependencies in the final image.
  const files = run('docker', ['run', '--rm', '--entrypoint', 'sh', 'sluice:local', '-c',
    'ls /app; ls /app/node_modules; find / -xdev -name ".npm-build-ca.pem" 2>/dev/null; echo uid=$(id -u)']);
  assert.equal(files.status, 0, files.out);
  assert.doesNotMatch(files.out, /npm-build-ca|\bsrc\b|\btsx\b|\btypescript\b/);
  assert.match(files.out, /uid=1000/);
});

test('compose: two replicas, one Redis-held quota, streamed and non-streamed requests, clean stop', { skip, timeout: 600_000 }, async () => {
  console.log('# compose up');
  const u = dc(['up', '-d'], 300_000);
  up = true;
  assert.equal(u.status, 0, u.out.slice(-4000));
  for (const admin of [ports.admin1, ports.admin2]) {
    await until(`replica on admin port ${admin} ready`, async () => {
      try { return (await fetch(`http://127.0.0.1:${admin}/readyz`)).ok ? true : undefined; } catch { return undefined; }
    }, 120_000);
  }

  console.log('# requests through both replicas');
  let spent = 0;
  for (const port of [ports.gw1, ports.gw2]) {
    for (const stream of [false, true]) {
      const a = await chat(port, stream);
      assert.equal(a.status, 200, a.text);
      assert.ok(a.totalTokens > 0, `usage reported (${stream ? 'stream' : 'json'} via :${port})`);
      if (stream) assert.match(a.text, /data: \[DONE\]/);
      spent += a.totalTokens;
    }
  }

  console.log(`# shared quota: ${spent} tokens charged so far`);
  // Each replica's view of the quota includes what the other one charged: its remaining falls to the
  // limit minus everything spent so far (batched flushes make this eventual, hence the polling).
  for (const port of [ports.gw1, ports.gw2]) {
    await until(`replica :${port} to see the shared total`, async () => {
      const before = spent;
      const a = await chat(port, false);
      assert.equal(a.status, 200, a.text);
      spent += a.totalTokens;
      return a.remaining <= LIMIT - before ? true : undefined;
    }, 30_000);
  }
  // One counter in Redis holds exactly what both replicas charged.
  // One consumed-tokens counter in Redis (`sluice:<version>:{<counter>}:<window>:c`) holds what both replicas charged.
  let seen = '';
  const consumed = await until('the Redis counter to equal every token charged', async () => {
    const keys = dc(['exec', '-T', 'redis', 'redis-cli', '--scan', '--pattern', 'sluice:*}:*:c']);
    const list = keys.out.trim().split('\n').map((k) => k.trim()).filter(Boolean);
    seen = `keys ${JSON.stringify(list)}`;
    if (list.length !== 1) return undefined;
    const v = Number(dc(['exec', '-T', 'redis', 'redis-cli', 'GET', list[0]!]).out.trim());
    seen += ` = ${v}, charged ${spent}`;
    return v === spent ? v : undefined;
  }, 30_000).catch((err: Error) => assert.fail(`${err.message}: ${seen}`));
  assert.equal(consumed, spent);

  console.log('# stop with a stream in flight');
  // SIGTERM (docker stop -> tini -> node) drains: a slow stream started before the stop completes.
  const slow = slowStream(ports.gw1);
  await slow.started;
  // The gateways first: `stop` of the whole project may signal the mock upstream at the same time, and a mock
  // that exits cuts the very stream whose drain this checks. The rest of the stack stops after them.
  const stopCall = dcAsync(['stop', '-t', '40', 'gateway-1', 'gateway-2'], 180_000);
  const drained = await slow.done;
  const stop = await stopCall;
  assert.equal(stop.status, 0, stop.out);
  const stopRest = dc(['stop', '-t', '40'], 180_000);
  assert.equal(stopRest.status, 0, stopRest.out);
  assert.equal(drained.status, 200);
  assert.match(drained.text, /data: \[DONE\]/, 'the in-flight stream finished during the drain');

  for (const svc of ['gateway-1', 'gateway-2', 'mock']) {
    const id = dc(['ps', '-q', svc]).out.trim();
    const state = run('docker', ['inspect', '-f', '{{.State.ExitCode}} {{.State.OOMKilled}}', id]);
    assert.equal(state.out.trim(), '0 false', `${svc} exited cleanly`);
  }
  const logs = dc(['logs', '--no-color', 'gateway-1']).out;
  const stopping = /\{"t":"([^"]+)","level":"info","msg":"stopping: draining in-flight requests","signal":"SIGTERM"\}/.exec(logs);
  assert.ok(stopping, logs.slice(-2000));
  assert.ok(Date.parse(stopping[1]!) < drained.endedAt, 'SIGTERM reached the gateway while the stream was still running');
  assert.match(logs, /"msg":"stopped"/);
});
