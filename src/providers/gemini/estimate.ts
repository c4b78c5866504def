// Gemini's tokenizer is not public (Gemma ships the same SentencePiece family, but Sluice loads no second rank
// table), so a Gemini prompt is counted with o200k and scaled up. Two corrections go in before the scale,
// because no single multiplier covers them: Gemini splits every digit into its own token (o200k groups up to
// three), and its longest whitespace piece is 16 spaces (o200k merges far longer runs).
//
// PROMPT_SCALE = 1.3. Measured against the Gemma tokenizers (Gemini 1.x vocabulary and Gemma 3's, the larger of
// the two counts per text) on 283 texts: this repo's docs, 59 package READMEs, 113 source files (TS/JS), 30
// package.json files, generated number tables, 12 languages, short prompts, whitespace runs, base64/hex.
// Without corrections, Gemini counts are o200k × 1.09 (prose) to × 1.19 (JS) in aggregate, × 1.7 for numbers.
// With the corrections and × 1.3, no text was under-estimated: error (estimate − gemini) / gemini min +3.0%,
// p5 +8.4%, median +16.8%, p95 +33%, max +91% (Japanese, where Gemini's vocabulary is the denser one). Public
// figures agree: Google's docs give ~4 characters per token and count "The quick brown fox jumps over the lazy
// dog." as 10 tokens (o200k: 10); third-party comparisons put English at 5–15% above o200k. The fixture in
// test/unit/providers-gemini.test.ts keeps a sample of those texts with their Gemini counts.
import type { PromptParts } from '../../tokens/count.ts';

export const PROMPT_SCALE = 1.3;
/**
 * Framing, as OpenAI's chat count has it (3 per turn, 3 per request). Gemini's own is smaller (countTokens gives
 * the fox sentence 10 tokens, its generateContent usage 11): on short prompts the estimate errs high.
 */
export const TOKENS_PER_CONTENT = 3;
export const TOKENS_PER_REQUEST = 3;
/** An image is 258 tokens up to 384 px a side, 258 per 768 px tile beyond: one tile is the floor we know. */
export const TOKENS_PER_MEDIA = 258;
/** Gemini's longest run-of-spaces piece. */
const SPACE_RUN = 16;

/**
 * Tokens Gemini spends on `text` beyond what o200k counts for it: for a run of d digits, d − ⌈d/3⌉; for a
 * run of s > 16 spaces, ⌈s/16⌉. One pass over the characters, no allocation.
 */
export function extraTokens(text: string): number {
  let extra = 0;
  let digits = 0;
  let spaces = 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) { digits++; if (spaces > 0) { if (spaces > SPACE_RUN) extra += Math.ceil(spaces / SPACE_RUN); spaces = 0; } continue; }
    if (digits > 0) { extra += digits - Math.ceil(digits / 3); digits = 0; }
    if (c === 0x20) { spaces++; continue; }
    if (spaces > 0) { if (spaces > SPACE_RUN) extra += Math.ceil(spaces / SPACE_RUN); spaces = 0; }
  }
  if (digits > 0) extra += digits - Math.ceil(digits / 3);
  if (spaces > SPACE_RUN) extra += Math.ceil(spaces / SPACE_RUN);
  return extra;
}

/** Adds a text to count, with its Gemini correction in the fixed part. */
export function addText(parts: PromptParts, text: string): void {
  if (text.length === 0) return;
  parts.texts.push(text);
  parts.fixed += extraTokens(text);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Texts of one Gemini part: text, function calls and responses (as JSON), code; media as a flat charge. */
export function addPart(parts: PromptParts, part: unknown): void {
  if (!isObject(part)) return;
  if (typeof part.text === 'string') addText(parts, part.text);
  if (part.inlineData !== undefined || part.inline_data !== undefined || part.fileData !== undefined || part.file_data !== undefined) {
    parts.fixed += TOKENS_PER_MEDIA;
  }
  for (const k of ['functionCall', 'function_call', 'functionResponse', 'function_response', 'executableCode', 'executable_code', 'codeExecutionResult', 'code_execution_result']) {
    const v = part[k];
    if (v !== undefined && v !== null) addText(parts, JSON.stringify(v));
  }
}

/** Parts of one Content ({role, parts}). */
export function addContent(parts: PromptParts, content: unknown): void {
  parts.fixed += TOKENS_PER_CONTENT;
  if (!isObject(content)) return;
  const ps = content.parts;
  if (Array.isArray(ps)) for (const p of ps) addPart(parts, p);
}

/** The prompt of a generateContent request: contents, systemInstruction, tools (as JSON). */
export function geminiPromptParts(contents: readonly unknown[], system: unknown, tools: unknown): PromptParts {
  const parts: PromptParts = { fixed: TOKENS_PER_REQUEST, texts: [] };
  for (const c of contents) addContent(parts, c);
  if (system !== undefined && system !== null) {
    if (typeof system === 'string') { parts.fixed += TOKENS_PER_CONTENT; addText(parts, system); } else addContent(parts, system);
  }
  if (tools !== undefined && tools !== null) addText(parts, JSON.stringify(tools));
  return parts;
}
