// `forward_headers` of an ai-proxy config or an ai-proxy-multi instance: which client request headers may
// reach that upstream, beyond (or instead of) the built-in allowlist the pipeline applies
// (pipeline/forward-headers.ts). Two shapes:
//   forward_headers: [x-tenant, x-mock-*]                       extends the default allowlist
//   forward_headers: { replace: true, headers: [accept] }        replaces it
// An entry ending in '*' matches every header with that prefix. Credentials, hop-by-hop headers, the
// organisation/project headers and the X-Forwarded-* family can never be forwarded from the client: the
// instance config and the gateway set those.

import type { ForwardHeadersConfig } from './types.ts';
import { childPath, type Issues } from './issues.ts';
import { isHeaderName } from './net.ts';
import { Section, isPlainObject } from './section.ts';

/** Lower-case names (or prefixes, for a trailing '*') no forward_headers entry may name or cover. */
export const NEVER_FORWARDED: readonly string[] = [
  'host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'content-type', 'content-encoding', 'te', 'trailer',
  'upgrade', 'expect', 'proxy-connection', 'proxy-authorization', 'authorization', 'apikey', 'api-key', 'x-api-key', 'x-goog-api-key', 'cookie',
  'accept-encoding', 'openai-organization', 'openai-project', 'forwarded', 'x-real-ip', 'x-forwarded-for', 'x-forwarded-host',
  'x-forwarded-proto', 'x-forwarded-port', 'x-forwarded-prefix',
];

function forbidden(entry: string): boolean {
  if (entry.endsWith('*')) {
    const prefix = entry.slice(0, -1);
    return NEVER_FORWARDED.some((n) => n.startsWith(prefix));
  }
  return NEVER_FORWARDED.includes(entry);
}

function readList(is: Issues, path: string, value: unknown): string[] {
  if (!Array.isArray(value)) {
    is.add(path, 'must be an array of header names');
    return [];
  }
  const out: string[] = [];
  value.forEach((v, i) => {
    const p = childPath(path, i);
    if (typeof v !== 'string' || v === '' || !isHeaderName(v.endsWith('*') && v.length > 1 ? v.slice(0, -1) : v) || v === '*') {
      is.add(p, "must be a header name, or a prefix ending in '*'");
      return;
    }
    const name = v.toLowerCase();
    if (forbidden(name)) {
      is.add(p, 'names a header the gateway never forwards from the client (credentials, hop-by-hop, organisation/project, X-Forwarded-*)');
      return;
    }
    if (!out.includes(name)) out.push(name);
  });
  return out;
}

/** Reads `forward_headers` from an instance section; undefined when absent. */
export function readForwardHeaders(sec: Section): ForwardHeadersConfig | undefined {
  const raw = sec.get('forward_headers');
  if (raw === undefined) return undefined;
  const path = sec.p('forward_headers');
  if (Array.isArray(raw)) return { headers: readList(sec.is, path, raw), replace: false };
  if (!isPlainObject(raw)) {
    sec.is.add(path, 'must be an array of header names or an object { headers, replace }');
    return undefined;
  }
  const obj = Section.open(sec.is, path, raw, ['headers', 'replace']);
  if (obj === undefined) return undefined;
  const headers = obj.has('headers') ? readList(sec.is, obj.p('headers'), obj.get('headers')) : [];
  return { headers, replace: obj.bool('replace') ?? false };
}
