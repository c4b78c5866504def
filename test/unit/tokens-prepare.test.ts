import { test } from 'node:test';
import assert from 'node:assert/strict';
import { composeUpstreamBody } from '../../src/tokens/prepare.ts';
import { prepareRequest, type PrepareFailure, type PreparedRequest } from '../helpers/prepare.ts';
import { countChatPrompt, countCompletionPrompt } from '../../src/tokens/count.ts';

const CHAT = { kind: 'chat', defaultMaxTokens: 256 } as const;
const COMPLETION = { kind: 'completion', defaultMaxTokens: 100 } as const;

function prep(body: unknown, opts: { kind: 'chat' | 'completion'; defaultMaxTokens: number } = CHAT): PreparedRequest {
  const r = prepareRequest(Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), opts);
  assert.equal(r.ok, true, r.ok ? '' : r.message);
  return r as PreparedRequest;
}

function failure(body: string | Uint8Array, opts: { kind: 'chat' | 'completion'; defaultMaxTokens: number } = CHAT): PrepareFailure {
  const r = prepareRequest(typeof body === 'string' ? Buffer.from(body) : body, opts);
  assert.equal(r.ok, false);
  return r as PrepareFailure;
}

function upstreamJson(model: string | undefined, r: PreparedRequest): unknown {
  return JSON.parse(composeUpstreamBody(model, r.tail).toString('utf8'));
}

test('non-streaming chat: counts, reserves the default, keeps the body', () => {
  const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello world' }];
  const body = { model: 'gpt-4o', messages, temperature: 0.2 };
  const r = prep(body);
  assert.equal(r.model, 'gpt-4o');
  assert.equal(r.stream, false);
  assert.equal(r.clientWantsUsage, false);
  assert.equal(r.maxTokens, undefined);
  assert.equal(r.promptTokens, countChatPrompt(messages, 'o200k_base'));
  assert.equal(r.reserveCompletion, 256);
  assert.ok(!r.tail.toString().includes('"model"'));
  assert.deepEqual(upstreamJson('gpt-4o-mini', r), { model: 'gpt-4o-mini', messages, temperature: 0.2 });
});

test('streaming chat forces include_usage upstream and remembers whether the client asked', () => {
  const messages = [{ role: 'user', content: 'hi' }];
  const plain = prep({ model: 'm', stream: true, messages, max_tokens: 50 });
  assert.equal(plain.stream, true);
  assert.equal(plain.clientWantsUsage, false);
  assert.equal(plain.maxTokens, 50);
  assert.equal(plain.reserveCompletion, 50);
  assert.deepEqual(upstreamJson('up', plain), { model: 'up', stream: true, messages, max_tokens: 50, stream_options: { include_usage: true } });

  const asked = prep({ model: 'm', stream: true, stream_options: { include_usage: true }, messages });
  assert.equal(asked.clientWantsUsage, true);
  assert.deepEqual(upstreamJson('m', asked), { model: 'm', stream: true, stream_options: { include_usage: true }, messages });

  const declined = prep({ stream: true, stream_options: { include_usage: false, other: 1 }, messages });
  assert.equal(declined.clientWantsUsage, false);
  assert.deepEqual(upstreamJson('m', declined), { stream: true, stream_options: { include_usage: true, other: 1 }, messages, model: 'm' });
});

test('stream_options is left alone when not streaming', () => {
  const r = prep({ messages: [{ role: 'user', content: 'x' }], stream: false, stream_options: { include_usage: true } });
  assert.equal(r.stream, false);
  assert.equal(r.clientWantsUsage, false);
  assert.deepEqual(upstreamJson(undefined, r), { messages: [{ role: 'user', content: 'x' }], stream: false, stream_options: { include_usage: true } });
});

test('both limits sent: the larger bounds the answer (both reach the upstream, which may read either); null means absent', () => {
  const messages = [{ role: 'user', content: 'x' }];
  assert.equal(prep({ messages, max_tokens: 10, max_completion_tokens: 20 }).maxTokens, 20);
  // A small max_completion_tokens beside a large max_tokens (DeepSeek-style servers read max_tokens only) had reserved
  // and capped the count at 1.
  const both = prep({ messages, max_tokens: 2000, max_completion_tokens: 1 });
  assert.equal(both.maxTokens, 2000);
  assert.equal(both.reserveCompletion, 2000);
  // The model check reads max_completion_tokens (the client's limit); a larger max_tokens is reserved up to the model's cap.
  const over = prep({ messages, model: 'gpt-4o', max_completion_tokens: 1000, max_tokens: 100_000 });
  assert.equal(over.reserveCompletion, 16_384);
  assert.equal(prepareRequest(Buffer.from(JSON.stringify({ messages, model: 'gpt-4o', max_completion_tokens: 100_000 })), CHAT).ok, false);
  assert.equal(prep({ messages, max_tokens: 10, max_completion_tokens: null }).maxTokens, 10);
  const r = prep({ messages, max_tokens: null, stream: null });
  assert.equal(r.maxTokens, undefined);
  assert.equal(r.reserveCompletion, 256);
  assert.equal(r.stream, false);
});

test('completions: string, array and token-id prompts', () => {
  for (const prompt of ['hello world', ['a b', 'c'], [1, 2, 3], [[1, 2], [3]]]) {
    const r = prep({ model: 'gpt-3.5-turbo-instruct', prompt, max_tokens: 7 }, COMPLETION);
    assert.equal(r.promptTokens, countCompletionPrompt(prompt, 'cl100k_base'));
    assert.equal(r.reserveCompletion, 7);
    assert.deepEqual(upstreamJson('x', r), { model: 'x', prompt, max_tokens: 7 });
  }
  assert.equal(prep({ prompt: 'x' }, COMPLETION).reserveCompletion, 100);
});

test('composeUpstreamBody: model only, no model, unicode and key order', () => {
  const only = prep({ model: 'a', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(composeUpstreamBody('b"\\ü', only.tail).toString(), '{"model":"b\\"\\\\ü","messages":[{"role":"user","content":"x"}]}');
  const bare = prepareRequest(Buffer.from('{"model":"a","prompt":"p"}'), COMPLETION) as PreparedRequest;
  assert.equal(bare.tail.toString(), '"prompt":"p"}');
  // A tail of '}' alone (the body had nothing but the model).
  assert.equal(composeUpstreamBody('z', Buffer.from('}')).toString(), '{"model":"z"}');
  assert.equal(composeUpstreamBody(undefined, Buffer.from('}')).toString(), '{}');
  const noModel = prep({ messages: [{ role: 'user', content: '日本 🎌' }], user: 'u' });
  assert.equal(noModel.model, undefined);
  assert.equal(composeUpstreamBody(undefined, noModel.tail).toString(), '{"messages":[{"role":"user","content":"日本 🎌"}],"user":"u"}');
});

test('special tokens in the prompt do not fail the request', () => {
  const r = prep({ model: 'gpt-4', messages: [{ role: 'user', content: '<|endoftext|><|im_start|>' }] });
  assert.ok(r.promptTokens > 8);
});

test('accepts a Uint8Array that is a view into a larger buffer', () => {
  const json = Buffer.from('xx{"messages":[{"role":"user","content":"hello world"}]}yy');
  const view = new Uint8Array(json.buffer, json.byteOffset + 2, json.length - 4);
  const r = prepareRequest(view, CHAT);
  assert.equal(r.ok, true);
});

test('every malformed request is a failure with a code, never a throw', () => {
  const cases: [string, 'SLC_BAD_JSON' | 'SLC_BAD_REQUEST', RegExp, ('chat' | 'completion')?][] = [
    ['', 'SLC_BAD_JSON', /request body is empty: this API takes a JSON object, sent with POST/],
    ['{"messages":[', 'SLC_BAD_JSON', /not valid JSON/],
    ['{"a":1}}', 'SLC_BAD_JSON', /not valid JSON/],
    ['[]', 'SLC_BAD_REQUEST', /JSON object/],
    ['null', 'SLC_BAD_REQUEST', /JSON object/],
    ['"str"', 'SLC_BAD_REQUEST', /JSON object/],
    ['42', 'SLC_BAD_REQUEST', /JSON object/],
    ['{}', 'SLC_BAD_REQUEST', /messages must be an array/],
    ['{"messages":"hi"}', 'SLC_BAD_REQUEST', /messages must be an array/],
    ['{"messages":{}}', 'SLC_BAD_REQUEST', /messages must be an array/],
    ['{"messages":[]}', 'SLC_BAD_REQUEST', /must not be empty/],
    ['{"messages":[{"role":"user","content":"x"}, 3]}', 'SLC_BAD_REQUEST', /messages\[1\] must be an object/],
    ['{"messages":[null]}', 'SLC_BAD_REQUEST', /messages\[0\] must be an object/],
    ['{"model":5,"messages":[{}]}', 'SLC_BAD_REQUEST', /model must be a string/],
    ['{"model":null,"messages":[{}]}', 'SLC_BAD_REQUEST', /model must be a string/],
    ['{"messages":[{}],"max_tokens":0}', 'SLC_BAD_REQUEST', /max_tokens must be a positive integer/],
    ['{"messages":[{}],"max_tokens":-5}', 'SLC_BAD_REQUEST', /max_tokens must be a positive integer/],
    ['{"messages":[{}],"max_tokens":1.5}', 'SLC_BAD_REQUEST', /max_tokens must be a positive integer/],
    ['{"messages":[{}],"max_tokens":"10"}', 'SLC_BAD_REQUEST', /max_tokens must be a positive integer/],
    ['{"messages":[{}],"max_tokens":1e300}', 'SLC_BAD_REQUEST', /max_tokens must be a positive integer/],
    ['{"messages":[{}],"max_completion_tokens":0}', 'SLC_BAD_REQUEST', /max_completion_tokens must be a positive integer/],
    ['{"messages":[{}],"stream":"true"}', 'SLC_BAD_REQUEST', /stream must be a boolean/],
    ['{"messages":[{}],"stream":1}', 'SLC_BAD_REQUEST', /stream must be a boolean/],
    ['{"messages":[{}],"stream":true,"stream_options":"yes"}', 'SLC_BAD_REQUEST', /stream_options must be an object/],
    ['{"messages":[{}],"stream":true,"stream_options":[]}', 'SLC_BAD_REQUEST', /stream_options must be an object/],
    ['{}', 'SLC_BAD_REQUEST', /prompt is required/, 'completion'],
    ['{"prompt":null}', 'SLC_BAD_REQUEST', /prompt is required/, 'completion'],
    ['{"prompt":5}', 'SLC_BAD_REQUEST', /prompt must be/, 'completion'],
    ['{"prompt":[{"a":1}]}', 'SLC_BAD_REQUEST', /prompt must be/, 'completion'],
    ['{"prompt":[[1,"x"]]}', 'SLC_BAD_REQUEST', /prompt must be/, 'completion'],
  ];
  for (const [body, code, re, kind] of cases) {
    const f = failure(body, kind === 'completion' ? COMPLETION : CHAT);
    assert.equal(f.code, code, body);
    assert.match(f.message, re, body);
  }
  // Invalid UTF-8 decodes to replacement characters: still JSON, still counted.
  const bytes = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}]}')]);
  assert.equal(prepareRequest(bytes, CHAT).ok, true);
});

test('the upstream body carries the client\'s own bytes of each member: numbers, escapes and layout as written', () => {
  // JSON.parse + JSON.stringify turned this seed into ...992 and 1e999 into null.
  const body = '{ "model" : "gpt-4o", "seed":9007199254740993,"temperature" : 1e999, "top_p": 1.0,\n'
    + '  "messages": [ {"role":"user","content":"caf\\u00e9 \\"}{[ \\\\"} ], "n" : 1 , "user":"a\\/b"}';
  const r = prep(body);
  assert.equal(composeUpstreamBody('m', r.tail).toString(), '{"model":"m","seed":9007199254740993,"temperature" : 1e999,"top_p": 1.0,'
    + '"messages": [ {"role":"user","content":"caf\\u00e9 \\"}{[ \\\\"} ],"n" : 1,"user":"a\\/b"}');
  // A key written with an escape is the key it names: "mod\u0065l" is the model, and leaves the body.
  const escaped = prep('{"mod\\u0065l":"x","messages":[{"role":"user","content":"hi"}]}');
  assert.equal(escaped.model, 'x');
  assert.equal(composeUpstreamBody(undefined, escaped.tail).toString(), '{"messages":[{"role":"user","content":"hi"}]}');
});

test('the upstream body: duplicate keys leave as the value Sluice read (the last), rewritten members serialised', () => {
  const dup = prep('{"max_tokens":1,"messages":[{"role":"user","content":"hi"}],"max_tokens":7}');
  assert.equal(dup.maxTokens, 7);
  assert.equal(composeUpstreamBody(undefined, dup.tail).toString(), '{"messages":[{"role":"user","content":"hi"}],"max_tokens":7}');
  // A stream's stream_options is rewritten to ask for usage; the client's other options stay.
  const stream = prep('{"stream":true,"stream_options":{"x":  1},"messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615}');
  assert.equal(composeUpstreamBody(undefined, stream.tail).toString(),
    '{"stream":true,"messages":[{"role":"user","content":"hi"}],"seed":18446744073709551615,"stream_options":{"x":1,"include_usage":true}}');
  const added = prep('{"stream":true,"messages":[{"role":"user","content":"hi"}]}');
  assert.equal(composeUpstreamBody(undefined, added.tail).toString(), '{"stream":true,"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}');
  assert.equal(composeUpstreamBody('m', prep('{"model":"x","messages":[{"role":"user","content":"hi"}]}').tail).toString(), '{"model":"m","messages":[{"role":"user","content":"hi"}]}');
});

test('a body nesting deeper than 128 levels is a 400 SLC_BAD_JSON, not a stack overflow', () => {
  const nest = (n: number): string => `{"messages":[{"role":"user","content":"hi"}],"x":${'['.repeat(n)}${']'.repeat(n)}}`;
  assert.equal(prep(nest(127)).ok, true, 'the body object and 127 arrays: 128 levels');
  for (const n of [128, 5000, 100_000]) {
    const f = failure(nest(n));
    assert.equal(f.code, 'SLC_BAD_JSON');
    assert.equal(f.message, 'request body nests deeper than 128 levels');
  }
  // Nesting inside a string is text, not depth.
  assert.equal(prep(`{"messages":[{"role":"user","content":"${'['.repeat(10_000)}"}]}`).ok, true);
});
