// Request-path normalisation before route matching, so `/a/../v1/x`, `/v1/%2e%2e/v1/x`, `//v1/x` and `/v1/x`
// select the same route (and key-auth cannot be sidestepped by spelling a path differently). As Envoy's
// normalize_path + merge_slashes and nginx's defaults: percent-encoded unreserved characters are decoded
// (RFC 3986 §6.2.2.2), dot segments removed (§5.2.4), repeated slashes merged. Other escapes (%2F, %00) stay
// encoded, so they never match a route's literal '/'. A malformed escape or a '..' climbing above the root is
// rejected (undefined: the caller answers 400), as nginx does.

/** The normalised path, or undefined when the path is malformed. */
export function normalizePath(path: string): string | undefined {
  // Fast path: nothing to do for the usual `/v1/chat/completions`.
  if (path.indexOf('%') < 0 && path.indexOf('/.') < 0 && path.indexOf('//') < 0) return path;
  const decoded = decodeUnreserved(path);
  if (decoded === undefined) return undefined;
  return removeDotSegments(decoded);
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

function isUnreserved(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 95 || c === 126;
}

/** Percent-encoded unreserved characters decoded, other escapes upper-cased; undefined for a malformed escape. */
export function decodeUnreserved(path: string): string | undefined {
  if (path.indexOf('%') < 0) return path;
  let out = '';
  let from = 0;
  for (let i = path.indexOf('%'); i >= 0; i = path.indexOf('%', i + 1)) {
    const hi = hexValue(path.charCodeAt(i + 1));
    const lo = hexValue(path.charCodeAt(i + 2));
    if (hi < 0 || lo < 0) return undefined;
    const c = hi * 16 + lo;
    if (isUnreserved(c)) {
      out += path.slice(from, i) + String.fromCharCode(c);
    } else {
      // Keep the escape, upper-cased (RFC 3986 §6.2.2.1), so equal paths compare equal.
      out += path.slice(from, i) + '%' + path.slice(i + 1, i + 3).toUpperCase();
    }
    from = i + 3;
    i += 2;
  }
  return out + path.slice(from);
}

function removeDotSegments(path: string): string | undefined {
  const segments = path.split('/');
  const out: string[] = [];
  // segments[0] is the empty string before the leading '/'.
  for (let i = 1; i < segments.length; i++) {
    const s = segments[i]!;
    const last = i === segments.length - 1;
    if (s === '..') {
      if (out.length === 0) return undefined;
      out.pop();
      if (last) out.push('');
    } else if (s === '.' || (s === '' && !last)) {
      if (last) out.push('');
    } else {
      out.push(s);
    }
  }
  return '/' + out.join('/');
}
