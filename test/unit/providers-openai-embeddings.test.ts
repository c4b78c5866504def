// The OpenAI embeddings surface: input validation (strings, token ids, at most 2048 inputs) with the `param`
// at fault, every input counted (token-id arrays by length), a prompt-only reservation, and usage read from
// small and very large answers (the top-level `usage` only).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { decodeEmbeddings, embeddingsPromptParts, embeddingsSurface, embeddingsUsage, MAX_EMBEDDING_INPUTS, streamEmbeddings } from '../../src/providers/openai/embeddings.ts';
import { prepareCall } from '../../src/providers/prepare.ts';
import { surfaceParser } from '../helpers/surface-parse.ts';
import type { ParseOptions, PreparedCall } from '../../src/providers/types.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';
import { isRejection } from '../../src/streaming/usage.ts';

const OPTS: ParseOptions = { surface: 'openai-embeddings', path: '/v1/embeddings', query: '', defaultMaxTokens: 256 };
const MAX_USAGE = 10_000_000;
const { ok, bad } = surfaceParser(embeddingsSurface, OPTS);

describe('embeddings: validation', () => {
  it('rejects bodies that are not a JSON object', () => {
    bad('{', undefined, 'SLC_BAD_JSON');
    bad('[]', undefined);
  });

  it('names the field at fault', () => {
    bad({ model: 1, input: 'x' }, 'model');
    bad({ model: 'text-embedding-3-small' }, 'input');
    bad({ input: null }, 'input');
    bad({ input: '' }, 'input');
    bad({ input: [] }, 'input');
    bad({ input: [''] }, 'input');
    bad({ input: ['a', 1] }, 'input');
    bad({ input: [[1, 2], 'a'] }, 'input');
    bad({ input: [[1, 2], []] }, 'input');
    bad({ input: [-1] }, 'input');
    bad({ input: [1.5] }, 'input');
    bad({ input: [[1, 'a']] }, 'input');
    bad({ input: { text: 'x' } }, 'input');
    bad({ input: 42 }, 'input');
    bad({ input: Array.from({ length: MAX_EMBEDDING_INPUTS + 1 }, () => 'a') }, 'input');
    bad({ input: 'x', encoding_format: 'int8' }, 'encoding_format');
    for (const d of [0, -3, 2.5, '8']) bad({ input: 'x', dimensions: d }, 'dimensions');
    bad({ input: 'x', user: 5 }, 'user');
  });

  it('accepts every documented input shape, at most 2048 inputs', () => {
    ok({ model: 'text-embedding-3-small', input: 'hello' });
    ok({ input: ['a', 'b'], encoding_format: 'base64', dimensions: 256, user: 'u1' });
    ok({ input: [1, 2, 3], encoding_format: 'float' });
    ok({ input: [[1, 2], [3]], dimensions: null, encoding_format: null });
    ok({ input: Array.from({ length: MAX_EMBEDDING_INPUTS }, () => 'a') });
  });

  it('reserves the prompt only: no completion, no stream, one call', () => {
    const p = ok({ model: 'text-embedding-3-small', input: 'hello', stream: true });
    assert.equal(p.surface, 'openai-embeddings');
    assert.equal(p.reserveCompletion, 0);
    assert.equal(p.maxTokens, undefined);
    assert.equal(p.stream, false);
    assert.equal(p.n, 1);
    assert.equal(p.enc, 'cl100k_base', 'OpenAI embedding models use cl100k_base');
    assert.equal(ok({ input: 'x' }, { countPrompt: false }).parts, undefined);
  });
});

describe('embeddings: counting', () => {
  const enc = 'cl100k_base';

  it('counts a string, and each string of an array, with no overhead', () => {
    const one = 'The quick brown fox jumps over the lazy dog.';
    assert.equal(countPromptParts(ok({ model: 'text-embedding-3-small', input: one }).parts!, enc), countText(one, enc));
    const many = ['first input', 'second, longer input with more words', '日本語のテキスト'];
    const expected = many.reduce((s, t) => s + countText(t, enc), 0);
    assert.equal(countPromptParts(ok({ model: 'text-embedding-ada-002', input: many }).parts!, enc), expected);
  });

  it('counts token-id inputs by their length', () => {
    assert.deepEqual(embeddingsPromptParts([5, 6, 7, 8]), { fixed: 4, texts: [] });
    assert.deepEqual(embeddingsPromptParts([[1, 2, 3], [4], [5, 6]]), { fixed: 6, texts: [] });
  });

  it('prepares through the registry: the prompt count is the whole reservation', () => {
    const r = prepareCall(Buffer.from(JSON.stringify({ model: 'text-embedding-3-small', input: ['alpha beta', 'gamma'] })), OPTS);
    assert.ok(r.ok);
    const p = r as PreparedCall;
    assert.equal(p.promptTokens, countText('alpha beta', enc) + countText('gamma', enc));
    assert.equal(p.reserveCompletion, 0);
    assert.equal(JSON.parse('{' + p.tail.toString()).model, undefined);
  });
});

describe('embeddings: usage', () => {
  it('is prompt only: completion 0, total as reported', () => {
    const u = embeddingsUsage({ prompt_tokens: 12, total_tokens: 12 }, MAX_USAGE);
    assert.deepEqual({ ...u }, { prompt_tokens: 12, completion_tokens: 0, total_tokens: 12, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 });
    const totalOnly = embeddingsUsage({ total_tokens: 9 }, MAX_USAGE);
    assert.ok(totalOnly !== undefined && !isRejection(totalOnly));
    assert.equal(totalOnly.prompt_tokens, 9, 'a total alone is the prompt');
    assert.deepEqual(embeddingsUsage({ prompt_tokens: -1, total_tokens: 1 }, MAX_USAGE), { rejected: 'negative' });
    assert.deepEqual(embeddingsUsage({ prompt_tokens: 10, total_tokens: 3 }, MAX_USAGE), { rejected: 'inconsistent' });
    assert.deepEqual(embeddingsUsage('x', MAX_USAGE), { rejected: 'malformed' });
    assert.equal(embeddingsUsage(undefined, MAX_USAGE), undefined);
    assert.equal(embeddingsUsage({}, MAX_USAGE), undefined);
  });

  it('decodes a small answer: usage, no text, bytes unchanged', () => {
    const body = Buffer.from(JSON.stringify({ object: 'list', data: [{ object: 'embedding', index: 0, embedding: [0.1, -0.2] }], model: 'm', usage: { prompt_tokens: 5, total_tokens: 5 } }));
    const d = decodeEmbeddings(undefined, body, MAX_USAGE);
    assert.equal(d.body, body);
    assert.equal(d.usage?.prompt_tokens, 5);
    assert.equal(d.usage?.completion_tokens, 0);
    assert.equal(d.text, '');
    const none = decodeEmbeddings(undefined, Buffer.from('{"object":"list","data":[]}'), MAX_USAGE);
    assert.equal(none.usage, undefined);
    assert.equal(none.text, '', 'no generated text: the prompt count is the charge');
    assert.equal(none.unusable, undefined);
    for (const junk of ['<html>', '', '[[0.1,0.2]]']) assert.equal(decodeEmbeddings(undefined, Buffer.from(junk), MAX_USAGE).unusable, 'the upstream answer is not a JSON object', junk);
    assert.match(decodeEmbeddings(undefined, Buffer.from('{"error":{"message":"bad"}}'), MAX_USAGE).unusable ?? '', /2xx with an error: bad/);
    // Too large to parse whole: a body that does not start an object is refused by its first byte.
    assert.equal(decodeEmbeddings(undefined, Buffer.from(' <html>' + 'x'.repeat(1_100_000)), MAX_USAGE).unusable, 'the upstream answer is not a JSON object');
  });

  it('scans a large answer for its top-level usage, wherever it sits, ignoring nested ones', () => {
    const data = Array.from({ length: 300 }, (_, i) => ({ object: 'embedding', index: i, embedding: Array.from({ length: 256 }, (_, j) => Math.sin(i + j)), usage: { prompt_tokens: 999999, total_tokens: 999999 } }));
    const last = Buffer.from(JSON.stringify({ object: 'list', data, model: 'm', usage: { prompt_tokens: 4242, total_tokens: 4242 } }));
    assert.ok(last.length > 1_000_000);
    assert.equal(decodeEmbeddings(undefined, last, MAX_USAGE).usage?.prompt_tokens, 4242);
    const first = Buffer.from(JSON.stringify({ usage: { prompt_tokens: 77, total_tokens: 77 }, object: 'list', data, model: 'm' }));
    assert.equal(decodeEmbeddings(undefined, first, MAX_USAGE).usage?.prompt_tokens, 77);
    const missing = Buffer.from(JSON.stringify({ object: 'list', data, model: 'm' }));
    assert.equal(decodeEmbeddings(undefined, missing, MAX_USAGE).usage, undefined);
    // Too large to parse whole, and still checked as a parsed one is: cut short, an error padded out, no data.
    const truncated = last.subarray(0, last.length - 20);
    assert.equal(decodeEmbeddings(undefined, truncated, MAX_USAGE).unusable, 'the upstream answer is not a JSON object');
    const pad = 'x'.repeat(100_000);
    assert.match(decodeEmbeddings(undefined, Buffer.from(JSON.stringify({ error: { message: 'boom' }, pad })), MAX_USAGE).unusable ?? '', /2xx with an error: boom/);
    assert.equal(decodeEmbeddings(undefined, Buffer.from(JSON.stringify({ object: 'list', pad, usage: { prompt_tokens: 1, total_tokens: 1 } })), MAX_USAGE).unusable,
      'the upstream answer has no data array');
  });

  it('an event stream from an upstream that should not send one passes through, charged its prompt', () => {
    const codec = streamEmbeddings(undefined, { maxUsage: MAX_USAGE });
    const chunk = Buffer.from('data: {}\n\n');
    assert.equal(codec.push(chunk), chunk);
    assert.equal(codec.end(), undefined);
    assert.equal(codec.usage, undefined);
    assert.equal(codec.text, '');
  });
});
