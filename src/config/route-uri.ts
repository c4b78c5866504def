// A route `uri` is compared with request paths after the front end normalised them (core/request-path.ts:
// unreserved escapes decoded, other escapes upper-cased, dot segments removed, slashes merged). A uri not in that
// form can never match, so it is refused with the form that would.
import { decodeUnreserved, normalizePath } from '../core/request-path.ts';

/** Why `uri` (already known to start with '/' and hold no whitespace, '?', '#') never matches; undefined if it can. */
export function uriProblem(uri: string): string | undefined {
  const ascii = asciiForm(uri);
  const star = ascii.endsWith('*');
  const lit = star ? ascii.slice(0, -1) : ascii;
  // A prefix ends in a partial segment ('/v1/mod*'): only its escapes are normalised, never as a dot segment.
  const cut = star ? lit.lastIndexOf('/') + 1 : lit.length;
  const head = normalizePath(lit.slice(0, cut));
  const tail = decodeUnreserved(lit.slice(cut));
  if (head === undefined || tail === undefined) return 'is not a valid path (a malformed %-escape, or ".." above the root)';
  const form = head + tail + (star ? '*' : '');
  if (form === uri) return undefined;
  const why = ascii !== uri ? 'request paths are matched as sent, percent-encoded, and normalised' : 'request paths are normalised before routing (unreserved escapes decoded, dot segments removed, slashes merged)';
  return `never matches: ${why}; write "${form}"`;
}

/** `uri` with every byte outside printable ASCII percent-encoded as UTF-8 (a lone surrogate as U+FFFD); `%` kept. */
function asciiForm(uri: string): string {
  let out = '';
  for (const b of Buffer.from(uri, 'utf8')) {
    out += b >= 0x21 && b <= 0x7e ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
