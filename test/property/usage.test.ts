// Properties of upstream usage parsing (src/streaming/usage.ts: parseUsage for SSE usage chunks through
// StreamMeter, extractUsage for non-streaming bodies in pipeline/gateway.ts relayBuffered). Whatever an
// upstream sends, a count that reaches a quota counter is a non-negative safe integer, or the usage is
// refused (and the gateway counts the tokens itself); no count exceeds the tokens.max_usage ceiling, the total is
// never below prompt + completion, and honest usage is kept as sent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DEFAULT_MAX_USAGE, extractUsage, isRejection, parseUsage, readUsage, type Usage } from '../../src/streaming/usage.ts';
import { StreamMeter } from '../../src/streaming/usage-meter.ts';
import { countText } from '../../src/tokens/count.ts';
import { warmTokenizers, type TokenEncoding } from '../../src/tokens/encoding.ts';
import { check, describeThrown } from './fc-setup.ts';

// Loading the BPE tables takes a noticeable time: outside the properties' time budgets.
warmTokenizers(['o200k_base', 'cl100k_base']);

const FIELDS = ['prompt_tokens', 'completion_tokens', 'total_tokens'] as const;

/**
 * The invariant for anything handed to QuotaHold.settle: absent, or three non-negative safe integers within
 * the ceiling, with a total that covers prompt + completion (an upstream cannot undercharge through it).
 */
function assertCountable(u: Usage | undefined, what: string, max = DEFAULT_MAX_USAGE): void {
  if (u === undefined) return;
  for (const f of FIELDS) {
    const v = u[f];
    assert.ok(typeof v === 'number' && Number.isSafeInteger(v) && v >= 0, `${what}: ${f} = ${String(v)} is not a non-negative safe integer`);
    assert.ok(v <= max, `${what}: ${f} = ${v} is above the ceiling ${max}`);
  }
  assert.ok(u.prompt_tokens + u.completion_tokens <= max, `${what}: prompt + completion above the ceiling ${max}`);
  assert.ok(u.total_tokens >= u.prompt_tokens + u.completion_tokens, `${what}: total ${u.total_tokens} below prompt + completion`);
}

const REASONS: readonly string[] = ['malformed', 'not_a_number', 'negative', 'fractional', 'too_large', 'inconsistent'];

function call<T>(fn: () => T, what: string): T {
  try {
    return fn();
  } catch (err) {
    assert.fail(`${what} threw: ${describeThrown(err)}`);
  }
}

/** Numbers and near-numbers an upstream (or a proxy in front of it) might put in a count. */
const hostileCount = fc.oneof(
  fc.nat({ max: 1_000_000 }),
  fc.integer({ min: -1_000_000_000, max: -1 }),
  fc.double(),
  fc.constantFrom(1e300, -1e300, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e15, Number.MAX_SAFE_INTEGER, Number.MAX_VALUE, Number.MIN_VALUE, -0, 0.5, 0.999, NaN, Infinity, -Infinity),
  fc.constantFrom('NaN', '12', '', 'Infinity', '1e300', '-5', '0x10', ' 7 '),
  fc.constantFrom(null, undefined, true, false, [], [3], {}, { value: 3 }),
  fc.jsonValue({ maxDepth: 2 }),
);

const details = fc.record({
  cached_tokens: hostileCount,
  reasoning_tokens: hostileCount,
  audio_tokens: hostileCount,
}, { requiredKeys: [] });

const usageObject = fc.record({
  prompt_tokens: hostileCount,
  completion_tokens: hostileCount,
  total_tokens: hostileCount,
  prompt_tokens_details: fc.oneof(details, hostileCount),
  completion_tokens_details: fc.oneof(details, hostileCount),
  input_tokens: hostileCount,
  output_tokens: hostileCount,
}, { requiredKeys: [] });

/** Mostly honest usage with one hostile field, so that field alone decides. */
const oneHostileField = fc.tuple(fc.constantFrom(...FIELDS), hostileCount, fc.nat({ max: 1000 }), fc.nat({ max: 1000 }))
  .map(([f, v, p, c]) => ({ prompt_tokens: p, completion_tokens: c, total_tokens: p + c, [f]: v }));

test('usage: parseUsage of any value never throws and yields only countable usage', () => {
  check(fc.property(fc.oneof(usageObject, oneHostileField, fc.anything(), fc.jsonValue()), (u) => {
    assertCountable(call(() => parseUsage(u), 'parseUsage'), `parseUsage(${fc.stringify(u)})`);
  }), 600);
});

test('usage: under any tokens.max_usage, readUsage gives countable usage within it, a known rejection, or nothing', () => {
  const ceiling = fc.oneof(fc.integer({ min: 1, max: 100_000 }), fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }));
  check(fc.property(fc.oneof(usageObject, oneHostileField), ceiling, fc.boolean(), (u, max, stream) => {
    const r = call(() => readUsage(u, max), 'readUsage');
    if (isRejection(r)) assert.ok(REASONS.includes(r.rejected), `unknown rejection ${r.rejected}`);
    else assertCountable(r, `readUsage(${fc.stringify(u)}, ${max})`, max);
    if (stream) {
      const m = new StreamMeter({ stripUsage: true, maxUsage: max });
      call(() => { m.push(Buffer.from(`data: ${JSON.stringify({ choices: [], usage: u })}\n\n`)); m.end(); }, 'StreamMeter');
      assertCountable(m.usage, `stream usage ${fc.stringify(u)}`, max);
    }
  }), 500);
});

test('usage: a non-streaming body with any usage (as JSON carries it) gives countable usage or none', () => {
  const body = fc.oneof(
    fc.record({ id: fc.string(), choices: fc.jsonValue({ maxDepth: 2 }), usage: fc.oneof(usageObject, oneHostileField, fc.jsonValue({ maxDepth: 3 })) }, { requiredKeys: ['usage'] }),
    fc.jsonValue({ maxDepth: 3 }),
  );
  check(fc.property(body, (b) => {
    // The gateway JSON.parses the upstream bytes: no NaN, Infinity or undefined survive, 1e300 does.
    const text = JSON.stringify(b) ?? 'null';
    const u = call(() => extractUsage(JSON.parse(text)), 'extractUsage');
    assertCountable(u, `extractUsage(${text})`);
  }), 500);
});

test('usage: honest usage is kept as sent; a missing total is the sum', () => {
  const honest = fc.nat({ max: DEFAULT_MAX_USAGE / 2 });
  check(fc.property(honest, honest, fc.constantFrom('sum', 'absent', 'null'), (p, c, total) => {
    const u: Record<string, unknown> = { prompt_tokens: p, completion_tokens: c, prompt_tokens_details: { cached_tokens: Math.min(p, 5) } };
    if (total === 'sum') u.total_tokens = p + c;
    if (total === 'null') u.total_tokens = null;
    assert.deepEqual(parseUsage(u), { prompt_tokens: p, completion_tokens: c, total_tokens: p + c });
    assert.deepEqual(extractUsage(JSON.parse(JSON.stringify({ choices: [], usage: u }))), { prompt_tokens: p, completion_tokens: c, total_tokens: p + c });
  }), 300);
});

test('usage: a usage chunk with any usage in a stream leaves the meter with countable usage or none', () => {
  check(fc.property(fc.oneof(usageObject, oneHostileField, fc.jsonValue({ maxDepth: 2 })), fc.boolean(), fc.boolean(), (usage, strip, withChoices) => {
    const frame = { id: 'c', choices: withChoices ? [{ index: 0, delta: { content: 'x' } }] : [], usage };
    const s = `data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\ndata: ${JSON.stringify(frame)}\n\ndata: [DONE]\n\n`;
    const m = new StreamMeter({ stripUsage: strip });
    call(() => { m.push(Buffer.from(s)); m.end(); }, 'StreamMeter');
    assertCountable(m.usage, `stream usage ${JSON.stringify(usage)}`);
  }), 300);
});

// ---------------------------------------------------------------------------------------------------------
// Usage-less streams: the meter's bounded text holder (streaming/text-tally.ts) hands out pieces to count

test('usage: a usage-less stream loses no text to the bounded holder, holds little, and its pieces never count less', () => {
  const piece = fc.oneof(
    fc.string({ maxLength: 30 }),
    fc.string({ unit: 'grapheme', maxLength: 12 }),
    fc.constantFrom(' ', '  ', '\n', '\t', 'word ', ' the', 'hello world', '日本語のテキスト', '🎌🎌🎌', '\u3000', '\u00a0', 'x'.repeat(70), 'ab '.repeat(30), '\ud83c', '\udf8c'),
  );
  check(fc.property(fc.array(piece, { minLength: 1, maxLength: 40 }), fc.integer({ min: 16, max: 128 }), fc.constantFrom('o200k_base', 'cl100k_base') as fc.Arbitrary<TokenEncoding>, (pieces, bound, enc) => {
    const m = new StreamMeter({ stripUsage: false, textBound: bound });
    const taken: string[] = [];
    let largest = 0;
    for (const p of pieces) {
      largest = Math.max(largest, p.length);
      m.push(Buffer.from(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: p } }] })}\n\n`));
      const t = m.takeCountable();
      if (t !== undefined) taken.push(t);
      assert.ok(m.heldChars <= bound + largest, `holds ${m.heldChars} characters, bound ${bound}, largest piece ${largest}`);
    }
    m.end();
    const full = pieces.join('');
    assert.equal(taken.join('') + m.text, full, 'text lost or duplicated');
    // countMargin: CUT_MARGIN_TOKENS per cut, which the gateway adds to the counted estimate.
    const split = taken.reduce((n, t) => n + countText(t, enc), 0) + countText(m.text, enc) + m.countMargin;
    assert.ok(split >= countText(full, enc), `pieces count ${split} < whole ${countText(full, enc)}: ${JSON.stringify(taken)}`);
  }), 300, [
    // Found by this property: a cut inside a run of punctuation ('!' | '%A') counts one token less than the whole.
    [['   ', '  \u{10000}\u{10000}!\u{10000}!\u{10000}!\u05f3', '%A', ''], 16, 'o200k_base'],
  ]);
});
