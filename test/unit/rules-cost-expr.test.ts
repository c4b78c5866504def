import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCostExpr } from '../../src/rules/cost-expr.ts';

const u = { prompt_tokens: 23, completion_tokens: 8, total_tokens: 31 };

test('identifiers and the issue example', () => {
  assert.equal(compileCostExpr('total_tokens')(u), 31);
  assert.equal(compileCostExpr('prompt_tokens + 4 * completion_tokens')(u), 55);
  assert.equal(compileCostExpr('input_tokens + output_tokens')(u), 31, 'aliases');
});

test('precedence, associativity, unary minus, parentheses', () => {
  assert.equal(compileCostExpr('2 + 3 * 4')(u), 14);
  assert.equal(compileCostExpr('(2 + 3) * 4')(u), 20);
  assert.equal(compileCostExpr('100 - 10 - 5')(u), 85);
  assert.equal(compileCostExpr('100 / 10 / 5')(u), 2);
  assert.equal(compileCostExpr('-prompt_tokens + 100')(u), 77);
  assert.equal(compileCostExpr('- -5')(u), 5);
  assert.equal(compileCostExpr('+5')(u), 5);
  assert.equal(compileCostExpr('prompt_tokens*-1+50')(u), 27);
});

test('decimals, rounding up and clamping', () => {
  assert.equal(compileCostExpr('prompt_tokens * 0.5')(u), 12, '11.5 rounds up');
  assert.equal(compileCostExpr('.25 * 4')(u), 1);
  assert.equal(compileCostExpr('completion_tokens - 100')(u), 0, 'negatives clamp to 0');
  assert.equal(compileCostExpr('total_tokens / (completion_tokens - completion_tokens)')({ ...u, raw: {} }), 0, 'division by zero is 0, never Infinity');
  assert.equal(compileCostExpr('1.000001')(u), 2);
});

test('expressions that can never charge fail to compile, with the reason', () => {
  for (const [src, reason] of [
    ['prompt_tokens / 0', 'divides by the constant 0'],
    ['prompt_tokens / (2 - 2) + completion_tokens', 'divides by the constant 0'],
    ['max(1, total_tokens / 0.0)', 'divides by the constant 0'],
    ['0', 'is the constant 0'],
    ['1 - 1', 'is the constant 0'],
    ['-5', 'is the constant -5'],
    ['0 - prompt_tokens', 'is 0 or less for every usage'],
    ['-completion_tokens - cached_prompt_tokens', 'is 0 or less for every usage'],
    ['min(0, total_tokens)', 'is 0 or less for every usage'],
    ['prompt_tokens - total_tokens - 1', 'is 0 or less for every usage'],
  ] as const) {
    const tail = reason.startsWith('divides') ? ' (a quotient by 0 counts as 0)' : ', so every charge would be 0';
    assert.throws(() => compileCostExpr(src), (err: Error) => err.message === `cost_expr "${src}": ${reason}${tail}`, src);
  }
  // Expressions that are 0 for some usages but not for all still compile (a raw cached_tokens may reach the total).
  assert.equal(compileCostExpr('cached_tokens - total_tokens - 1')({ ...u, raw: { cached_tokens: 40 } }), 40 - 31 - 1);
  assert.equal(compileCostExpr('completion_tokens - 100')(u), 0);
  assert.equal(compileCostExpr('max(0, prompt_tokens - 1000000)')(u), 0);
  assert.equal(compileCostExpr('1000 - total_tokens')({ ...u, raw: {} }), 1000 - 31, 'positive for small usages only');
  assert.equal(compileCostExpr('1')(u), 1, 'a constant charges per request');
});

test('functions', () => {
  assert.equal(compileCostExpr('max(prompt_tokens, completion_tokens)')(u), 23);
  assert.equal(compileCostExpr('min(prompt_tokens, completion_tokens) * 2')(u), 16);
  assert.equal(compileCostExpr('ceil(completion_tokens / 3)')(u), 3);
  assert.equal(compileCostExpr('floor(completion_tokens / 3) + max(1, min(2, 3))')(u), 4);
  assert.equal(compileCostExpr('ceil( 2.1 )')(u), 3, 'constant call folds');
});

test('results follow the usage passed in (closure tree, not a constant)', () => {
  const f = compileCostExpr('prompt_tokens + 2 * completion_tokens');
  assert.equal(f({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }), 3);
  assert.equal(f({ prompt_tokens: 10, completion_tokens: 100, total_tokens: 110 }), 210);
});

test('syntax errors name the position', () => {
  assert.throws(() => compileCostExpr(''), /empty expression/);
  assert.throws(() => compileCostExpr('prompt_tokens +'), /unexpected end of expression at position 15/);
  assert.throws(() => compileCostExpr('(1 + 2'), /expected "\)" at position 6/);
  assert.throws(() => compileCostExpr('1 + 2)'), /unexpected "\)" at position 5/);
  assert.throws(() => compileCostExpr('max * 2'), /function "max" needs arguments at position 0/);
  assert.throws(() => compileCostExpr('1 + pow(2, 3)'), /unknown function "pow" at position 4/);
  assert.throws(() => compileCostExpr('max(1)'), /max\(\) takes 2 argument\(s\), got 1/);
  assert.throws(() => compileCostExpr('ceil(1, 2)'), /ceil\(\) takes 1/);
  assert.throws(() => compileCostExpr('1..2'), /malformed number/);
  assert.throws(() => compileCostExpr('2x'), /malformed number/);
  assert.throws(() => compileCostExpr('1 % 2'), /unexpected "%"/);
});

test('JavaScript never runs: code-looking input is rejected by the grammar', () => {
  for (const src of [
    'process.exit(1)',
    'constructor.constructor("return process")()',
    'total_tokens; process.exit(1)',
    '`${total_tokens}`',
    'total_tokens.toString',
    '__proto__.x',
  ]) {
    assert.throws(() => compileCostExpr(src), /cost_expr/, src);
  }
  // A bare name is a usage field: never a JavaScript binding, and only an own property of the usage counts.
  for (const src of ['this', 'globalThis', 'constructor', '__proto__', 'toString']) {
    assert.equal(compileCostExpr(src)({ ...u, raw: {} }), 0, src);
  }
});

// ---- APISIX: a cost expression may name any numeric field of the upstream's usage ----

test('APISIX cost_expr over an Anthropic usage: input + cache creation + output', () => {
  const f = compileCostExpr('input_tokens + cache_creation_input_tokens + output_tokens');
  const raw = { input_tokens: 12, cache_creation_input_tokens: 1000, cache_read_input_tokens: 0, output_tokens: 40 };
  assert.equal(f({ prompt_tokens: 12, completion_tokens: 40, total_tokens: 52, raw }), 1052);
});

test('APISIX cost_expr: a nested OpenAI field (prompt_tokens_details.cached_tokens) resolves', () => {
  const f = compileCostExpr('prompt_tokens - cached_tokens * 0.9 + completion_tokens');
  const raw = { prompt_tokens: 1000, completion_tokens: 10, total_tokens: 1010, prompt_tokens_details: { cached_tokens: 800 } };
  assert.equal(f({ prompt_tokens: 1000, completion_tokens: 10, total_tokens: 1010, raw }), 290);
});

test('APISIX cost_expr: a top-level field wins over a nested one of the same name', () => {
  const f = compileCostExpr('cached_tokens');
  const raw = { prompt_tokens: 5, cached_tokens: 3, prompt_tokens_details: { cached_tokens: 100 } };
  assert.equal(f({ prompt_tokens: 5, completion_tokens: 0, total_tokens: 5, raw }), 3);
});

test('APISIX cost_expr: a name the usage does not carry counts 0; a negative cost counts 0', () => {
  const raw = { prompt_tokens: 5, completion_tokens: 2 };
  const usage = { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7, raw };
  assert.equal(compileCostExpr('total_tokens + reasoning_tokens')(usage), 7);
  assert.equal(compileCostExpr('prompt_tokens - 100 * completion_tokens')(usage), 0);
  // Non-finite or negative fields from an upstream are not counts.
  assert.equal(compileCostExpr('a + b + 1')({ ...usage, raw: { a: -5, b: 'x' } }), 1);
});

test('without the raw usage (the reservation) the cost is an upper bound of every settled cost', () => {
  const estimate = { prompt_tokens: 100, completion_tokens: 50, total_tokens: 150 };
  const cases: [string, Record<string, unknown>][] = [
    ['input_tokens + cache_creation_input_tokens + output_tokens', { input_tokens: 20, cache_creation_input_tokens: 80, output_tokens: 50 }],
    ['prompt_tokens - cached_tokens * 0.9 + completion_tokens', { prompt_tokens: 100, completion_tokens: 50, prompt_tokens_details: { cached_tokens: 0 } }],
    ['max(reasoning_tokens, 10) * 2 + total_tokens / max(1, cached_tokens)', { total_tokens: 150, reasoning_tokens: 50, cached_tokens: 1 }],
    ['ceil(cache_read_input_tokens / 10) - floor(output_tokens / 3)', { cache_read_input_tokens: 150, output_tokens: 0 }],
  ];
  for (const [src, raw] of cases) {
    const f = compileCostExpr(src);
    const bound = f(estimate);
    const settled = f({ prompt_tokens: 100, completion_tokens: 50, total_tokens: 150, raw });
    assert.ok(bound >= settled, `${src}: bound ${bound} < settled ${settled}`);
  }
  assert.equal(compileCostExpr('prompt_tokens + 4 * completion_tokens')(estimate), 300, 'the normalised names keep their point values');
});
