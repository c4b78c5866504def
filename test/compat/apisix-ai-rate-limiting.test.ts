// APISIX ai-rate-limiting behaviours a user's existing config relies on (issue 8), one case per documented
// behaviour, against a real gateway and a loopback upstream that sends the usage shapes providers send.
// Each case name says what APISIX does and, where Sluice deliberately differs, what Sluice does instead.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, post, avoidWindowEdge, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { startFixedUsageUpstream, type FixedUsageUpstream } from '../helpers/fixed-usage-upstream.ts';
import { validateConfig } from '../../src/config/validate.ts';

const ASK = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'What is 1+1?' }], max_tokens: 16 };
const USAGE_30 = { prompt_tokens: 20, completion_tokens: 10, total_tokens: 30 };

describe('APISIX ai-rate-limiting compatibility', () => {
  let up: FixedUsageUpstream;
  const gateways: TestGateway[] = [];
  before(async () => { up = await startFixedUsageUpstream(USAGE_30); });
  after(async () => {
    for (const g of gateways) await g.close();
    await up?.close();
  });

  async function gw(plugins: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<TestGateway> {
    const g = await startGateway({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins }], ...extra });
    gateways.push(g);
    return g;
  }
  const multi = (...names: string[]) => ({ instances: names.map((n, i) => mockInstance(n, up.url, { priority: names.length - i })) });
  const chat = (g: TestGateway, headers: Record<string, string> = {}) => post(`${g.url}/v1/chat/completions`, ASK, headers);

  it('instances[]: X-AI-RateLimit-{Limit,Remaining,Reset}-<instance>; Remaining is limit − tokens used (APISIX: limit − 1)', async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({ 'ai-proxy-multi': multi('openai-instance'), 'ai-rate-limiting': { instances: [{ name: 'openai-instance', limit: 100, time_window: 60 }] } });
    const r = await chat(g);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ai-ratelimit-limit-openai-instance'), '100');
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-openai-instance'), '70');
    const reset = Number(r.headers.get('x-ai-ratelimit-reset-openai-instance'));
    assert.ok(Number.isInteger(reset) && reset >= 1 && reset <= 60, `whole seconds until the clock-aligned window ends: ${reset}`);
  });

  it("a route's lone ai-proxy is the instance ai-proxy-<provider>: X-AI-RateLimit-Remaining-ai-proxy-openai", async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({
      'ai-proxy': { provider: 'openai', auth: { header: { Authorization: 'Bearer sk' } }, override: { endpoint: `${up.url}/v1/chat/completions` } },
      'ai-rate-limiting': { instances: [{ name: 'ai-proxy-openai', limit: 1000, time_window: 60 }] },
    });
    const r = await chat(g);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ai-ratelimit-limit-ai-proxy-openai'), '1000');
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-ai-proxy-openai'), '970');
    // The top-level limit on a lone ai-proxy is also reported under that name.
    const top = await gw({
      'ai-proxy': { provider: 'deepseek', override: { endpoint: `${up.url}/v1/chat/completions` } },
      'ai-rate-limiting': { limit: 500, time_window: 60 },
    });
    assert.equal((await chat(top)).headers.get('x-ai-ratelimit-limit-ai-proxy-deepseek'), '500');
  });

  it('standard_headers: X-RateLimit-{Limit,Remaining,Reset}-Tokens instead of X-AI-RateLimit-*, Reset in whole seconds', async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({
      'ai-proxy-multi': multi('my-llm'),
      'ai-rate-limiting': { instances: [{ name: 'my-llm', limit: 50, time_window: 60 }], standard_headers: true, rejected_code: 429 },
    });
    const r = await chat(g);
    assert.equal(r.headers.get('x-ratelimit-limit-tokens'), '50');
    assert.equal(r.headers.get('x-ratelimit-remaining-tokens'), '20');
    assert.match(r.headers.get('x-ratelimit-reset-tokens')!, /^\d+$/);
    assert.equal(r.headers.get('x-ai-ratelimit-limit-my-llm'), null);
    await chat(g);
    const spent = await chat(g);
    assert.equal(spent.status, 429);
    assert.equal(spent.headers.get('x-ratelimit-remaining-tokens'), '0');
    assert.equal(spent.headers.get('x-ratelimit-limit-tokens'), '50');
  });

  it('standard_headers with limit_strategy prompt_tokens: the suffix is PromptTokens', async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({
      'ai-proxy-multi': multi('my-llm'),
      'ai-rate-limiting': { instances: [{ name: 'my-llm', limit: 50000, time_window: 60 }], limit_strategy: 'prompt_tokens', standard_headers: true },
    });
    const r = await chat(g);
    assert.equal(r.headers.get('x-ratelimit-limit-prompttokens'), '50000');
    assert.equal(r.headers.get('x-ratelimit-remaining-prompttokens'), '49980');
  });

  it('rules: a request whose rule key is missing fails (APISIX) with an OpenAI-style error naming the variable', async () => {
    up.usage = USAGE_30;
    const g = await gw({ 'ai-proxy-multi': multi('a'), 'ai-rate-limiting': { rules: [{ key: '${http_user}', count: 1000, time_window: 60 }] } });
    const r = await chat(g);
    assert.equal(r.status, 400);
    assert.equal(r.body.error.type, 'invalid_request_error');
    assert.equal(r.body.error.code, 'SLC_RULE_KEY_MISSING');
    assert.match(r.body.error.message, /request variable "http_user" is missing/);
    assert.equal((await chat(g, { user: 'alice' })).status, 200);
  });

  it('rules: missing_key_code sets the status; on_missing_key: skip opts in to serving such requests unmetered', async () => {
    up.usage = USAGE_30;
    const coded = await gw({ 'ai-proxy-multi': multi('a'), 'ai-rate-limiting': { missing_key_code: 403, rules: [{ key: '${http_user}', count: 1000, time_window: 60 }] } });
    assert.equal((await chat(coded)).status, 403);
    const skip = await gw({ 'ai-proxy-multi': multi('a'), 'ai-rate-limiting': { on_missing_key: 'skip', rules: [{ key: '${http_user}', count: 1000, time_window: 60 }] } });
    const r = await chat(skip);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ai-1-ratelimit-limit'), null);
  });

  it('templated limits: limit and time_window as ${http_x_count ?? 10} at the top level and on instances[]', async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({
      'ai-proxy-multi': multi('a', 'b'),
      'ai-rate-limiting': {
        limit: '${http_x_count ?? 10}', time_window: 60,
        instances: [{ name: 'a', limit: '${http_x_a_limit ?? 1000}', time_window: '${http_x_window ?? 60}' }],
      },
    });
    const r = await chat(g, { 'x-a-limit': '500' });
    assert.equal(r.headers.get('x-ai-ratelimit-limit-a'), '500');
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-a'), '470');
    const dflt = await chat(g);
    assert.equal(dflt.headers.get('x-ai-ratelimit-limit-a'), '1000');
    assert.equal(dflt.headers.get('x-ai-ratelimit-remaining-a'), '940', 'one counter per window: the limit is applied per request');
  });

  it('cost_expr names any usage field: top-level cache_creation_input_tokens, nested cached_tokens; an absent name is 0', async () => {
    await avoidWindowEdge(60);
    up.usage = {
      prompt_tokens: 100, completion_tokens: 10, total_tokens: 110, cache_creation_input_tokens: 50,
      prompt_tokens_details: { cached_tokens: 80 },
    };
    const g = await gw({
      'ai-proxy-multi': multi('a'),
      'ai-rate-limiting': {
        instances: [{ name: 'a', limit: 1000, time_window: 60 }], limit_strategy: 'expression',
        cost_expr: 'prompt_tokens - cached_tokens + cache_creation_input_tokens + completion_tokens + reasoning_tokens',
      },
    });
    const r = await chat(g);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-a'), String(1000 - (100 - 80 + 50 + 10 + 0)));
  });

  it('cost_expr over a streamed usage: the final SSE usage frame settles with its nested fields', async () => {
    await avoidWindowEdge(60);
    up.usage = { prompt_tokens: 100, completion_tokens: 10, total_tokens: 110, prompt_tokens_details: { cached_tokens: 90 } };
    const g = await gw({
      'ai-proxy-multi': multi('a'),
      'ai-rate-limiting': { instances: [{ name: 'a', limit: 1000, time_window: 60 }], limit_strategy: 'expression', cost_expr: 'prompt_tokens - cached_tokens + completion_tokens' },
    });
    const s = await fetch(`${g.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...ASK, stream: true }) });
    assert.equal(s.status, 200);
    assert.match(await s.text(), /\[DONE\]/);
    // A streamed answer's headers go out first: its charge (100 - 90 + 10) shows on the next response.
    const next = await chat(g);
    assert.equal(next.headers.get('x-ai-ratelimit-remaining-a'), String(1000 - 20 - 20));
  });

  it('cost_expr over an Anthropic-style usage: input_tokens + cache_creation_input_tokens + output_tokens', async () => {
    await avoidWindowEdge(60);
    up.usage = { prompt_tokens: 12, completion_tokens: 40, input_tokens: 12, cache_creation_input_tokens: 1000, output_tokens: 40 };
    const g = await gw({
      'ai-proxy-multi': multi('a'),
      'ai-rate-limiting': {
        instances: [{ name: 'a', limit: 5000, time_window: 60 }], limit_strategy: 'expression',
        cost_expr: 'input_tokens + cache_creation_input_tokens + output_tokens',
      },
    });
    assert.equal((await chat(g)).headers.get('x-ai-ratelimit-remaining-a'), '3948');
  });

  it('cost_expr validation: an unknown name is accepted (APISIX); a negative cost counts as 0', async () => {
    await avoidWindowEdge(60);
    assert.doesNotThrow(() => validateConfig({ routes: [{ uri: '/x', plugins: {
      'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai' }] },
      'ai-rate-limiting': { limit: 10, time_window: 60, limit_strategy: 'expression', cost_expr: 'not_reported_by_anyone * 2' },
    } }] }, {}));
    up.usage = USAGE_30;
    const g = await gw({
      'ai-proxy-multi': multi('a'),
      'ai-rate-limiting': { instances: [{ name: 'a', limit: 100, time_window: 60 }], limit_strategy: 'expression', cost_expr: 'completion_tokens - prompt_tokens' },
    });
    assert.equal((await chat(g)).headers.get('x-ai-ratelimit-remaining-a'), '100');
  });

  it('rejected_code: Sluice defaults to 429 (APISIX 503), also when every instance is spent (APISIX: 503 "all servers tried")', async () => {
    await avoidWindowEdge(60);
    up.usage = USAGE_30;
    const g = await gw({ 'ai-proxy-multi': multi('a', 'b'), 'ai-rate-limiting': { limit: 20, time_window: 60 } });
    assert.equal((await chat(g)).status, 200, 'a');
    assert.equal((await chat(g)).status, 200, 'a is spent: falls back to b');
    const r = await chat(g);
    assert.equal(r.status, 429);
    assert.equal(r.body.error.type, 'rate_limit_error');
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-a'), '0');
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-b'), '0');
    assert.match(r.headers.get('retry-after')!, /^\d+$/);
    const apisixLike = await gw({ 'ai-proxy-multi': multi('a'), 'ai-rate-limiting': { limit: 20, time_window: 60, rejected_code: 503, rejected_msg: 'busy' } });
    await chat(apisixLike);
    const r503 = await chat(apisixLike);
    assert.equal(r503.status, 503);
    assert.equal(r503.body.error.message, 'busy');
  });
});
