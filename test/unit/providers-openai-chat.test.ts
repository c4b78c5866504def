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
  // A part reported beside its whole (xAI: reasoning apart from completion_tokens) when the total includes both.
  assert.deepEqual(openAiUsage({ prompt_tokens: 100, completion_tokens: 50, total_tokens: 650, completion_tokens_details: { reasoning_tokens: 500 } }, 1e6),
    { prompt_tokens: 100, completion_tokens: 550, total_tokens: 650, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 500 });
  assert.deepEqual(openAiUsage({ prompt_tokens: 100, completion_tokens: 50, total_tokens: 1650, prompt_tokens_details: { cached_tokens: 1500 } }, 1e6),
    { prompt_tokens: 1600, completion_tokens: 50, total_tokens: 1650, cached_prompt_tokens: 1500, cache_write_tokens: 0, reasoning_tokens: 0 });
  // Without a total that covers both, a part above its whole contradicts the usage.
  assert.deepEqual(openAiUsage({ prompt_tokens: 100, completion_tokens: 50, total_tokens: 600, completion_tokens_details: { reasoning_tokens: 500 } }, 1e6), { rejected: 'inconsistent' });
  assert.deepEqual(openAiUsage({ prompt_tokens: 100, completion_tokens: 50, completion_tokens_details: { reasoning_tokens: 500 } }, 1e6), { rejected: 'inconsistent' });
  assert.deepEqual(openAiUsage({ ...USAGE, completion_tokens_details: { reasoning_tokens: -1 } }, 1e6), { rejected: 'negative' });
  assert.deepEqual(openAiUsage('x', 1e6), { rejected: 'malformed' });
  assert.equal(openAiUsage(null, 1e6), undefined);
  // No prompt count: the prompt would be charged as 0, so the answer is counted instead.
  assert.equal(openAiUsage({ completion_tokens: 20, total_tokens: 20 }, 1e6), undefined);
});

test('openAiUsage: a null prompt or completion count is not believed; a total above their sum counts as completion', () => {
  // Read as 0, a null count made the answer free for a completion_tokens quota.
  assert.deepEqual(openAiUsage({ prompt_tokens: 16, completion_tokens: null, total_tokens: 32 }, 1e6), { rejected: 'not_a_number' });
  assert.deepEqual(openAiUsage({ prompt_tokens: null, completion_tokens: 16, total_tokens: 32 }, 1e6), { rejected: 'not_a_number' });
  // A total with no completion, or one below it, cannot hide the completion the total says there was.
  assert.deepEqual(openAiUsage({ prompt_tokens: 16, completion_tokens: 0, total_tokens: 32 }, 1e6),
    { prompt_tokens: 16, completion_tokens: 16, total_tokens: 32, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
  assert.equal((openAiUsage({ prompt_tokens: 16, total_tokens: 40 }, 1e6) as { completion_tokens: number }).completion_tokens, 24);
  // Gemini's OpenAI-compatible endpoint: thinking is in the total, not in completion_tokens.
  const gemini = openAiUsage({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 120, completion_tokens_details: { reasoning_tokens: 0 } }, 1e6);
  assert.equal((gemini as { completion_tokens: number }).completion_tokens, 110);
  // Honest usage is unchanged, and a null total is the sum.
  assert.deepEqual(openAiUsage({ prompt_tokens: 16, completion_tokens: 4, total_tokens: null }, 1e6),
    { prompt_tokens: 16, completion_tokens: 4, total_tokens: 20, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
});

test('streamChat: a usage reported twice is believed at its larger counts (a running total never shrinks)', () => {
  const content = 'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n';
  const report = (u: Record<string, unknown>): string => `data: ${JSON.stringify({ choices: [], usage: u })}\n\n`;
  const run = (frames: string[]) => {
    const codec = streamChat(prepared({ messages: MSG, stream: true }), { maxUsage: 1e6 });
    for (const f of frames) codec.push(Buffer.from(f));
    codec.end();
    return codec.usage;
  };
  // A second report taking the first back: the larger counts stay.
  assert.deepEqual(run([content, report({ prompt_tokens: 10, completion_tokens: 50, total_tokens: 60 }), report({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }), 'data: [DONE]\n\n']),
    { prompt_tokens: 10, completion_tokens: 50, total_tokens: 60, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
  // Mixed: each count at its largest, the total at least their sum.
  const mixed = run([report({ prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 }), content, report({ prompt_tokens: 8, completion_tokens: 30, total_tokens: 38 })]);
  assert.deepEqual({ ...mixed }, { prompt_tokens: 10, completion_tokens: 30, total_tokens: 40, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
  // Running totals (vLLM continuous usage stats): the last report, as sent.
  const running = run([report({ prompt_tokens: 10, completion_tokens: 1, total_tokens: 11 }), report({ prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 }), report({ prompt_tokens: 10, completion_tokens: 3, total_tokens: 13 })]);
  assert.equal(running?.completion_tokens, 3);
  assert.equal(running?.raw?.completion_tokens, 3);
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
  // Every generated field counts: tool and function calls, refusals, reasoning, content parts, a transcript.
  const message = {
    content: [{ type: 'text', text: 'part' }], refusal: ' no', reasoning_content: ' think',
    tool_calls: [{ id: 'c', type: 'function', function: { name: ' f', arguments: ' {"q":1}' } }],
    function_call: { name: ' g', arguments: ' {}' }, audio: { id: 'a', data: 'AAAA', transcript: ' said' },
  };
  assert.equal(decodeChat(call, Buffer.from(JSON.stringify({ choices: [{ message }] })), 1e6).text, 'part no think f {"q":1} g {} said');
  // A completion of 0 beside a tool call is not believed; 1 beside 100 KB of arguments gets its text counted.
  const args = 'x'.repeat(100_000);
  const toolCall = { tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: args } }] };
  const zeroTool = decodeChat(call, Buffer.from(JSON.stringify({ choices: [{ message: { content: null, ...toolCall } }], usage: { prompt_tokens: 8, completion_tokens: 0, total_tokens: 8 } })), 1e6);
  assert.equal(zeroTool.rejected, 'zero_completion');
  assert.equal(zeroTool.text, 'f' + args);
  const oneTool = decodeChat(call, Buffer.from(JSON.stringify({ choices: [{ message: { content: null, ...toolCall } }], usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 } })), 1e6);
  assert.equal(oneTool.verifyText, 'f' + args);
  const lying = decodeChat(call, Buffer.from(JSON.stringify({ choices: [], usage: { prompt_tokens: 1.5 } })), 1e6);
  assert.equal(lying.rejected, 'fractional');
  assert.equal(bare.unusable, undefined);
  // A 2xx no client could use is refused (the pipeline answers 502), not relayed as a completion.
  for (const junk of ['not json', '', '<html><body>502 Bad Gateway</body></html>', '[1,2]', '"text"']) {
    assert.equal(decodeChat(call, Buffer.from(junk), 1e6).unusable, 'the upstream answer is not a JSON object', junk);
  }
  assert.equal(decodeChat(call, Buffer.from('{"error":{"message":"model overloaded","type":"server_error"}}'), 1e6).unusable,
    'the upstream answered 2xx with an error: model overloaded');
  // An error member beside a choice is the answer's business; beside no choice, it is the answer.
  assert.equal(decodeChat(call, Buffer.from('{"choices":[{"message":{"content":"a"}}],"error":{"message":"x"}}'), 1e6).unusable, undefined);
  for (const e of ['{"choices":[],"error":{"message":"x"}}', '{"error":{"message":"x"},"choices":null}']) {
    assert.equal(decodeChat(call, Buffer.from(e), 1e6).unusable, 'the upstream answered 2xx with an error: x', e);
  }
  for (const e of ['{}', '{"detail":"Not Found"}', '{"error":"string"}']) assert.equal(decodeChat(call, Buffer.from(e), 1e6).unusable, 'the upstream answer has no choices array', e);
  assert.equal(decodeChat(call, Buffer.from('{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}'), 1e6).unusable, 'the upstream answer has no choices array');
  // A believable usage at the end does not make an answer without choices one (the tail shortcut needs "choices").
  assert.equal(decodeChat(call, Buffer.from('{"id":"x","object":"text_completion","usage":{"prompt_tokens":20,"completion_tokens":100,"total_tokens":120}}'), 1e6).unusable,
    'the upstream answer has no choices array');
  // A usage at the end does not make a page or an error object an answer (the tail is read only from answers).
  const zero = ',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}';
  assert.match(decodeChat(call, Buffer.from('{"error":{"message":"quota exceeded"}' + zero), 1e6).unusable ?? '', /quota exceeded/);
  assert.equal(decodeChat(call, Buffer.from('<html>Login</html>{"x":1' + zero), 1e6).unusable, 'the upstream answer is not a JSON object');
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
