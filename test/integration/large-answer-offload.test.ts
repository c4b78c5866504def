// A buffered answer of 1 MiB or more is decoded (parsed, metered, translated) by its instance's provider on a
// worker thread, not on the serving thread: a probe's 20 MB Responses answer parsed there stalled every other
// request for 4 s. What the client gets and what is charged are the same as inline: OpenAI chat with its usage,
// one without usage (counted), and an Anthropic answer translated for an OpenAI client.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, post, type TestGateway } from '../helpers/gateway.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { charged, expectCharged, metric } from '../helpers/metrics.ts';

const WORDS = 'tide '.repeat(300_000).trim();

function http(body: string): string {
  return `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

describe('large buffered answers are decoded on a worker thread', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;
  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const mode = req.headers['x-mode'];
      if (req.head.split(' ')[1]!.endsWith('/messages')) {
        s.write(http(JSON.stringify({ id: 'm', type: 'message', role: 'assistant', model: 'claude-x', content: [{ type: 'text', text: WORDS }],
          stop_reason: 'end_turn', usage: { input_tokens: 40, output_tokens: 300_000 } })));
        return;
      }
      const usage = mode === 'none' ? ''
        : mode === 'cached' ? ',"usage":{"prompt_tokens":100,"completion_tokens":300000,"total_tokens":300100,"prompt_tokens_details":{"cached_tokens":80},"completion_tokens_details":{"reasoning_tokens":30}}'
          : ',"usage":{"prompt_tokens":40,"completion_tokens":300000,"total_tokens":300040}';
      s.write(http(`{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"${WORDS}"},"finish_reason":"stop"}]${usage}}`));
    });
    const quota = { 'ai-rate-limiting': { limit: 100_000_000, time_window: 3600 } };
    gw = await startGateway({
      tokens: { max_reservation: 1_000_000 },
      routes: [
        { id: 'oai', uri: '/v1/chat/completions', plugins: { ...quota, 'ai-proxy-multi': { instances: [{ name: 'a', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` }, forward_headers: ['x-mode'] }] } } },
        { id: 'cx', uri: '/cx/v1/chat/completions', plugins: { 'ai-rate-limiting': { limit: 100_000_000, time_window: 3600, limit_strategy: 'expression', cost_expr: 'completion_tokens + cached_tokens * 10' }, 'ai-proxy-multi': { instances: [{ name: 'x', provider: 'openai-compatible', override: { endpoint: `${up.url}/v1/chat/completions` }, forward_headers: ['x-mode'] }] } } },
        { id: 'anth', uri: '/anth/v1/chat/completions', plugins: { ...quota, 'ai-proxy-multi': { instances: [{ name: 'c', provider: 'anthropic', auth: { header: { 'x-api-key': 'k' } }, options: { model: 'claude-x' }, override: { endpoint: up.url } }] } } },
      ],
    });
  });
  after(async () => {
    await gw?.close();
    await up?.close();
  });

  const ASK = { model: 'm', messages: [{ role: 'user', content: 'Say tide a lot.' }], max_tokens: 400_000 };
  const decodes = () => metric(gw, /^sluice_worker_tasks_total\{kind="decode",outcome="ok"\}/);

  it('OpenAI chat with usage: relayed whole, charged its usage, decoded on a worker', async () => {
    const c0 = await charged(gw, 'oai');
    const d0 = await decodes();
    const r = await post(`${gw.url}/v1/chat/completions`, ASK);
    assert.equal(r.status, 200);
    assert.equal(r.body.choices[0].message.content, WORDS);
    await expectCharged(gw, 'oai', c0, 300_040);
    assert.equal(await decodes(), d0 + 1);
  });

  it('the raw usage crosses back from the worker: cost expressions read its cached tokens, X-Sluice-Usage its kinds', async () => {
    const c0 = await charged(gw, 'cx');
    const r = await post(`${gw.url}/cx/v1/chat/completions`, ASK, { 'x-mode': 'cached' });
    assert.equal(r.status, 200);
    // 300,000 + 80 × 10 (the upper bound, 301,000, was charged when the raw report was lost on the way back).
    await expectCharged(gw, 'cx', c0, 300_800);
    const usage = r.headers.get('x-sluice-usage') ?? '';
    assert.match(usage, /cached_prompt=80/);
    assert.match(usage, /reasoning=30/);
    assert.doesNotMatch(usage, /estimated/);
  });

  it('OpenAI chat without usage: the text handed back from the worker is counted', async () => {
    const c0 = await charged(gw, 'oai');
    const r = await post(`${gw.url}/v1/chat/completions`, ASK, { 'x-mode': 'none' });
    assert.equal(r.status, 200);
    const moved = (await charged(gw, 'oai')) - c0;
    // The prompt (a few tokens) plus ~300,000 counted for the text.
    assert.ok(moved >= 300_000 && moved < 300_100, `charged ${moved}`);
  });

  it('Anthropic answer translated for an OpenAI client on the worker: the client gets OpenAI\'s shape', async () => {
    const c0 = await charged(gw, 'anth');
    const r = await post(`${gw.url}/anth/v1/chat/completions`, ASK);
    assert.equal(r.status, 200, r.text.slice(0, 300));
    assert.equal(r.body.object, 'chat.completion');
    assert.equal(r.body.choices[0].message.content, WORDS);
    assert.equal(r.body.usage.completion_tokens, 300_000);
    await expectCharged(gw, 'anth', c0, 300_040);
  });
});
