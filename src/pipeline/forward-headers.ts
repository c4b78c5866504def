// Which client request headers reach an upstream. An allowlist, not a blocklist: a header the gateway does
// not know about (OpenAI-Organization, X-Forwarded-For, a new credential header) stays with the gateway.
// Defaults: content negotiation, tracing, provider beta flags; an instance's `forward_headers` extends or
// replaces them (config/forward-headers.ts). The instance's own headers (auth, organisation, project) are set
// last, and the X-Forwarded-* family is always written by the gateway.
import { NEVER_FORWARDED } from '../config/forward-headers.ts';
import { connectionListed, isHostValue } from '../core/http-token.ts';
import type { ForwardHeadersConfig } from '../config/types.ts';
import type { IpMatcher } from '../rules/ip.ts';
import type { ClientRequest } from './http-types.ts';

export const DEFAULT_FORWARD_HEADERS: readonly string[] = [
  // content negotiation
  'accept', 'accept-language',
  // tracing
  'traceparent', 'tracestate', 'baggage', 'x-request-id', 'x-correlation-id', 'b3', 'x-b3-*', 'x-cloud-trace-context',
  // provider beta flags and API versions
  'openai-beta', 'anthropic-beta', 'anthropic-version',
];

/** Names no policy forwards, whatever the config says: the list config validation refuses in forward_headers. */
const NEVER: ReadonlySet<string> = new Set(NEVER_FORWARDED);

export interface ForwardPolicy {
  readonly exact: ReadonlySet<string>;
  readonly prefixes: readonly string[];
}

export function compileForwardPolicy(cfg: ForwardHeadersConfig | undefined): ForwardPolicy {
  const entries = cfg === undefined ? DEFAULT_FORWARD_HEADERS : cfg.replace ? cfg.headers : [...DEFAULT_FORWARD_HEADERS, ...cfg.headers];
  const exact = new Set<string>();
  const prefixes: string[] = [];
  for (const e of entries) {
    const n = e.toLowerCase();
    if (n.endsWith('*')) prefixes.push(n.slice(0, -1)); else exact.add(n);
  }
  return { exact, prefixes };
}

function allowed(p: ForwardPolicy, name: string): boolean {
  if (p.exact.has(name)) return true;
  for (let i = 0; i < p.prefixes.length; i++) if (name.startsWith(p.prefixes[i]!)) return true;
  return false;
}

/**
 * The upstream request headers: allowed client headers (never `dropName`, the route's key-auth header), the
 * provider's (version headers, signatures: they win over the client's), the instance's (auth: they win over
 * everything), and X-Forwarded-For/-Proto/-Host. A client's X-Forwarded-* is believed, and extended, only when
 * the peer is a trusted proxy.
 */
export function upstreamHeaders(req: ClientRequest, policy: ForwardPolicy, dropName: string | undefined,
  provider: Readonly<Record<string, string>> | undefined, instance: Readonly<Record<string, string>>,
  trusted: IpMatcher, peer: string): Record<string, string> {
  const client = req.headers;
  const out: Record<string, string> = {};
  // Headers the client's Connection header names are for this hop only (a traceparent listed there stays here).
  const hop = connectionListed(client.connection);
  // for-in over own keys: no array of keys per request.
  for (const k in client) {
    if (k === dropName || NEVER.has(k) || !allowed(policy, k) || !Object.hasOwn(client, k) || hop?.has(k) === true) continue;
    out[k] = client[k]!;
  }
  // Without it any coding is acceptable (RFC 9110 §12.5.3), and a compressed answer cannot be metered.
  out['accept-encoding'] = 'identity';
  if (provider !== undefined) for (const k in provider) if (Object.hasOwn(provider, k)) out[k.toLowerCase()] = provider[k]!;
  for (const k in instance) if (Object.hasOwn(instance, k)) out[k.toLowerCase()] = instance[k]!;
  const fromProxy = trusted(peer);
  const xff = fromProxy ? client['x-forwarded-for'] : undefined;
  out['x-forwarded-for'] = xff !== undefined && xff.trim() !== '' ? `${xff}, ${peer}` : peer;
  const proto = fromProxy ? client['x-forwarded-proto'] : undefined;
  out['x-forwarded-proto'] = proto !== undefined && proto !== '' ? proto : 'http';
  const host = (fromProxy ? client['x-forwarded-host'] : undefined) ?? client.host;
  // A client's own Host only when it is host[:port]: uWS (guard off) checks none, and a list or a path in it would
  // reach the upstream as X-Forwarded-Host.
  if (host !== undefined && host !== '' && (fromProxy || isHostValue(host))) out['x-forwarded-host'] = host;
  return out;
}
