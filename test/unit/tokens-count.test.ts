import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clearPromptCountCache, countChatPrompt, countCompletionPrompt, countPromptText, countText, CountCache, TOKENS_PER_IMAGE } from '../../src/tokens/count.ts';
import { encodingForModel } from '../../src/tokens/encoding.ts';
import { chatPromptTokens, completionPromptTokens } from '../../src/mock/tokens.ts';

test('encodingForModel maps model families to their tables', () => {
  for (const m of ['gpt-4o', 'gpt-4o-mini', 'chatgpt-4o-latest', 'gpt-4.1-nano', 'o1', 'o3-mini', 'o4-mini', 'gpt-5', 'gpt-5.1-codex', 'openai/gpt-4o', 'GPT-4O']) {
    assert.equal(encodingForModel(m), 'o200k_base', m);
  }
  for (const m of ['gpt-4', 'gpt-4-0613', 'gpt-4-turbo', 'gpt-4-32k', 'gpt-3.5-turbo', 'gpt-35-turbo', 'text-embedding-3-small', 'azure/gpt-4']) {
    assert.equal(encodingForModel(m), 'cl100k_base', m);
  }
  for (const m of ['deepseek-chat', 'deepseek-reasoner', 'llama-3.1-70b', '', undefined]) {
    assert.equal(encodingForModel(m), 'o200k_base', String(m));
  }
});

test('countText matches known tiktoken counts', () => {
  // Reference counts from OpenAI's tiktoken cookbook.
  const cases: [string, number, number][] = [
    ['hello world', 2, 2],
    ['tiktoken is great!', 6, 6],
    ['antidisestablishmentarianism', 6, 6],
    ['2 + 2 = 4', 7, 7],
    ['お誕生日おめでとう', 8, 9],
  ];
  for (const [text, o200k, cl100k] of cases) {
    assert.equal(countText(text, 'o200k_base'), o200k, `o200k ${text}`);
    assert.equal(countText(text, 'cl100k_base'), cl100k, `cl100k ${text}`);
  }
  assert.equal(countText('', 'o200k_base'), 0);
});

test('special-token text is counted as ordinary text, never thrown on', () => {
  for (const enc of ['o200k_base', 'cl100k_base'] as const) {
    for (const text of ['<|endoftext|>', 'a <|endoftext|> b', '<|im_start|>system<|im_sep|>', '<|fim_prefix|><|endofprompt|>']) {
      const n = countText(text, enc);
      // As ordinary text each marker is several tokens, not the single special token.
      assert.ok(n > 1, `${enc} ${text} → ${n}`);
    }
  }
});

const chatCases: { name: string; messages: unknown[] }[] = [
  { name: 'one user message', messages: [{ role: 'user', content: 'hello world' }] },
  {
    name: 'system, user, assistant',
    messages: [
      { role: 'system', content: 'You are a terse assistant. Answer in one sentence.' },
      { role: 'user', content: 'What is the capital of France? <|endoftext|>' },
      { role: 'assistant', content: 'Paris.' },
      { role: 'user', content: 'And of Japan — 日本の首都は？' },
    ],
  },
  {
    name: 'content parts with an image',
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Describe this' }, { type: 'image_url', image_url: { url: 'https://example.com/a.png' } }, { type: 'text', text: 'briefly.' }] }],
  },
  { name: 'null content and a name', messages: [{ role: 'assistant', content: null, name: 'bot' }, { role: 'user', content: '' }] },
  {
    name: 'tool call round trip',
    messages: [
      { role: 'user', content: 'weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c":21}' },
    ],
  },
];

test('countChatPrompt follows the OpenAI convention', () => {
  const enc = 'o200k_base';
  // 3 priming + per message (3 + role + content); 'user' is one token.
  assert.equal(countChatPrompt([{ role: 'user', content: 'hello world' }], enc), 3 + 3 + 1 + 2);
  const parts = countChatPrompt(chatCases[2]!.messages, enc);
  assert.equal(parts, 3 + 3 + 1 + countText('Describe this', enc) + TOKENS_PER_IMAGE + countText('briefly.', enc));
  // A name costs its text plus one.
  const named = countChatPrompt([{ role: 'user', name: 'alice', content: 'hi' }], enc);
  assert.equal(named, countChatPrompt([{ role: 'user', content: 'hi' }], enc) + countText('alice', enc) + 1);
});

test('countChatPrompt adds tools and functions as JSON text', () => {
  const enc = 'o200k_base';
  const messages = [{ role: 'user', content: 'weather?' }];
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const base = countChatPrompt(messages, enc);
  assert.equal(countChatPrompt(messages, enc, tools), base + countText(JSON.stringify(tools), enc));
  assert.equal(countChatPrompt(messages, enc, undefined, tools), base + countText(JSON.stringify(tools), enc));
});

test('countChatPrompt never undercounts the mock upstream', () => {
  for (const c of chatCases) {
    for (const model of ['gpt-4o', 'deepseek-chat', undefined]) {
      const ours = countChatPrompt(c.messages, encodingForModel(model));
      const mock = chatPromptTokens(c.messages);
      assert.ok(ours >= mock, `${c.name} (${model}): ours ${ours} < mock ${mock}`);
    }
  }
});

test('countCompletionPrompt handles strings, string arrays and token ids', () => {
  const enc = 'o200k_base';
  assert.equal(countCompletionPrompt('hello world', enc), 2);
  assert.equal(countCompletionPrompt(['hello world', 'tiktoken is great!'], enc), 8);
  assert.equal(countCompletionPrompt([1, 2, 3], enc), 3);
  assert.equal(countCompletionPrompt([[1, 2], [3, 4, 5]], enc), 5);
  assert.equal(countCompletionPrompt([], enc), 0);
  for (const p of ['hello <|endoftext|>', ['a', 'b c'], [10, 20], [[1], [2, 3]]]) {
    assert.ok(countCompletionPrompt(p, enc) >= completionPromptTokens(p), JSON.stringify(p));
  }
});

test('prompt counts are cached per encoding and equal the uncached counts', () => {
  clearPromptCountCache();
  const texts = ['You are a helpful assistant. Answer in English.', 'お誕生日おめでとう、今日は良い日ですね', 'x'.repeat(20), 'short'];
  for (const enc of ['o200k_base', 'cl100k_base'] as const) {
    for (const t of texts) {
      const direct = countText(t, enc);
      assert.equal(countPromptText(t, enc), direct);
      assert.equal(countPromptText(t, enc), direct, 'second (cached) count');
    }
  }
  // Cached separately per encoding: the Japanese text counts differently in each table.
  assert.notEqual(countPromptText(texts[1]!, 'o200k_base'), countPromptText(texts[1]!, 'cl100k_base'));
  clearPromptCountCache();
});

test('CountCache stays within its character budget and keeps what is used: a hit in the older half moves it up', () => {
  const c = new CountCache(100);
  c.set('a'.repeat(40), 1);
  c.set('b'.repeat(40), 2);
  assert.equal(c.get('a'.repeat(40)), 1); // a is now among the most recent
  c.set('c'.repeat(40), 3); // b, used least recently, goes
  assert.equal(c.size, 80);
  assert.equal(c.get('b'.repeat(40)), undefined);
  assert.equal(c.get('a'.repeat(40)), 1);
  assert.equal(c.get('c'.repeat(40)), 3);
  assert.equal(c.get('a'.repeat(40)), 1);
  c.set('d'.repeat(60), 4); // longer than half the budget: not kept
  assert.equal(c.get('d'.repeat(60)), undefined);
  assert.ok(c.size <= 100);
  // Whatever the sequence, the budget holds and every hit is the count that was set.
  let x = 7;
  for (let i = 0; i < 5_000; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const t = String(x % 97).padStart(1 + (x % 41), '.');
    if (x % 3 === 0) c.set(t, t.length);
    else { const n = c.get(t); assert.ok(n === undefined || n === t.length); }
    assert.ok(c.size <= 100, `size ${c.size}`);
  }
  c.clear();
  assert.equal(c.size, 0);
});

test('chat prompt: a json_schema response format, a prediction, audio and file parts, refusals and unknown parts count', () => {
  const enc = 'o200k_base' as const;
  const base = [{ role: 'user', content: 'hi' }];
  const plain = countChatPrompt(base, enc);
  const schema = { name: 's', schema: { type: 'object', properties: Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`field_${i}`, { type: 'string', description: `the value number ${i}` }])) } };
  const withSchema = countChatPrompt(base, enc, undefined, undefined, { type: 'json_schema', json_schema: schema });
  assert.ok(withSchema - plain >= countText(JSON.stringify(schema), enc) - 5, `schema counted: ${withSchema - plain}`);
  assert.equal(countChatPrompt(base, enc, undefined, undefined, { type: 'json_object' }), plain, 'no schema, nothing added');
  const predicted = 'the predicted output '.repeat(200);
  assert.ok(countChatPrompt(base, enc, undefined, undefined, undefined, { type: 'content', content: predicted }) - plain >= countText(predicted, enc));
  assert.ok(countChatPrompt(base, enc, undefined, undefined, undefined, { type: 'content', content: [{ type: 'text', text: predicted }] }) - plain >= countText(predicted, enc));
  const audio = [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'A'.repeat(40_000), format: 'wav' } }] }];
  assert.ok(countChatPrompt(audio, enc) >= 10_000, 'audio data, one token per 4 base64 characters');
  const file = [{ role: 'user', content: [{ type: 'file', file: { filename: 'a.pdf', file_data: 'B'.repeat(8_000) } }] }];
  assert.ok(countChatPrompt(file, enc) >= 2_000, 'inline file data');
  assert.ok(countChatPrompt([{ role: 'user', content: [{ type: 'file', file: { file_id: 'file-1' } }] }], enc) >= TOKENS_PER_IMAGE, 'a file by id');
  const refusal = 'I cannot help with that request. '.repeat(50);
  assert.ok(countChatPrompt([...base, { role: 'assistant', content: null, refusal }], enc) - plain >= countText(refusal, enc));
  const odd = [{ role: 'user', content: [{ type: 'future_part', payload: 'word '.repeat(500) }] }];
  assert.ok(countChatPrompt(odd, enc) >= 500, 'a part of an unknown type counts as its JSON');
});
