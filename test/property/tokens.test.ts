// Token counts (src/tokens/text-count.ts over the compact rank table) equal gpt-tokenizer's countTokens, the
// reference, on random text: a weighted mix of the characters that split and merge differently (letters of
// several scripts and cases, digits, whitespace runs, CR/LF, punctuation, contractions, emoji and ZWJ
// sequences, combining marks, BOMs, lone surrogates, special-token text), and any UTF-16 code unit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { countText } from '../../src/tokens/count.ts';
import { getEncoder, warmTokenizers, type TokenEncoding } from '../../src/tokens/encoding.ts';
import { check } from './fc-setup.ts';

const ENCS: readonly TokenEncoding[] = ['o200k_base', 'cl100k_base'];
warmTokenizers(ENCS);
for (const enc of ENCS) getEncoder(enc);
const ORDINARY = { disallowedSpecial: new Set<string>() };

const PIECES = [
  'a', 'e', 'z', 'A', 'Q', 'the', ' the', 'The', 'HTTP', 'ing', "'s", "'LL", "'re", 'é', 'ß', 'Ω', 'я', 'Я', '日', '本',
  'の', 'ا', 'ש', 'न', '्', '0', '7', '42', '1234', ' ', '  ', '\t', '\n', '\r\n', '\r', '\u00a0', '\u3000', '.', ',',
  '!', '?', '/', '//', '=', '==', '{', '}', '(', ')', '-', '_', '*', '#', '@', '$', '"', '`', '😀', '👍🏽', '👨‍👩‍👧',
  '🇫🇷', '\u0301', '\u200d', '\ufeff', '\ud800', '\udc00', '<|endoftext|>', '<|im_start|>', 'namespace', 'using',
];

const text = fc.array(
  fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom(...PIECES) },
    { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...PIECES), fc.integer({ min: 2, max: 80 })).map(([p, n]) => p.repeat(n)) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) },
  ),
  { maxLength: 40 },
).map((parts) => parts.join(''));

test('countText equals gpt-tokenizer countTokens on random text, both encodings', () => {
  check(fc.property(text, fc.constantFrom(...ENCS), (t, enc) => {
    assert.equal(countText(t, enc), getEncoder(enc).countTokens(t, ORDINARY), `${enc} ${JSON.stringify(t)}`);
  }), 1000, [['\ufeff\ufeffusing', 'o200k_base'], ['!\ufeff#'.repeat(30), 'cl100k_base'], ['\ud800'.repeat(50), 'o200k_base']]);
});
