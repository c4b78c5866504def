// Which BPE table a model uses, and the tables themselves, loaded synchronously on first use, one copy per thread.
// gpt-tokenizer is imported only in src/tokens. Counting uses the library's pre-token regex and a compact rank
// table (rank-table.ts) that the build writes to dist/tokens/ranks/<encoding>.bin: one readFileSync, ~4 MB, a
// few ms. The library's own encoder (a Map of ~200k strings, ~300 ms and ~90 MB per thread) is loaded only as
// the reference that tests and benchmarks compare against (getEncoder). Nothing loads at import time: a thread
// that never counts never pays, and callers that want the cost up front (server start, worker start) call
// warmTokenizers(). cl100k loads only when a model needs it.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { CL100K_TOKEN_SPLIT_REGEX, O200K_TOKEN_SPLIT_REGEX } from 'gpt-tokenizer/encodingParams/constants';
import type { EncodeOptions } from 'gpt-tokenizer/GptEncoding';
import { RankTable, type RankEntry } from './rank-table.ts';

export type TokenEncoding = 'o200k_base' | 'cl100k_base';

export interface Encoder {
  countTokens(input: string, options?: EncodeOptions): number;
}

// The library's CJS build is loaded through require: the counting API is sync, ESM `import()` is not.
const require = createRequire(import.meta.url);
const tables: Partial<Record<TokenEncoding, RankTable>> = {};
const references: Partial<Record<TokenEncoding, Encoder>> = {};

/** Names the encoding and the library version a table file was built from; a stale file is refused. */
function tableTag(enc: TokenEncoding): string {
  const { version } = require('gpt-tokenizer/package.json') as { version: string };
  return `${enc}@gpt-tokenizer-${version}`;
}

/** gpt-tokenizer's rank array for `enc` (its 2.4 MB array-literal module: ~260 ms to compile for o200k). */
function libraryRanks(enc: TokenEncoding): readonly RankEntry[] {
  return (require(`gpt-tokenizer/cjs/bpeRanks/${enc}`) as { default: readonly RankEntry[] }).default;
}

/** The table in its file form, built from the library's ranks (scripts/build-ranks.mjs writes it to dist). */
export function serializeRankTable(enc: TokenEncoding): Uint8Array {
  return RankTable.serialize(libraryRanks(enc), tableTag(enc));
}

/**
 * The rank table of `enc`: from the file the build wrote next to this module, or, running from sources (tests
 * under tsx) where there is none, built in memory from the library's ranks (~0.4 s).
 */
export function getRankTable(enc: TokenEncoding): RankTable {
  let table = tables[enc];
  if (table !== undefined) return table;
  let file: Uint8Array | undefined;
  try {
    file = readFileSync(new URL(`./ranks/${enc}.bin`, import.meta.url));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const tag = tableTag(enc);
  table = RankTable.parse(file ?? RankTable.serialize(libraryRanks(enc), tag), tag);
  tables[enc] = table;
  return table;
}

/** The library's pre-token regex (a shared /gu object: callers copy it before using lastIndex). */
export function getSplitRegex(enc: TokenEncoding): RegExp {
  return enc === 'o200k_base' ? O200K_TOKEN_SPLIT_REGEX : CL100K_TOKEN_SPLIT_REGEX;
}

/** The library's own API, loaded on first use: the reference the counter is tested and benchmarked against. */
export function getEncoder(enc: TokenEncoding): Encoder {
  return (references[enc] ??= require(`gpt-tokenizer/encoding/${enc}`) as Encoder);
}

/** Loads the given tables now, so the first request that needs one does not pay for it. */
export function warmTokenizers(encs: readonly TokenEncoding[] = ['o200k_base']): void {
  for (const enc of encs) getRankTable(enc);
}

const O200K_PREFIXES = ['gpt-4o', 'gpt-4.1', 'gpt-4.5', 'chatgpt-4o', 'gpt-5', 'gpt-oss', 'o1', 'o3', 'o4'];
const CL100K_PREFIXES = ['gpt-4', 'gpt-3.5', 'gpt-35', 'text-embedding'];

/**
 * The encoding for a model name; an `org/` or `provider/` prefix is ignored. Models that are not OpenAI's
 * (deepseek, llama, ...) have their own tokenizers; o200k is the stand-in for them.
 */
export function encodingForModel(model: string | undefined): TokenEncoding {
  if (model === undefined) return 'o200k_base';
  const slash = model.lastIndexOf('/');
  let name = slash === -1 ? model : model.slice(slash + 1);
  if (name !== name.toLowerCase()) name = name.toLowerCase();
  // o200k prefixes first: 'gpt-4o' and 'gpt-4.1' also start with the cl100k prefix 'gpt-4'.
  for (const p of O200K_PREFIXES) if (name.startsWith(p)) return 'o200k_base';
  for (const p of CL100K_PREFIXES) if (name.startsWith(p)) return 'cl100k_base';
  return 'o200k_base';
}
