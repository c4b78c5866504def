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
  assert.equal(compileCostExpr('total_tokens / 0')(u), 0, 'division by zero is 0, never Infinity');
  assert.equal(compileCostExpr('1.000001')(u), 2);
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
  assert.throws(() => compileCostExpr('cached_tokens * 2'), /unknown identifier "cached_tokens" at position 0/);
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
    'this',
    'total_tokens.toString',
    'globalThis',
  ]) {
    assert.throws(() => compileCostExpr(src), /cost_expr/, src);
  }
});
