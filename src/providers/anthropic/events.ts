// Reading Anthropic stream events cheaply. Nearly every event of a stream is a content_block_delta, which the
// API writes in one compact layout: {"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":"…"}}.
// scanDelta finds its text with a few comparisons and no JSON.parse, and returns where the JSON string literal
// sits, so a translator can splice the literal into its own frame without unescaping and re-escaping it.
// Any other layout returns null and the caller parses the event in full (both paths read the same text).
import { closingQuote } from '../../streaming/json-literal.ts';

export type DeltaKind = 'text' | 'thinking' | 'json';

export interface DeltaScan {
  readonly index: number;
  readonly kind: DeltaKind;
  /** The string literal: data[start] is its opening quote, data[end] its closing one. */
  readonly start: number;
  readonly end: number;
}

const HEAD = '{"type":"content_block_delta","index":';
const DELTA = ',"delta":{"type":"';
const KINDS: readonly (readonly [string, DeltaKind])[] = [
  ['text_delta","text":', 'text'],
  ['input_json_delta","partial_json":', 'json'],
  ['thinking_delta","thinking":', 'thinking'],
];
const QUOTE = 0x22;

export function scanDelta(data: string): DeltaScan | null {
  if (!data.startsWith(HEAD)) return null;
  let i = HEAD.length;
  let index = 0;
  const digits = i;
  for (let c = data.charCodeAt(i); c >= 0x30 && c <= 0x39 && i - digits < 9; c = data.charCodeAt(++i)) index = index * 10 + (c - 0x30);
  if (i === digits || !data.startsWith(DELTA, i)) return null;
  i += DELTA.length;
  for (const [key, kind] of KINDS) {
    if (!data.startsWith(key, i)) continue;
    const start = i + key.length;
    if (data.charCodeAt(start) !== QUOTE) return null;
    const end = closingQuote(data, start);
    // The literal must close both objects and end the event: nothing else may hide in the frame.
    if (end === -1 || end + 3 !== data.length || data.charCodeAt(end + 1) !== 0x7d || data.charCodeAt(end + 2) !== 0x7d) return null;
    return { index, kind, start, end };
  }
  return null;
}

/** The text of a scanned literal (unescaped only when it has an escape). */
export function literalText(data: string, s: DeltaScan): string {
  const esc = data.indexOf('\\', s.start + 1);
  if (esc === -1 || esc > s.end) return data.slice(s.start + 1, s.end);
  return JSON.parse(data.slice(s.start, s.end + 1)) as string;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Generated text of one delta object (full-parse path): text, thinking, or tool input JSON. */
export function deltaText(delta: unknown): { kind: DeltaKind; text: string } | undefined {
  if (!isObject(delta)) return undefined;
  switch (delta.type) {
    case 'text_delta': return typeof delta.text === 'string' ? { kind: 'text', text: delta.text } : undefined;
    case 'thinking_delta': return typeof delta.thinking === 'string' ? { kind: 'thinking', text: delta.thinking } : undefined;
    case 'input_json_delta': return typeof delta.partial_json === 'string' ? { kind: 'json', text: delta.partial_json } : undefined;
    default: return undefined;
  }
}

/** Text of content blocks to count when usage is missing: text, thinking, tool names and inputs. */
export function contentText(content: unknown): string {
  if (!Array.isArray(content)) return '';
  let out = '';
  for (const b of content) {
    if (!isObject(b)) continue;
    if (typeof b.text === 'string') out += b.text;
    if (typeof b.thinking === 'string') out += b.thinking;
    if (b.type === 'tool_use' || b.type === 'server_tool_use') {
      if (typeof b.name === 'string') out += b.name;
      if (b.input !== undefined) out += JSON.stringify(b.input);
    }
  }
  return out;
}
