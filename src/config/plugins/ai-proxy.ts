// ai-proxy (one upstream) and ai-proxy-multi (weighted instances in priority groups with fallback), in
// APISIX's shape. Both normalise into one AiProxyConfig so the request path handles a single shape.
//
// APISIX's transport fields (`timeout`, `ssl_verify`, `keepalive`, `keepalive_timeout`) apply to every instance
// of the plugin; `options` beyond `model` are merged into the upstream body. Fields without a meaning in Sluice
// are accepted and documented (`keepalive_pool`, `logging`, instances' `checks`); fields Sluice cannot honour
// are rejected with a reason: `balancer.algorithm: chash` with its `hash_on`/`key` (smooth weighted round
// robin only), and options that would replace the client's prompt or streaming mode.

import type { AiProxyConfig, FallbackReason, InstanceConfig, InstanceTransportConfig } from '../types.ts';
import { providerCatalogue } from '../provider-catalogue.ts';
import { childPath, type Issues } from '../issues.ts';
import { hasUrlCredentials, isHeaderName, isHeaderValue, isHttpUrl } from '../net.ts';
import { NON_NEGATIVE, POSITIVE, Section, checkInt, durationMs, isPlainObject, stringMessage } from '../section.ts';
import { readForwardHeaders } from '../forward-headers.ts';

const INSTANCE_KEYS = ['name', 'provider', 'weight', 'priority', 'auth', 'options', 'override', 'forward_headers', 'checks'] as const;
const TRANSPORT_KEYS = [
  'timeout', 'ssl_verify', 'keepalive', 'keepalive_timeout', 'keepalive_pool', 'logging', 'max_stream_duration_ms', 'max_response_bytes',
] as const;
const SINGLE_KEYS = ['provider', 'auth', 'options', 'override', 'forward_headers', ...TRANSPORT_KEYS] as const;
const MULTI_KEYS = ['instances', 'fallback_strategy', 'balancer', ...TRANSPORT_KEYS] as const;

/** APISIX `timeout` range, ms. */
const TIMEOUT_RULE = { min: 1, max: 600_000 } as const;
/** Sluice's keep-alive timeout when `keepalive_timeout` is not set (APISIX's default is 60000). */
const DEFAULT_KEEPALIVE_TIMEOUT_MS = 30_000;
/**
 * `options` keys that would replace what the client's request is (its prompt, tools, streaming mode): the
 * prompt is counted and the stream relayed from the client's request, so an instance must not change them.
 */
const FORBIDDEN_OPTIONS = new Set(['messages', 'prompt', 'stream', 'stream_options', 'tools', 'functions']);
/** Options the reservation reads: they must be what OpenAI accepts. */
const COUNT_OPTIONS: Readonly<Record<string, { min: number; max?: number }>> = {
  max_tokens: { min: 1 }, max_completion_tokens: { min: 1 }, n: { min: 1, max: 128 },
};

const FALLBACKS: Readonly<Record<string, readonly FallbackReason[]>> = {
  instance_health_and_rate_limiting: ['instance_health', 'rate_limiting'],
  rate_limiting: ['rate_limiting'],
  http_429: ['http_429'],
  http_5xx: ['http_5xx'],
};

/** Instance names appear in response header names (X-AI-RateLimit-Limit-<name>) and metric labels. */
export const NAME_PATTERN = /^[A-Za-z0-9._-]+$/;
export const NAME_MESSAGE = "must contain only letters, digits, '.', '_' and '-'";

/** A required name that reaches header names and metric labels (instance names, ai-token-ratelimit rule_name). */
export function readName(sec: Section, key: string): string | undefined {
  const name = sec.str(key, { required: true });
  if (name === undefined || NAME_PATTERN.test(name)) return name;
  sec.is.add(sec.p(key), NAME_MESSAGE);
  return undefined;
}

/** Headers the proxy itself owns; an instance setting them would corrupt the upstream request. */
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection']);

function readStringMap(is: Issues, path: string, value: unknown, kind: 'header' | 'query'): Record<string, string> {
  const out: Record<string, string> = {};
  if (value === undefined || value === null) return out;
  if (!isPlainObject(value)) {
    is.add(path, 'must be an object of strings');
    return out;
  }
  for (const key of Object.keys(value)) {
    const p = childPath(path, key);
    const v = value[key];
    if (kind === 'header' && !isHeaderName(key)) is.add(p, 'is not a valid header name');
    else if (kind === 'header' && RESERVED_HEADERS.has(key.toLowerCase())) is.add(p, 'is set by the proxy and cannot be configured');
    else if (kind === 'query' && key === '') is.add(p, 'must be a non-empty parameter name');
    if (typeof v !== 'string') is.add(p, stringMessage(v, 'must be a string'));
    else if (kind === 'header' && !isHeaderValue(v)) is.add(p, 'must not contain line breaks');
    else Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** The plugin-level transport fields; undefined when none is set (the gateway's defaults apply). */
function readTransport(sec: Section): InstanceTransportConfig | undefined {
  const timeout = sec.int('timeout', TIMEOUT_RULE);
  const sslVerify = sec.bool('ssl_verify');
  const keepalive = sec.bool('keepalive');
  const keepaliveTimeout = sec.int('keepalive_timeout', durationMs(1000));
  sec.int('keepalive_pool', POSITIVE);
  // Rejected rather than ignored: a config relying on these caps must not run without them.
  for (const k of ['max_stream_duration_ms', 'max_response_bytes']) {
    if (sec.has(k)) sec.is.add(sec.p(k), 'is not supported: buffered upstream answers are capped at 64 MiB and streams end after limits.upstream_idle_timeout_ms of silence');
  }
  const logging = sec.section('logging', ['summaries', 'payloads']);
  logging?.bool('summaries');
  logging?.bool('payloads');
  if (timeout === undefined && sslVerify === undefined && keepalive === undefined && keepaliveTimeout === undefined) return undefined;
  return {
    timeout_ms: timeout, ssl_verify: sslVerify ?? true, keepalive: keepalive ?? true,
    keepalive_timeout_ms: keepaliveTimeout ?? DEFAULT_KEEPALIVE_TIMEOUT_MS,
  };
}

/** APISIX's `options` (additionalProperties: true): `model` picks the model, every other field goes into the body. */
function readOptions(sec: Section): { model: string | undefined; body: Record<string, unknown> | undefined } {
  const v = sec.get('options');
  if (v === undefined) return { model: undefined, body: undefined };
  const path = sec.p('options');
  if (!isPlainObject(v)) {
    sec.is.add(path, 'must be an object');
    return { model: undefined, body: undefined };
  }
  let model: string | undefined;
  let body: Record<string, unknown> | undefined;
  for (const key of Object.keys(v)) {
    const p = childPath(path, key);
    const value = v[key];
    if (key === 'model') {
      if (typeof value !== 'string') sec.is.add(p, stringMessage(value, 'must be a string'));
      else model = value;
      continue;
    }
    if (FORBIDDEN_OPTIONS.has(key)) {
      sec.is.add(p, "cannot be set by an instance: it is the client's request (Sluice counts the prompt and relays the stream the client asked for)");
      continue;
    }
    const rule = Object.hasOwn(COUNT_OPTIONS, key) ? COUNT_OPTIONS[key] : undefined;
    if (rule !== undefined && checkInt(sec.is, p, value, rule) === undefined) continue;
    if (value === undefined || value === null) continue;
    body ??= {};
    Object.defineProperty(body, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return { model, body };
}

/** Only the checks' shape is read: Sluice runs no active health checks (see the README). */
function readChecks(sec: Section): void {
  const checks = sec.get('checks');
  if (checks === undefined) return;
  if (!isPlainObject(checks)) sec.is.add(sec.p('checks'), 'must be an object');
  else if (!isPlainObject(checks.active)) sec.is.add(childPath(sec.p('checks'), 'active'), 'must be an object');
}

/** The provider/auth/options/override body shared by an ai-proxy config and an ai-proxy-multi instance. */
function readUpstream(sec: Section, name: string, weight: number, priority: number, transport: InstanceTransportConfig | undefined): InstanceConfig {
  const provider = sec.required('provider') ? readProvider(sec) : undefined;
  const auth = sec.section('auth', ['header', 'query']);
  const authHeader = auth === undefined ? {} : readStringMap(sec.is, auth.p('header'), auth.get('header'), 'header');
  const authQuery = auth === undefined ? {} : readStringMap(sec.is, auth.p('query'), auth.get('query'), 'query');
  const { model, body: bodyOptions } = readOptions(sec);
  const override = sec.section('override', ['endpoint']);
  let endpoint = override?.str('endpoint');
  if (endpoint !== undefined && !isHttpUrl(endpoint)) {
    sec.is.add(childPath(sec.p('override'), 'endpoint'), 'must be an absolute http(s) URL');
    endpoint = undefined;
  } else if (endpoint !== undefined && hasUrlCredentials(endpoint)) {
    // Refused, not stripped: the upstream would answer 401 with nothing pointing at the dropped credentials.
    sec.is.add(childPath(sec.p('override'), 'endpoint'), 'must not hold credentials (user:password@): they are never sent; put them in auth.header (e.g. Authorization)');
    endpoint = undefined;
  }
  if (provider === 'openai-compatible' && override !== undefined && !override.has('endpoint')) {
    sec.is.add(childPath(sec.p('override'), 'endpoint'), 'is required for provider openai-compatible');
  }
  const forward = readForwardHeaders(sec);
  const inst: InstanceConfig = {
    name, provider: provider ?? 'openai', weight, priority,
    auth_header: authHeader, auth_query: authQuery, model, endpoint,
    ...(forward === undefined ? {} : { forward_headers: forward }),
    ...(bodyOptions === undefined ? {} : { body_options: bodyOptions }),
    ...(transport === undefined ? {} : { transport }),
  };
  // The provider module resolves the instance (its URL shapes, required fields) as it will at load.
  const catalogue = providerCatalogue();
  if (provider !== undefined && catalogue !== undefined) {
    const reported = new Set(sec.is.list.map((i) => i.path));
    for (const issue of catalogue.check(inst)) {
      const p = issue.path === '' ? sec.path : childPath(sec.path, issue.path);
      if (!reported.has(p)) sec.is.add(p, issue.message);
    }
  }
  return inst;
}

/** A provider name a registered module serves (src/providers/registry.ts); any string until one is registered. */
function readProvider(sec: Section): string | undefined {
  const v = sec.get('provider');
  if (v === undefined) return undefined;
  const catalogue = providerCatalogue();
  if (typeof v !== 'string' || v === '') {
    sec.is.add(sec.p('provider'), catalogue === undefined ? 'must be a non-empty string' : `must be one of: ${catalogue.names.join(', ')}`);
    return undefined;
  }
  if (catalogue !== undefined && !catalogue.names.includes(v)) {
    sec.is.add(sec.p('provider'), catalogue.unsupported(v));
    return undefined;
  }
  return v;
}

/**
 * ai-proxy: one upstream, exposed as a single instance named as APISIX names it, `ai-proxy-<provider>`: the
 * name in X-AI-RateLimit-*-<instance> headers and in ai-rate-limiting `instances[].name`.
 */
export function readAiProxy(is: Issues, path: string, value: unknown): AiProxyConfig | undefined {
  const sec = Section.open(is, path, value, SINGLE_KEYS);
  if (sec === undefined) return undefined;
  const upstream = readUpstream(sec, '', 1, 0, readTransport(sec));
  return { instances: [{ ...upstream, name: `ai-proxy-${upstream.provider}` }], fallback_strategy: [], single: true };
}

function readFallback(sec: Section): FallbackReason[] {
  const v = sec.get('fallback_strategy');
  // APISIX's default is instance_health_and_rate_limiting: spent instances are skipped unless told otherwise.
  if (v === undefined) return ['instance_health', 'rate_limiting'];
  const path = sec.p('fallback_strategy');
  const items = typeof v === 'string' ? [v] : Array.isArray(v) ? v : undefined;
  if (items === undefined) {
    sec.is.add(path, 'must be a string or an array of strings');
    return [];
  }
  const out: FallbackReason[] = [];
  items.forEach((item, i) => {
    const reasons = typeof item === 'string' && Object.hasOwn(FALLBACKS, item) ? FALLBACKS[item] : undefined;
    if (reasons === undefined) {
      sec.is.add(typeof v === 'string' ? path : childPath(path, i), `must be one of: ${Object.keys(FALLBACKS).join(', ')}`);
      return;
    }
    for (const r of reasons) if (!out.includes(r)) out.push(r);
  });
  return out;
}

function readBalancer(sec: Section): void {
  const b = sec.section('balancer', ['algorithm', 'hash_on', 'key']);
  if (b === undefined) return;
  const algorithm = b.oneOf('algorithm', ['roundrobin', 'chash'] as const);
  if (algorithm === 'chash') b.is.add(b.p('algorithm'), 'chash is not supported; Sluice balances by weighted round robin');
  for (const k of ['hash_on', 'key']) {
    if (b.has(k)) b.is.add(b.p(k), 'is only used by the chash algorithm, which Sluice does not support');
  }
}

export function readAiProxyMulti(is: Issues, path: string, value: unknown): AiProxyConfig | undefined {
  const sec = Section.open(is, path, value, MULTI_KEYS);
  if (sec === undefined) return undefined;
  const transport = readTransport(sec);
  readBalancer(sec);
  const fallback = readFallback(sec);
  const list = sec.array('instances', { required: true, nonEmpty: true }) ?? [];
  const instances: InstanceConfig[] = [];
  const firstIndex = new Map<string, number>();
  list.forEach((item, i) => {
    const inst = Section.open(is, childPath(sec.p('instances'), i), item, INSTANCE_KEYS);
    if (inst === undefined) return;
    const name = readName(inst, 'name');
    if (name !== undefined) {
      const prev = firstIndex.get(name);
      if (prev !== undefined) is.add(inst.p('name'), `duplicates instances[${prev}].name`);
      else firstIndex.set(name, i);
    }
    // Weight 0 is legal: the seeds use it for priority-only setups, where the balancer treats a group whose
    // weights are all 0 as equally weighted.
    const weight = inst.int('weight', NON_NEGATIVE) ?? 1;
    const priority = inst.int('priority', {}) ?? 0;
    readChecks(inst);
    instances.push(readUpstream(inst, name ?? `instance-${i}`, weight, priority, transport));
  });
  return { instances, fallback_strategy: fallback, single: false };
}
