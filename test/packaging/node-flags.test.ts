// Sluice runs with a few node flags (docs/operations.md, "Node flags"). They cannot go in NODE_OPTIONS or be set
// from inside the process, so every deployed command line carries them: package.json's `start` and the image's
// ENTRYPOINT. The benches read them from package.json (native-bench/lib/node-flags.ts): all three must agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { deployedNodeFlags, flagsOf } from '../../native-bench/lib/node-flags.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('package.json start and the Dockerfile ENTRYPOINT run node with the same flags, the young generation one included', () => {
  const fromStart = deployedNodeFlags(root);
  assert.ok(fromStart.some((f) => /^--min-semi-space-size=\d+$/.test(f)), `start script flags: ${fromStart.join(' ')}`);
  assert.ok(fromStart.some((f) => /^--max-semi-space-size=\d+$/.test(f)), `start script flags: ${fromStart.join(' ')}`);
  const docker = readFileSync(join(root, 'Dockerfile'), 'utf8');
  const m = /^ENTRYPOINT (\[.*\])$/m.exec(docker);
  assert.ok(m, 'Dockerfile has an exec-form ENTRYPOINT');
  const words = JSON.parse(m[1]!) as string[];
  assert.deepEqual(flagsOf(words), fromStart);
  assert.equal(words[words.indexOf('node') + fromStart.length + 1], '/app/bin/sluice.mjs');
});

test('flagsOf reads the flags between node and the script', () => {
  assert.deepEqual(flagsOf(['node', '--a=1', '--b', 'bin/x.mjs', '--not-this']), ['--a=1', '--b']);
  assert.deepEqual(flagsOf(['node', 'bin/x.mjs']), []);
  assert.deepEqual(flagsOf(['tini', '--', 'node', '--a', 'x']), ['--a']);
  assert.deepEqual(flagsOf(['bin/x.mjs']), []);
});
