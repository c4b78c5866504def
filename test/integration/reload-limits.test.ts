// Limits a reload changes: the key cap and the upstream timeouts apply to what the process keeps (its quota
// stores, its upstream connections); a body cap above the restart-only in-flight budget refuses the reload.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { startGateway, post, mockInstance } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';

const MSG = { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] };

function config(mockUrl: string, limits: Record<string, unknown>): Record<string, unknown> {
  return {
    limits,
    routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] },
      'ai-rate-limiting': { rules: [{ key: '${http_x_k}', count: 100_000, time_window: 3600 }] },
    } }],
  };
}

const local = (raw: Record<string, unknown>) => validateConfig({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...raw });

describe('reloaded limits', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream(); });
  after(async () => { await mock?.close(); });

  it('a raised limits.max_quota_keys applies to the quota store the reload keeps', async () => {
    const gw = await startGateway(config(mock.url, { max_quota_keys: 3 }));
    try {
      for (let i = 0; i < 3; i++) assert.equal((await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-k': `k${i}` })).status, 200);
      // Every tracked counter holds usage in its window: a fourth key is refused, never unmetered.
      const over = await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-k': 'k3' });
      assert.equal(over.status, 503);
      assert.equal(over.body.error.code, 'SLC_OVERLOADED');
      gw.handle.reload(local(config(mock.url, { max_quota_keys: 50 })));
      for (let i = 3; i < 10; i++) assert.equal((await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-k': `k${i}` })).status, 200, `k${i}`);
      assert.equal(await metric(gw, /^sluice_quota_tracked_keys\{/), 10);
    } finally { await gw.close(); }
  });

  it('a changed upstream first-byte timeout applies to the next request, on connections opened before', async () => {
    const gw = await startGateway(config(mock.url, {}));
    try {
      assert.equal((await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-k': 'a', 'x-mock-delay-ms': '1500' })).status, 200);
      gw.handle.reload(local(config(mock.url, { upstream_first_byte_timeout_ms: 500 })));
      const r = await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-k': 'a', 'x-mock-delay-ms': '1500' });
      assert.equal(r.status, 504);
      assert.equal(r.body.error.code, 'SLC_UPSTREAM_TIMEOUT');
    } finally { await gw.close(); }
  });

  it('a max_body_bytes above the running in-flight body budget is refused: the old config stays', async () => {
    const gw = await startGateway(config(mock.url, { max_body_bytes: 1_000_000, max_inflight_body_bytes: 2_000_000 }));
    try {
      const raised = local(config(mock.url, { max_body_bytes: 3_000_000, max_inflight_body_bytes: 8_000_000 }));
      assert.throws(() => gw.handle.reload(raised), /limits\.max_body_bytes: must be at most the running limits\.max_inflight_body_bytes \(2000000\)/);
      assert.equal(gw.handle.reloadFrom(() => raised), false);
      assert.equal(await metric(gw, /^sluice_config_reloads_total\{.*outcome="error"/), 2);
      const big = { ...MSG, messages: [{ role: 'user', content: 'x'.repeat(1_500_000) }] };
      assert.equal((await post(`${gw.url}/v1/chat/completions`, big, { 'x-k': 'a' })).status, 413, 'the old cap stays');
      // Within the budget, a raised cap applies.
      gw.handle.reload(local(config(mock.url, { max_body_bytes: 2_000_000, max_inflight_body_bytes: 8_000_000 })));
      assert.equal((await post(`${gw.url}/v1/chat/completions`, big, { 'x-k': 'a' })).status, 200);
    } finally { await gw.close(); }
  });
});
