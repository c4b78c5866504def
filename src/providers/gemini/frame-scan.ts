// A fast path for the common Gemini stream frame: one candidate whose only part is `{"text": …}`, no finish
// reason, no function call. Nearly every frame of a stream is one; reading its text with a few indexOf scans
// costs a fraction of a JSON.parse of the whole frame. Anything else returns null and the caller parses the
// frame in full. The usageMetadata such a frame carries is not read here: the caller keeps the frame and reads
// it only if it turns out to be the last usage of the stream.
//
// A key is found by its quoted name: inside a JSON string a quote is always escaped, so `"text"` can only be a
// key or a whole string value, and the checks around it (`"parts": [{` before, `}]` after) pin it to the first
// and only key of the only part.
import { closingQuote } from '../../streaming/json-literal.ts';

export interface TextFrame {
  /** The text, decoded. */
  readonly text: string;
  /** Its JSON string literal as the upstream wrote it, quotes included (valid JSON to write out as is). */
  readonly literal: string;
  /** The candidate's index (0 when not written). */
  readonly index: number;
  /** Where the frame's usageMetadata key is (its opening quote), -1 when it has none. */
  readonly usageAt: number;
}

const QUOTE = 0x22;

function skipSpace(s: string, i: number): number {
  for (;;) {
    const c = s.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i;
    i++;
  }
}

function skipSpaceBack(s: string, i: number): number {
  for (;;) {
    const c = s.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return i;
    i--;
  }
}

/** Whether `s` ends, before `at` (spaces skipped), with `word`. */
function before(s: string, at: number, word: string): number {
  const end = skipSpaceBack(s, at) + 1;
  return s.startsWith(word, end - word.length) ? end - word.length - 1 : -2;
}

// Key patterns without their opening quote: V8's indexOf slows down several-fold when the pattern's first
// character is a frequent one, and JSON is full of quotes. The quote before a match is checked instead.
const TEXT = 'text"';
const FINISH = 'finishReason"';
const CALL = 'functionCall"';
const INDEX = 'index"';
const USAGE = 'usageMetadata"';

/** Where the key `pattern` names is in `s`, as its opening quote's index; -1 when absent. */
function key(s: string, pattern: string, from = 0): number {
  for (let i = s.indexOf(pattern, from); i !== -1; i = s.indexOf(pattern, i + 1)) {
    if (s.charCodeAt(i - 1) === QUOTE) return i - 1;
  }
  return -1;
}

export function scanTextFrame(data: string): TextFrame | null {
  if (data.charCodeAt(0) !== 0x7b) return null;
  const t = key(data, TEXT);
  if (t === -1 || key(data, TEXT, t + 6) !== -1) return null;
  if (key(data, FINISH) !== -1 || key(data, CALL) !== -1) return null;
  // `"parts": [{"text"`: the first key of the first part.
  let b = before(data, t - 1, '{');
  if (b === -2) return null;
  b = before(data, b, '[');
  if (b === -2) return null;
  b = before(data, b, ':');
  if (b === -2 || before(data, b, '"parts"') === -2) return null;
  let v = skipSpace(data, t + 6);
  if (data.charCodeAt(v) !== 0x3a) return null;
  v = skipSpace(data, v + 1);
  if (data.charCodeAt(v) !== QUOTE) return null;
  const end = closingQuote(data, v);
  if (end === -1) return null;
  // `}]` after it: the only key of the only part.
  let a = skipSpace(data, end + 1);
  if (data.charCodeAt(a) !== 0x7d) return null;
  a = skipSpace(data, a + 1);
  if (data.charCodeAt(a) !== 0x5d) return null;
  const literal = data.slice(v, end + 1);
  let text: string;
  if (literal.indexOf('\\') === -1) text = literal.slice(1, -1);
  else {
    try { text = JSON.parse(literal) as string; } catch { return null; }
  }
  let index = 0;
  const ix = key(data, INDEX);
  if (ix !== -1) {
    if (key(data, INDEX, ix + 7) !== -1) return null;
    let n = skipSpace(data, ix + 7);
    if (data.charCodeAt(n) !== 0x3a) return null;
    n = skipSpace(data, n + 1);
    let num = 0;
    let digits = 0;
    for (let c = data.charCodeAt(n); c >= 0x30 && c <= 0x39 && digits < 6; c = data.charCodeAt(++n)) { num = num * 10 + (c - 0x30); digits++; }
    if (digits === 0) return null;
    index = num;
  }
  return { text, literal, index, usageAt: key(data, USAGE) };
}

/** Longest usageMetadata text read out of a frame; a larger one is left to a whole-frame parse. */
const MAX_USAGE_TEXT = 8 * 1024;

/** Where a frame's `usageMetadata` object opens (its `{`); -1 when the frame has none, has it twice (JSON.parse
 *  keeps the last, a scan would read the first: the whole frame is parsed instead) or it is not an object. */
export function usageMetadataStart(data: string, k = key(data, USAGE)): number {
  if (k === -1 || key(data, USAGE, k + USAGE.length + 1) !== -1) return -1;
  let i = skipSpace(data, k + USAGE.length + 1);
  if (data.charCodeAt(i) !== 0x3a) return -1;
  i = skipSpace(data, i + 1);
  return data.charCodeAt(i) === 0x7b ? i : -1;
}

/**
 * The JSON text of the object opening at `start` (usageMetadataStart), found by its balanced braces (strings
 * skipped); undefined when unbalanced within MAX_USAGE_TEXT. Mid-stream frames repeat the same text, so comparing it
 * spares parsing each one.
 */
export function usageMetadataText(data: string, start = usageMetadataStart(data)): string | undefined {
  if (start === -1) return undefined;
  const stop = Math.min(data.length, start + MAX_USAGE_TEXT);
  let depth = 0;
  for (let i = start; i < stop; i++) {
    const c = data.charCodeAt(i);
    if (c === QUOTE) {
      i = closingQuote(data, i);
      if (i === -1 || i >= stop) return undefined;
    } else if (c === 0x7b || c === 0x5b) depth++;
    else if ((c === 0x7d || c === 0x5d) && --depth === 0) return data.slice(start, i + 1);
  }
  return undefined;
}
