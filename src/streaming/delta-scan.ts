// A fast path for the common OpenAI chunk: text-only deltas and `"usage":null`. Almost every frame of a stream
// is one of these, and reading their text with a few indexOf scans costs a fraction of a JSON.parse of the
// whole frame. Anything else (usage, tool calls, a refusal, reasoning or audio, logprobs, spacing the scan does not expect, text under two
// different keys) returns null and the caller parses the frame in full, so both paths yield the same text.
//
// Search patterns never start with '"': JSON is full of quotes, and V8's indexOf slows down several-fold when
// the first character of the pattern is frequent. Each match is then checked for its opening quote.
//
// A text key counts only where a full parse reads text: `choices[0].delta.content` / `.reasoning_content` and
// `choices[0].text`, with `choices` a member of the frame object itself. The scan accepts a key only in the
// compact layouts upstreams send (`"choices":[{"index":0,"delta":{"content":…`, `"delta":{"role":"assistant",
// "content":…`, `"choices":[{"text":…`, `"choices":[{"index":0,"text":…`) after checking that nothing before `choices` can nest it; a text key
// anywhere else hands the frame to the full parse.
import { closingQuote } from './json-literal.ts';

const TEXT_KEYS = ['content"', 'reasoning_content"', 'text"'] as const;
const QUOTE = 0x22;
const COLON = 0x3a;

const CHOICE_OPEN = ['"choices":[{"index":0,', '"choices":[{'] as const;
const DELTA_OPEN = ['"delta":{', '"delta":{"role":"assistant",', '"delta":{"content":null,', '"delta":{"role":"assistant","content":null,'] as const;

/** Where `"choices"` opens when it is a member of the frame object (nothing before it opens an object, an array or an escape), else -1. */
function topChoices(data: string): number {
  const c = data.indexOf('choices":[') - 1;
  if (c < 1 || data.charCodeAt(c) !== QUOTE || data.charCodeAt(0) !== 0x7b) return -1;
  const brace = data.indexOf('{', 1);
  const bracket = data.indexOf('[');
  const esc = data.indexOf('\\');
  if ((brace !== -1 && brace < c) || bracket < c || (esc !== -1 && esc < c)) return -1;
  return c;
}

function endsAt(data: string, end: number, prefix: string, at: number): boolean {
  return end - prefix.length === at && data.startsWith(prefix, at);
}

/** The key whose opening quote is at `q` is the first choice's text (`text`) or one of its delta's text fields. */
function inTextPlace(data: string, q: number, key: string, choices: number): boolean {
  if (choices === -1) return false;
  for (const open of CHOICE_OPEN) {
    if (key === 'text"') {
      if (endsAt(data, q, open, choices)) return true;
      continue;
    }
    if (!data.startsWith(open, choices)) continue;
    const d = choices + open.length;
    for (const delta of DELTA_OPEN) if (endsAt(data, q, delta, d)) return true;
  }
  return false;
}

/**
 * Where the last scanDeltaText call found its text: the offsets of its first character and of its closing quote
 * when the frame held exactly one text literal without escapes (`literals` 1, `escaped` false). StreamMeter
 * learns a stream's constant frame prefix and suffix from it (usage-meter.ts).
 */
export const lastScan = { literals: 0, escaped: false, start: 0, end: 0 };

/** Text fields the scan does not read (chat-text.ts does): `"refusal":null` is common and stays on the fast path. */
const OTHER_TEXT_KEYS = ['refusal"', 'reasoning"', 'audio"'] as const;

function otherText(data: string): boolean {
  for (const key of OTHER_TEXT_KEYS) {
    for (let i = data.indexOf(key); i !== -1; i = data.indexOf(key, i + key.length)) {
      if (!data.startsWith(':null', i + key.length)) return true;
    }
  }
  return false;
}

/** The delta text of a plain chunk ('' when it has none), or null when the frame needs a full JSON.parse. */
export function scanDeltaText(data: string): string | null {
  lastScan.literals = 0;
  lastScan.escaped = false;
  // Not an object (text that is not JSON, a space before the brace): the full parse decides.
  if (data.charCodeAt(0) !== 0x7b) return null;
  for (let u = data.indexOf('usage"'); u !== -1; u = data.indexOf('usage"', u + 6)) {
    if (data.charCodeAt(u - 1) === QUOTE && !data.startsWith(':null', u + 6)) return null;
  }
  // tool_calls, function_call: their arguments need the full parse; so does any other text field with a value.
  if (data.indexOf('_call') !== -1 || otherText(data)) return null;
  let out = '';
  let kinds = 0;
  let choices = -2;
  for (const key of TEXT_KEYS) {
    let found = false;
    for (let i = data.indexOf(key); i !== -1; i = data.indexOf(key, i + key.length)) {
      // 'content"' inside 'reasoning_content"' has no quote before it: that key has its own turn.
      if (data.charCodeAt(i - 1) !== QUOTE) continue;
      const v = i + key.length;
      if (data.charCodeAt(v) !== COLON) return null;
      if (data.startsWith('null', v + 1)) continue;
      if (data.charCodeAt(v + 1) !== QUOTE) return null;
      if (choices === -2) choices = topChoices(data);
      if (!inTextPlace(data, i - 1, key, choices)) return null;
      const end = closingQuote(data, v + 1);
      if (end === -1) return null;
      const esc = data.indexOf('\\', v + 2);
      lastScan.literals++;
      lastScan.start = v + 2;
      lastScan.end = end;
      if (esc !== -1 && esc < end) {
        lastScan.escaped = true;
        let s: unknown;
        try { s = JSON.parse(data.slice(v + 1, end + 1)); } catch { return null; }
        out += s as string;
      } else {
        out += data.slice(v + 2, end);
      }
      found = true;
    }
    if (found && ++kinds > 1) return null;
  }
  // What a full parse would read differently: no top-level choices (text that is not JSON, another shape), a second
  // `choices` member (JSON.parse keeps the last), or an escape outside the text literal (a key spelt with \u escapes).
  if (choices === -2) choices = topChoices(data);
  if (choices === -1 || data.indexOf('choices"', choices + 10) !== -1) return null;
  const esc = data.indexOf('\\');
  if (esc !== -1 && (lastScan.literals === 0 || esc < lastScan.start || data.indexOf('\\', lastScan.end) !== -1)) return null;
  return out;
}
