// A reload of a large config does not stop serving: the file is read, parsed and validated on a thread of its own
// (src/cli/config-reload.ts). Before, a 5,000-route YAML file held the serving loop for 1.4–2 s. The check counts
// requests answered between the reload's "loading" and "reloaded" log lines, so it does not depend on how fast the
// machine parses: on the serving thread the parse would leave none there.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startSluiceProcess, eventually } from '../helpers/sluice-process.ts';

/** A YAML config of `n` routes (the mock behind the last), in the file's own listen and admin ports. */
function largeYaml(n: number, mockUrl: string, limit: number): string {
  let y = 'routes:\n';
  for (let i = 0; i < n; i++) {
    y += `  - id: r${i}\n    uri: /r${i}/*\n    plugins:\n      ai-proxy:\n        provider: openai\n        auth: { header: { Authorization: "Bearer sk-upstream" } }\n` +
      `        override: { endpoint: "${mockUrl}/v1/chat/completions" }\n      ai-rate-limiting:\n        limit: ${limit}\n        time_window: 60\n`;
  }
  return y;
}

describe('a reload of a large config', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream(); });
  after(async () => { await mock?.close(); });

  it('keeps serving while the file loads, then applies it', async () => {
    const n = 3000;
    const small = { routes: [{ id: `r${n - 1}`, uri: `/r${n - 1}/*`, plugins: { 'ai-proxy': { provider: 'openai', auth: { header: { Authorization: 'Bearer sk-upstream' } }, override: { endpoint: `${mock.url}/v1/chat/completions` } }, 'ai-rate-limiting': { limit: 100_000, time_window: 60 } } }] };
    const gw = await startSluiceProcess(small, { fileName: 'config.yaml' });
    const port = new URL(gw.url).port;
    const adminPort = new URL(gw.adminUrl).port;
    const ask = async (): Promise<Response> => fetch(`${gw.url}/r${n - 1}/x`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
    });
    try {
      assert.equal((await ask()).headers.get('x-ratelimit-limit-tokens'), '100000');
      gw.writeConfig(`listen: { host: 127.0.0.1, port: ${port} }\nadmin: { host: 127.0.0.1, port: ${adminPort} }\n${largeYaml(n, mock.url, 200_000)}`);
      const at = (text: string) => gw.logs.findIndex((l) => l.includes(text));
      gw.signal('SIGHUP');
      await eventually('the reload starts loading', () => at('config reload: loading the file') >= 0);
      // Requests one after another until the reload is applied; each notes how many log lines were in by then.
      const answered: number[] = [];
      const deadline = Date.now() + 60_000;
      while (at('config reloaded') < 0 && Date.now() < deadline) {
        const res = await ask();
        await res.arrayBuffer();
        assert.equal(res.status, 200);
        answered.push(gw.logs.length);
      }
      const loading = at('config reload: loading the file');
      const reloaded = at('config reloaded');
      assert.ok(reloaded > loading, 'the reload was applied');
      const during = answered.filter((len) => len > loading && len <= reloaded).length;
      assert.ok(during >= 3, `requests answered while the file loaded: ${during}`);
      assert.ok(gw.logs[reloaded]!.includes(`"routes":${n}`), gw.logs[reloaded]);
      assert.equal((await ask()).headers.get('x-ratelimit-limit-tokens'), '200000');
    } finally { await gw.stop(); }
  });
});
