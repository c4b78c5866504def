#!/usr/bin/env node
// Writes gpt-tokenizer's BPE rank tables as JSON next to the compiled tokenizer module (dist/tokens/ranks/), so a
// started gateway parses them (~70 ms for o200k) instead of compiling the library's 2.4 MB array literal (~260 ms).
// The JSON is the library's own table, element for element; src/tokens/encoding.ts falls back to the library
// module when it is absent.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const out = new URL('../dist/tokens/ranks/', import.meta.url);
mkdirSync(out, { recursive: true });
for (const enc of ['o200k_base', 'cl100k_base']) {
  const ranks = require(`gpt-tokenizer/cjs/bpeRanks/${enc}`).default;
  for (let i = 0; i < ranks.length; i++) {
    if (!(i in ranks)) throw new Error(`build-ranks: ${enc} has a hole at ${i}; JSON would turn it into null`);
  }
  writeFileSync(new URL(`${enc}.json`, out), JSON.stringify(ranks));
}
