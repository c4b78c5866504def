// The OpenAI chat/completions codecs behind the provider seam: usage with its token kinds (cached prompt,
// reasoning) read through usageFromCounts, the stream's forced usage chunk stripped unless asked for, failures
// classified for fallback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeChat, openAiFailure, openAiUsage, streamChat } from '../../src/providers/openai/chat.ts';
import { prepareCall } from '../../src/providers/prepare.ts';
import type { PreparedCall } from '../../src/providers/types.ts';

function prepared(body: Record<string, unknown>): PreparedCall {
  const r = prepareCall(Buffer.from(JSON.stringify(body)), { surface: 'openai-chat', path: '/v1/chat/completions', query: '', defaultMaxTokens: 16 });
  assert.ok(r.ok);
  return r;
}

const MSG = [{ role: 'user', content: 'hi' }];
const USAGE = { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140, prompt_tokens_details: { cached_tokens: 64 }, completion_tokens_details: { reasoning_tokens: 25 } };

test('openAiUsage: cached and reasoning tokens are parts of prompt and completion, never added', () => {
  const u = openAiUsage(USAGE, 1e6);
  assert.deepEqual(u, { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140, cached_prompt_tokens: 64, cache_write_tokens: 0, reasoning_tokens: 25 });
  assert.deepEqual(openAiUsage({ ...USAGE, prompt_tokens_details: { cached_tokens: 101 } }, 1e6), { rejected: 'inconsistent' });
  assert.deepEqual(openAiUsage({ ...USAGE, completion_tokens_details: { reasoning_tokens: -1 } }, 1e6), { rejected: 'negative' });
  assert.deepEqual(openAiUsage('x', 1e6), { rejected: 'malformed' });
  assert.equal(openAiUsage(null, 1e6), undefined);
});

test('decodeChat: the body is relayed as it came, with its usage; without usage, the text to count', () => {
  const call = prepared({ messages: MSG });
  const body = Buffer.from(JSON.stringify({ choices: [{ message: { content: 'hello' } }], usage: USAGE }));
  const d = decodeChat(call, body, 1e6);
  assert.equal(d.body, body);
  assert.equal(d.contentType, undefined);
  assert.equal(d.usage?.cached_prompt_tokens, 64);
  assert.equal(d.text, '');
  const bare = decodeChat(call, Buffer.from(JSON.stringify({ choices: [{ message: { content: 'hello' } }, { text: ' world' }] })), 1e6);
  assert.equal(bare.usage, undefined);
  assert.equal(bare.text, 'hello world');
  const lying = decodeChat(call, Buffer.from(JSON.stringify({ choices: [], usage: { prompt_tokens: 1.5 } })), 1e6);
  assert.equal(lying.rejected, 'fractional');
  assert.equal(decodeChat(call, Buffer.from('not json'), 1e6).usage, undefined);
});

test('streamChat: include_usage is forced upstream, and the usage chunk reaches only clients that asked', () => {
  const frames = [
    'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n',
    `data: ${JSON.stringify({ choices: [], usage: USAGE })}\n\n`,
    'data: [DONE]\n\n',
  ];
  for (const asked of [false, true]) {
    const call = prepared({ messages: MSG, stream: true, ...(asked ? { stream_options: { include_usage: true } } : {}) });
    assert.equal(JSON.parse('{' + call.tail.toString()).stream_options.include_usage, true);
    const codec = streamChat(call, { maxUsage: 1e6 });
    assert.equal(codec.contentType, 'text/event-stream');
    let out = '';
    for (const f of frames) out += codec.push(Buffer.from(f))?.toString() ?? '';
    out += codec.end()?.toString() ?? '';
    assert.equal(out.includes('"usage":{'), asked, out);
    assert.equal(codec.usage?.total_tokens, 140);
    assert.equal(codec.usage?.reasoning_tokens, 25);
    assert.equal(codec.text, 'Hi');
  }
});

test('openAiFailure: 429 and 5xx are fallback reasons; other statuses are relayed as they came', () => {
  const call = prepared({ messages: MSG });
  const body = Buffer.from('{"error":{}}');
  assert.equal(openAiFailure(call, 429, body).retry, 'http_429');
  assert.equal(openAiFailure(call, 503, body).retry, 'http_5xx');
  const f = openAiFailure(call, 400, body);
  assert.equal(f.retry, undefined);
  assert.equal(f.body, body);
  assert.equal(f.status, 400);
});
