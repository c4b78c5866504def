// The reservation estimate of an Anthropic Messages prompt. Anthropic publishes no tokenizer, so the text is
// counted with o200k (the table Sluice loads anyway: a second table would cost ~90 MB and its load time) and the
// count is multiplied by ANTHROPIC_PROMPT_SCALE, chosen so the estimate stays above Claude's own count in
// practice. Why this value, and the measured error, are in docs/providers-anthropic.md.
import type { PromptParts } from '../../tokens/count.ts';

/**
 * Claude tokens per o200k token, upper bound. Published ratios: Claude 3.5–4.6 vs GPT-4o on the same text
 * +16 % (English), +21 % (math), +30 % (Python); the Opus 4.7 tokenizer (also used by later models) vs 4.6:
 * 1.0–1.35× per Anthropic, 1.45–1.47× measured on English prose and technical docs. The product of the worst
 * of each, 1.30 × 1.47 = 1.91, bounds every figure; 1.9 over-reserves a plain English prompt to a pre-4.7 model
 * by ~64 %, which settlement gives back at once.
 */
export const ANTHROPIC_PROMPT_SCALE = 1.9;
/** Per-request framing (a one-character message counts 7 Claude tokens: the turn markers and reply priming). */
export const REQUEST_BASE_TOKENS = 4;
/** Per message: its turn markers. */
export const MESSAGE_TOKENS = 4;
/** The system prompt's own markers. */
export const SYSTEM_TOKENS = 2;
/**
 * Added once when `tools` is non-empty: the tool-use system prompt Anthropic inserts, in Claude tokens. The
 * largest published figure (Claude 3 Opus, tool_choice auto: 530); current models list 346. Fixed parts are
 * scaled with the rest, so they enter the parts divided by the scale.
 */
export const TOOL_SYSTEM_TOKENS = 530;
/**
 * One image, in Claude tokens: ~width×height/750 after resizing to the model's largest native size, ~1,600
 * up to Claude 4.6 and ~4,800 on Opus 4.7's 2576-pixel images.
 */
export const IMAGE_TOKENS = 4800;

/** Claude tokens → the unscaled units of PromptParts.fixed. */
const unscaled = (claudeTokens: number): number => Math.ceil(claudeTokens / ANTHROPIC_PROMPT_SCALE);
/** Base64 characters per token assumed for a PDF or other binary document (1 token per 3 bytes: generous). */
export const DOCUMENT_CHARS_PER_TOKEN = 4;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Content blocks (or a string) of a message, a system prompt or a tool result. */
function addContent(parts: PromptParts, content: unknown, depth: number): void {
  if (typeof content === 'string') { parts.texts.push(content); return; }
  if (!Array.isArray(content)) return;
  for (const block of content) {
    if (typeof block === 'string') { parts.texts.push(block); continue; }
    if (!isObject(block)) continue;
    addBlock(parts, block, depth);
  }
}

function addBlock(parts: PromptParts, b: Record<string, unknown>, depth: number): void {
  switch (b.type) {
    case 'text':
      if (typeof b.text === 'string') parts.texts.push(b.text);
      return;
    case 'image':
      parts.fixed += unscaled(IMAGE_TOKENS);
      return;
    case 'document': {
      const src = b.source;
      if (isObject(src)) {
        if (typeof src.data === 'string') {
          if (src.type === 'text') parts.texts.push(src.data);
          else parts.fixed += unscaled(Math.max(IMAGE_TOKENS, Math.ceil(src.data.length / DOCUMENT_CHARS_PER_TOKEN)));
        } else if (src.type === 'content' && depth < 4) addContent(parts, src.content, depth + 1);
        else parts.fixed += unscaled(IMAGE_TOKENS);
      }
      if (typeof b.title === 'string') parts.texts.push(b.title);
      if (typeof b.context === 'string') parts.texts.push(b.context);
      return;
    }
    case 'thinking':
      if (typeof b.thinking === 'string') parts.texts.push(b.thinking);
      return;
    case 'redacted_thinking':
      if (typeof b.data === 'string') parts.texts.push(b.data);
      return;
    case 'tool_use':
    case 'server_tool_use':
      if (typeof b.name === 'string') parts.texts.push(b.name);
      if (b.input !== undefined) parts.texts.push(JSON.stringify(b.input));
      return;
    case 'tool_result':
      if (depth < 4) addContent(parts, b.content, depth + 1);
      return;
    default:
      // Search results, web-search results and future kinds: their JSON bounds their text.
      parts.texts.push(JSON.stringify(b));
  }
}

/**
 * A Messages request taken apart for counting: framing and images as fixed tokens, every text (system, message
 * blocks, tool inputs and results, the tools' JSON) to be counted. The caller multiplies the count by the scale.
 */
export function anthropicPromptParts(obj: Record<string, unknown>): PromptParts {
  const parts: PromptParts = { fixed: REQUEST_BASE_TOKENS, texts: [] };
  const system = obj.system;
  if (system !== undefined && system !== null) {
    parts.fixed += SYSTEM_TOKENS;
    addContent(parts, system, 0);
  }
  const messages = obj.messages;
  if (Array.isArray(messages)) {
    for (const m of messages) {
      parts.fixed += MESSAGE_TOKENS;
      if (isObject(m)) addContent(parts, m.content, 0);
    }
  }
  const tools = obj.tools;
  if (Array.isArray(tools) && tools.length > 0) {
    parts.fixed += unscaled(TOOL_SYSTEM_TOKENS);
    parts.texts.push(JSON.stringify(tools));
  }
  return parts;
}
