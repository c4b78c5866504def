// A route `uri` is compared with request paths after the front end normalised them (core/request-path.ts:
// unreserved escapes decoded, other escapes upper-cased, dot segments removed, slashes merged). A uri not in that
// form can never match, so it is refused with the form that would.
import { decodeUnreserved, normalizePath } from '../core/request-path.ts';

/** Why `uri` (already known to start with '/' and hold no whitespace, '?', '#') never matches; undefined if it can. */
export function uriProblem(uri: string): string | undefined {
  for (let i = 0; i < uri.length; i++) {
    const c = uri.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) {
      return `never matches: request paths are matched as sent, percent-encoded; write "${encodeURI(uri)}"`;
    }
  }
  const star = uri.endsWith('*');
  const lit = star ? uri.slice(0, -1) : uri;
  // A prefix ends in a partial segment ('/v1/mod*'): only its escapes are normalised, never as a dot segment.
  const cut = star ? lit.lastIndexOf('/') + 1 : lit.length;
  const head = normalizePath(lit.slice(0, cut));
  const tail = decodeUnreserved(lit.slice(cut));
  if (head === undefined || tail === undefined) return 'is not a valid path (a malformed %-escape, or ".." above the root)';
  const form = head + tail + (star ? '*' : '');
  if (form === uri) return undefined;
  return `never matches: request paths are normalised before routing (unreserved escapes decoded, dot segments removed, slashes merged); write "${form}"`;
}
