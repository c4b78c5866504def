// Reads one object member of a JSON document's root (an answer's `usage`) from the document's end, without parsing
// the rest: usage comes after the choices in every OpenAI-shaped answer, and JSON.parse of a whole answer was the
// largest item of relaying one (most of its bytes are the generated text, which is not needed when usage is given).
//
// Why the member found is the root's: `"key"` followed by `:` is a key (inside a string literal every quote is
// escaped; a string value is never followed by a colon). The text after its value must then be `}` alone, or
// `,` + members + `}` that parse as an object's: it closes exactly one container at the document's end, which in
// valid JSON is the root. Anything else (the key missing, nested, a non-object value, bounds exceeded) answers
// TAIL_UNKNOWN and the caller parses the whole document, as before.

import { isRejection, type Usage, type UsageRejection } from './usage.ts';

/** The member could not be read from the tail: parse the whole document. */
export const TAIL_UNKNOWN: unique symbol = Symbol('json-tail-unknown');

/** `"usage"`, the key of OpenAI's and Anthropic's usage object. */
export const QUOTED_USAGE = Buffer.from('"usage"');

/** A member's value, or what follows it, larger than this is read by a whole parse. */
const MAX_TAIL_BYTES = 4096;

function isSpace(c: number | undefined): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** The index just past the object opening at `open` (string-aware), or -1 when it does not close before `limit`. */
function objectEnd(b: Uint8Array, open: number, limit: number): number {
  let depth = 0;
  for (let i = open; i < limit; i++) {
    const c = b[i]!;
    if (c === 0x22) {
      for (i++; i < limit; i++) {
        const d = b[i]!;
        if (d === 0x5c) i++;
        else if (d === 0x22) break;
      }
    } else if (c === 0x7b || c === 0x5b) {
      depth++;
    } else if (c === 0x7d || c === 0x5d) {
      if (--depth === 0) return i + 1;
    }
  }
  return -1;
}

/**
 * The parsed value of the root object's member `quotedKey` (the key with its quotes, as a Buffer) when that value is
 * an object, or null when it is null; TAIL_UNKNOWN when it cannot be read from the tail.
 */
export function rootMemberFromTail(body: Buffer, quotedKey: Buffer): unknown {
  const at = body.lastIndexOf(quotedKey);
  if (at < 1) return TAIL_UNKNOWN;
  const n = body.length;
  let i = at + quotedKey.length;
  while (isSpace(body[i])) i++;
  if (body[i] !== 0x3a) return TAIL_UNKNOWN;
  i++;
  while (isSpace(body[i])) i++;
  const start = i;
  let end: number;
  if (body[i] === 0x7b) {
    end = objectEnd(body, i, Math.min(n, i + MAX_TAIL_BYTES));
    if (end < 0) return TAIL_UNKNOWN;
  } else if (body[i] === 0x6e && body[i + 1] === 0x75 && body[i + 2] === 0x6c && body[i + 3] === 0x6c) {
    end = i + 4;
  } else {
    return TAIL_UNKNOWN;
  }
  let j = end;
  while (isSpace(body[j])) j++;
  if (n - j > MAX_TAIL_BYTES) return TAIL_UNKNOWN;
  if (body[j] === 0x7d) {
    for (j++; j < n; j++) if (!isSpace(body[j])) return TAIL_UNKNOWN;
  } else if (body[j] === 0x2c) {
    // At least one member after the comma: `{"usage":{…},}` is not JSON.
    let k = j + 1;
    while (isSpace(body[k])) k++;
    if (body[k] !== 0x22) return TAIL_UNKNOWN;
    try {
      const rest: unknown = JSON.parse(`{${body.toString('utf8', j + 1, n)}`);
      if (typeof rest !== 'object' || rest === null || Array.isArray(rest)) return TAIL_UNKNOWN;
    } catch {
      return TAIL_UNKNOWN;
    }
  } else {
    return TAIL_UNKNOWN;
  }
  try {
    return JSON.parse(body.toString('utf8', start, end));
  } catch {
    return TAIL_UNKNOWN;
  }
}

/**
 * A buffered answer's usage read from its end (`read` turns the member into a Usage), when it is there and
 * believable; undefined sends the caller to the whole parse, which also gives the text to count and any rejection.
 */
export function usageFromTail(body: Buffer, quotedKey: Buffer, read: (u: unknown, maxUsage: number) => Usage | UsageRejection | undefined, maxUsage: number): Usage | undefined {
  const tail = rootMemberFromTail(body, quotedKey);
  if (tail === TAIL_UNKNOWN || tail === null) return undefined;
  const u = read(tail, maxUsage);
  return u === undefined || isRejection(u) ? undefined : u;
}
