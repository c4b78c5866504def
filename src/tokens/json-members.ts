// The top-level members of a JSON object body as byte ranges of the client's own text, and the body's nesting
// depth, in one iterative pass. The upstream body is built from these ranges (prepare.ts serializeTail), so what
// the client wrote reaches the upstream as written: JSON.parse + JSON.stringify would turn a seed of
// 9007199254740993 into ...992 and 1e999 into null, and JSON.stringify overflows the stack on deep nesting.
// Only called on text JSON.parse has accepted, so the scan need not validate.

/** Deeper than this is refused (400): no real request nests like it, and every recursive walk stays in bounds. */
export const MAX_JSON_DEPTH = 128;

export interface JsonMember {
  /** The key as JSON.parse reads it. */
  readonly key: string;
  /** Byte offsets of `"key": value` in the body (from the key's opening quote to the value's last byte). */
  readonly start: number;
  readonly end: number;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

/** JSON whitespace (RFC 8259 ws). */
export function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** The first byte of `b` that is not JSON whitespace, or -1. */
export function firstNonSpace(b: Buffer): number {
  for (let i = 0; i < b.length; i++) if (!isSpace(b[i]!)) return b[i]!;
  return -1;
}

/** Index of the quote closing the string whose opening quote is at `open`. */
function stringEnd(buf: Buffer, open: number): number {
  // Short strings (keys, roles) by hand: Buffer#indexOf is a native call of ~0.2 µs, worth it on long text only.
  const stop = Math.min(open + 192, buf.length);
  for (let j = open + 1; j < stop; j++) {
    const c = buf[j];
    if (c === QUOTE) return j;
    if (c === BACKSLASH) j++;
  }
  let q = buf.indexOf(QUOTE, stop - 1 > open ? stop - 1 : open + 1);
  for (;;) {
    // A quote preceded by an odd run of backslashes is escaped.
    let bs = 0;
    while (buf[q - 1 - bs] === BACKSLASH) bs++;
    if ((bs & 1) === 0) return q;
    q = buf.indexOf(QUOTE, q + 1);
  }
}

/** Whether the key's source bytes (between its quotes) are exactly `key`, one ASCII byte per character. */
function spells(buf: Buffer, from: number, to: number, key: string | undefined): boolean {
  if (key === undefined || key.length !== to - from) return false;
  for (let k = 0; k < key.length; k++) if (buf[from + k] !== key.charCodeAt(k)) return false;
  return true;
}

/**
 * The members of the object `buf` holds (valid JSON whose top level is an object), in source order, duplicates
 * included; 'too_deep' when any value nests deeper than MAX_JSON_DEPTH arrays and objects. `keys` is
 * Object.keys of what JSON.parse made of it: member i's key is usually keys[i] (checked byte by byte), which saves
 * decoding each key from the bytes (a native call apiece).
 */
export function jsonMembers(buf: Buffer, keys: readonly string[]): JsonMember[] | 'too_deep' {
  const out: JsonMember[] = [];
  let i = 0;
  while (buf[i] !== OPEN_BRACE) i++;
  i++;
  for (;;) {
    while (isSpace(buf[i]!) || buf[i] === COMMA) i++;
    if (buf[i] === CLOSE_BRACE) return out;
    const start = i;
    const keyEnd = stringEnd(buf, i);
    const guess = keys[out.length];
    const key = spells(buf, start + 1, keyEnd, guess) ? guess! : JSON.parse(buf.toString('utf8', start, keyEnd + 1)) as string;
    i = keyEnd + 1;
    while (buf[i] !== COLON) i++;
    i++;
    while (isSpace(buf[i]!)) i++;
    // The value: a string, a nested array/object (scanned to its matching close), or a literal up to , or }.
    let depth = 0;
    for (;;) {
      const c = buf[i]!;
      if (c === QUOTE) {
        i = stringEnd(buf, i) + 1;
        if (depth === 0) break;
      } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
        if (++depth >= MAX_JSON_DEPTH) return 'too_deep';
        i++;
      } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        if (depth === 0) break;
        i++;
        if (--depth === 0) break;
      } else if (c === COMMA && depth === 0) {
        break;
      } else {
        i++;
      }
    }
    let end = i;
    while (isSpace(buf[end - 1]!)) end--;
    out.push({ key, start, end });
  }
}
