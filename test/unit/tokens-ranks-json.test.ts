// The compiled gateway loads the BPE rank tables from JSON written at build time (scripts/build-ranks.mjs) instead
// of the library's array-literal module: counts must equal the library's, and the library's table module must not
// be loaded at all. Runs the compiled build (npm test builds dist/ first) in a child process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { getEncoder, type TokenEncoding } from '../../src/tokens/encoding.ts';

const DIST_ENCODING = new URL('../../dist/tokens/encoding.js', import.meta.url);
const TEXTS = [
  'Hello, world! How are you today?',
  'function f(x) { return x * 2; } // code',
  'Ünïcödé, 日本語のテキスト, русский текст, عربى, emoji 🎉🎉🎉 and combining a\u0301e\u0301',
  'Plain prose: the quick brown fox jumps over the lazy dog, again and again.',
  'a'.repeat(300) + ' ' + '1234567890'.repeat(20) + ' \t\n '.repeat(10),
];

test('rank tables from JSON: the compiled encoder counts exactly as gpt-tokenizer and never loads its table module', () => {
  assert.ok(existsSync(fileURLToPath(DIST_ENCODING)), 'dist/ is built (npm test builds it; else run `npm run build`)');
  for (const enc of ['o200k_base', 'cl100k_base'] as TokenEncoding[]) {
    assert.ok(existsSync(fileURLToPath(new URL(`../../dist/tokens/ranks/${enc}.json`, import.meta.url))), `${enc}.json is written by the build`);
    const script = `
      import { createRequire } from 'node:module';
      const { getEncoder, getEncoderCore } = await import(${JSON.stringify(DIST_ENCODING.href)});
      const texts = JSON.parse(process.argv[1]);
      const counts = texts.map((t) => getEncoder(${JSON.stringify(enc)}).countTokens(t));
      const core = getEncoderCore(${JSON.stringify(enc)});
      const require = createRequire(import.meta.url);
      const tableModuleLoaded = Object.keys(require.cache).some((k) => k.includes('bpeRanks'));
      console.log(JSON.stringify({ counts, tableModuleLoaded, hasCore: typeof core.bytePairEncode === 'function' }));
    `;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(TEXTS)], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stderr);
    const out = JSON.parse(run.stdout.trim()) as { counts: number[]; tableModuleLoaded: boolean; hasCore: boolean };
    assert.deepEqual(out.counts, TEXTS.map((t) => getEncoder(enc).countTokens(t)), enc);
    assert.equal(out.tableModuleLoaded, false, `${enc}: the library's array-literal table module stays unloaded`);
    assert.equal(out.hasCore, true);
  }
});
