// A fast path for the common OpenAI chunk: text-only deltas and `"usage":null`. Reading their text with a few
// indexOf scans costs about a third of a JSON.parse of the whole frame, and almost every frame of a stream is
// one of these. Anything else (usage, tool calls, logprobs, a key with spacing the scan does not expect, text
// under two different keys) returns null and the caller parses the frame in full, so both paths yield the same
// text.

const TEXT_KEYS = ['"content"', '"reasoning_content"', '"text"'] as const;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;

/** Index of the quote closing the string literal that opens at `open`, or -1. */
function closingQuote(s: string, open: number): number {
  let j = open + 1;
  for (;;) {
    j = s.indexOf('"', j);
    if (j === -1) return -1;
    let k = j - 1;
    while (s.charCodeAt(k) === BACKSLASH) k--;
    // An even number of backslashes before the quote: it is not escaped.
    if (((j - 1 - k) & 1) === 0) return j;
    j++;
  }
}

/** The delta text of a plain chunk ('' when it has none), or null when the frame needs a full JSON.parse. */
export function scanDeltaText(data: string): string | null {
  for (let u = data.indexOf('"usage"'); u !== -1; u = data.indexOf('"usage"', u + 7)) {
    if (!data.startsWith('"usage":null', u)) return null;
  }
  if (data.indexOf('"tool_calls"') !== -1 || data.indexOf('"function_call"') !== -1) return null;
  let out = '';
  let kinds = 0;
  for (const key of TEXT_KEYS) {
    let found = false;
    for (let i = data.indexOf(key); i !== -1; i = data.indexOf(key, i + key.length)) {
      const v = i + key.length;
      if (data.charCodeAt(v) !== COLON) return null;
      if (data.startsWith('null', v + 1)) continue;
      if (data.charCodeAt(v + 1) !== QUOTE) return null;
      const end = closingQuote(data, v + 1);
      if (end === -1) return null;
      if (data.lastIndexOf('\\', end) > v) {
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
  return out;
}
