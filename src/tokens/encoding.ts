// Which BPE table a model uses, and the tables themselves, loaded synchronously on first use.
// gpt-tokenizer is imported only in src/tokens. The tables are big (o200k takes ~130-330 ms and ~90 MB to load),
// so nothing loads at import time: a thread that never counts never pays, and callers that want the cost
// up front (server start, worker start) call warmTokenizers().
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { EncodeOptions } from 'gpt-tokenizer/GptEncoding';

export type TokenEncoding = 'o200k_base' | 'cl100k_base';

export interface Encoder {
  countTokens(input: string, options?: EncodeOptions): number;
}

/** The parts of gpt-tokenizer 4.0's BytePairEncodingCore that src/tokens/text-count.ts drives directly. */
export interface EncoderCore {
  readonly tokenSplitRegex: RegExp;
  getBpeRankFromString(piece: string): number | undefined;
  getBpeRankFromBytes(bytes: Uint8Array): number | undefined;
  bytePairEncode(piece: string): number[];
}

interface EncodingModule extends Encoder {
  readonly default: { readonly bytePairEncodingCoreProcessor: EncoderCore };
}

// ESM `import()` is async and the counting API is sync, so the package's CJS build is loaded through require.
const require = createRequire(import.meta.url);
let o200k: EncodingModule | undefined;
let cl100k: EncodingModule | undefined;

interface GptEncodingClass {
  getEncodingApi(name: TokenEncoding, ranks: () => unknown): EncodingModule['default'] & Encoder;
}

/**
 * The rank table as JSON, written next to the compiled module by scripts/build-ranks.mjs from the library's own
 * table: JSON.parse takes ~70 ms where compiling the library's 2.4 MB array literal takes ~260 ms of start-up.
 * Absent when running from sources (tests under tsx): then the library's module is loaded as is.
 */
function loadFromJson(enc: TokenEncoding): EncodingModule | undefined {
  let text: string;
  try {
    text = readFileSync(new URL(`./ranks/${enc}.json`, import.meta.url), 'utf8');
  } catch {
    return undefined;
  }
  const { GptEncoding } = require('gpt-tokenizer/GptEncoding') as { GptEncoding: GptEncodingClass };
  const api = GptEncoding.getEncodingApi(enc, () => JSON.parse(text) as unknown);
  return { countTokens: api.countTokens, default: api };
}

function load(enc: TokenEncoding): EncodingModule {
  if (enc === 'o200k_base') return (o200k ??= loadFromJson(enc) ?? require('gpt-tokenizer/encoding/o200k_base') as EncodingModule);
  return (cl100k ??= loadFromJson(enc) ?? require('gpt-tokenizer/encoding/cl100k_base') as EncodingModule);
}

/** The library's own API: its countTokens is the reference the linear counter is tested (and benchmarked) against. */
export function getEncoder(enc: TokenEncoding): Encoder {
  return load(enc);
}

/** The library's BPE core (its pre-token regex, rank tables and per-piece merge). */
export function getEncoderCore(enc: TokenEncoding): EncoderCore {
  const core = load(enc).default.bytePairEncodingCoreProcessor;
  if (core === undefined || !(core.tokenSplitRegex instanceof RegExp)) throw new Error('unsupported gpt-tokenizer build: no BytePairEncodingCore');
  return core;
}

/** Loads the given tables now, so the first request that needs one does not pay for it. */
export function warmTokenizers(encs: readonly TokenEncoding[] = ['o200k_base']): void {
  for (const enc of encs) getEncoder(enc);
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
