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

// The other surfaces count like chat: 3 + Σ over turns (3 + tokens of the turn's text), where the system text
// (`instructions`, Anthropic `system`, Gemini `systemInstruction`) is a turn of its own when present.
//   responses:  `input` string → one turn; items → message items count their string content or their
//               input_text/output_text/text parts, function_call items their arguments, function_call_output
//               items their output; other item types count 3
//   anthropic:  `messages[].content` string or blocks; `text` blocks are counted, other block types count 0
//   gemini:     `contents[].parts[].text`; parts without text count 0
//   embeddings: like completions' `prompt`, without any overhead

function partsText(parts: unknown, at: string, types: ReadonlySet<string>): number {
  if (parts === undefined || parts === null) return 0;
  if (typeof parts === 'string') return textTokens(parts);
  if (!Array.isArray(parts)) throw new PromptShapeError(`${at} must be a string or an array`);
  let n = 0;
  for (const p of parts) {
    if (p === null || typeof p !== 'object') throw new PromptShapeError(`${at} entries must be objects`);
    const type = (p as { type?: unknown }).type;
    if (typeof type === 'string' && types.has(type)) {
      const text = (p as { text?: unknown }).text;
      if (typeof text !== 'string') throw new PromptShapeError(`${at} text entries must have a string text`);
      n += textTokens(text);
    }
  }
  return n;
}

const RESPONSES_TEXT_PARTS = new Set(['input_text', 'output_text', 'text']);
const ANTHROPIC_TEXT_BLOCKS = new Set(['text']);

function systemTurn(system: unknown, count: (v: unknown) => number): number {
  if (system === undefined || system === null) return 0;
  if (typeof system === 'string') return system === '' ? 0 : 3 + textTokens(system);
  return 3 + count(system);
}

/** Prompt tokens of a Responses API request (`instructions` + `input`). */
export function responsesPromptTokens(body: Record<string, unknown>): number {
  const instructions = body.instructions;
  if (instructions !== undefined && instructions !== null && typeof instructions !== 'string') {
    throw new PromptShapeError('instructions must be a string');
  }
  let n = 3 + systemTurn(instructions, () => 0);
  const input = body.input;
  // A request continuing a stored conversation (previous_response_id) may send no input.
  if (input === undefined || input === null) return n;
  if (typeof input === 'string') return n + 3 + textTokens(input);
  if (!Array.isArray(input)) throw new PromptShapeError('input must be a string or an array of items');
  for (let i = 0; i < input.length; i++) {
    const item: unknown = input[i];
    if (item === null || typeof item !== 'object') throw new PromptShapeError(`input[${i}] must be an object`);
    const it = item as Record<string, unknown>;
    n += 3;
    if (it.type === 'function_call') n += typeof it.arguments === 'string' ? textTokens(it.arguments) : 0;
    else if (it.type === 'function_call_output') n += typeof it.output === 'string' ? textTokens(it.output) : 0;
    else if (it.type === undefined || it.type === 'message') n += partsText(it.content, `input[${i}].content`, RESPONSES_TEXT_PARTS);
  }
  return n;
}

/** Prompt tokens of an Anthropic Messages request (`system` + `messages`); also the count_tokens answer. */
export function anthropicPromptTokens(body: Record<string, unknown>): number {
  let n = 3 + systemTurn(body.system, (v) => partsText(v, 'system', ANTHROPIC_TEXT_BLOCKS));
  const messages = body.messages;
  if (!Array.isArray(messages)) throw new PromptShapeError('messages must be an array');
  for (let i = 0; i < messages.length; i++) {
    const m: unknown = messages[i];
    if (m === null || typeof m !== 'object') throw new PromptShapeError(`messages[${i}] must be an object`);
    n += 3 + partsText((m as { content?: unknown }).content, `messages[${i}].content`, ANTHROPIC_TEXT_BLOCKS);
  }
  return n;
}

function geminiParts(content: unknown, at: string): number {
  if (content === null || typeof content !== 'object') throw new PromptShapeError(`${at} must be an object`);
  const parts = (content as { parts?: unknown }).parts;
  if (parts === undefined) return 0;
  if (!Array.isArray(parts)) throw new PromptShapeError(`${at}.parts must be an array`);
  let n = 0;
  for (const p of parts) {
    if (p === null || typeof p !== 'object') throw new PromptShapeError(`${at}.parts entries must be objects`);
    const text = (p as { text?: unknown }).text;
    if (text !== undefined && typeof text !== 'string') throw new PromptShapeError(`${at}.parts text must be a string`);
    if (typeof text === 'string') n += textTokens(text);
  }
  return n;
}

/** Prompt tokens of a Gemini generateContent request (`systemInstruction` + `contents`). */
export function geminiPromptTokens(body: Record<string, unknown>): number {
  const sys = body.systemInstruction ?? body.system_instruction;
  let n = 3;
  if (sys !== undefined && sys !== null) n += 3 + (typeof sys === 'string' ? textTokens(sys) : geminiParts(sys, 'systemInstruction'));
  const contents = body.contents;
  if (contents === undefined) return n;
  if (!Array.isArray(contents)) throw new PromptShapeError('contents must be an array');
  for (let i = 0; i < contents.length; i++) n += 3 + geminiParts(contents[i], `contents[${i}]`);
  return n;
}

/** An embeddings `input` as its items: the text or token ids of each one, and its tokens. */
export function embeddingInputs(input: unknown): Array<{ key: string; tokens: number }> {
  if (typeof input === 'string') return [{ key: input, tokens: textTokens(input) }];
  if (!Array.isArray(input)) throw new PromptShapeError('input must be a string or an array');
  if (input.length === 0) throw new PromptShapeError('input must not be empty');
  if (typeof input[0] === 'number') {
    if (!isTokenIds(input)) throw new PromptShapeError('input token array must hold integers');
    return [{ key: JSON.stringify(input), tokens: input.length }];
  }
  return input.map((p: unknown) => {
    if (typeof p === 'string') return { key: p, tokens: textTokens(p) };
    if (Array.isArray(p) && isTokenIds(p)) return { key: JSON.stringify(p), tokens: p.length };
    throw new PromptShapeError('input array must hold strings or token arrays');
  });
}
