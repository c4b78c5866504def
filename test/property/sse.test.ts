// Properties of the SSE parser (src/streaming/sse-parser.ts) and the stream meter (usage-meter.ts, delta-scan.ts):
// chunking never changes what is parsed, line endings are equivalent, strip mode removes exactly the usage
// chunk, garbage never throws anything but the typed oversize error, and a parser's memory stays bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { SseParser } from '../../src/streaming/sse-parser.ts';
import { StreamMeter } from '../../src/streaming/usage-meter.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { check, describeThrown } from './fc-setup.ts';

interface Ev { data: string | null; event: string }

// ---------------------------------------------------------------------------------------------------------
// Generators

/** Line text: any well-formed Unicode (multi-byte characters included) plus SSE-significant characters, never CR or LF. */
const lineText = fc
  .string({ unit: fc.oneof(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 }), fc.constantFrom(':', ' ', 'é', '日', '🎌', '{', '"', '\\', '\0', '\u2028')), maxLength: 24 })
  .map((s) => s.replace(/[\r\n]/g, '_'));

/** One non-blank line of an event block: data and event fields, other fields, near-miss field names, comments, junk. */
const line: fc.Arbitrary<string> = fc.oneof(
  fc.tuple(fc.constantFrom('data:', 'data: ', 'data:  '), lineText).map(([f, v]) => f + v),
  fc.constant('data'),
  fc.tuple(fc.constantFrom('event:', 'event: ', 'event'), lineText).map(([f, v]) => (f === 'event' ? f : f + v)),
  fc.tuple(fc.constantFrom('id', 'retry', 'datum', 'data2', 'Data', 'DATA', 'dat', 'events', 'even', 'x', ' data'), fc.constantFrom(':', ': ', ''), lineText)
    .map(([n, c, v]) => n + c + v),
  lineText.map((t) => ':' + t),
  lineText.filter((t) => t !== ''),
);

/** A stream: blocks each closed by a blank line, then trailing lines that the stream's end closes. */
const sseModel = fc.record({
  blocks: fc.array(fc.array(line, { maxLength: 5 }), { maxLength: 8 }),
  trailing: fc.array(line, { maxLength: 3 }),
});
type SseModel = { blocks: string[][]; trailing: string[] };

function logicalLines(m: SseModel): string[] {
  const out: string[] = [];
  for (const b of m.blocks) out.push(...b, '');
  out.push(...m.trailing);
  return out;
}

type Term = '\n' | '\r' | '\r\n';
const TERMS: readonly Term[] = ['\n', '\r', '\r\n'];

/**
 * Encodes lines with the given terminators (cycled). A blank line right after a CR-terminated line may not
 * end in LF alone: CR + LF is one CRLF terminator, so that would merge the two line ends (the grammar's
 * meaning, not a parser choice). Such a terminator is replaced by CRLF.
 */
function encode(lines: readonly string[], terms: readonly Term[]): Buffer {
  let s = '';
  let prev: Term | undefined;
  lines.forEach((l, i) => {
    let t = terms[i % terms.length]!;
    if (l === '' && prev === '\r' && t === '\n') t = '\r\n';
    s += l + t;
    prev = t;
  });
  return Buffer.from(s, 'utf8');
}

/** Reference reading of logical lines (WHATWG event-stream, `data` and `event` only). */
function oracle(lines: readonly string[]): Ev[] {
  const out: Ev[] = [];
  let data: string | null = null;
  let event = '';
  let pending = false;
  const dispatch = (): void => {
    out.push({ data, event });
    data = null;
    event = '';
    pending = false;
  };
  for (const l of lines) {
    if (l === '') { dispatch(); continue; }
    pending = true;
    if (l.startsWith(':')) continue;
    const c = l.indexOf(':');
    const name = c === -1 ? l : l.slice(0, c);
    let value = c === -1 ? '' : l.slice(c + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'data') data = data === null ? value : data + '\n' + value;
    else if (name === 'event') event = value;
  }
  // The stream's end closes a partial event, even one of comments only (the parser reports every boundary).
  if (pending) dispatch();
  return out;
}

/** Cut points over [0, len]: arbitrary, repeated (empty chunks), and right after every CR or inside UTF-8 sequences. */
function cutsFor(bytes: Buffer, raw: readonly number[], mode: 'random' | 'afterCR' | 'insideUtf8' | 'bytewise'): number[] {
  const len = bytes.length;
  const cuts = raw.map((r) => r % (len + 1));
  if (mode === 'afterCR') for (let i = 0; i < len; i++) if (bytes[i] === 0x0d) cuts.push(i + 1);
  if (mode === 'insideUtf8') for (let i = 0; i < len; i++) if ((bytes[i]! & 0xc0) === 0x80) cuts.push(i);
  if (mode === 'bytewise') for (let i = 0; i <= len; i++) cuts.push(i);
  return cuts.sort((a, b) => a - b);
}

function chunksOf(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let from = 0;
  for (const c of cuts) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  out.push(bytes.subarray(from));
  return out;
}

const cutArb = fc.record({
  raw: fc.array(fc.nat(), { maxLength: 12 }),
  mode: fc.constantFrom('random', 'afterCR', 'insideUtf8', 'bytewise') as fc.Arbitrary<'random' | 'afterCR' | 'insideUtf8' | 'bytewise'>,
});

const termsArb = fc.oneof(
  fc.constantFrom(...TERMS).map((t) => [t]),
  fc.array(fc.constantFrom(...TERMS), { minLength: 1, maxLength: 7 }),
);

function parse(chunks: readonly Buffer[], max?: number): Ev[] {
  const events: Ev[] = [];
  const p = new SseParser({ onEvent: (data, event) => { events.push({ data, event }); } }, max);
  for (const c of chunks) p.push(c);
  p.end();
  return events;
}

// ---------------------------------------------------------------------------------------------------------
// SseParser

test('SSE: the parser reads any stream as the reference reading does, whatever the line endings', () => {
  check(fc.property(sseModel, termsArb, (m, terms) => {
    const lines = logicalLines(m);
    assert.deepEqual(parse([encode(lines, terms)]), oracle(lines));
  }), 300);
});

test('SSE: CR, LF and CRLF (and any mix) give the same events', () => {
  check(fc.property(sseModel, termsArb, (m, terms) => {
    const lines = logicalLines(m);
    const lf = parse([encode(lines, ['\n'])]);
    assert.deepEqual(parse([encode(lines, ['\r'])]), lf);
    assert.deepEqual(parse([encode(lines, ['\r\n'])]), lf);
    assert.deepEqual(parse([encode(lines, terms)]), lf);
  }), 200);
});

test('SSE: splitting the byte stream anywhere (inside UTF-8 characters, between CR and LF, empty chunks) changes nothing', () => {
  check(fc.property(sseModel, termsArb, cutArb, (m, terms, cut) => {
    const bytes = encode(logicalLines(m), terms);
    const whole = parse([bytes]);
    assert.deepEqual(parse(chunksOf(bytes, cutsFor(bytes, cut.raw, cut.mode))), whole);
  }), 300);
});

test('SSE: comment lines and unknown fields inside an event are ignored', () => {
  const noise = fc.oneof(
    lineText.map((t) => ':' + t),
    fc.tuple(fc.constantFrom('id', 'retry', 'datum', 'Data', 'x', 'event-type'), lineText).map(([n, v]) => `${n}: ${v}`),
  );
  check(fc.property(sseModel, fc.array(fc.tuple(fc.nat(), fc.nat(), noise), { maxLength: 6 }), termsArb, (m, inserts, terms) => {
    if (m.blocks.length === 0) return;
    const noisy: SseModel = { blocks: m.blocks.map((b) => [...b]), trailing: m.trailing };
    for (const [bi, li, text] of inserts) {
      const b = noisy.blocks[bi % noisy.blocks.length]!;
      b.splice(li % (b.length + 1), 0, text);
    }
    assert.deepEqual(parse([encode(logicalLines(noisy), terms)]), parse([encode(logicalLines(m), terms)]));
  }), 200);
});

// ---------------------------------------------------------------------------------------------------------
// StreamMeter over OpenAI-style streams

const text = fc.string({ unit: fc.oneof(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 }), fc.constantFrom('"', '\\', '\n', '\r', '\t', 'é', '🎌', 'content"', 'usage"', ':null', '\\"', '\u2028')), maxLength: 16 });
const count = fc.nat({ max: 100_000 });

interface Frame { lines: readonly string[]; text: string; usage?: unknown; cutText?: string }

function dataFrame(obj: unknown, spaced: boolean): string[] {
  // A spaced frame is split over several data lines: the parser joins them with '\n', which JSON allows.
  return spaced ? JSON.stringify(obj, null, 1).split('\n').map((l) => 'data: ' + l) : ['data: ' + JSON.stringify(obj)];
}

const base = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };

const contentFrame: fc.Arbitrary<Frame> = fc.oneof(
  fc.tuple(text, fc.boolean(), fc.boolean()).map(([t, spaced, nullUsage]) => ({
    lines: dataFrame({ ...base, choices: [{ index: 0, delta: { content: t }, finish_reason: null }], ...(nullUsage ? { usage: null } : {}) }, spaced),
    text: t,
  })),
  fc.tuple(text, fc.boolean()).map(([t, spaced]) => ({ lines: dataFrame({ ...base, choices: [{ index: 0, delta: { reasoning_content: t } }], usage: null }, spaced), text: t })),
  fc.tuple(text, text, fc.boolean()).map(([n, a, spaced]) => ({
    lines: dataFrame({ ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { name: n, arguments: a } }] } }], usage: null }, spaced),
    text: n + a,
  })),
  fc.tuple(text, fc.boolean()).map(([t, spaced]) => ({ lines: dataFrame({ choices: [{ index: 0, text: t }] }, spaced), text: t })),
  fc.tuple(text, text).map(([a, b]) => ({ lines: dataFrame({ choices: [{ index: 0, delta: { content: a } }, { index: 1, delta: { content: b } }] }, false), text: a + b })),
  fc.tuple(text, count, count).map(([t, p, c]) => ({
    // Usage riding on a chunk that has choices: recorded, never stripped.
    lines: dataFrame({ ...base, choices: [{ index: 0, delta: { content: t }, finish_reason: 'stop' }], usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c } }, false),
    text: t,
    usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c },
  })),
  lineText.map((t) => ({ lines: [':' + t], text: '' })),
  // Not JSON, yet relayed: counted as text, except as a last event the stream ended inside (a cut frame).
  fc.constant({ lines: ['data: not json {'], text: 'not json {', cutText: '' }),
  fc.constant({ lines: ['event: ping', 'data: {}'], text: '' }),
  fc.constant({ lines: ['data: [DONE]'], text: '' }),
);

const usageOnly = fc.tuple(count, count, fc.boolean()).map(([p, c, spaced]) => ({
  usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c },
  lines: dataFrame({ ...base, choices: [], usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c } }, spaced),
}));

const openAiStream = fc.record({
  frames: fc.array(contentFrame, { maxLength: 10 }),
  usage: fc.option(fc.tuple(usageOnly, fc.nat()), { nil: undefined }),
  term: fc.constantFrom(...TERMS),
  closed: fc.boolean(),
});

function block(lines: readonly string[], term: Term): string {
  return lines.map((l) => l + term).join('') + term;
}

interface Run { out: Buffer; usage: unknown; text: string; frames: number; sawDone: boolean }

function meter(chunks: readonly Buffer[], stripUsage: boolean, opts: { parseEveryFrame?: boolean; maxEventBytes?: number } = {}): Run {
  const m = new StreamMeter({ stripUsage, ...opts });
  const outs: Buffer[] = [];
  for (const c of chunks) {
    const o = m.push(c);
    if (o !== undefined) outs.push(o);
  }
  const tail = m.end();
  if (tail !== undefined) outs.push(tail);
  return { out: Buffer.concat(outs), usage: m.usage, text: m.text, frames: m.frames, sawDone: m.sawDone };
}

function buildStream(s: { frames: readonly Frame[]; usage: [{ usage: unknown; lines: readonly string[] }, number] | undefined; term: Term; closed: boolean }) {
  const blocks = s.frames.map((f) => block(f.lines, s.term));
  const usages: unknown[] = s.frames.map((f) => f.usage);
  let usageAt = -1;
  if (s.usage !== undefined) {
    usageAt = s.usage[1] % (blocks.length + 1);
    blocks.splice(usageAt, 0, block(s.usage[0].lines, s.term));
    usages.splice(usageAt, 0, s.usage[0].usage);
  }
  let whole = blocks.join('');
  let withoutUsage = blocks.filter((_, i) => i !== usageAt).join('');
  // An unclosed stream: the last event lacks its blank line (the parser's end() still reads it).
  if (!s.closed && blocks.length > 0 && usageAt !== blocks.length - 1) {
    whole = whole.slice(0, -s.term.length);
    withoutUsage = withoutUsage.slice(0, -s.term.length);
  }
  // A stream reporting usage more than once is believed at each count's largest report (running totals never shrink).
  type Counts = { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  const lastUsage = (usages.filter((u) => u !== undefined) as Counts[]).reduce<Counts | undefined>((a, u) => {
    if (a === undefined) return u;
    const p = Math.max(a.prompt_tokens, u.prompt_tokens);
    const c = Math.max(a.completion_tokens, u.completion_tokens);
    return { prompt_tokens: p, completion_tokens: c, total_tokens: Math.max(a.total_tokens, u.total_tokens, p + c) };
  }, undefined);
  const cutLast = !s.closed && blocks.length > 0 && usageAt !== blocks.length - 1;
  const text = s.frames.map((f, i) => (cutLast && i === s.frames.length - 1 ? f.cutText ?? f.text : f.text)).join('');
  return { whole: Buffer.from(whole), withoutUsage: Buffer.from(withoutUsage), text, lastUsage };
}

test('StreamMeter: same output, usage, text and frame count at any split, in both modes', () => {
  check(fc.property(openAiStream, cutArb, (s, cut) => {
    const { whole } = buildStream(s);
    const chunks = chunksOf(whole, cutsFor(whole, cut.raw, cut.mode));
    for (const strip of [false, true]) {
      const a = meter([whole], strip);
      const b = meter(chunks, strip);
      assert.deepEqual(b, a, `stripUsage ${strip}`);
    }
  }), 200);
});

test('StreamMeter: pass-through forwards every byte; strip mode removes exactly the usage-only chunk', () => {
  check(fc.property(openAiStream, cutArb, (s, cut) => {
    const { whole, withoutUsage, text, lastUsage } = buildStream(s);
    const chunks = chunksOf(whole, cutsFor(whole, cut.raw, cut.mode));
    const pass = meter(chunks, false);
    assert.ok(pass.out.equals(whole), 'pass-through changed the stream');
    const strip = meter(chunks, true);
    assert.equal(strip.out.toString('latin1'), withoutUsage.toString('latin1'));
    assert.equal(strip.text, text);
    assert.equal(pass.text, text);
    assert.deepEqual(strip.usage, lastUsage);
    assert.deepEqual(pass.usage, lastUsage);
  }), 200);
});

test('StreamMeter: the delta-scan fast path yields the same text as a full JSON.parse of every frame', () => {
  // Extra fields around the delta, as real upstreams add (logprobs, metadata, ids), with arbitrary JSON inside.
  const extraKey = fc.constantFrom('logprobs', 'metadata', 'system_fingerprint', 'x', 'content', 'text', 'usage');
  const frameObj = fc.record({
    content: fc.option(text, { nil: undefined }),
    extra: fc.dictionary(extraKey, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 2 }),
    choiceExtra: fc.dictionary(extraKey, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 2 }),
  }).map(({ content, extra, choiceExtra }): Record<string, unknown> => ({ ...extra, choices: [{ ...choiceExtra, index: 0, delta: content === undefined ? {} : { content } }] }));
  check(fc.property(fc.array(frameObj, { maxLength: 6 }), (frames) => {
    const bytes = Buffer.from(frames.map((f) => `data: ${JSON.stringify(f)}\n\n`).join(''));
    for (const strip of [false, true]) {
      const fast = meter([bytes], strip);
      const slow = meter([bytes], strip, { parseEveryFrame: true });
      assert.deepEqual(fast, slow, `stripUsage ${strip}: fast path text ${JSON.stringify(fast.text)}, full parse ${JSON.stringify(slow.text)}`);
    }
  }), 300, [
    // Found by this property: a text key outside the delta is taken as delta text by the scan.
    [[{ content: ' ', choices: [{ index: 0, delta: {} }] }]],
  ]);
});

// ---------------------------------------------------------------------------------------------------------
// Garbage and bounds

/** Bytes biased towards SSE and JSON syntax, with invalid UTF-8 and partial multi-byte sequences. */
const garbage = fc
  .array(fc.oneof(
    fc.uint8Array({ maxLength: 8 }).map((u) => Buffer.from(u)),
    fc.constantFrom('data:', 'data: ', 'event: x', ':', '\r', '\n', '\r\n', '\n\n', '{', '}', '"usage":', '{"prompt_tokens":1}', '"choices":[]', '[DONE]',
      '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}', '"content":"', '\\').map((s) => Buffer.from(s)),
    fc.constantFrom([0xf0, 0x9f], [0x8e, 0x8c], [0xe6], [0xc3], [0xff], [0xfe, 0xff], [0xed, 0xa0, 0x80]).map((b) => Buffer.from(b)),
  ), { maxLength: 40 })
  .map((parts) => Buffer.concat(parts));

function isOversize(err: unknown): boolean {
  return err instanceof SluiceError && err.code === 'SLC_UPSTREAM_ERROR';
}

test('SSE garbage: never throws (but the typed oversize error), split-invariant, pass-through intact', () => {
  check(fc.property(garbage, cutArb, fc.option(fc.integer({ min: 4, max: 256 }), { nil: undefined }), (bytes, cut, max) => {
    const chunks = chunksOf(bytes, cutsFor(bytes, cut.raw, cut.mode));
    for (const strip of [false, true]) {
      let whole: Run | undefined;
      let split: Run | undefined;
      let wholeErr: unknown;
      let splitErr: unknown;
      try { whole = meter([bytes], strip, { maxEventBytes: max }); } catch (err) { wholeErr = err; }
      try { split = meter(chunks, strip, { maxEventBytes: max }); } catch (err) { splitErr = err; }
      for (const err of [wholeErr, splitErr]) {
        if (err !== undefined) assert.ok(isOversize(err) && max !== undefined, `unexpected throw: ${describeThrown(err)}`);
      }
      assert.equal(wholeErr === undefined, splitErr === undefined, 'the oversize error depends on chunking');
      if (whole === undefined || split === undefined) continue;
      assert.deepEqual(split, whole, `stripUsage ${strip}`);
      if (!strip) assert.ok(whole.out.equals(bytes));
      else assert.ok(whole.out.length <= bytes.length);
    }
  }), 400);
});

test('SSE bounds: a never-terminated line or event is cut off at maxEventBytes; buffers never exceed it', () => {
  const chunk = fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 300 }).map((u) => Buffer.from(u.map((b) => (b === 0x0a || b === 0x0d ? 0x78 : b)))),
    fc.constantFrom('data: x', 'data: x\n', ': keep-alive\r\n', 'y'.repeat(200), '\r').map((s) => Buffer.from(s)),
  );
  check(fc.property(fc.integer({ min: 16, max: 4096 }), fc.array(chunk, { minLength: 1, maxLength: 200 }), fc.boolean(), (max, chunks, strip) => {
    const p = new SseParser({ onEvent: () => {} }, max);
    const m = new StreamMeter({ stripUsage: strip, maxEventBytes: max });
    let fed = 0;
    for (const c of chunks) {
      const next = fed + c.length;
      try {
        p.push(c);
      } catch (err) {
        assert.ok(isOversize(err), describeThrown(err));
        assert.ok(next > max, `threw after ${next} bytes, under the ${max}-byte bound`);
        break;
      }
      fed = next;
      // A chunk-final CR is counted but not yet checked: whether LF follows decides its line's size.
      assert.ok(p.pendingBytes <= max + 1, `pendingBytes ${p.pendingBytes} > ${max} + 1`);
      assert.ok(p['carry'].length <= max, `carry buffer ${p['carry'].length} > ${max}`);
    }
    for (const c of chunks) {
      try {
        m.push(c);
      } catch (err) {
        assert.ok(isOversize(err), describeThrown(err));
        break;
      }
      const held = m['pendLen'];
      assert.ok(held <= max + 1, `strip mode holds ${held} bytes > ${max} + 1`);
      const cap = m['pend']?.length ?? 0;
      assert.ok(cap <= Math.max(512, 2 * (max + 1)), `strip mode's buffer is ${cap} bytes for at most ${max + 1} held`);
    }
  }), 150);
});
