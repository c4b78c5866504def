// Hostile input: SIGHUP with a broken config file (not parseable, parseable but invalid, empty, no routes). The running
// config stays, the failure is logged and sluice_config_reloads_total{outcome="error"} counts it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { mockInstance } from '../helpers/gateway.ts';
import { startSluiceProcess, eventually } from '../helpers/sluice-process.ts';

describe('a reload that fails', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream(); });
  after(async () => { await mock?.close(); });

  it('is counted as an error and keeps the running config', async () => {
    const good = { routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('a', mock.url)] } } }] };
    const gw = await startSluiceProcess(good);
    const errors = () => gw.metric(/^sluice_config_reloads_total\{outcome="error"\}/);
    const oks = () => gw.metric(/^sluice_config_reloads_total\{outcome="ok"\}/);
    const serves = async () => (await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
    })).status;
    try {
      gw.writeConfig('{ "routes": [ this is not json');
      gw.signal('SIGHUP');
      await eventually('the unparseable file is counted', async () => (await errors()) === 1);
      assert.equal(await serves(), 200);

      gw.writeConfig({ routes: [{ id: 'r', uri: 'no-slash', plugins: { 'ai-proxy-multi': { instances: [] } } }] });
      gw.signal('SIGHUP');
      await eventually('the invalid config is counted', async () => (await errors()) === 2);
      assert.equal(await serves(), 200);
      // An empty or comments-only file (one caught half-written) and a config with no routes would each drop
      // every route of a serving gateway: refused the same way.
      let refused = 2;
      for (const text of ['', '  \n', '# being rewritten\n', 'null']) {
        gw.writeConfig(text);
        gw.signal('SIGHUP');
        refused++;
        await eventually(`the empty file ${JSON.stringify(text)} is counted`, async () => (await errors()) === refused);
        assert.equal(await serves(), 200);
      }
      assert.ok(gw.logs.some((l) => l.includes('the file holds no config')), 'the empty file is named as such');
      gw.writeConfig({ routes: [] });
      gw.signal('SIGHUP');
      await eventually('the config with no routes is counted', async () => (await errors()) === refused + 1);
      assert.equal(await serves(), 200);
      assert.ok(gw.logs.some((l) => l.includes('routes: the new config has no routes while 1 are served')), gw.logs.join('\n'));
      assert.equal(await oks(), 0);
      assert.ok(gw.logs.filter((l) => l.includes('config reload failed')).length >= 7, 'each failure is logged');

      gw.writeConfig(good);
      gw.signal('SIGHUP');
      await eventually('a good file reloads', async () => (await oks()) === 1);
      assert.equal(await errors(), 7);
    } finally { await gw.stop(); }
  });
  it('a SIGHUP during shutdown is not applied (it would open stores the drain must close again)', async () => {
    const cfg = (n: number) => ({ shutdown: { drain_timeout_ms: 20_000 }, routes: [{ id: `r${n}`, uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('a', mock.url)] } } }] });
    const gw = await startSluiceProcess(cfg(1));
    try {
      // A request still waiting for its answer keeps the drain going.
      const slow = fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-ttft-ms': '3000' },
        body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await new Promise((r) => setTimeout(r, 300));
      gw.signal('SIGTERM');
      await eventually('shutdown started', () => gw.logs.some((l) => l.includes('stopping')));
      gw.writeConfig(cfg(2));
      gw.signal('SIGHUP');
      assert.equal((await slow).status, 200);
      assert.equal(await gw.exited, 0);
      assert.ok(gw.logs.some((l) => l.includes('reload ignored: shutting down')), gw.logs.join('\n'));
      assert.ok(!gw.logs.some((l) => l.includes('config reloaded')), gw.logs.join('\n'));
    } finally {
      await gw.stop();
    }
  });
});
