// RFC 9110 §5.6.2 token characters (tchar), the one table both HTTP/1.x parsers use: the guard's request heads
// and the upstream client's response heads.

/** 1 for a tchar, 0 otherwise; 256 entries, so any byte indexes it. */
export const TCHAR: Uint8Array = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) { TCHAR[c] = 1; TCHAR[c + 32] = 1; }

/** A non-empty string of tchars only. */
export function isToken(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 256 || TCHAR[c] === 0) return false;
  }
  return true;
}

/**
 * A Content-Encoding value that leaves the body as it is: `identity`, or empty (no coding listed), in either
 * direction (a client's request body, an upstream's answer).
 */
export function isIdentityCoding(coding: string): boolean {
  const c = coding.trim();
  if (c === '' || c.toLowerCase() === 'identity') return true;
  // A list (`identity, gzip`, or repeated header lines joined) leaves the body as it is only if every member does.
  return c.includes(',') && c.split(',').every((m) => isIdentityCoding(m));
}

/**
 * The header names a Connection header lists (RFC 9110 §7.6.1: hop-by-hop, never forwarded), lowercased; undefined
 * for none (`keep`: a name never listed). `keep-alive` and `close` alone, what nearly every peer sends, cost no split.
 */
export function connectionListed(value: string | undefined, keep?: string): ReadonlySet<string> | undefined {
  if (value === undefined || value.length === 0) return undefined;
  const v = value.length <= 10 ? value.toLowerCase() : value;
  if (v === 'keep-alive' || v === 'close') return undefined;
  const out = new Set<string>();
  for (const part of value.split(',')) {
    const n = part.trim().toLowerCase();
    if (n !== '' && n !== 'keep-alive' && n !== 'close' && n !== keep) out.add(n);
  }
  return out.size > 0 ? out : undefined;
}

function isNameChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x2e || c === 0x5f || c === 0x7e;
}

/**
 * A Host value (RFC 9112 §3.2) as Sluice accepts it: empty, or a host and an optional port of 1–5 digits. The host
 * is an IP literal in brackets (hex digits, ':', '.', and a '%25' zone of name characters) or a name of letters,
 * digits, '-', '.', '_', '~'. Stricter than RFC 3986's reg-name, whose sub-delims (',', ';', '*', '(' …) and
 * percent-escapes no DNS name uses and which would reach the upstream in X-Forwarded-Host (a comma reads as a list).
 */
export function isHostValue(s: string): boolean {
  const n = s.length;
  if (n === 0) return true;
  let i = 0;
  if (s.charCodeAt(0) === 0x5b) {
    const close = s.indexOf(']');
    if (close < 2) return false;
    let zone = false;
    for (i = 1; i < close; i++) {
      const c = s.charCodeAt(i);
      if (zone) { if (!isNameChar(c)) return false; continue; }
      if (c === 0x25) { zone = true; continue; }
      const hex = (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);
      if (!(hex || c === 0x3a || c === 0x2e)) return false;
    }
    i = close + 1;
  } else {
    while (i < n && isNameChar(s.charCodeAt(i))) i++;
    if (i === 0) return false;
  }
  if (i === n) return true;
  if (s.charCodeAt(i) !== 0x3a) return false;
  const digits = n - i - 1;
  if (digits < 1 || digits > 5) return false;
  for (let j = i + 1; j < n; j++) {
    const c = s.charCodeAt(j);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}
