// A serving thread that fails after start-up (an uncaught error in it) ends the process with status 1 after
// logging it; the process never goes on serving on fewer threads than configured.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSluice } from '../../src/app.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { mockInstance, post } from '../helpers/gateway.ts';
import { eventually } from '../helpers/sluice-process.ts';
import { startCrashChild } from '../helpers/crash-child.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'hello' }], max_tokens: 5 };

function raw(mockUrl: string): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, workers: 2,
    routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] } } }],
  };
}

describe('a serving thread crashing after start-up', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ completionTokens: 5, chunks: 2 }); });
  after(async () => { await mock?.close(); });

  it('a real gateway process logs it and exits 1 (every App closed first: no uWS abort)', async () => {
    const child = await startCrashChild(raw(mock.url));
    try {
      assert.equal((await post(`http://127.0.0.1:${child.port}/v1/chat/completions`, MSG)).status, 200);
      const code = await child.crash(60_000);
      const err = child.stderr();
      assert.equal(code, 1, err);
      assert.match(err, /"serving thread crashed".*crash requested through SluiceHandle\.threads\.crash\(0\)/);
      assert.match(err, /a serving thread failed; exiting/);
    } finally {
      child.kill();
    }
  });

  it('in process (onThreadFailure): the failure is reported once every thread stopped serving', async () => {
    let failure: Error | undefined;
    const handle = await startSluice(validateConfig(raw(mock.url), {}), { port: 0, adminPort: 0, onThreadFailure: (e) => { failure = e; } });
    try {
      const url = `http://127.0.0.1:${handle.port}/v1/chat/completions`;
      assert.equal((await post(url, MSG)).status, 200);
      handle.threads!.crash(1);
      await eventually('the failure is reported', () => failure !== undefined, 60_000);
      assert.match(failure!.message, /serving thread 1 crashed: Error: crash requested/);
      // The thread that did not crash closed its App too: nothing serves any more, and the process is not ready.
      const after = await post(url, MSG).then((r) => `status ${r.status}`, (e: unknown) => `failed: ${(e as Error).message}`);
      assert.doesNotMatch(after, /status 200/, 'served on the remaining thread');
      assert.equal((await fetch(`http://127.0.0.1:${handle.adminPort}/readyz`)).status, 503);
    } finally {
      await handle.close();
    }
  });
});
