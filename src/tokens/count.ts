// Prompt token counting with a real BPE tokenizer. Reservations are built on these counts, so every rule here
// errs on the side of counting more: OpenAI's chat overheads, tool definitions, names, tool calls.
import type { TokenEncoding } from './encoding.ts';
import { countTextExact, CountJob } from './text-count.ts';

/** Per-message overhead (OpenAI's cookbook: <|start|>{role}\n{content}<|end|>\n). */
export const TOKENS_PER_MESSAGE = 3;
/** Every reply is primed with <|start|>assistant<|message|>. */
export const TOKENS_REPLY_PRIMING = 3;
/** A message's `name` costs one token beyond its text. */
export const TOKENS_PER_NAME = 1;
/** Flat charge per image part until image sizes are taken into account (a low-detail image is 85 tokens). */
export const TOKENS_PER_IMAGE = 85;
/** Inline file or audio data (base64) counts one token per 4 characters: a bound, not a tokenization. */
const INLINE_DATA_CHARS_PER_TOKEN = 4;

/** Inline (base64) file or audio data of a prompt. */
export function addInlineData(parts: PromptParts, data: unknown): void {
  if (typeof data === 'string') parts.fixed += Math.ceil(data.length / INLINE_DATA_CHARS_PER_TOKEN);
}

/**
 * Tokens of `text` as ordinary text (`<|endoftext|>` and friends are plain characters: user content must never
 * throw), exactly as gpt-tokenizer counts them, in time near-linear in the text (src/tokens/text-count.ts).
 */
export function countText(text: string, enc: TokenEncoding): number {
  return countTextExact(text, enc);
}

// Prompt text repeats across requests: system prompts, and in multi-turn chats the whole history is re-sent
// every turn. Counting costs ~0.4 µs per token, a Map hit well under 1 µs, so counts of message texts are
// remembered per encoding, within a character budget.
const CACHE_MIN_CHARS = 16;
const CACHE_MAX_ENTRY_CHARS = 1024 * 1024;
// Per encoding and per thread (main + each worker): at most a few tens of MB in all.
const CACHE_BUDGET_CHARS = 4 * 1024 * 1024;

/**
 * Two generations, each within half the budget: new counts enter the young one, a hit in the old one moves
 * the entry up, and when the young one is full the old one is dropped whole. A hit in the young one is a
 * plain Map lookup: an exact LRU's delete + set on every hit rehashed the Map (~0.8 µs per request).
 * What is used within the last half budget of new text stays.
 */
export class CountCache {
  private young = new Map<string, number>();
  private old = new Map<string, number>();
  private youngChars = 0;
  private oldChars = 0;
  private readonly half: number;

  constructor(budgetChars: number = CACHE_BUDGET_CHARS) {
    this.half = Math.max(1, Math.floor(budgetChars / 2));
  }

  /** Characters of text held as keys. */
  get size(): number {
    return this.youngChars + this.oldChars;
  }

  get(text: string): number | undefined {
    const n = this.young.get(text);
    if (n !== undefined) return n;
    const o = this.old.get(text);
    if (o !== undefined) {
      this.old.delete(text);
      this.oldChars -= text.length;
      this.add(text, o);
    }
    return o;
  }

  set(text: string, n: number): void {
    if (this.young.has(text) || this.old.has(text)) return;
    this.add(text, n);
  }

  clear(): void {
    this.young.clear();
    this.old.clear();
    this.youngChars = 0;
    this.oldChars = 0;
  }

  private add(text: string, n: number): void {
    // Longer than a generation: not kept (the budget holds; the default admits 1 MiB texts within 2 MiB).
    if (text.length > this.half) return;
    if (this.youngChars + text.length > this.half) {
      this.old = this.young;
      this.oldChars = this.youngChars;
      this.young = new Map();
      this.youngChars = 0;
    }
    this.young.set(text, n);
    this.youngChars += text.length;
  }
}

const promptCache: Record<TokenEncoding, CountCache> = { o200k_base: new CountCache(), cl100k_base: new CountCache() };
const CACHE_RANGE: readonly [number, number] = [CACHE_MIN_CHARS, CACHE_MAX_ENTRY_CHARS];

/** countText for prompt text, through the per-encoding cache. Generated (streamed) text is unique: use countText. */
export function countPromptText(text: string, enc: TokenEncoding): number {
  const len = text.length;
  if (len < CACHE_MIN_CHARS || len > CACHE_MAX_ENTRY_CHARS) return countText(text, enc);
  const cache = promptCache[enc];
  let n = cache.get(text);
  if (n === undefined) {
    n = countText(text, enc);
    cache.set(text, n);
  }
  return n;
}

/** Forgets every cached prompt count (benchmarks measuring the uncached path). */
export function clearPromptCountCache(): void {
  promptCache.o200k_base.clear();
  promptCache.cl100k_base.clear();
}

// Roles repeat on every request; their counts are cached per encoding instead of re-tokenized.
const roleCache: Record<TokenEncoding, Map<string, number>> = { o200k_base: new Map(), cl100k_base: new Map() };
const ROLE_MAX_CHARS = 32;

function countRole(role: string, enc: TokenEncoding): number {
  const cache = roleCache[enc];
  let n = cache.get(role);
  if (n === undefined) {
    n = countText(role, enc);
    if (cache.size < 64) cache.set(role, n);
  }
  return n;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A prompt taken apart for counting: fixed overheads already in tokens, plus the texts still to tokenize.
 * Collecting is cheap and linear; counting the texts is the costly part, done at once (countPromptParts) or
 * in time slices with a budget on a worker thread (promptCountJob).
 */
export interface PromptParts {
  fixed: number;
  texts: string[];
}

function addContent(parts: PromptParts, content: unknown): void {
  if (typeof content === 'string') { parts.texts.push(content); return; }
  if (!Array.isArray(content)) return;
  for (const part of content) {
    if (typeof part === 'string') { parts.texts.push(part); continue; }
    if (!isObject(part)) continue;
    const type = part.type;
    if (type === 'image_url' || type === 'image' || type === 'input_image') { parts.fixed += TOKENS_PER_IMAGE; continue; }
    if (type === 'input_audio') { addInlineData(parts, isObject(part.input_audio) ? part.input_audio.data : part.data); continue; }
    if (type === 'file') {
      const file = isObject(part.file) ? part.file : part;
      if (typeof file.filename === 'string') parts.texts.push(file.filename);
      if (typeof file.file_data === 'string') addInlineData(parts, file.file_data);
      else parts.fixed += TOKENS_PER_IMAGE;
      continue;
    }
    if (typeof part.text === 'string') parts.texts.push(part.text);
    else if (typeof part.refusal === 'string') parts.texts.push(part.refusal);
    // A part of a type this does not know is counted as its JSON: an upper bound of what it can carry.
    else addJson(parts, part);
  }
}

/** A JSON value of a prompt (tools, schemas, tool calls), counted as its text. */
export function addJson(parts: PromptParts, value: unknown): void {
  if (value === undefined || value === null) return;
  parts.texts.push(JSON.stringify(value));
}

/**
 * Prompt of a chat request: 3 per message + role, name (+1), content text, refusal, tool calls, plus 3 for the reply
 * priming, plus the JSON text of `tools` / `functions` and of a `json_schema` response format, and a prediction's
 * content, when given.
 */
export function chatPromptParts(messages: readonly unknown[], enc: TokenEncoding, tools?: unknown, functions?: unknown, responseFormat?: unknown, prediction?: unknown): PromptParts {
  const parts: PromptParts = { fixed: TOKENS_REPLY_PRIMING, texts: [] };
  for (const m of messages) {
    parts.fixed += TOKENS_PER_MESSAGE;
    if (!isObject(m)) continue;
    if (typeof m.role === 'string') {
      if (m.role.length <= ROLE_MAX_CHARS) parts.fixed += countRole(m.role, enc);
      else parts.texts.push(m.role);
    }
    if (typeof m.name === 'string') { parts.texts.push(m.name); parts.fixed += TOKENS_PER_NAME; }
    addContent(parts, m.content);
    if (m.tool_calls !== undefined) addJson(parts, m.tool_calls);
    if (m.function_call !== undefined) addJson(parts, m.function_call);
    if (typeof m.tool_call_id === 'string') parts.texts.push(m.tool_call_id);
    if (typeof m.refusal === 'string') parts.texts.push(m.refusal);
  }
  addJson(parts, tools);
  addJson(parts, functions);
  if (isObject(responseFormat) && responseFormat.type === 'json_schema') addJson(parts, responseFormat.json_schema);
  if (isObject(prediction)) addContent(parts, prediction.content);
  return parts;
}

/** Prompt of a /v1/completions `prompt`: a string, an array of strings, or token ids (flat or nested). */
export function completionPromptParts(prompt: unknown): PromptParts {
  const parts: PromptParts = { fixed: 0, texts: [] };
  if (typeof prompt === 'string') { parts.texts.push(prompt); return parts; }
  if (!Array.isArray(prompt)) return parts;
  for (const p of prompt) {
    if (typeof p === 'string') parts.texts.push(p);
    else if (typeof p === 'number') parts.fixed += 1;
    else if (Array.isArray(p)) parts.fixed += p.length;
  }
  return parts;
}

/** Counts prompt parts now, exactly (cached texts are not re-tokenized). */
export function countPromptParts(parts: PromptParts, enc: TokenEncoding): number {
  let n = parts.fixed;
  for (const t of parts.texts) n += countPromptText(t, enc);
  return n;
}

/** A resumable count of prompt parts through the prompt cache; its total includes the fixed part. */
export function promptCountJob(parts: PromptParts, enc: TokenEncoding): CountJob {
  const job = new CountJob(parts.texts, enc, { cache: promptCache[enc], cacheRange: CACHE_RANGE });
  job.total = parts.fixed;
  return job;
}

export function countChatPrompt(messages: readonly unknown[], enc: TokenEncoding, tools?: unknown, functions?: unknown, responseFormat?: unknown, prediction?: unknown): number {
  return countPromptParts(chatPromptParts(messages, enc, tools, functions, responseFormat, prediction), enc);
}

export function countCompletionPrompt(prompt: unknown, enc: TokenEncoding): number {
  return countPromptParts(completionPromptParts(prompt), enc);
}
