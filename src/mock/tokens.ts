// Deterministic token accounting of the mock upstream. Gateway tests compute the same numbers with these
// functions, so the rule lives here once:
//   chat:        3 + Σ over messages (3 + tokens of the message's text content)
//                (string content is counted whole; in a content-parts array each `{type:'text', text}` part is
//                counted on its own and other part types count 0 — the OpenAI chat counting convention without
//                the role/name tokens)
//   completions: string → its tokens; string[] → sum; number[] (token ids) → its length; number[][] → sum of lengths
// Tokens are o200k_base as counted by gpt-tokenizer, special-token text (`<|endoftext|>`) counted as plain text.
// Generated content is "tok" followed by " tok" repeats: every word is exactly one o200k token, so the text of
// n tokens counts back to exactly n, whole or summed delta by delta.
// The table comes from src/tokens (loaded once per thread, on first use): an ESM import of gpt-tokenizer here
// would load a second copy of o200k (~90 MB) beside the gateway's CJS one in `sluice start --embedded`.
// countText is gpt-tokenizer's count exactly, in near-linear time (a one-letter run is not quadratic).
import { countText } from '../tokens/count.ts';

const CACHE_MAX_ENTRIES = 512;
// Longer strings are counted every time rather than pinned in memory by the cache.
const CACHE_MAX_CHARS = 64 * 1024;
const cache = new Map<string, number>();

export class PromptShapeError extends Error {}

export function textTokens(text: string): number {
  if (text.length === 0) return 0;
  const hit = cache.get(text);
  if (hit !== undefined) return hit;
  const n = countText(text, 'o200k_base');
  if (text.length <= CACHE_MAX_CHARS) {
    // Evict the oldest entry: Map iterates in insertion order.
    if (cache.size >= CACHE_MAX_ENTRIES) cache.delete(cache.keys().next().value as string);
    cache.set(text, n);
  }
  return n;
}

function contentTokens(content: unknown, at: string): number {
  if (content === undefined || content === null) return 0;
  if (typeof content === 'string') return textTokens(content);
  if (!Array.isArray(content)) throw new PromptShapeError(`${at}.content must be a string, an array of parts or null`);
  let n = 0;
  for (const part of content) {
    if (part !== null && typeof part === 'object' && (part as { type?: unknown }).type === 'text') {
      const text = (part as { text?: unknown }).text;
      if (typeof text !== 'string') throw new PromptShapeError(`${at}.content text part must have a string text`);
      n += textTokens(text);
    }
  }
  return n;
}

/** Prompt tokens of a chat request's `messages`; throws PromptShapeError when the shape is wrong. */
export function chatPromptTokens(messages: unknown): number {
  if (!Array.isArray(messages)) throw new PromptShapeError('messages must be an array');
  let n = 3;
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (m === null || typeof m !== 'object') throw new PromptShapeError(`messages[${i}] must be an object`);
    n += 3 + contentTokens((m as { content?: unknown }).content, `messages[${i}]`);
  }
  return n;
}

function isTokenIds(v: unknown[]): boolean {
  for (const x of v) if (!Number.isInteger(x)) return false;
  return true;
}

/** Prompt tokens of a completions request's `prompt`; throws PromptShapeError when the shape is wrong. */
export function completionPromptTokens(prompt: unknown): number {
  if (typeof prompt === 'string') return textTokens(prompt);
  if (!Array.isArray(prompt)) throw new PromptShapeError('prompt must be a string or an array');
  if (prompt.length === 0) return 0;
  if (typeof prompt[0] === 'number') {
    if (!isTokenIds(prompt)) throw new PromptShapeError('prompt token array must hold integers');
    return prompt.length;
  }
  let n = 0;
  for (const p of prompt) {
    if (typeof p === 'string') n += textTokens(p);
    else if (Array.isArray(p) && isTokenIds(p)) n += p.length;
    else throw new PromptShapeError('prompt array must hold strings or token arrays');
  }
  return n;
}

/** Text of tokens [start, end) of the generated completion; the pieces concatenate to the whole. */
export function completionSlice(start: number, end: number): string {
  if (end <= start) return '';
  return start === 0 ? 'tok' + ' tok'.repeat(end - 1) : ' tok'.repeat(end - start);
}
