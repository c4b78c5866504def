// Prompt token counting with a real BPE tokenizer. Reservations are built on these counts, so every rule here
// errs on the side of counting more: OpenAI's chat overheads, tool definitions, names, tool calls.
import { getEncoder, type TokenEncoding } from './encoding.ts';

// An empty disallowedSpecial set makes `<|endoftext|>` and friends ordinary text: user content must never throw.
const ORDINARY = { disallowedSpecial: new Set<string>() };

/** Per-message overhead (OpenAI's cookbook: <|start|>{role}\n{content}<|end|>\n). */
export const TOKENS_PER_MESSAGE = 3;
/** Every reply is primed with <|start|>assistant<|message|>. */
export const TOKENS_REPLY_PRIMING = 3;
/** A message's `name` costs one token beyond its text. */
export const TOKENS_PER_NAME = 1;
/** Flat charge per image part until image sizes are taken into account (a low-detail image is 85 tokens). */
export const TOKENS_PER_IMAGE = 85;

export function countText(text: string, enc: TokenEncoding): number {
  if (text.length === 0) return 0;
  return getEncoder(enc).countTokens(text, ORDINARY);
}

// Prompt text repeats across requests: system prompts, and in multi-turn chats the whole history is re-sent
// every turn. Counting costs ~0.4 µs per token, a Map hit well under 1 µs, so counts of message texts are
// remembered per encoding, within a character budget (oldest entries go first; a hit moves an entry to the back).
const CACHE_MIN_CHARS = 16;
const CACHE_MAX_ENTRY_CHARS = 1024 * 1024;
// Per encoding and per thread (main + each worker): at most a few tens of MB in all.
const CACHE_BUDGET_CHARS = 4 * 1024 * 1024;

export class CountCache {
  private readonly map = new Map<string, number>();
  private readonly budget: number;
  private chars = 0;

  constructor(budgetChars: number = CACHE_BUDGET_CHARS) {
    this.budget = budgetChars;
  }

  /** Characters of text held as keys. */
  get size(): number {
    return this.chars;
  }

  get(text: string): number | undefined {
    const n = this.map.get(text);
    if (n !== undefined) {
      this.map.delete(text);
      this.map.set(text, n);
    }
    return n;
  }

  set(text: string, n: number): void {
    if (this.map.has(text)) return;
    this.map.set(text, n);
    this.chars += text.length;
    while (this.chars > this.budget) {
      const oldest = this.map.keys().next().value as string;
      this.map.delete(oldest);
      this.chars -= oldest.length;
    }
  }

  clear(): void {
    this.map.clear();
    this.chars = 0;
  }
}

const promptCache: Record<TokenEncoding, CountCache> = { o200k_base: new CountCache(), cl100k_base: new CountCache() };

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

function countContent(content: unknown, enc: TokenEncoding): number {
  if (typeof content === 'string') return countPromptText(content, enc);
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (typeof part === 'string') { n += countPromptText(part, enc); continue; }
    if (!isObject(part)) continue;
    const type = part.type;
    if (type === 'image_url' || type === 'image' || type === 'input_image') { n += TOKENS_PER_IMAGE; continue; }
    if (typeof part.text === 'string') n += countPromptText(part.text, enc);
    else if (typeof part.refusal === 'string') n += countPromptText(part.refusal, enc);
  }
  return n;
}

function countJson(value: unknown, enc: TokenEncoding): number {
  if (value === undefined || value === null) return 0;
  return countPromptText(JSON.stringify(value), enc);
}

/**
 * Prompt tokens of a chat request: 3 per message + role, name (+1), content text, tool calls, plus 3 for the
 * reply priming, plus the JSON text of `tools` / `functions` when given.
 */
export function countChatPrompt(messages: readonly unknown[], enc: TokenEncoding, tools?: unknown, functions?: unknown): number {
  let n = TOKENS_REPLY_PRIMING;
  for (const m of messages) {
    n += TOKENS_PER_MESSAGE;
    if (!isObject(m)) continue;
    if (typeof m.role === 'string') n += countRole(m.role, enc);
    if (typeof m.name === 'string') n += countPromptText(m.name, enc) + TOKENS_PER_NAME;
    n += countContent(m.content, enc);
    if (m.tool_calls !== undefined) n += countJson(m.tool_calls, enc);
    if (m.function_call !== undefined) n += countJson(m.function_call, enc);
    if (typeof m.tool_call_id === 'string') n += countText(m.tool_call_id, enc);
  }
  return n + countJson(tools, enc) + countJson(functions, enc);
}

/** Prompt tokens of a /v1/completions `prompt`: a string, an array of strings, or token ids (flat or nested). */
export function countCompletionPrompt(prompt: unknown, enc: TokenEncoding): number {
  if (typeof prompt === 'string') return countPromptText(prompt, enc);
  if (!Array.isArray(prompt)) return 0;
  let n = 0;
  for (const p of prompt) {
    if (typeof p === 'string') n += countPromptText(p, enc);
    else if (typeof p === 'number') n += 1;
    else if (Array.isArray(p)) n += p.length;
  }
  return n;
}
