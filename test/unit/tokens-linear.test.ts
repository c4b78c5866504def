// The near-linear counter (src/tokens/text-count.ts, src/tokens/bpe.ts) against gpt-tokenizer's own
// countTokens: equal on ordinary and adversarial texts, resumable at any point with the same result, and
// after a budget cut an upper bound of the exact count whose over-count is bounded by the UTF-8 bytes left.
// Linearity is checked by counting work (rank lookups), never by timing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getEncoder, getRankTable, type TokenEncoding } from '../../src/tokens/encoding.ts';
import { countTextExact, CountJob, utf8Length } from '../../src/tokens/text-count.ts';
import { PieceMerge, type ByteRanks } from '../../src/tokens/bpe.ts';
import { countText } from '../../src/tokens/count.ts';

const ORDINARY = { disallowedSpecial: new Set<string>() };
const ENCS: readonly TokenEncoding[] = ['o200k_base', 'cl100k_base'];

/** Deterministic pseudo-random bytes (no Math.random: failures must reproduce). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function randomBase64(n: number, seed: number): string {
  const r = prng(seed);
  return Buffer.from(Array.from({ length: Math.ceil((n * 3) / 4) }, () => Math.floor(r() * 256))).toString('base64').slice(0, n);
}

function randomLetters(n: number, seed: number): string {
  const r = prng(seed);
  return Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(r() * 26))).join('');
}

const ORDINARY_TEXT = `Sluice meters tokens, not requests. It proxies OpenAI-compatible chat completions to one or more
upstream instances, reads each response's token usage, and charges it to quotas keyed by consumer, API key or IP.
    def f(x):\n        return x ** 2  # indented code, tabs\t\tand CRLF\r\n
Numbers 3.14159, 2026-11-29, +1 (555) 010-9999; emails a.b@example.com; URLs https://example.com/a?b=c#d.
`;

/** Texts the reference can still count in reasonable time (it is quadratic in the longest piece). */
const ADVERSARIAL: Record<string, string> = {
  'one letter run': 'a'.repeat(6000),
  'uppercase run': 'A'.repeat(4000),
  'two-letter cycle': 'ab'.repeat(3000),
  'random letters': randomLetters(5000, 1),
  'digit string': '1234567890'.repeat(800),
  'base64': randomBase64(8000, 2),
  'emoji run': '😀'.repeat(1500),
  'mixed emoji': '👍🏽🎉😀🇫🇷👨‍👩‍👧'.repeat(200),
  'combining marks': 'e' + '\u0301'.repeat(3000),
  'zalgo': 'Z\u0351\u0352\u0357\u035b\u0363a\u0364\u0365l\u0366g\u0367o'.repeat(300),
  'mixed scripts': 'Hello мир 世界 مرحبا שלום नमस्ते 🎉 '.repeat(150),
  'cjk run': '日本語の文章'.repeat(600),
  'whitespace run': ' '.repeat(5000) + 'x',
  'tabs and spaces': ' \t'.repeat(2500) + 'x',
  'newlines': '\n'.repeat(4000) + 'x\r\n\r\n'.repeat(300),
  'special-token text': '<|endoftext|><|im_start|>system<|im_sep|><|fim_prefix|>'.repeat(100),
  'punctuation run': '!?'.repeat(3000),
  'lone surrogates': '\ud800a\udc00'.repeat(1000),
  // The library's byte lookup drops a leading BOM (EF BB BF): long pieces with BOMs inside merge by its rule.
  'BOM run': '\ufeff'.repeat(2000),
  'BOMs in punctuation': '!\ufeff#(\ufeff\ufeff//)'.repeat(300),
  'BOM before words': '\ufeffusing \ufeffnamespace\ufeff\n\n'.repeat(200),
  'long whole tokens': ('='.repeat(64) + ' ' + '-'.repeat(80) + '\n').repeat(50),
  'ordinary': ORDINARY_TEXT.repeat(10),
};

test('countTextExact equals gpt-tokenizer countTokens on ordinary and adversarial texts, both encodings', () => {
  for (const enc of ENCS) {
    for (const [name, text] of Object.entries(ADVERSARIAL)) {
      const ref = getEncoder(enc).countTokens(text, ORDINARY);
      assert.equal(countTextExact(text, enc), ref, `${enc} ${name}`);
      assert.equal(countText(text, enc), ref, `${enc} ${name} via countText`);
    }
    assert.equal(countTextExact('', enc), 0);
  }
});

test('equal on many short random mixtures (pieces around the short/long threshold)', () => {
  const alphabet = ['a', 'b', 'A', ' ', '\n', '1', '😀', 'é', '\u0301', '日', '!', "'s", '<|endoftext|>', '\t'];
  const r = prng(7);
  for (let i = 0; i < 300; i++) {
    let t = '';
    const parts = 1 + Math.floor(r() * 6);
    for (let p = 0; p < parts; p++) t += alphabet[Math.floor(r() * alphabet.length)]!.repeat(1 + Math.floor(r() * 120));
    for (const enc of ENCS) assert.equal(countTextExact(t, enc), getEncoder(enc).countTokens(t, ORDINARY), `${enc} ${JSON.stringify(t.slice(0, 40))}`);
  }
});

test('PieceMerge does linear work: rank lookups ≤ 3 per byte, on runs far past what the reference can count', () => {
  const table = getRankTable('o200k_base');
  for (const text of ['a'.repeat(200_000), '😀'.repeat(50_000), ' '.repeat(200_000), randomLetters(200_000, 3)]) {
    const bytes = new TextEncoder().encode(text);
    let lookups = 0;
    const counting: ByteRanks = { rankOfBytes: (b, s, e) => { lookups++; return table.rankOfBytes(b, s, e); } };
    const m = new PieceMerge(bytes, counting);
    m.run();
    assert.ok(m.tokens > 0 && m.tokens <= bytes.length);
    // n − 1 initial pairs, then at most two new pairs per merge (and at most n − 1 merges).
    assert.ok(lookups <= 3 * bytes.length, `${lookups} lookups for ${bytes.length} bytes`);
  }
});

test('a 160k-letter run, far past what the reference can count, is 20000 tokens of eight letters', () => {
  // 'a'×8k is 1000 tokens of 'aaaaaaaa' in o200k; 160k letters must be 20000 — the same rule, far past the reference.
  assert.equal(countTextExact('a'.repeat(8000), 'o200k_base'), getEncoder('o200k_base').countTokens('a'.repeat(8000), ORDINARY));
  assert.equal(countTextExact('a'.repeat(160_000), 'o200k_base'), 20_000);
});

test('CountJob resumed in many tiny slices gives the exact count', () => {
  for (const [name, text] of Object.entries(ADVERSARIAL)) {
    const job = new CountJob([text, 'tail text', ''], 'o200k_base');
    let rounds = 0;
    // A deadline already past: every run() call does a minimum of work and returns.
    while (!job.run(0)) rounds++;
    assert.ok(job.exact);
    assert.equal(job.total, countTextExact(text, 'o200k_base') + countTextExact('tail text', 'o200k_base'), name);
    assert.ok(rounds >= 0);
  }
});

test('a budget cut gives an upper bound, over by at most the UTF-8 bytes not yet counted', (t) => {
  let worst = 1;
  for (const [name, text] of Object.entries(ADVERSARIAL)) {
    for (const enc of ENCS) {
      const exact = countTextExact(text, enc) + countTextExact(ORDINARY_TEXT, enc);
      for (const cutAfter of [0, 1, 2, 5, 20]) {
        const job = new CountJob([text, ORDINARY_TEXT], enc);
        let rounds = 0;
        while (rounds < cutAfter && !job.run(0)) rounds++;
        job.finishWithBound();
        assert.ok(job.done);
        assert.ok(job.total >= exact, `${enc} ${name} cut ${cutAfter}: bound ${job.total} < exact ${exact}`);
        assert.ok(job.total <= utf8Length(text) + utf8Length(ORDINARY_TEXT), `${enc} ${name}: bound above the byte length`);
        worst = Math.max(worst, job.total / exact);
      }
    }
  }
  // At worst the bound is the byte length, so the ratio is at most the bytes of the longest token (whitespace
  // runs: ~35× here). It applies only past tokens.count_budget_ms of counting.
  t.diagnostic(`worst bound/exact ratio after a cut: ${worst.toFixed(2)}`);
  assert.ok(worst <= 128, `worst over-count ${worst}`);
});

test('the prompt cache only ever stores exact counts', () => {
  const cache = new Map<string, number>();
  const text = 'x'.repeat(50_000);
  const cut = new CountJob([text], 'o200k_base', { cache });
  cut.run(0);
  cut.finishWithBound();
  assert.equal(cache.size, 0);
  const full = new CountJob([text], 'o200k_base', { cache });
  full.run();
  assert.equal(cache.get(text), countTextExact(text, 'o200k_base'));
  // A hit is used without counting.
  const again = new CountJob([text], 'o200k_base', { cache });
  assert.equal(again.run(0), true);
  assert.equal(again.total, cache.get(text));
});

test('utf8Length matches Buffer.byteLength, lone surrogates as U+FFFD', () => {
  for (const t of Object.values(ADVERSARIAL)) assert.equal(utf8Length(t), Buffer.byteLength(t, 'utf8'));
  assert.equal(utf8Length('a😀b', 1, 3), 4);
});
