// The examples of the Higress ai-token-ratelimit README (seed 002), with its plugin configs as written
// there (the redis block omitted: counting is local), driven over HTTP and with the openai SDK.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { avoidWindowEdge } from '../helpers/gateway.ts';

const HELLO = { model: 'gpt-3', messages: [{ role: 'user', content: 'Hello, who are you?' }], stream: false };

describe('seed 002: Higress ai-token-ratelimit examples', () => {
  let mock: MockUpstream;
  const gateways: TestGateway[] = [];
  before(async () => { mock = await startMockUpstream({ completionTokens: 30 }); });
  after(async () => {
    for (const g of gateways) await g.close();
    await mock?.close();
  });

  async function gatewayWith(plugin: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<TestGateway> {
    const gw = await startGateway({
      ...extra,
      routes: [{ id: 'qwen', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('qwen', mock.url)] }, 'ai-token-ratelimit': plugin } }],
    });
    gateways.push(gw);
    return gw;
  }

  /** Sends until rejected; returns how many were served. */
  async function serveUntilRejected(url: string, headers: Record<string, string> = {}, max = 30): Promise<{ served: number; last: Awaited<ReturnType<typeof post>> }> {
    let served = 0;
    for (let i = 0; i < max; i++) {
      const r = await post(url, HELLO, headers);
      if (r.status !== 200) return { served, last: r };
      served++;
    }
    throw new Error(`not rejected after ${max} requests`);
  }

  it('the README flow: apikey=123456 limited to 200 tokens per minute, then "Too many requests"', async () => {
    await avoidWindowEdge(60);
    const gw = await gatewayWith({
      rule_name: 'default_limit_by_param_apikey',
      rule_items: [{ limit_by_param: 'apikey', limit_keys: [{ key: 123456, token_per_minute: 200 }] }],
    });
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'x', maxRetries: 0, defaultQuery: { apikey: '123456' } });
    const first = await client.chat.completions.create(HELLO as never);
    assert.ok(first.usage!.total_tokens > 0);
    const { served, last } = await serveUntilRejected(`${gw.url}/v1/chat/completions?apikey=123456`);
    assert.ok(served >= 1 && served <= 5, `served ${served}`);
    assert.equal(last.status, 429);
    assert.match(last.text, /Too many requests/);
    // Another apikey matches no limit key: not limited.
    assert.equal((await post(`${gw.url}/v1/chat/completions?apikey=other`, HELLO)).status, 200);
  });

  it('global_threshold limits the whole rule group', async () => {
    await avoidWindowEdge(60);
    const gw = await gatewayWith({ rule_name: 'routeA-global-limit-rule', global_threshold: { token_per_minute: 150 }, show_limit_quota_header: true });
    const { served, last } = await serveUntilRejected(`${gw.url}/v1/chat/completions`);
    assert.ok(served >= 1 && served <= 4, `served ${served}`);
    assert.equal(last.status, 429);
  });

  it('limit_by_header / limit_by_per_header: exact keys first, then regexp per value, then *', async () => {
    await avoidWindowEdge(60);
    const gw = await gatewayWith({
      rule_name: 'default_rule',
      rule_items: [
        { limit_by_header: 'x-ca-key', limit_keys: [{ key: 102234, token_per_minute: 10 }, { key: 308239, token_per_hour: 10 }] },
        { limit_by_per_header: 'x-ca-key', limit_keys: [
          { key: 'regexp:^a.*', token_per_second: 10 },
          { key: 'regexp:^b.*', token_per_minute: 100 },
          { key: '*', token_per_hour: 1000 },
        ] },
      ],
    });
    const url = `${gw.url}/v1/chat/completions`;
    // 102234: 10 tokens per minute: one answer spends it.
    assert.equal((await serveUntilRejected(url, { 'x-ca-key': '102234' })).served, 1);
    // b-keys: 100 per minute each, counted per value.
    const b1 = await serveUntilRejected(url, { 'x-ca-key': 'b-one' });
    const b2 = await serveUntilRejected(url, { 'x-ca-key': 'b-two' });
    assert.equal(b1.served, b2.served, 'each b-key has its own counter');
    assert.ok(b1.served >= 2 && b1.served <= 4);
    // Anything else: 1000 per hour.
    assert.ok((await serveUntilRejected(url, { 'x-ca-key': 'zzz' }, 40)).served > b1.served);
  });

  it('limit_by_per_ip from x-forwarded-for: exact IP, CIDR, 0.0.0.0/0 — believed only from a trusted proxy', async () => {
    await avoidWindowEdge(60);
    const plugin = {
      rule_name: 'default_rule',
      rule_items: [{ limit_by_per_ip: 'from-header-x-forwarded-for', limit_keys: [
        { key: '1.1.1.1', token_per_day: 10 },
        { key: '1.1.1.0/24', token_per_day: 100 },
        { key: '0.0.0.0/0', token_per_day: 1000 },
      ] }],
    };
    const trusted = await gatewayWith(plugin, { trusted_proxies: ['127.0.0.1/32', '::1'] });
    const url = `${trusted.url}/v1/chat/completions`;
    assert.equal((await serveUntilRejected(url, { 'x-forwarded-for': '1.1.1.1' })).served, 1);
    const net = await serveUntilRejected(url, { 'x-forwarded-for': '1.1.1.7' });
    assert.ok(net.served >= 2 && net.served <= 4, `served ${net.served}`);
    // Per IP: another address of the range has its own counter.
    assert.equal((await serveUntilRejected(url, { 'x-forwarded-for': '1.1.1.8' })).served, net.served);

    // Untrusted peer: the header is ignored and the socket address (127.0.0.1 → 0.0.0.0/0) counts.
    const untrusted = await gatewayWith(plugin);
    const r = await post(`${untrusted.url}/v1/chat/completions`, HELLO, { 'x-forwarded-for': '1.1.1.1' });
    assert.equal(r.status, 200);
    assert.equal((await post(`${untrusted.url}/v1/chat/completions`, HELLO, { 'x-forwarded-for': '1.1.1.1' })).status, 200, 'spoofed XFF must not select the 10-token key');
  });

  it('limit_by_consumer / limit_by_per_consumer with key-auth consumers', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({
      consumers: [
        { username: 'consumer1', plugins: { 'key-auth': { key: 'k1' } } },
        { username: 'consumer2', plugins: { 'key-auth': { key: 'k2' } } },
        { username: 'alice', plugins: { 'key-auth': { key: 'ka' } } },
      ],
      routes: [{ id: 'qwen', uri: '/v1/chat/completions', plugins: {
        'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('qwen', mock.url)] },
        'ai-token-ratelimit': { rule_name: 'default_rule', rule_items: [
          { limit_by_consumer: '', limit_keys: [{ key: 'consumer1', token_per_second: 10 }, { key: 'consumer2', token_per_hour: 100 }] },
          { limit_by_per_consumer: '', limit_keys: [{ key: 'regexp:^a.*', token_per_second: 10 }, { key: '*', token_per_hour: 1000 }] },
        ] },
      } }],
    });
    gateways.push(gw);
    const url = `${gw.url}/v1/chat/completions`;
    const c1 = await serveUntilRejected(url, { apikey: 'k1' });
    assert.ok(c1.served >= 1 && c1.served <= 2, `consumer1 (10 tokens per second) served ${c1.served}`);
    const c2 = await serveUntilRejected(url, { apikey: 'k2' });
    assert.ok(c2.served >= 2 && c2.served <= 4);
    // alice matches regexp:^a.* at 10 tokens per second: one answer spends it (two if a second boundary falls between).
    const alice = await serveUntilRejected(url, { apikey: 'ka' });
    assert.ok(alice.served >= 1 && alice.served <= 2, `alice served ${alice.served}`);
  });

  it('limit_by_cookie with rejected_code 200 and a JSON rejected_msg', async () => {
    await avoidWindowEdge(60);
    const gw = await gatewayWith({
      rule_name: 'default_rule',
      rule_items: [
        { limit_by_cookie: 'key1', limit_keys: [{ key: 'value1', token_per_minute: 10 }, { key: 'value2', token_per_hour: 100 }] },
        { limit_by_per_cookie: 'key1', limit_keys: [{ key: 'regexp:^a.*', token_per_second: 10 }, { key: '*', token_per_hour: 1000 }] },
      ],
      rejected_code: 200,
      rejected_msg: '{"code":-1,"msg":"Too many requests"}',
    });
    const url = `${gw.url}/v1/chat/completions`;
    assert.equal((await post(url, HELLO, { cookie: 'key1=value1' })).status, 200);
    const rejected = await post(url, HELLO, { cookie: 'other=1; key1=value1' });
    assert.equal(rejected.status, 200);
    assert.deepEqual(rejected.body, { code: -1, msg: 'Too many requests' });
  });
});
