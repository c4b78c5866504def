#!/usr/bin/env node
// Writes gpt-tokenizer's BPE rank tables in the compact binary form of src/tokens/rank-table.ts next to the
// compiled tokenizer module (dist/tokens/ranks/<encoding>.bin), with the compiled code itself (run after tsc), so
// a started gateway reads each table with one readFileSync instead of building the library's Map of ~200k strings.
// The tag in each file names the library version; a table built from another version is refused at load.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';

const { serializeRankTable } = await import(new URL('../dist/tokens/encoding.js', import.meta.url).href);
const out = new URL('../dist/tokens/ranks/', import.meta.url);
mkdirSync(out, { recursive: true });
for (const enc of ['o200k_base', 'cl100k_base']) {
  writeFileSync(new URL(`${enc}.bin`, out), serializeRankTable(enc));
  // The JSON tables of earlier builds: not read any more, and not to be packed.
  rmSync(new URL(`${enc}.json`, out), { force: true });
}
