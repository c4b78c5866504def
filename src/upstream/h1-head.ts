// Strict parsing of an upstream's HTTP/1.x response head (RFC 9112): status line, header fields, and what frames
// the body. Pure functions over a latin1 string, so framing decisions are tested without sockets.
import { isToken } from '../core/http-token.ts';

export type UpstreamHeaders = Record<string, string | string[] | undefined>;

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

/** A field value may hold visible characters, SP, HTAB and obs-text; never CR, LF, NUL or other controls. */
function validValue(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return false;
  }
  return true;
}

const MAX_LENGTH = Number.MAX_SAFE_INTEGER;

/**
 * Parses `s`, a head without its final blank line (status line and header lines joined by CRLF). Returns the
 * head or a message saying what is malformed.
 */
export function parseResponseHead(s: string): ResponseHead | string {
  if (s.length < 12 || !s.startsWith('HTTP/1.')) return 'malformed status line';
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
  if (pos < 0) pos = s.length;
  if (pos > 12 && s.charCodeAt(12) !== 0x20) return 'malformed status line';
  if (!validValue(s.slice(12, pos))) return 'malformed status line';
  const minor = m === 0x31 ? 1 : 0;
  const headers: UpstreamHeaders = {};
  let lengthValue: string | undefined;
  let te: string | undefined;
  let connection = '';
  let keepAlive: string | undefined;
  while (pos < s.length) {
    const start = pos + 2;
    let end = s.indexOf('\r\n', start);
    if (end < 0) end = s.length;
    const first = s.charCodeAt(start);
    if (first === 0x20 || first === 0x09) return 'obsolete line folding';
    const colon = s.indexOf(':', start);
    if (colon < 0 || colon > end) return 'header line without a colon';
    const rawName = s.slice(start, colon);
    if (!isToken(rawName)) return 'malformed header name';
    let a = colon + 1;
    let b = end;
    while (a < b && (s.charCodeAt(a) === 0x20 || s.charCodeAt(a) === 0x09)) a++;
    while (b > a && (s.charCodeAt(b - 1) === 0x20 || s.charCodeAt(b - 1) === 0x09)) b--;
    const value = s.slice(a, b);
    if (!validValue(value)) return 'malformed header value';
    const name = rawName.toLowerCase();
    if (name === 'content-length') lengthValue = lengthValue === undefined ? value : `${lengthValue},${value}`;
    else if (name === 'transfer-encoding') te = te === undefined ? value : `${te},${value}`;
    else if (name === 'connection') connection += `,${value.toLowerCase()}`;
    else if (name === 'keep-alive') keepAlive = value;
    addHeader(headers, name, value);
    pos = end;
  }
  let reusable = minor === 1 && !hasToken(connection, 'close');
  let keepAliveMs = -1;
  if (keepAlive !== undefined) {
    const t = /(?:^|[,;\s])timeout\s*=\s*(\d{1,9})(?:$|[,;\s])/i.exec(keepAlive);
    if (t !== null) keepAliveMs = Number(t[1]) * 1000;
  }
  if (status < 200 || status === 204 || status === 304) {
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
    let length = -1;
    for (const part of lengthValue.split(',')) {
      const v = part.trim();
      if (!/^\d{1,16}$/.test(v)) return 'malformed Content-Length';
      const n = Number(v);
      if (n > MAX_LENGTH) return 'malformed Content-Length';
      if (length >= 0 && n !== length) return 'conflicting Content-Length values';
      length = n;
    }
    return { status, minor, headers, framing: 'length', length, reusable, keepAliveMs };
  }
  return { status, minor, headers, framing: 'close', length: 0, reusable: false, keepAliveMs };
}

function hasToken(list: string, token: string): boolean {
  if (list === '') return false;
  for (const t of list.split(',')) if (t.trim() === token) return true;
  return false;
}

function addHeader(headers: UpstreamHeaders, name: string, value: string): void {
  if (!Object.hasOwn(headers, name)) {
    // A plain assignment of '__proto__' would set the prototype instead of a field.
    if (name === '__proto__') Object.defineProperty(headers, name, { value, enumerable: true, configurable: true, writable: true });
    else headers[name] = value;
    return;
  }
  const prev = headers[name];
  if (Array.isArray(prev)) prev.push(value);
  else headers[name] = [prev as string, value];
}
