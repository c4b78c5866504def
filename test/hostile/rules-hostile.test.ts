// Hostile inputs aimed at the rules layer, against a real gateway: one case per item.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { startFixedUsageUpstream, type FixedUsageUpstream } from '../helpers/fixed-usage-upstream.ts';

const ASK = { model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 };

describe('hostile input: rules', () => {
  let up: FixedUsageUpstream;
  let g: TestGateway;
  before(async () => {
    up = await startFixedUsageUpstream({ prompt_tokens: 6, completion_tokens: 4, total_tokens: 10 });
    g = await startGateway({
      routes: [
        { id: 're', uri: '/re', plugins: {
          'ai-proxy-multi': { instances: [mockInstance('a', up.url)] },
          'ai-token-ratelimit': { rule_name: 're', rule_items: [{ limit_by_per_header: 'x-user', limit_keys: [{ key: 'regexp:^(a+)+$', token_per_minute: 100000 }] }] },
        } },
        { id: 'rules', uri: '/rules', plugins: {
          'ai-proxy-multi': { instances: [mockInstance('a', up.url)] },
          'ai-rate-limiting': { rules: [{ key: '${http_x_user}', count: 20, time_window: 60 }] },
        } },
      ],
    });
  });
  after(async () => {
    await g?.close();
    await up?.close();
  });

  it('issue 7 item 10: a catastrophic regexp key and crafted header values (30 chars, 8 KB) do not stall the gateway', async () => {
    // With a backtracking engine the 30-char value alone blocked the event loop ~4 s; the 8 KB one never ends.
    const hostile = [`${'a'.repeat(30)}!`, `${'a'.repeat(8000)}!`];
    const answers = await Promise.all([
      ...hostile.map((v) => post(`${g.url}/re`, ASK, { 'x-user': v })),
      post(`${g.url}/re`, ASK, { 'x-user': 'bystander' }),
    ]);
    for (const r of answers) assert.ok(r.status === 200 || r.status === 431, `status ${r.status}`);
    assert.equal(answers[2]!.status, 200);
  });

  it('issue 8 item 5: dropping the header a rule is keyed on does not escape the quota', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await post(`${g.url}/rules`, ASK);
      assert.equal(r.status, 400);
      assert.equal(r.body.error.code, 'SLC_RULE_KEY_MISSING');
    }
    const before = up.requests;
    await post(`${g.url}/rules`, ASK, { 'x-user': '' });
    assert.equal(up.requests, before, 'an empty value counts as absent: refused without reaching the upstream');
  });
});
