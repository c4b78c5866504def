// Request variables with nginx/APISIX names (`http_x_user`, `arg_apikey`, `cookie_session`, `remote_addr`,
// `consumer_name`, `route_id`, `uri`), plus `model` (the requested model) and `upstream_model` (the model the
// attempted instance sends: its own after rewriting, else the requested one; known per instance only). Names are resolved to getters once, at config load; the query string
// and the cookie header are scanned on demand for the one name asked, so a request pays nothing for
// variables no rule uses and no parse result is kept between requests.

export interface RequestVars {
  /** Lower-case header names. */
  readonly headers: Readonly<Record<string, string>>;
  /** Raw query string without '?'. */
  readonly query: string;
  /** Socket peer address (IPv4 or IPv6 text). */
  readonly remoteAddr: string;
  /** Authenticated consumer username. */
  readonly consumer: string | undefined;
  readonly routeId: string;
  readonly uri: string;
  /** The model the client asked for (body or path); absent when it named none. */
  readonly model?: string | undefined;
  /** The model sent to the instance being tried; set only while resolving that instance's quotas. */
  readonly upstreamModel?: string | undefined;
}

export type VarGetter = (vars: RequestVars) => string | undefined;

function nonEmpty(v: string | undefined): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** A header by its lower-case name. The typeof check keeps `constructor` and friends out. */
export function headerValue(vars: RequestVars, lowerName: string): string | undefined {
  const v = vars.headers[lowerName];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function percentDecode(s: string): string {
  if (s.indexOf('%') < 0 && s.indexOf('+') < 0) return s;
  try {
    return decodeURIComponent(s.indexOf('+') < 0 ? s : s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}

function segmentHas(s: string, ch: string, from: number, to: number): boolean {
  const i = s.indexOf(ch, from);
  return i >= 0 && i < to;
}

/** First value of a query parameter, URL-decoded; an empty or absent parameter is undefined. */
export function queryParam(query: string, name: string): string | undefined {
  const n = query.length;
  let i = 0;
  while (i < n) {
    let amp = query.indexOf('&', i);
    if (amp < 0) amp = n;
    let eq = query.indexOf('=', i);
    if (eq < 0 || eq > amp) eq = amp;
    let match = eq - i === name.length && query.startsWith(name, i);
    if (!match && (segmentHas(query, '%', i, eq) || segmentHas(query, '+', i, eq))) {
      match = percentDecode(query.slice(i, eq)) === name;
    }
    if (match) return eq < amp ? nonEmpty(percentDecode(query.slice(eq + 1, amp))) : undefined;
    i = amp + 1;
  }
  return undefined;
}

/** A cookie's value from a Cookie header (`a=1; b="2"`), surrounding quotes removed. */
export function cookieValue(cookieHeader: string | undefined, name: string): string | undefined {
  if (cookieHeader === undefined) return undefined;
  const n = cookieHeader.length;
  let i = 0;
  while (i < n) {
    while (i < n && (cookieHeader.charCodeAt(i) === 32 || cookieHeader.charCodeAt(i) === 9)) i++;
    let semi = cookieHeader.indexOf(';', i);
    if (semi < 0) semi = n;
    const eq = cookieHeader.indexOf('=', i);
    if (eq > i && eq < semi && eq - i === name.length && cookieHeader.startsWith(name, i)) {
      let start = eq + 1;
      let end = semi;
      while (end > start && (cookieHeader.charCodeAt(end - 1) === 32 || cookieHeader.charCodeAt(end - 1) === 9)) end--;
      if (end - start >= 2 && cookieHeader.charCodeAt(start) === 34 && cookieHeader.charCodeAt(end - 1) === 34) {
        start++;
        end--;
      }
      return end > start ? cookieHeader.slice(start, end) : undefined;
    }
    i = semi + 1;
  }
  return undefined;
}

const NAME_CHARS = /^[A-Za-z0-9_]+$/;

const FIXED: Readonly<Record<string, VarGetter>> = {
  remote_addr: (v) => nonEmpty(v.remoteAddr),
  consumer_name: (v) => nonEmpty(v.consumer),
  route_id: (v) => nonEmpty(v.routeId),
  uri: (v) => nonEmpty(v.uri),
  host: (v) => headerValue(v, 'host'),
  model: (v) => nonEmpty(v.model),
  upstream_model: (v) => nonEmpty(v.upstreamModel),
};

/** Variables whose value depends on the upstream instance: quotas using them are resolved per attempt. */
export const INSTANCE_VARS: ReadonlySet<string> = new Set(['upstream_model']);

/** The header an `http_<name>` variable reads (lower-cased, `_` as `-`); undefined for any other variable. */
export function headerOfVar(name: string): string | undefined {
  return name.startsWith('http_') && name.length > 5 ? name.slice(5).toLowerCase().replace(/_/g, '-') : undefined;
}

/** Resolve a variable name to a getter; throws on a name Sluice does not know (config validation). */
export function compileVar(name: string): VarGetter {
  if (!NAME_CHARS.test(name)) throw new Error(`invalid variable name "${name}"`);
  if (Object.hasOwn(FIXED, name)) return FIXED[name]!;
  const header = headerOfVar(name);
  if (header !== undefined) return (v) => headerValue(v, header);
  if (name.startsWith('arg_') && name.length > 4) {
    const arg = name.slice(4);
    return (v) => queryParam(v.query, arg);
  }
  if (name.startsWith('cookie_') && name.length > 7) {
    const cookie = name.slice(7);
    return (v) => cookieValue(headerValue(v, 'cookie'), cookie);
  }
  throw new Error(
    `unknown variable "${name}" (known: http_<header>, arg_<param>, cookie_<name>, remote_addr, consumer_name, route_id, uri, host, model, upstream_model)`,
  );
}

const getterCache = new Map<string, VarGetter>();

/** A variable's value, or undefined when it is absent, empty or not a known name. */
export function getVar(vars: RequestVars, name: string): string | undefined {
  let g = getterCache.get(name);
  if (g === undefined) {
    try {
      g = compileVar(name);
    } catch {
      return undefined;
    }
    // Names come from config and code, so the cache stays small; the cap guards against misuse.
    if (getterCache.size >= 1024) getterCache.clear();
    getterCache.set(name, g);
  }
  return g(vars);
}
