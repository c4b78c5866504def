// A client that leaves while its large prompt is still being counted (on a worker thread) is recorded as a 499 in
// sluice_http_requests_total, as one that leaves while its upstream answers is; nothing reaches the upstream and
// nothing is charged.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { charged, eventually, metric } from '../helpers/metrics.ts';

describe('a client gone while its prompt is counted', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream(() => { /* never answers: the client is gone by then */ });
    gw = await startGateway({ routes: surfaceRoutes(up.url) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  it('is recorded as a 499 and charged nothing', { timeout: 60_000 }, async () => {
    const aborted = (): Promise<number> => metric(gw, /^sluice_http_requests_total\{route="o".*status="499"/);
    const before = await aborted();
    const chargedBefore = await charged(gw, 'o');
    // ~6 MB of varied words: counted on a worker thread for far longer than the write takes.
    const words = Array.from({ length: 700_000 }, (_, i) => `w${i % 9973}`).join(' ');
    const body = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: words }] });
    await new Promise<void>((resolve, reject) => {
      const s = connect(gw.handle.port, '127.0.0.1');
      s.on('error', reject);
      s.write(`POST /o/v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`);
      s.write(body, () => { s.destroy(); resolve(); });
    });
    await eventually('the abort recorded', async () => (await aborted()) === before + 1);
    // Had the upstream received it, the prompt would be charged: here the client left before.
    if (up.requests.length === 0) assert.equal(await charged(gw, 'o'), chargedBefore);
  });
});
