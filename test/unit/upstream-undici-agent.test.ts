// src/upstream/undici-agent.ts loads undici's Agent, request API and errors without the package's index
// (start-up cost): they must be the package's own objects, and the index must stay unloaded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const AGENT = new URL('../../src/upstream/undici-agent.ts', import.meta.url).href;

test('the deep-imported Agent and errors are undici\'s own, with the request API, and the index stays unloaded', async () => {
  const script = `
    import { createRequire } from 'node:module';
    const { Agent, errors } = await import(${JSON.stringify(AGENT)});
    const require = createRequire(import.meta.url);
    const loaded = Object.keys(require.cache).filter((k) => k.includes('node_modules/undici/'));
    console.log(JSON.stringify({
      indexLoaded: loaded.some((k) => k.endsWith('undici/index.js')),
      modules: loaded.length,
      request: typeof new Agent().request,
      timeoutError: typeof errors.HeadersTimeoutError,
    }));
  `;
  const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  const out = JSON.parse(run.stdout.trim()) as { indexLoaded: boolean; modules: number; request: string; timeoutError: string };
  assert.equal(out.indexLoaded, false);
  assert.equal(out.request, 'function');
  assert.equal(out.timeoutError, 'function');
  assert.ok(out.modules < 60, `${out.modules} undici modules loaded`);

  const { Agent, errors } = await import('../../src/upstream/undici-agent.ts');
  const undici = require('undici') as typeof import('undici');
  assert.equal(Agent, undici.Agent);
  assert.equal(errors, undici.errors);
  for (const name of ['request', 'stream', 'pipeline', 'connect', 'upgrade'] as const) {
    assert.equal(typeof (Agent.prototype as unknown as Record<string, unknown>)[name], 'function', name);
  }
});
