// Hostile input: an upstream that drops a stream half-way. The client's connection is cut (the stream cannot
// end properly), the request is recorded as 502 (499 is for client aborts only) and charged the prompt plus
// the text that came. A real client abort is still a 499.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { metric, eventually } from '../helpers/metrics.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], stream: true, max_tokens: 40 };

describe('a stream the upstream breaks', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  before(async () => {
    mock = await startMockUpstream({ chunks: 20 });
    gw = await startGateway({ routes: [{ id: 's', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('a', mock.url)] },
      'ai-rate-limiting': { limit: 1_000_000, time_window: 3600 },
    } }] });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('is a 502, charged from the counted text, and the client connection is cut', async () => {
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-disconnect-after': '5' }, body: JSON.stringify(MSG),
    });
    assert.equal(r.status, 200, 'the stream had started');
    await assert.rejects(r.text(), 'the client sees the stream cut, not a clean end');
    await eventually('the request is recorded', async () => (await metric(gw, /^sluice_http_requests_total\{route="s"/)) >= 1);
    assert.equal(await metric(gw, /^sluice_http_requests_total\{route="s",instance="a",status="502"\}/), 1);
    assert.equal(await metric(gw, /^sluice_http_requests_total\{route="s",instance="a",status="499"\}/), 0);
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="s",reason="upstream_broken"\}/), 1);
    assert.ok(await metric(gw, /^sluice_quota_tokens_charged_total\{route="s"/) > 0);
  });

  it('a client abort is a 499', async () => {
    const ac = new AbortController();
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json', 'x-mock-chunk-delay-ms': '100' }, body: JSON.stringify(MSG),
    });
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    ac.abort();
    await reader.cancel().catch(() => undefined);
    await eventually('the abort is recorded', async () => (await metric(gw, /^sluice_http_requests_total\{route="s",instance="a",status="499"\}/)) === 1);
    assert.equal(await metric(gw, /^sluice_http_requests_total\{route="s",instance="a",status="502"\}/), 1, 'unchanged');
  });
});
