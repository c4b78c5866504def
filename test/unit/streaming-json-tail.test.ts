// streaming/json-tail.ts: the root's member read from the end of a JSON document. Whenever it answers, the answer
// equals JSON.parse(document)[key]; when the member is nested, missing, not an object, or its tail is odd, it
// answers TAIL_UNKNOWN so the caller parses the whole document.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rootMemberFromTail, TAIL_UNKNOWN } from '../../src/streaming/json-tail.ts';

const KEY = Buffer.from('"usage"');
const read = (doc: string): unknown => rootMemberFromTail(Buffer.from(doc), KEY);

test('usage last, or followed by other members, is read from the tail', () => {
  assert.deepEqual(read('{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'),
    { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
  assert.deepEqual(read('{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default","system_fingerprint":"fp_1"}'),
    { prompt_tokens: 1, prompt_tokens_details: { cached_tokens: 0 } });
  assert.deepEqual(read('{ "usage" :\n {"a": "}{\\"]"} ,\n "x": [1, {"y": null}] }\n'), { a: '}{"]' });
  assert.equal(read('{"choices":[],"usage":null}'), null);
});

test('a usage that is not the root\'s, or not an object, is left to a whole parse', () => {
  for (const doc of [
    '{"usage":{"prompt_tokens":1},"extra":{"usage":{"prompt_tokens":999}}}',
    '{"a":{"usage":{"prompt_tokens":999}}}',
    '{"a":{"usage":{"prompt_tokens":999}},"b":1}',
    '[{"usage":{"prompt_tokens":999}}]',
    '{"usage":{"prompt_tokens":1},"note":"usage"}',
    '{"usage":5}',
    '{"usage":"x"}',
    '{"usage":[1]}',
    '{"choices":[{"message":{"content":"say \\"usage\\":{\\"prompt_tokens\\":0}"}}]}',
    '{"id":"x"}',
    '"usage"',
    '{"usage":{"prompt_tokens":1}} trailing',
    '{"usage":{"prompt_tokens":1},}',
    '{"usage":{"prompt_tokens":1},"x":1}}',
    '{"usage":{"prompt_tokens":1}',
    `{"usage":{"pad":"${'x'.repeat(5000)}"}}`,
    `{"usage":{"prompt_tokens":1},"pad":"${'x'.repeat(5000)}"}`,
  ]) assert.equal(read(doc), TAIL_UNKNOWN, doc.slice(0, 80));
});

test('on random documents every answer equals JSON.parse(...).usage', () => {
  let seed = 7;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const strs = ['usage', '"usage":', '}', '{', 'a\\"b', ',', ']', 'x'];
  const value = (depth: number): unknown => {
    const k = rnd(depth > 2 ? 3 : 6);
    if (k === 0) return rnd(100);
    if (k === 1) return strs[rnd(strs.length)];
    if (k === 2) return null;
    if (k === 3) return Array.from({ length: rnd(3) }, () => value(depth + 1));
    return object(depth + 1);
  };
  const object = (depth: number): Record<string, unknown> => {
    const o: Record<string, unknown> = {};
    for (let i = rnd(4); i > 0; i--) o[rnd(3) === 0 ? 'usage' : `k${rnd(5)}`] = value(depth);
    return o;
  };
  let answered = 0;
  for (let t = 0; t < 3000; t++) {
    const root = object(0);
    if (rnd(2) === 0) { delete root.usage; root.usage = object(1); }
    const doc = JSON.stringify(root, null, rnd(3) === 0 ? 1 : undefined);
    const got = read(doc);
    if (got === TAIL_UNKNOWN) continue;
    answered++;
    assert.deepEqual(got, (JSON.parse(doc) as Record<string, unknown>).usage, doc);
  }
  assert.ok(answered > 500, `answered ${answered} of 3000`);
});
