// Strict parsing of an upstream's HTTP/1.x response head (RFC 9112): status line, header fields, and what frames
// the body. Pure functions over a latin1 string, so framing decisions are tested without sockets. Header values
// come out as UTF-8 text (utf8Value), the same as client header values.
import { isIdentityCoding, TCHAR } from '../core/http-token.ts';

/**
 * Header fields in the order received, flat: name, value, name, value… Names are lower-cased; a repeated name
 * appears once per line. A flat list costs one array per answer; an object keyed by name cost a dictionary-mode
 * store per field (and care with `__proto__`), and the relay walks the fields in order anyway.
 */
export type UpstreamHeaders = readonly string[];

/** The first value of `name` (lower-case), or undefined. */
export function headerValue(h: UpstreamHeaders, name: string): string | undefined {
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) return h[i + 1];
  return undefined;
}

/**
 * A coding that changes an answer's bytes, which Sluice can neither meter nor relay (its coding headers are the hop's):
 * a Content-Encoding other than identity on any of its lines, or a transfer coding other than chunked (a server may
 * apply no other unless asked with TE, and Sluice never asks). undefined when the bytes are the answer's own.
 */
export function byteCoding(h: UpstreamHeaders): string | undefined {
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i];
    if (name === 'content-encoding') {
      if (!isIdentityCoding(h[i + 1]!)) return h[i + 1];
    } else if (name === 'transfer-encoding' && otherTransferCoding(h[i + 1]!)) {
      return h[i + 1];
    }
  }
  return undefined;
}

/** A Transfer-Encoding value names a coding other than chunked (the pool undoes chunked only). */
function otherTransferCoding(value: string): boolean {
  for (const m of value.split(',')) {
    const c = m.trim().toLowerCase();
    if (c !== '' && c !== 'chunked' && c !== 'identity') return true;
  }
  return false;
}

/** A transfer coding other than chunked was applied to the body. */
export function transferCoded(h: UpstreamHeaders): boolean {
  for (let i = 0; i < h.length; i += 2) if (h[i] === 'transfer-encoding' && otherTransferCoding(h[i + 1]!)) return true;
  return false;
}

/** Every value of `name` (lower-case), in order. */
export function headerValues(h: UpstreamHeaders, name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < h.length; i += 2) if (h[i] === name) out.push(h[i + 1]!);
  return out;
}

/** A response head, or why it is refused. */
export interface ResponseHead {
  readonly status: number;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  readonly minor: 0 | 1;
  readonly headers: UpstreamHeaders;
  /** How the body ends: 'none' (1xx, 204, 304), 'length', 'chunked' or 'close' (read until the server closes). */
  readonly framing: 'none' | 'length' | 'chunked' | 'close';
  readonly length: number;
  /** The connection may carry another request after this answer. */
  readonly reusable: boolean;
  /** The server's `Keep-Alive: timeout=N` hint in ms; -1 when absent. */
  readonly keepAliveMs: number;
}

const MAX_LENGTH = Number.MAX_SAFE_INTEGER;
const INVALID = 0;
const ASCII = 1;
const OBS_TEXT = 2;
/**
 * s[a, b), a field value or reason phrase: INVALID when it holds a control character (CR, LF, NUL…), OBS_TEXT when
 * it holds bytes past ASCII, else ASCII. Visible characters, SP and HTAB are what a value may hold besides obs-text.
 */
function valueKind(s: string, a: number, b: number): number {
  let kind = ASCII;
  for (let i = a; i < b; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return INVALID;
    if (c > 0x7f) kind = OBS_TEXT;
  }
  return kind;
}

/**
 * A value's bytes (one latin1 character each) read as UTF-8, as uWS reads a client's: the relay writes header values
 * as UTF-8, so an upstream's UTF-8 bytes reach the client unchanged instead of encoded twice (é as C3 83 C2 A9).
 * Bytes that are not UTF-8 become U+FFFD; no decoded character is below U+0080, so no CR or LF can appear.
 */
function utf8Value(latin1: string): string {
  return Buffer.from(latin1, 'latin1').toString('utf8');
}

/**
 * Parses `s`, a head without its final blank line (status line and header lines joined by CRLF). Returns the
 * head or a message saying what is malformed.
 */
export function parseResponseHead(s: string): ResponseHead | string {
  const n = s.length;
  if (n < 12 || !s.startsWith('HTTP/1.')) return 'malformed status line';
  const m = s.charCodeAt(7);
  if ((m !== 0x30 && m !== 0x31) || s.charCodeAt(8) !== 0x20) return 'unsupported HTTP version';
  let status = 0;
  for (let i = 9; i < 12; i++) {
    const d = s.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return 'malformed status code';
    status = status * 10 + d;
  }
  // RFC 9110 §15 defines 100-599 only; anything else is relayed by no client library and answered as a 502.
  if (status < 100 || status > 599) return 'malformed status code';
  let pos = s.indexOf('\r\n');
  if (pos < 0) pos = n;
  if (pos > 12 && s.charCodeAt(12) !== 0x20) return 'malformed status line';
  if (valueKind(s, 12, pos) === INVALID) return 'malformed status line';
  const minor = m === 0x31 ? 1 : 0;
  const headers: string[] = [];
  let lengthValue: string | undefined;
  let te: string | undefined;
  let connection = '';
  let keepAlive: string | undefined;
  while (pos < n) {
    const start = pos + 2;
    let end = s.indexOf('\r\n', start);
    if (end < 0) end = n;
    const first = s.charCodeAt(start);
    if (first === 0x20 || first === 0x09) return 'obsolete line folding';
    const colon = s.indexOf(':', start);
    if (colon < 0 || colon > end) return 'header line without a colon';
    // The name as tchars, lower-cased only if it has capitals.
    let upper = false;
    for (let i = start; i < colon; i++) {
      const c = s.charCodeAt(i);
      if (TCHAR[c] === 0) return 'malformed header name';
      if (c <= 0x5a && c >= 0x41) upper = true;
    }
    if (colon === start) return 'malformed header name';
    const name = upper ? s.slice(start, colon).toLowerCase() : s.slice(start, colon);
    let a = colon + 1;
    let b = end;
    while (a < b && (s.charCodeAt(a) === 0x20 || s.charCodeAt(a) === 0x09)) a++;
    while (b > a && (s.charCodeAt(b - 1) === 0x20 || s.charCodeAt(b - 1) === 0x09)) b--;
    const kind = valueKind(s, a, b);
    if (kind === INVALID) return 'malformed header value';
    const value = kind === ASCII ? s.slice(a, b) : utf8Value(s.slice(a, b));
    if (name === 'content-length') lengthValue = lengthValue === undefined ? value : `${lengthValue},${value}`;
    else if (name === 'transfer-encoding') te = te === undefined ? value : `${te},${value}`;
    else if (name === 'connection') connection += `,${value.toLowerCase()}`;
    else if (name === 'keep-alive') keepAlive = value;
    headers.push(name, value);
    pos = end;
  }
  let reusable = minor === 1 && !hasToken(connection, 'close');
  let keepAliveMs = -1;
  if (keepAlive !== undefined) {
    const t = /(?:^|[,;\s])timeout\s*=\s*(\d{1,9})(?:$|[,;\s])/i.exec(keepAlive);
    if (t !== null) keepAliveMs = Number(t[1]) * 1000;
  }
  if (status < 200 || status === 204 || status === 304) {
    // A transfer coding on either, or a 204 declaring a length (forbidden, RFC 9110 §8.6): what follows on the
    // connection may be the body it announced, read as the next request's answer if it were reused.
    if (status >= 200 && (te !== undefined || (status === 204 && lengthValue !== undefined && lengthValue.trim() !== '0'))) reusable = false;
    return { status, minor, headers, framing: 'none', length: 0, reusable, keepAliveMs };
  }
  if (te !== undefined) {
    const codings = te.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '');
    const chunkedAt = codings.indexOf('chunked');
    if (chunkedAt >= 0 && chunkedAt !== codings.length - 1) return 'chunked is not the final transfer coding';
    // A length beside a transfer coding is a smuggling vector: never trust it, never reuse the connection.
    if (lengthValue !== undefined || minor === 0) reusable = false;
    if (chunkedAt < 0) return { status, minor, headers, framing: 'close', length: 0, reusable: false, keepAliveMs };
    return { status, minor, headers, framing: 'chunked', length: 0, reusable, keepAliveMs };
  }
  if (lengthValue !== undefined) {
    // One value (the common case) without a split; repeats must all be equal.
    let length = digits(lengthValue);
    if (length < 0) {
      for (const part of lengthValue.split(',')) {
        const n = digits(part.trim());
        if (n < 0) return 'malformed Content-Length';
        if (length >= 0 && n !== length) return 'conflicting Content-Length values';
        length = n;
      }
    }
    return { status, minor, headers, framing: 'length', length, reusable, keepAliveMs };
  }
  return { status, minor, headers, framing: 'close', length: 0, reusable: false, keepAliveMs };
}

/** `s` as a length when it is 1-16 decimal digits and at most MAX_LENGTH, else -1. */
function digits(s: string): number {
  if (s.length === 0 || s.length > 16) return -1;
  let v = 0;
  for (let i = 0; i < s.length; i++) {
    const d = s.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v <= MAX_LENGTH ? v : -1;
}

function hasToken(list: string, token: string): boolean {
  if (!list.includes(token)) return false;
  for (const t of list.split(',')) if (t.trim() === token) return true;
  return false;
}
