// The compact rank table (src/tokens/rank-table.ts) against gpt-tokenizer's own BytePairEncodingCore: every
// lookup answers as the library's does, for every token of both tables and for byte strings around them (a
// leading BOM, which the library's decoder drops; cut tokens; bytes that are not UTF-8); the file the build
// writes (dist/tokens/ranks/*.bin) is byte for byte the table built from the installed library; and the
// compiled counter reads it without loading the library's rank module.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { getEncoder, getRankTable, serializeRankTable, type TokenEncoding } from '../../src/tokens/encoding.ts';
import { RankTable } from '../../src/tokens/rank-table.ts';

const require = createRequire(import.meta.url);
const ENCS: readonly TokenEncoding[] = ['o200k_base', 'cl100k_base'];
const BOM = [0xef, 0xbb, 0xbf];

interface LibraryCore {
  getBpeRankFromBytes(b: Uint8Array): number | undefined;
  getBpeRankFromString(s: string): number | undefined;
}

function libraryCore(enc: TokenEncoding): LibraryCore {
  getEncoder(enc);
  const mod = require(`gpt-tokenizer/encoding/${enc}`) as { default: { bytePairEncodingCoreProcessor: LibraryCore } };
  return mod.default.bytePairEncodingCoreProcessor;
}

function libraryRanks(enc: TokenEncoding): readonly (string | number[])[] {
  return (require(`gpt-tokenizer/cjs/bpeRanks/${enc}`) as { default: (string | number[])[] }).default;
}

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

test('every lookup answers as the library: all tokens, BOM-prefixed, cut, and random bytes, both tables', () => {
  for (const enc of ENCS) {
    const core = libraryCore(enc);
    const table = getRankTable(enc);
    const lib = (b: Uint8Array): number => core.getBpeRankFromBytes(b) ?? -1;
    const check = (b: Uint8Array, what: string): void => {
      // At an offset inside a larger buffer too: lookups take (bytes, start, end).
      const padded = new Uint8Array(b.length + 2);
      padded.set(b, 1);
      const want = lib(b);
      assert.equal(table.rankOfBytes(b, 0, b.length), want, `${enc} ${what} [${b.join(',')}]`);
      assert.equal(table.rankOfBytes(padded, 1, b.length + 1), want, `${enc} ${what} (offset) [${b.join(',')}]`);
    };
    let bomRemaps = 0;
    libraryRanks(enc).forEach((v, r) => {
      const b = typeof v === 'string' ? new TextEncoder().encode(v) : Uint8Array.from(v);
      check(b, `token ${r}`);
      if (typeof v === 'string') assert.equal(table.rankOfString(v), core.getBpeRankFromString(v) ?? -1, `${enc} string ${r}`);
      if (b.length > 1) check(b.subarray(0, b.length - 1), `token ${r} cut`);
      const withBom = Uint8Array.from([...BOM, ...b]);
      check(withBom, `BOM + token ${r}`);
      if (lib(withBom) !== -1) bomRemaps++;
    });
    // The quirk is real: BOM + a token's bytes is found as that token.
    assert.ok(bomRemaps > 1000, `${enc}: ${bomRemaps} BOM-prefixed tokens found`);
    const r = prng(enc.length);
    for (let i = 0; i < 20_000; i++) {
      const len = 1 + Math.floor(r() * 6);
      const b = Uint8Array.from({ length: len }, () => (r() < 0.5 ? 0x61 + Math.floor(r() * 4) : Math.floor(r() * 256)));
      check(b, 'random');
    }
    for (const s of ['\ud800', 'a\udc00', '\ufeffusing', '', 'x'.repeat(300)]) {
      assert.equal(table.rankOfString(s), core.getBpeRankFromString(s) ?? -1, `${enc} string ${JSON.stringify(s)}`);
    }
  }
});

test('a damaged or foreign table file is refused with a message that says to rebuild', () => {
  const file = serializeRankTable('cl100k_base');
  assert.throws(() => RankTable.parse(file, 'o200k_base@gpt-tokenizer-0'), /built for cl100k_base.*npm run build/);
  assert.throws(() => RankTable.parse(file.subarray(0, file.length - 1), 'x'), /rebuild/);
  const bad = file.slice();
  bad[0] ^= 0xff;
  assert.throws(() => RankTable.parse(bad, 'x'), /not a rank table/);
});

const DIST_ENCODING = new URL('../../dist/tokens/encoding.js', import.meta.url);
const DIST_COUNT = new URL('../../dist/tokens/count.js', import.meta.url);
const TEXTS = [
  'Hello, world! How are you today?',
  'function f(x) { return x * 2; } // code',
  'Ünïcödé, 日本語のテキスト, русский текст, عربى, emoji 🎉🎉🎉 and combining a\u0301e\u0301',
  '\ufeffusing System; \ufeff\ufeff// a BOM or two, a lone \ud800 surrogate',
  'a'.repeat(300) + ' ' + '1234567890'.repeat(20) + ' \t\n '.repeat(10) + '='.repeat(64),
];

test('the build writes the table of the installed library, and the compiled counter uses it alone', () => {
  assert.ok(existsSync(fileURLToPath(DIST_ENCODING)), 'dist/ is built (npm test builds it; else run `npm run build`)');
  for (const enc of ENCS) {
    const path = fileURLToPath(new URL(`../../dist/tokens/ranks/${enc}.bin`, import.meta.url));
    assert.ok(existsSync(path), `${enc}.bin is written by the build`);
    assert.ok(Buffer.from(serializeRankTable(enc)).equals(readFileSync(path)), `${enc}.bin is the table of the installed gpt-tokenizer`);
    const script = `
      import { createRequire } from 'node:module';
      const { countText } = await import(${JSON.stringify(DIST_COUNT.href)});
      await import(${JSON.stringify(DIST_ENCODING.href)});
      const texts = JSON.parse(process.argv[1]);
      const counts = texts.map((t) => countText(t, ${JSON.stringify(enc)}));
      const require = createRequire(import.meta.url);
      const libraryLoaded = Object.keys(require.cache).some((k) => /bpeRanks|BytePairEncodingCore/.test(k));
      console.log(JSON.stringify({ counts, libraryLoaded, rssMb: process.memoryUsage().rss / 2 ** 20 }));
    `;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(TEXTS)], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim()) as { counts: number[]; libraryLoaded: boolean; rssMb: number };
    const ORDINARY = { disallowedSpecial: new Set<string>() };
    assert.deepEqual(out.counts, TEXTS.map((t) => getEncoder(enc).countTokens(t, ORDINARY)), enc);
    assert.equal(out.libraryLoaded, false, `${enc}: neither the library's rank module nor its encoder is loaded`);
  }
});
