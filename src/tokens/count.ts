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
  if (typeof content === 'string') return countText(content, enc);
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (typeof part === 'string') { n += countText(part, enc); continue; }
    if (!isObject(part)) continue;
    const type = part.type;
    if (type === 'image_url' || type === 'image' || type === 'input_image') { n += TOKENS_PER_IMAGE; continue; }
    if (typeof part.text === 'string') n += countText(part.text, enc);
    else if (typeof part.refusal === 'string') n += countText(part.refusal, enc);
  }
  return n;
}

function countJson(value: unknown, enc: TokenEncoding): number {
  if (value === undefined || value === null) return 0;
  return countText(JSON.stringify(value), enc);
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
    if (typeof m.name === 'string') n += countText(m.name, enc) + TOKENS_PER_NAME;
    n += countContent(m.content, enc);
    if (m.tool_calls !== undefined) n += countJson(m.tool_calls, enc);
    if (m.function_call !== undefined) n += countJson(m.function_call, enc);
    if (typeof m.tool_call_id === 'string') n += countText(m.tool_call_id, enc);
  }
  return n + countJson(tools, enc) + countJson(functions, enc);
}

/** Prompt tokens of a /v1/completions `prompt`: a string, an array of strings, or token ids (flat or nested). */
export function countCompletionPrompt(prompt: unknown, enc: TokenEncoding): number {
  if (typeof prompt === 'string') return countText(prompt, enc);
  if (!Array.isArray(prompt)) return 0;
  let n = 0;
  for (const p of prompt) {
    if (typeof p === 'string') n += countText(p, enc);
    else if (typeof p === 'number') n += 1;
    else if (Array.isArray(p)) n += p.length;
  }
  return n;
}
