// The incremental JSON scanner against JSON.parse: for any JSON document cut into any chunks, every value the
// sink asks to capture comes back as the JSON of that value, every string asked as text comes back whole
// (concatenated pieces), and a document that is not JSON never throws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { JsonScanner, MAX_SCAN_DEPTH, SCAN_RAW, SCAN_SKIP, SCAN_SKIP_TREE, SCAN_TEXT, type ScanPath } from '../../src/streaming/json-scan.ts';
import { check } from './fc-setup.ts';

/** Every value of a parsed document with its path. */
function walk(v: unknown, path: (string | number)[], out: Array<[string, unknown]>): void {
  out.push([JSON.stringify(path), v]);
  if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...path, i], out));
  else if (typeof v === 'object' && v !== null) for (const [k, x] of Object.entries(v)) walk(x, [...path, k], out);
}

function cutsOf(len: number, seeds: number[]): number[] {
  return [...new Set(seeds.map((s) => s % (len + 1)))].sort((a, b) => a - b);
}

function scan(bytes: Buffer, cuts: number[], mode: (p: ScanPath) => number) {
  const raws = new Map<string, string | undefined>();
  const texts = new Map<string, string>();
  const scanner = new JsonScanner({
    value: mode,
    raw: (p, json) => { raws.set(JSON.stringify(p), json); },
    piece: (p, t) => { const k = JSON.stringify(p); texts.set(k, (texts.get(k) ?? '') + t); },
  });
  let at = 0;
  for (const c of [...cuts, bytes.length]) { scanner.push(bytes.subarray(at, c)); at = c; }
  scanner.end();
  return { raws, texts, scanner };
}

// Keys may collide with nothing special; strings carry escapes, quotes, backslashes and astral characters.
const str = fc.string({ unit: fc.oneof(fc.constantFrom('"', '\\', '\n', '\u0001', '😀', 'é', '/', 'u'), fc.string({ minLength: 1, maxLength: 1, unit: 'grapheme' })), maxLength: 30 });
const jsonValue = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small' },
    fc.constant(null), fc.boolean(), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), str,
    fc.array(tie('value'), { maxLength: 5 }),
    fc.dictionary(fc.string({ maxLength: 8 }), tie('value'), { maxKeys: 5 })),
})).value;

test('captures and texts match JSON.parse for any chunking', () => {
  check(fc.property(jsonValue, fc.array(fc.nat(), { maxLength: 8 }), fc.nat(), fc.boolean(), (doc, seeds, pick, pretty) => {
    const src = JSON.stringify(doc, null, pretty ? 2 : undefined);
    const bytes = Buffer.from(src);
    const all: Array<[string, unknown]> = [];
    walk(JSON.parse(src), [], all);
    const [target] = all[pick % all.length]!;
    const { raws, texts, scanner } = scan(bytes, cutsOf(bytes.length, seeds), (p) => {
      const k = JSON.stringify(p);
      if (k !== target) return SCAN_SKIP;
      return typeof all.find(([key]) => key === k)![1] === 'string' ? SCAN_TEXT : SCAN_RAW;
    });
    assert.ok(scanner.done && !scanner.broken, `scan of ${src} ended done`);
    const expected = all.find(([k]) => k === target)![1];
    if (typeof expected === 'string') assert.equal(texts.get(target) ?? '', expected);
    else assert.deepEqual(JSON.parse(raws.get(target)!), expected);
  }), 400);
});

test('a skipped tree hides everything inside it; siblings are still seen', () => {
  const doc = { a: { b: [1, { c: 2 }], d: 'x' }, e: { f: 3 } };
  const seen: string[] = [];
  scan(Buffer.from(JSON.stringify(doc)), [], (p) => {
    seen.push(p.join('.'));
    return p.length === 1 && p[0] === 'a' ? SCAN_SKIP_TREE : SCAN_SKIP;
  });
  assert.deepEqual(seen, ['', 'a', 'e', 'e.f']);
});

test('long strings come as several decoded pieces, never split inside a character or an escape', () => {
  const s = ('é😀\\"\u0001' + 'x'.repeat(13)).repeat(5000);
  const { texts } = scan(Buffer.from(JSON.stringify({ t: s })), cutsOf(200_000, [7, 16385, 33000, 99999]), (p) => (p[0] === 't' ? SCAN_TEXT : SCAN_SKIP));
  assert.equal(texts.get('["t"]'), s);
});

test('a capture over its bound is reported as absent; invalid JSON stops the scan without throwing', () => {
  const big = { u: 'x'.repeat(100), v: 1 };
  const r = new Map<string, string | undefined>();
  const s = new JsonScanner({ value: (p) => (p.length === 1 ? SCAN_RAW : SCAN_SKIP), raw: (p, j) => { r.set(String(p[0]), j); }, piece: () => undefined }, 50);
  s.push(Buffer.from(JSON.stringify(big)));
  assert.equal(r.get('u'), undefined);
  assert.equal(r.get('v'), '1');
  assert.ok(r.has('u'));
  check(fc.property(fc.string({ maxLength: 60 }), (garbage) => {
    const g = new JsonScanner({ value: () => SCAN_RAW, raw: () => undefined, piece: () => undefined });
    g.push(Buffer.from(garbage));
    g.end();
  }), 300, [['{"a":1}}'], ['[1,]'], ['{"a" 1}'], ['{,}'], ['"abc']]);
});

test('nesting deeper than the bound is skipped by counting brackets: the path stays bounded, later fields are read', () => {
  const paths: number[] = [];
  const g = new JsonScanner({ value: (p) => { paths.push(p.length); return SCAN_SKIP; }, raw: () => undefined, piece: () => undefined });
  const deep = Buffer.from('['.repeat(100_000));
  for (let i = 0; i < 100; i++) g.push(deep);
  assert.ok(!g.broken && !g.done);
  assert.ok(Math.max(...paths) <= MAX_SCAN_DEPTH);
  const ok = new JsonScanner({ value: () => SCAN_SKIP, raw: () => undefined, piece: () => undefined });
  ok.push(Buffer.from('['.repeat(MAX_SCAN_DEPTH) + ']'.repeat(MAX_SCAN_DEPTH)));
  assert.ok(ok.done);
  // Deep, and then no JSON: broken as at any depth (3 MB of text in it is not relayed unread).
  const prose = new JsonScanner({ value: () => SCAN_SKIP, raw: () => undefined, piece: () => undefined });
  prose.push(Buffer.from('{"pad":' + '['.repeat(MAX_SCAN_DEPTH + 10) + 'plain text'));
  assert.ok(prose.broken);
  const literals = new JsonScanner({ value: () => SCAN_SKIP, raw: () => undefined, piece: () => undefined });
  literals.push(Buffer.from('['.repeat(MAX_SCAN_DEPTH + 2) + 'true, false, null, -1.5e+3, "x\\"y"' + ']'.repeat(MAX_SCAN_DEPTH + 2)));
  assert.ok(literals.done && !literals.broken);
  // A deep value (with brackets and escaped quotes in its strings) between two fields, cut into any chunks: the field
  // after it, and a capture that holds it, come back whole.
  const depth = MAX_SCAN_DEPTH * 3;
  const nested = '{"a":'.repeat(depth) + '"x]}\\\"[{"' + '}'.repeat(depth);
  const doc = `{"before":1,"output":[${nested},{"k":[[["]"]]]}],"wrapped":{"in":${nested}},"usage":{"total_tokens":42}}`;
  assert.deepEqual(Object.keys(JSON.parse(doc)), ['before', 'output', 'wrapped', 'usage']);
  const bytes = Buffer.from(doc);
  check(fc.property(fc.array(fc.nat(), { maxLength: 8 }), (seeds) => {
    const { raws, scanner } = scan(bytes, cutsOf(bytes.length, seeds), (p) => (p.length === 1 && (p[0] === 'usage' || p[0] === 'wrapped') ? SCAN_RAW : SCAN_SKIP));
    assert.ok(scanner.done && !scanner.broken);
    assert.equal(raws.get('["usage"]'), '{"total_tokens":42}');
    assert.deepEqual(JSON.parse(raws.get('["wrapped"]')!), { in: JSON.parse(nested) });
  }), 200);
});
