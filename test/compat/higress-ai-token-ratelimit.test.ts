// Higress ai-token-ratelimit behaviours (current version, after PR #4011), one case per behaviour, against a
// real gateway and a loopback upstream charging exactly 10 tokens a request. Each case name says what Higress
// does and, where Sluice deliberately differs, what Sluice does instead.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, post, avoidWindowEdge, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { startFixedUsageUpstream, type FixedUsageUpstream } from '../helpers/fixed-usage-upstream.ts';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';

const ASK = { model: 'qwen', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 };

function configIssues(plugin: Record<string, unknown>): { path: string; message: string }[] {
  try {
    validateConfig({ routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy': { provider: 'openai' }, 'ai-token-ratelimit': plugin } }] }, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  return [];
}

describe('Higress ai-token-ratelimit compatibility', () => {
  let up: FixedUsageUpstream;
  const gateways: TestGateway[] = [];
  before(async () => { up = await startFixedUsageUpstream({ prompt_tokens: 6, completion_tokens: 4, total_tokens: 10 }); });
  after(async () => {
    for (const g of gateways) await g.close();
    await up?.close();
  });

  async function gw(plugin: Record<string, unknown>): Promise<TestGateway> {
    const g = await startGateway({
      routes: [{ id: 'qwen', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('qwen', up.url)] }, 'ai-token-ratelimit': plugin } }],
    });
    gateways.push(g);
    return g;
  }
  const chat = (g: TestGateway, headers: Record<string, string> = {}, query = '') => post(`${g.url}/v1/chat/completions${query}`, ASK, headers);

  const TWO_ITEMS = {
    rule_name: 'two_items',
    rule_items: [
      { limit_by_header: 'x-ca-key', limit_keys: [{ key: 'k1', token_per_minute: 1000 }] },
      { limit_by_per_header: 'x-ca-key', limit_keys: [{ key: '*', token_per_minute: 15 }] },
    ],
  };

  it('every matching rule_items entry applies and any one can reject (current Higress; before PR #4011 the first match won)', async () => {
    await avoidWindowEdge(60);
    const g = await gw(TWO_ITEMS);
    // k1 matches the exact item (1000) and the per-header * (15): the second rejects after 10 + 10 tokens.
    assert.equal((await chat(g, { 'x-ca-key': 'k1' })).status, 200);
    assert.equal((await chat(g, { 'x-ca-key': 'k1' })).status, 200);
    assert.equal((await chat(g, { 'x-ca-key': 'k1' })).status, 429);
    assert.equal((await chat(g, { 'x-ca-key': 'k2' })).status, 200, 'another value has its own per-header counter');
  });

  it('rule_match: first keeps the first-match semantics of the seed document', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ ...TWO_ITEMS, rule_name: 'first_match', rule_match: 'first' });
    for (let i = 0; i < 4; i++) assert.equal((await chat(g, { 'x-ca-key': 'k1' })).status, 200, `request ${i + 1}: only the 1000-token exact item applies`);
  });

  it('a rejection carries X-TokenRateLimit-Reset (seconds) and the rejected_msg body', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ rule_name: 'reset_hdr', show_limit_quota_header: false, global_threshold: { token_per_minute: 10 } });
    assert.equal((await chat(g)).status, 200);
    const r = await chat(g);
    assert.equal(r.status, 429);
    const reset = Number(r.headers.get('x-tokenratelimit-reset'));
    assert.ok(Number.isInteger(reset) && reset >= 1 && reset <= 60, `reset ${reset}`);
    assert.equal(r.headers.get('x-tokenratelimit-reset'), r.headers.get('retry-after'));
    assert.match(r.text, /Too many requests/);
  });

  it('window_type sliding: X-TokenRateLimit-Reset says when room comes back, as Retry-After does (past the fixed window\'s end)', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ rule_name: 'slide', window_type: 'sliding', global_threshold: { token_per_minute: 30 } });
    let r = await chat(g);
    for (let i = 0; i < 5 && r.status === 200; i++) r = await chat(g);
    assert.equal(r.status, 429);
    assert.equal(r.headers.get('x-tokenratelimit-reset'), r.headers.get('retry-after'));
  });

  it('admission boundary: limit 20 at 10 tokens a request admits 2 (Higress admits 3: it admits while spent <= threshold)', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ rule_name: 'boundary', rule_items: [{ limit_by_param: 'apikey', limit_keys: [{ key: '123456', token_per_minute: 20 }] }] });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await chat(g, {}, '?apikey=123456')).status);
    assert.deepEqual(statuses, [200, 200, 429]);
  });

  it('a request without the limited header, param or cookie is not limited (Higress semantics kept)', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ rule_name: 'absent', rule_items: [{ limit_by_header: 'x-ca-key', limit_keys: [{ key: 'k1', token_per_minute: 5 }] }] });
    for (let i = 0; i < 3; i++) assert.equal((await chat(g)).status, 200);
  });

  it('validation: a plain key under limit_by_per_* is an error ("must start with \'regexp:\' or be exactly \'*\'")', () => {
    const issues = configIssues({ rule_name: 'r', rule_items: [{ limit_by_per_header: 'x-ca-key', limit_keys: [{ key: 'k1', token_per_minute: 5 }] }] });
    assert.deepEqual(issues, [{ path: 'routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_keys[0].key', message: "must start with 'regexp:' or be exactly '*'" }]);
  });

  it('validation: rule_items is capped at 10', () => {
    const item = { limit_by_per_header: 'x-k', limit_keys: [{ key: '*', token_per_minute: 5 }] };
    assert.deepEqual(configIssues({ rule_name: 'r', rule_items: Array.from({ length: 10 }, () => item) }), []);
    assert.deepEqual(configIssues({ rule_name: 'r', rule_items: Array.from({ length: 11 }, () => item) }),
      [{ path: 'routes[0].plugins.ai-token-ratelimit.rule_items', message: 'must have at most 10 items' }]);
  });

  it('regexp: keys use Go/RE2 syntax (as Higress) and run in linear time: ^(a+)+$ against a hostile value answers', async () => {
    await avoidWindowEdge(60);
    const g = await gw({ rule_name: 're', rule_items: [{ limit_by_per_header: 'x-user', limit_keys: [{ key: 'regexp:^(a+)+$', token_per_minute: 1000 }] }] });
    const r = await chat(g, { 'x-user': `${'a'.repeat(30)}!` });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ai-re-ratelimit-limit'), null, 'no match: not limited');
    assert.equal((await chat(g, { 'x-user': 'a'.repeat(30) })).headers.get('x-ai-re-ratelimit-limit'), '1000');
    assert.equal(configIssues({ rule_name: 'r', rule_items: [{ limit_by_per_header: 'x', limit_keys: [{ key: 'regexp:(?=a)', token_per_minute: 5 }] }] })[0]?.path,
      'routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_keys[0].key', 'lookarounds, which Go rejects too');
  });
});
