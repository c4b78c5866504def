#!/usr/bin/env node
// Type-checks, builds dist/, then runs every test file under test/ with node's test runner through tsx.
// Node 20's runner neither expands globs nor fails on an empty list, so the files are listed here,
// and an empty list is an error. `node scripts/run-tests.mjs test/unit` runs one folder or file.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const skipTypecheck = args.includes('--no-typecheck');
const targets = args.filter((a) => !a.startsWith('--'));

function collect(path, out) {
  const st = statSync(path);
  if (st.isFile()) { if (path.endsWith('.test.ts')) out.push(path); return out; }
  for (const name of readdirSync(path).sort()) collect(join(path, name), out);
  return out;
}

// Tests change nothing on the machine: missing tools are reported, not installed (.ci/run installs them).
if (!existsSync(join(root, 'node_modules/typescript'))) {
  console.error('run-tests: dependencies are missing: run `npm ci` (or `npm install`) first');
  process.exit(1);
}
const missing = ['redis-server', 'redis-sentinel', 'redis-cli'].filter((b) => spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0);
if (missing.length > 0) {
  console.error(`run-tests: ${missing.join(', ')} not found; the tests start their own Redis processes. Install them, e.g.\n` +
    '  sudo apt-get install redis-server redis-sentinel redis-tools      (Debian/Ubuntu)\n' +
    '  brew install redis                                                (macOS)');
  process.exit(1);
}

const files = [];
for (const t of targets.length ? targets : ['test']) collect(join(root, t), files);
if (files.length === 0) { console.error('run-tests: no test files found'); process.exit(1); }

if (!skipTypecheck) {
  const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
  if (tsc.status !== 0) { console.error('run-tests: type check failed'); process.exit(1); }
  const k6 = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', 'load-tests/tsconfig.json'], { cwd: root, stdio: 'inherit' });
  if (k6.status !== 0) { console.error('run-tests: load-tests type check failed'); process.exit(1); }
}
// The CLI and packaging tests run the compiled build (bin/ -> dist/), so it must match the sources.
const build = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
if (build.status !== 0) { console.error('run-tests: build (tsc -p tsconfig.build.json) failed'); process.exit(1); }
const ranks = spawnSync(process.execPath, [join(root, 'scripts/build-ranks.mjs')], { cwd: root, stdio: 'inherit' });
if (ranks.status !== 0) { console.error('run-tests: build (scripts/build-ranks.mjs) failed'); process.exit(1); }
const bundle = spawnSync(process.execPath, [join(root, 'scripts/bundle.mjs')], { cwd: root, stdio: 'inherit' });
if (bundle.status !== 0) { console.error('run-tests: build (scripts/bundle.mjs) failed'); process.exit(1); }

console.log(`run-tests: ${files.length} files`);
// Two files at a time: most of a test's wall time is waiting (Redis failovers, timeouts, slow readers), so the
// suite takes ~270 s instead of ~490 s on 2 cores; every file starts its own servers on free ports.
const run = spawnSync(process.execPath, [
  '--import', 'tsx', '--test', '--test-reporter=spec', '--test-concurrency=2', '--test-timeout=120000',
  ...files.map((f) => relative(root, f)),
], { cwd: root, stdio: 'inherit', env: { ...process.env, SLUICE_LOG: process.env.SLUICE_LOG ?? 'silent' } });
process.exit(run.status ?? 1);
