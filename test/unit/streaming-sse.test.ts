import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser } from '../../src/streaming/sse-parser.ts';
import { SluiceError } from '../../src/core/errors.ts';

interface Ev { data: string | null; event: string }

function parse(chunks: Buffer[], max?: number): Ev[] {
  const events: Ev[] = [];
  const p = new SseParser({ onEvent: (data, event) => { events.push({ data, event }); } }, max);
  for (const c of chunks) p.push(c);
  p.end();
  return events;
}

// Multi-byte characters (é, 日本, 🎌) so that splits land inside UTF-8 sequences.
const STREAM = [
  ': keep-alive comment',
  '',
  'event: message',
  'data: {"choices":[{"delta":{"content":"héllo 日本 🎌"}}]}',
  '',
  'data: first line',
  'data:second line',
  'data',
  'id: 7',
  'retry: 100',
  '',
  'data: [DONE]',
  '',
  '',
].join('\n');

const EXPECTED: Ev[] = [
  { data: null, event: '' },
  { data: '{"choices":[{"delta":{"content":"héllo 日本 🎌"}}]}', event: 'message' },
  { data: 'first line\nsecond line\n', event: '' },
  { data: '[DONE]', event: '' },
];

function splitAll(text: string, terminator: string): Buffer {
  return Buffer.from(text.replaceAll('\n', terminator), 'utf8');
}

for (const [name, term] of [['LF', '\n'], ['CRLF', '\r\n'], ['CR', '\r']] as const) {
  test(`${name}: whole, every two-way split, and byte-by-byte give identical events`, () => {
    const bytes = splitAll(STREAM, term);
    assert.deepEqual(parse([bytes]), EXPECTED);
    for (let i = 0; i <= bytes.length; i++) {
      assert.deepEqual(parse([bytes.subarray(0, i), bytes.subarray(i)]), EXPECTED, `split at ${i}`);
    }
    const single = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
    assert.deepEqual(parse(single), EXPECTED);
  });
}

test('event boundaries report the offset just past the blank line', () => {
  const bytes = Buffer.from('data: a\n\ndata: b\r\n\r\n');
  const ends: number[] = [];
  const p = new SseParser({ onEvent: (_d, _e, end) => { ends.push(end); } });
  p.push(bytes);
  assert.deepEqual(ends, [9, bytes.length]);
  // A CR at the very end of a chunk is held until the next byte says whether LF follows.
  const ends2: number[] = [];
  const q = new SseParser({ onEvent: (_d, _e, end) => { ends2.push(end); } });
  q.push(Buffer.from('data: a\r\n\r'));
  assert.deepEqual(ends2, []);
  assert.equal(q.pendingBytes, 10);
  q.push(Buffer.from('\ndata: b\n\n'));
  assert.deepEqual(ends2, [1, 10]);
});

test('empty chunks change nothing, even between CR and LF', () => {
  const events = parse([Buffer.from('data: a\r'), Buffer.alloc(0), Buffer.from('\ndata: b\r'), Buffer.alloc(0), Buffer.from('\n\r\n')]);
  assert.deepEqual(events, [{ data: 'a\nb', event: '' }]);
});

test('a final event without its blank line is dispatched at end()', () => {
  assert.deepEqual(parse([Buffer.from('data: {"a":1}\n\ndata: [DONE]')]), [{ data: '{"a":1}', event: '' }, { data: '[DONE]', event: '' }]);
  assert.deepEqual(parse([Buffer.from('data: x\r')]), [{ data: 'x', event: '' }]);
  assert.deepEqual(parse([Buffer.from('data: x\n')]), [{ data: 'x', event: '' }]);
  assert.deepEqual(parse([]), []);
});

test('an event larger than the bound is an upstream error, complete lines or not', () => {
  const isTooLarge = (err: unknown) => err instanceof SluiceError && err.code === 'SLC_UPSTREAM_ERROR' && /exceeds 64 bytes/.test(err.message);
  // One huge unterminated line arriving in pieces.
  assert.throws(() => parse([Buffer.from('data: '), Buffer.from('x'.repeat(40)), Buffer.from('y'.repeat(40))], 64), isTooLarge);
  // Many small lines in one event.
  assert.throws(() => parse([Buffer.from('data: 0123456789\n'.repeat(8))], 64), isTooLarge);
  // Events under the bound are fine, however many.
  assert.equal(parse([Buffer.from('data: 0123456789\n\n'.repeat(100))], 64).length, 100);
  // The default bound is 1 MiB.
  const big = 'z'.repeat(1024 * 1024);
  assert.throws(() => parse([Buffer.from(`data: ${big}\n\n`)]), (err: unknown) => err instanceof SluiceError && err.code === 'SLC_UPSTREAM_ERROR');
  assert.equal(parse([Buffer.from(`data: ${big.slice(0, 1000_000)}\n\n`)])[0]?.data?.length, 1000_000);
});

test('raw mode: one-line data events come as undecoded bytes, others as strings; same data and ends at every split', () => {
  for (const [name, term] of [['LF', '\n'], ['CRLF', '\r\n'], ['CR', '\r']] as const) {
    const bytes = splitAll(STREAM, term);
    const run = (chunks: Buffer[]) => {
      const out: { data: string | null; raw: boolean; end: number }[] = [];
      let copy: Buffer | undefined;
      const p = new SseParser({
        onEvent: (data, _e, end) => { out.push({ data, raw: false, end }); },
        onRawData: (buf, start, stop, end) => {
          copy = Buffer.from(buf.subarray(start, stop));
          out.push({ data: copy.toString('utf8'), raw: true, end });
        },
      });
      for (const c of chunks) p.push(c);
      p.end();
      return out;
    };
    const whole = run([bytes]);
    assert.deepEqual(whole.map((e) => e.data), EXPECTED.map((e) => e.data), name);
    // The one-line events lying whole in the chunk come raw; the three-line event never does, nor (CR) the last
    // one, whose final CR may yet be followed by LF in a next chunk, so its blank line completes only at end().
    assert.deepEqual(whole.map((e) => e.raw), [false, true, false, term !== '\r'], name);
    for (let i = 0; i <= bytes.length; i++) {
      const r = run([bytes.subarray(0, i), bytes.subarray(i)]);
      assert.deepEqual(r.map((e) => e.data), EXPECTED.map((e) => e.data), `${name} split at ${i}`);
    }
    const single = run(Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1)));
    assert.deepEqual(single.map((e) => e.data), EXPECTED.map((e) => e.data), `${name} byte by byte`);
  }
});

test('one leading UTF-8 byte order mark is ignored, split across chunks or not; handler offsets stay the pushed chunk\'s', () => {
  const bom = Buffer.from([0xef, 0xbb, 0xbf]);
  // The stream starts with a data line: read with the mark as part of its name, its event had no data.
  const bytes = Buffer.concat([bom, Buffer.from(STREAM.slice(STREAM.indexOf('event: message')))]);
  for (const cut of [0, 1, 2, 3, 4, 10]) assert.deepEqual(parse([bytes.subarray(0, cut), bytes.subarray(cut)]), EXPECTED.slice(1), `cut ${cut}`);
  // A second mark is data, not skipped: the first line's field name is then not "data".
  assert.deepEqual(parse([Buffer.concat([bom, bom, Buffer.from('data: x\n\n')])]), [{ data: null, event: '' }]);
  const ends: number[] = [];
  const p = new SseParser({ onEvent: (_d, _e, end) => { ends.push(end); } });
  p.push(Buffer.concat([bom, Buffer.from('data: a\n\n')]));
  assert.deepEqual(ends, [12]);
});
