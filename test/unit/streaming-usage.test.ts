// Upstream usage validation (implausible numbers are rejected with a reason) and the bounded text tally that
// lets a long stream be counted incrementally without keeping its text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cutShortUsage, readUsage, isRejection } from '../../src/streaming/usage.ts';
import { TextTally } from '../../src/streaming/text-tally.ts';
import { StreamMeter } from '../../src/streaming/usage-meter.ts';
import { countText } from '../../src/tokens/count.ts';

const MAX = 1_000_000;

test('plausible usage is read as is; a larger total is believed', () => {
  assert.deepEqual(readUsage({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }, MAX), { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 });
  assert.deepEqual(readUsage({ prompt_tokens: 10, completion_tokens: 5, total_tokens: 20 }, MAX), { prompt_tokens: 10, completion_tokens: 5, total_tokens: 20 });
  assert.deepEqual(readUsage({ prompt_tokens: 0, completion_tokens: MAX }, MAX), { prompt_tokens: 0, completion_tokens: MAX, total_tokens: MAX });
  assert.equal(readUsage(undefined, MAX), undefined);
  assert.equal(readUsage(null, MAX), undefined);
  assert.equal(readUsage({}, MAX), undefined, 'no counts at all: absent, not implausible');
  // Without a prompt count the prompt would be charged as 0: not believed, so the answer is counted instead.
  assert.equal(readUsage({ completion_tokens: 20, total_tokens: 20 }, MAX), undefined);
  assert.deepEqual(readUsage({ prompt_tokens: 7 }, MAX), { prompt_tokens: 7, completion_tokens: 0, total_tokens: 7 });
});

test('a stream cut after a usage report: the report when it covers the counted text, else its prompt with the count', () => {
  const reported = readUsage({ prompt_tokens: 500, completion_tokens: 300, total_tokens: 800 }, MAX)!;
  assert.ok(!isRejection(reported));
  assert.equal(cutShortUsage(reported, { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }), reported);
  // An early running total (Anthropic's message_start says 1 output token): the text streamed since counts.
  const early = readUsage({ prompt_tokens: 500, completion_tokens: 1 }, MAX)!;
  assert.ok(!isRejection(early));
  const cut = cutShortUsage({ ...early, cached_prompt_tokens: 100 }, { prompt_tokens: 480, completion_tokens: 40, total_tokens: 520 });
  assert.deepEqual(cut, { prompt_tokens: 500, completion_tokens: 40, total_tokens: 540, cached_prompt_tokens: 100 });
  assert.equal((cut as { raw?: unknown }).raw, undefined, 'counts no longer the report\'s: cost expressions take their bound');
});

test('implausible usage is rejected with its reason', () => {
  const cases: [unknown, string][] = [
    [{ prompt_tokens: 1e300, completion_tokens: 1 }, 'too_large'],
    [{ prompt_tokens: MAX + 1, completion_tokens: 1 }, 'too_large'],
    [{ prompt_tokens: MAX, completion_tokens: 1 }, 'too_large'],
    [{ prompt_tokens: Infinity, completion_tokens: 1 }, 'too_large'],
    [{ prompt_tokens: Number.NaN, completion_tokens: 1 }, 'not_a_number'],
    [{ prompt_tokens: '12', completion_tokens: 1 }, 'not_a_number'],
    [{ prompt_tokens: true, completion_tokens: 1 }, 'not_a_number'],
    [{ prompt_tokens: -1, completion_tokens: 1 }, 'negative'],
    [{ prompt_tokens: 1.5, completion_tokens: 1 }, 'fractional'],
    [{ prompt_tokens: 10, completion_tokens: 5, total_tokens: 14 }, 'inconsistent'],
    [{ prompt_tokens: 10, completion_tokens: 5, total_tokens: -1 }, 'negative'],
    ['lots', 'malformed'],
    [[1, 2], 'malformed'],
  ];
  for (const [u, reason] of cases) {
    const r = readUsage(u, MAX);
    assert.ok(isRejection(r), `${JSON.stringify(u)} must be rejected`);
    assert.equal(r.rejected, reason, JSON.stringify(u));
  }
});

test('the stream meter rejects an implausible usage chunk and keeps its reason', () => {
  const m = new StreamMeter({ stripUsage: true, maxUsage: MAX });
  m.push(Buffer.from('data: {"choices":[{"delta":{"content":"hi there"}}]}\n\n'));
  m.push(Buffer.from('data: {"choices":[],"usage":{"prompt_tokens":1e300,"completion_tokens":2,"total_tokens":1e300}}\n\ndata: [DONE]\n\n'));
  assert.equal(m.usage, undefined);
  assert.equal(m.usageRejected, 'too_large');
  assert.equal(m.text, 'hi there');
});

test('the tally holds at most its bound and hands out pieces cut before whitespace', () => {
  const t = new TextTally(1024);
  const words = Array.from({ length: 5000 }, (_, i) => `word${i % 97}`);
  const pieces: string[] = [];
  let maxHeld = 0;
  for (const w of words) {
    t.add(w + ' ');
    maxHeld = Math.max(maxHeld, t.held);
    const p = t.take();
    if (p !== undefined) pieces.push(p);
  }
  pieces.push(t.rest());
  const whole = words.map((w) => w + ' ').join('');
  assert.equal(pieces.join(''), whole, 'nothing lost or duplicated');
  assert.ok(pieces.length > 10);
  assert.ok(maxHeld <= 1024 + 16, `held ${maxHeld} characters`);
  for (const p of pieces.slice(1)) assert.match(p, /^\s/, 'each later piece starts at whitespace');
  const split = pieces.reduce((s, p) => s + countText(p, 'o200k_base'), 0) + t.margin;
  assert.ok(split >= countText(whole, 'o200k_base'), 'counting the pieces (plus the cut margin) never under-counts');
});

test('a cut inside a newline run can count one token less than the whole: the margin covers it', () => {
  // Found by fuzzing whitespace cuts: the pre-split regroups newlines around the cut.
  const left = '.\t  theAx\t  the \n\n A本!Ω \n\tx! 123,,\n\n';
  const right = '\n/%';
  const whole = countText(left + right, 'o200k_base');
  const split = countText(left, 'o200k_base') + countText(right, 'o200k_base');
  assert.ok(split + 4 >= whole && whole - split <= 1, `whole ${whole}, split ${split}`);
});

test('text without whitespace is cut at the bound without splitting a surrogate pair', () => {
  const t = new TextTally(64);
  let out = '';
  for (let i = 0; i < 200; i++) {
    t.add('日本🌍');
    const p = t.take();
    if (p !== undefined) {
      const last = p.charCodeAt(p.length - 1);
      assert.ok(!(last >= 0xd800 && last <= 0xdbff), 'no lone high surrogate at a cut');
      out += p;
    }
  }
  out += t.rest();
  assert.equal(out, '日本🌍'.repeat(200));
  assert.ok(t.held <= 64 + 4);
});

test('a long stream through the meter is handed out in bounded pieces that count at least as much as the whole', () => {
  const m = new StreamMeter({ stripUsage: false, textBound: 4096 });
  let whole = '';
  const pieces: string[] = [];
  for (let i = 0; i < 3000; i++) {
    const content = `token${i} and some more words, `;
    whole += content;
    m.push(Buffer.from(`data: ${JSON.stringify({ choices: [{ delta: { content } }] })}\n\n`));
    assert.ok(m.heldChars <= 4096 + content.length);
    const p = m.takeCountable();
    if (p !== undefined) pieces.push(p);
  }
  pieces.push(m.text);
  assert.equal(pieces.join(''), whole);
  const split = pieces.reduce((s, p) => s + countText(p, 'o200k_base'), 0) + m.countMargin;
  assert.ok(split >= countText(whole, 'o200k_base'));
});
