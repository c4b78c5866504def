// ai-proxy (one upstream) and ai-proxy-multi (weighted instances in priority groups with fallback), in
// APISIX's shape. Both normalise into one AiProxyConfig so the request path handles a single shape.
//
// APISIX fields Sluice does not implement are rejected with a reason rather than silently ignored:
// `timeout` (Sluice's upstream timeouts are the top-level `limits`), and `balancer.algorithm: chash` with its
// `hash_on`/`key` (Sluice balances by smooth weighted round robin only; `algorithm: roundrobin` is accepted).

import type { AiProxyConfig, FallbackReason, InstanceConfig, Provider } from '../types.ts';
import { childPath, type Issues } from '../issues.ts';
import { isHeaderName, isHeaderValue, isHttpUrl } from '../net.ts';
import { NON_NEGATIVE, Section, isPlainObject } from '../section.ts';

const PROVIDERS: readonly Provider[] = ['openai', 'deepseek', 'openai-compatible'];
const INSTANCE_KEYS = ['name', 'provider', 'weight', 'priority', 'auth', 'options', 'override'] as const;
const SINGLE_KEYS = ['provider', 'auth', 'options', 'override', 'timeout'] as const;
const MULTI_KEYS = ['instances', 'fallback_strategy', 'balancer', 'timeout'] as const;

const FALLBACKS: Readonly<Record<string, readonly FallbackReason[]>> = {
  instance_health_and_rate_limiting: ['instance_health', 'rate_limiting'],
  rate_limiting: ['rate_limiting'],
  http_429: ['http_429'],
  http_5xx: ['http_5xx'],
};

/** Instance names appear in response header names (X-AI-RateLimit-Limit-<name>) and metric labels. */
export const NAME_PATTERN = /^[A-Za-z0-9._-]+$/;
export const NAME_MESSAGE = "must contain only letters, digits, '.', '_' and '-'";

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
    if (typeof v !== 'string') is.add(p, 'must be a string');
    else if (kind === 'header' && !isHeaderValue(v)) is.add(p, 'must not contain line breaks');
    else Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function rejectTimeout(sec: Section): void {
  if (sec.has('timeout')) {
    sec.is.add(sec.p('timeout'), 'is not supported; set limits.upstream_connect_timeout_ms and limits.upstream_first_byte_timeout_ms');
  }
}

/** The provider/auth/options/override body shared by an ai-proxy config and an ai-proxy-multi instance. */
function readUpstream(sec: Section, name: string, weight: number, priority: number): InstanceConfig {
  const provider = sec.required('provider') ? sec.oneOf('provider', PROVIDERS) : undefined;
  const auth = sec.section('auth', ['header', 'query']);
  const authHeader = auth === undefined ? {} : readStringMap(sec.is, auth.p('header'), auth.get('header'), 'header');
  const authQuery = auth === undefined ? {} : readStringMap(sec.is, auth.p('query'), auth.get('query'), 'query');
  const model = sec.section('options', ['model'])?.str('model');
  const override = sec.section('override', ['endpoint']);
  let endpoint = override?.str('endpoint');
  if (endpoint !== undefined && !isHttpUrl(endpoint)) {
    sec.is.add(childPath(sec.p('override'), 'endpoint'), 'must be an absolute http(s) URL');
    endpoint = undefined;
  }
  if (provider === 'openai-compatible' && override !== undefined && !override.has('endpoint')) {
    sec.is.add(childPath(sec.p('override'), 'endpoint'), 'is required for provider openai-compatible');
  }
  return {
    name, provider: provider ?? 'openai', weight, priority,
    auth_header: authHeader, auth_query: authQuery, model, endpoint,
  };
}

/** ai-proxy: one upstream, exposed as a single instance called `instanceName`. */
export function readAiProxy(is: Issues, path: string, value: unknown, instanceName: string): AiProxyConfig | undefined {
  const sec = Section.open(is, path, value, SINGLE_KEYS);
  if (sec === undefined) return undefined;
  rejectTimeout(sec);
  return { instances: [readUpstream(sec, instanceName, 1, 0)], fallback_strategy: [], single: true };
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
  rejectTimeout(sec);
  readBalancer(sec);
  const fallback = readFallback(sec);
  const list = sec.array('instances', { required: true, nonEmpty: true }) ?? [];
  const instances: InstanceConfig[] = [];
  const firstIndex = new Map<string, number>();
  list.forEach((item, i) => {
    const inst = Section.open(is, childPath(sec.p('instances'), i), item, INSTANCE_KEYS);
    if (inst === undefined) return;
    let name = inst.str('name', { required: true });
    if (name !== undefined && !NAME_PATTERN.test(name)) {
      is.add(inst.p('name'), NAME_MESSAGE);
      name = undefined;
    }
    if (name !== undefined) {
      const prev = firstIndex.get(name);
      if (prev !== undefined) is.add(inst.p('name'), `duplicates instances[${prev}].name`);
      else firstIndex.set(name, i);
    }
    // Weight 0 is legal: the seeds use it for priority-only setups, where the balancer treats a group whose
    // weights are all 0 as equally weighted.
    const weight = inst.int('weight', NON_NEGATIVE) ?? 1;
    const priority = inst.int('priority', {}) ?? 0;
    instances.push(readUpstream(inst, name ?? `instance-${i}`, weight, priority));
  });
  return { instances, fallback_strategy: fallback, single: false };
}
