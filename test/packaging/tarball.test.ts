// The npm tarball round trip: `npm pack`, `npm install <tarball>` in an empty directory, then
// `npx sluice validate | mock-upstream | start` there. Dependencies come from the registry npm is configured
// with (--prefer-offline: the cache `npm ci` filled); the tarball must bring everything else.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePorts } from '../helpers/free-port.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
let dir: string;
let app: string;
let tarball: string;
let packed: string[] = [];
const children = new Set<ChildProcess>();

function npm(args: string[], cwd: string, timeoutMs = 240_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('npm', args, { cwd, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, npm_config_update_notifier: 'false' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every descendant of a process (npx runs `sh -c <bin>`, which runs node). */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* exited meanwhile */ }
  }
  const out: number[] = [pid];
  for (let i = 0; i < out.length; i++) for (const [p, pp] of parent) if (pp === out[i]) out.push(p);
  return out.slice(1);
}

/** The node process running the sluice bin under an npx process (what a supervisor would signal). */
function sluiceNodePid(npxPid: number): number | undefined {
  for (const p of descendants(npxPid)) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (/node$/.test(cmd[0] ?? '') && cmd.some((a) => a.endsWith('/sluice') || a.endsWith('sluice.mjs'))) return p;
    } catch { /* gone */ }
  }
  return undefined;
}

function npx(args: string[]): { child: ChildProcess; output: () => string } {
  const child = spawn('npx', ['--no-install', 'sluice', ...args], { cwd: app, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SLUICE_LOG: 'info' } });
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  return { child, output: () => out };
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

async function stop(proc: { child: ChildProcess }): Promise<number | null> {
  const pid = await until('the sluice node process under npx', () => sluiceNodePid(proc.child.pid!), 10_000);
  process.kill(pid, 'SIGTERM');
  return exitOf(proc.child);
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'sluice-tarball-'));
  app = join(dir, 'app');
  spawnSync('mkdir', ['-p', app]);
  // run-tests builds dist/ before the tests; build here when this file runs alone.
  if (!existsSync(join(root, 'dist/cli/main.js'))) {
    const b = npm(['run', 'build', '--silent'], root);
    assert.equal(b.status, 0, b.stderr);
  }
  const p = npm(['pack', '--ignore-scripts', '--json', '--pack-destination', dir], root);
  assert.equal(p.status, 0, p.stderr);
  const info = JSON.parse(p.stdout.slice(p.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  tarball = join(dir, info[0]!.filename);
  packed = info[0]!.files.map((f) => f.path);
});

after(() => {
  for (const c of children) {
    if (c.pid !== undefined) for (const p of descendants(c.pid)) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  rmSync(dir, { recursive: true, force: true });
});

test('the tarball holds the compiled build and nothing for development', () => {
  for (const f of ['package.json', 'README.md', 'bin/sluice.mjs', 'dist/cli/main.js', 'dist/bundle/sluice.cjs', 'dist/workers/entry.js', 'dist/workers/pool.js', 'examples/embedded.yaml']) {
    assert.ok(packed.includes(f), `${f} is packed`);
  }
  // The README it ships with links the docs: each one it names is in the tarball.
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const named = [...new Set([...readme.matchAll(/\bdocs\/[a-z0-9-]+\.md\b/g)].map((m) => m[0]))];
  assert.ok(named.length >= 3, `the README names its docs: ${named.join(', ')}`);
  assert.deepEqual(named.filter((f) => !packed.includes(f)), [], 'every doc the README names is packed');
  const unwanted = packed.filter((f) => /^(src|test|native-bench|load-tests|scripts|deploy|\.ci)\//.test(f) || f.endsWith('.map') || f.endsWith('.ts') || /^tsconfig/.test(f) || f === 'Dockerfile');
  assert.deepEqual(unwanted, []);
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  assert.ok(!('tsx' in pkg.dependencies) && !('typescript' in pkg.dependencies), 'no loader or compiler in production dependencies');
});

test('npm install <tarball> in an empty directory, then npx sluice validate | mock-upstream | start', async () => {
  const inst = npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', tarball], app, 300_000);
  assert.equal(inst.status, 0, inst.stderr);
  assert.ok(existsSync(join(app, 'node_modules/.bin/sluice')));
  assert.ok(!existsSync(join(app, 'node_modules/tsx')), 'tsx is not installed with the package');
  assert.ok(!existsSync(join(app, 'node_modules/typescript')), 'typescript is not installed with the package');

  const [mockPort, port, adminPort] = await freePorts(3);
  const cfg = join(app, 'sluice.yaml');
  writeFileSync(cfg, [
    `listen: { host: 127.0.0.1, port: ${port} }`,
    `admin: { host: 127.0.0.1, port: ${adminPort} }`,
    'routes:',
    '  - id: chat',
    '    uri: /v1/chat/completions',
    '    plugins:',
    '      ai-proxy:',
    '        provider: openai-compatible',
    '        auth: { header: { Authorization: "Bearer $ENV://SLUICE_TARBALL_KEY" } }',
    `        override: { endpoint: "http://127.0.0.1:${mockPort}/v1/chat/completions" }`,
    '      ai-rate-limiting: { limit: 100000, time_window: 3600 }',
  ].join('\n'));

  const validate = npx(['validate', '--config', cfg]);
  assert.equal(await exitOf(validate.child), 2, 'the key is not set yet');
  assert.match(validate.output(), /SLUICE_TARBALL_KEY is not set/);
  process.env.SLUICE_TARBALL_KEY = 'sk-tarball';
  try {
    const ok = npx(['validate', '--config', cfg]);
    assert.equal(await exitOf(ok.child), 0, ok.output());
    assert.match(ok.output(), /^ok$/m);

    const mock = npx(['mock-upstream', '--port', String(mockPort), '--name', 'tarball-mock']);
    await until('mock-upstream listening', () => (/listening on http/.test(mock.output()) ? true : undefined));
    const gw = npx(['start', '--config', cfg]);
    await until('gateway ready', async () => {
      try { return (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).ok ? true : undefined; } catch { return undefined; }
    });
    const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } }),
    });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-mock-name'), 'tarball-mock');
    const text = await r.text();
    assert.match(text, /"usage":\{/);
    assert.match(text, /data: \[DONE\]/);

    assert.equal(await stop(gw), 0, gw.output());
    assert.doesNotMatch(gw.output(), /is older than dist/, 'the installed package runs its bundle');
    assert.equal(await stop(mock), 0, mock.output());
  } finally {
    delete process.env.SLUICE_TARBALL_KEY;
  }
});
