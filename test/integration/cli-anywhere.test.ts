// The compiled CLI (bin/sluice.mjs -> dist/) run as a user runs it: from a directory outside the repo, with
// no loader, as one process that handles SIGTERM itself. scripts/run-tests.mjs builds dist/ before the tests.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runtimeProblem } from '../../src/cli/runtime.ts';
import { freePorts } from '../helpers/free-port.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin/sluice.mjs');
let dir: string;
const children = new Set<ChildProcess>();

before(() => {
  if (!existsSync(join(root, 'dist/cli/main.js'))) {
    const r = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
    assert.equal(r.status, 0, 'build failed');
  }
  dir = mkdtempSync(join(tmpdir(), 'sluice-cli-'));
});

after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `node bin/sluice.mjs …` with cwd outside the repo, where `tsx` and the repo's node_modules are not resolvable. */
function runCli(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function startCli(args: string[]): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [bin, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SLUICE_LOG: 'info' } });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  return { child, output: () => out };
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** Direct children of a process, from /proc (Linux). */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch { /* exited meanwhile */ }
  }
  return out;
}

test('validate works from a directory outside the repo: ok / every error with its path', () => {
  const good = join(dir, 'good.yaml');
  writeFileSync(good, [
    'routes:',
    '  - id: r',
    '    uri: /v1/chat/completions',
    '    plugins:',
    '      ai-proxy: { provider: openai-compatible, override: { endpoint: "http://127.0.0.1:8000/v1/chat/completions" } }',
  ].join('\n'));
  const ok = runCli(['validate', '--config', good]);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), 'ok');
  assert.doesNotMatch(ok.stderr, /tsx|Cannot find package/);

  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'routes:\n  - id: r\n    uri: /x\n    plugins: { ai-proxy: { provider: openai, auth: { header: { Authorization: "$ENV://SLUICE_TEST_UNSET_KEY" } } } }\n');
  const r = runCli(['validate', '--config', bad], { SLUICE_TEST_UNSET_KEY: undefined });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /routes\[0\]\.plugins\.ai-proxy\.auth\.header\.Authorization: environment variable SLUICE_TEST_UNSET_KEY is not set/);
});

test('an unknown command is named, with the usage, exit 2; --help exits 0; --version prints the package version', () => {
  const r = runCli(['frobnicate']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown command 'frobnicate'/);
  assert.match(r.stderr, /usage:/);
  const v = runCli(['--version']);
  assert.equal(v.status, 0);
  assert.match(v.stdout, /^sluice \d+\.\d+\.\d+/);
  for (const args of [['--help'], ['start', '--help'], ['validate', '-h']]) {
    const h = runCli(args);
    assert.equal(h.status, 0, args.join(' '));
    assert.match(h.stdout, /usage:/, 'help goes to stdout');
  }
});

test('start refuses a mistyped or incomplete flag with exit 2 and says which, before binding any port', () => {
  for (const [args, said] of [
    [['start', '--embedded', '--prot', '1'], /unknown argument "--prot"/],
    [['start', '--embedded', '--admin-prot=1'], /unknown argument "--admin-prot=1"/],
    [['start', '--embedded', '--port'], /--port needs a value/],
    [['start', '--embedded', '--port', '99999'], /--port: must be a port number/],
    [['start', '--embedded', '--port', '1', '--port', '2'], /--port is given twice/],
    [['start', '--embedded', '--embedded'], /--embedded is given twice/],
    [['start', '-c', 'a.yaml', '--config', 'b.yaml'], /--config is given twice/],
    [['start', '-c', 'a.yaml', '--mock-port', '1'], /--mock-port needs --embedded/],
    [['start', '--embedded', '--mock-port', 'x'], /--mock-port: must be a port number/],
  ] as const) {
    const r = runCli([...args]);
    assert.equal(r.status, 2, args.join(' '));
    assert.match(r.stderr, said, args.join(' '));
    assert.doesNotMatch(r.stdout + r.stderr, /listening/, 'nothing started');
  }
});

test('start from outside the repo: one process (no launcher child, no loader), serves, drains on SIGTERM, exits 0', async () => {
  const [mockPort, port, adminPort] = await freePorts(3);
  const mock = startCli(['mock-upstream', '--port', String(mockPort), '--name', 'cli-mock']);
  await until('mock-upstream listening', () => (/listening on http/.test(mock.output()) ? true : undefined));

  const cfg = join(dir, 'start.json');
  writeFileSync(cfg, JSON.stringify({
    listen: { host: '127.0.0.1', port },
    admin: { host: '127.0.0.1', port: adminPort },
    routes: [{
      id: 'chat', uri: '/v1/chat/completions', methods: ['POST'],
      plugins: {
        'ai-proxy': { provider: 'openai-compatible', options: { model: 'gpt-4o-mini' }, override: { endpoint: `http://127.0.0.1:${mockPort}/v1/chat/completions` } },
        'ai-rate-limiting': { limit: 100000, time_window: 3600 },
      },
    }],
  }));
  const gw = startCli(['start', '--config', cfg]);
  await until('gateway ready', async () => {
    try { return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).ok ? true : undefined; } catch { return undefined; }
  });
  assert.deepEqual(childPids(gw.child.pid!), [], 'the gateway runs in the process that was started');
  const cmdline = readFileSync(`/proc/${gw.child.pid}/cmdline`, 'utf8');
  assert.doesNotMatch(cmdline, /tsx/);

  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'hello' }], max_tokens: 5 }),
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-mock-name'), 'cli-mock');
  const body = await r.json() as { usage?: { total_tokens?: number } };
  assert.ok((body.usage?.total_tokens ?? 0) > 0);
  assert.ok(r.headers.get('x-ratelimit-remaining-tokens') !== null);

  gw.child.kill('SIGTERM');
  assert.deepEqual(await exitOf(gw.child), { code: 0, signal: null }, gw.output());
  mock.child.kill('SIGTERM');
  assert.deepEqual(await exitOf(mock.child), { code: 0, signal: null });
});

test('start --embedded from outside the repo: the bundled example config and the in-process mock upstream', async () => {
  const [port, adminPort, mockPort] = await freePorts(3);
  const gw = startCli(['start', '--embedded', '--port', String(port), '--admin-port', String(adminPort), '--mock-port', String(mockPort)]);
  await until('embedded gateway ready', async () => {
    try { return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).ok ? true : undefined; } catch { return undefined; }
  });
  const r = await fetch(`http://127.0.0.1:${port}/anything`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'What is 1+1?' }] }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  assert.equal(r.headers.get('x-mock-name'), 'embedded-mock');
  await r.arrayBuffer();
  // --mock-port pins the mock: it answers there directly.
  const direct = await fetch(`http://127.0.0.1:${mockPort}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(direct.headers.get('x-mock-name'), 'embedded-mock');
  await direct.arrayBuffer();
  gw.child.kill('SIGTERM');
  assert.deepEqual(await exitOf(gw.child), { code: 0, signal: null }, gw.output());
});

test('bin/sluice.mjs runs the bundle; in a checkout, dist/cli/main.js when the bundle is older (saying why) or missing', () => {
  // Stand-ins for the two builds next to a copy of bin/: which one runs is all this checks.
  const app = join(dir, 'launcher');
  mkdirSync(join(app, 'bin'), { recursive: true });
  mkdirSync(join(app, 'dist/cli'), { recursive: true });
  mkdirSync(join(app, 'dist/bundle'), { recursive: true });
  copyFileSync(bin, join(app, 'bin/sluice.mjs'));
  const main = join(app, 'dist/cli/main.js');
  const bundle = join(app, 'dist/bundle/sluice.cjs');
  writeFileSync(join(app, 'package.json'), '{ "type": "module" }');
  writeFileSync(main, "console.log('tsc output');");
  writeFileSync(bundle, "console.log('bundle');");
  const run = () => spawnSync(process.execPath, [join(app, 'bin/sluice.mjs')], { cwd: dir, encoding: 'utf8', timeout: 60_000 });
  const t = Date.now() / 1000;
  utimesSync(main, t - 10, t - 10);
  let r = run();
  assert.equal(r.stdout.trim(), 'bundle');
  assert.equal(r.stderr, '');
  utimesSync(bundle, t - 20, t - 20);
  r = run();
  assert.equal(r.stdout.trim(), 'bundle', 'no src/ (an installed package): build times mean nothing, the bundle runs');
  mkdirSync(join(app, 'src'));
  r = run();
  assert.equal(r.stdout.trim(), 'tsc output');
  assert.match(r.stderr, /sluice: dist\/bundle\/sluice\.cjs is older than dist\/ .*`npm run build`/);
  rmSync(bundle);
  r = run();
  assert.equal(r.stdout.trim(), 'tsc output');
  assert.equal(r.stderr, '');
});

test('runtimeProblem: Node 20 with glibc >= 2.27 runs; other runtimes are refused with the reason', () => {
  const base = { nodeVersion: '20.18.1', abi: '115', platform: 'linux' as const, glibc: '2.36' };
  assert.equal(runtimeProblem(base), undefined);
  assert.equal(runtimeProblem({ ...base, glibc: '2.27' }), undefined);
  assert.equal(runtimeProblem({ ...base, platform: 'darwin', glibc: undefined }), undefined);
  assert.match(runtimeProblem({ ...base, nodeVersion: '22.11.0', abi: '127' })!, /needs Node\.js 20 \(ABI 115\); this is Node\.js 22\.11\.0 \(ABI 127\)/);
  assert.match(runtimeProblem({ ...base, nodeVersion: '18.20.0', abi: '108' })!, /needs Node\.js 20/);
  assert.match(runtimeProblem({ ...base, glibc: '2.17' })!, /glibc >= 2\.27; this system has glibc 2\.17/);
  assert.match(runtimeProblem({ ...base, glibc: undefined })!, /musl/);
  assert.equal(runtimeProblem(), undefined, 'the machine running the tests is a supported runtime');
});
