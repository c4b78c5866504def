// Validation of a raw configuration tree (parsed YAML or JSON) into a defaulted, deep-frozen SluiceConfig.
// Every problem is collected with its path and reported at once in a ConfigError; nothing stops early.

import { MAX_ANSWER_BYTES } from './types.ts';
import type {
  AdminConfig, AiProxyConfig, ConsumerConfig, LimitsConfig, ListenConfig, RedisBatchingConfig, RouteConfig,
  RoutePlugins, ShutdownConfig, SluiceConfig, TokensConfig, TokensModelConfig,
} from './types.ts';
import { availableParallelism } from 'node:os';
import { substituteEnv } from './env.ts';
import { ConfigError, Issues, childPath, type ConfigIssue } from './issues.ts';
import { isHost } from './net.ts';
import { readAiProxy, readAiProxyMulti, NAME_MESSAGE, NAME_PATTERN } from './plugins/ai-proxy.ts';
import { readAiRateLimiting, type InstanceScope } from './plugins/ai-rate-limiting.ts';
import { readAiTokenRatelimit } from './plugins/ai-token-ratelimit.ts';
import { readConsumerKeyAuth, readRouteKeyAuth } from './plugins/key-auth.ts';
import { POSITIVE, PORT, Section, durationMs, isPlainObject, stringMessage, unknownMessage, type IntRule } from './section.ts';
import { uriProblem } from './route-uri.ts';
import { parseIpRange } from '../rules/ip.ts';
import { DEFAULT_MAX_RESERVATION, defaultMaxUsage } from '../tokens/limits.ts';

export { ConfigError };
export type { ConfigIssue };

const TOP_KEYS = ['listen', 'admin', 'workers', 'limits', 'tokens', 'trusted_proxies', 'redis_batching', 'shutdown', 'key_hash_secret', 'routes', 'consumers'] as const;
// `upstream` is accepted because APISIX route definitions (seed 001's rules example) carry one; as in APISIX,
// ai-proxy and ai-proxy-multi choose the upstream themselves, so it is checked to be an object and unused.
// `name`, `desc` and `status` are APISIX's too: the first two describe the route, `status: 0` disables it.
const ROUTE_KEYS = ['id', 'uri', 'methods', 'plugins', 'upstream', 'name', 'desc', 'status'] as const;
const PLUGINS = ['ai-proxy', 'ai-proxy-multi', 'key-auth', 'ai-rate-limiting', 'ai-token-ratelimit'] as const;
const CONSUMER_PLUGINS = ['key-auth', 'ai-rate-limiting', 'ai-proxy', 'ai-proxy-multi'] as const;
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'] as const;
/** An exact path, or a prefix ending in '*'; no query, fragment or whitespace. */
const URI = /^\/[^\s?#*]*\*?$/;
const USERNAME = /^[a-zA-Z0-9_-]+$/;

const DEFAULT_LISTEN: ListenConfig = { host: '127.0.0.1', port: 9080, http1_guard: true };
const DEFAULT_ADMIN: AdminConfig = { host: '127.0.0.1', port: 9091 };
const DEFAULT_LIMITS: LimitsConfig = {
  max_body_bytes: 8 * 1024 * 1024,
  upstream_connect_timeout_ms: 2000,
  upstream_first_byte_timeout_ms: 60000,
  upstream_idle_timeout_ms: 60000,
  upstream_body_timeout_ms: 300000,
  max_quota_keys: 100_000,
  max_inflight_body_bytes: 64 * 1024 * 1024,
  max_inflight_answer_bytes: 256 * 1024 * 1024,
  max_header_fields: 48,
  max_header_line_bytes: 8192,
  max_header_bytes: 32768,
  max_drain_bytes: 64 * 1024 * 1024,
  client_body_timeout_ms: 60000,
  client_header_timeout_ms: 10000,
  client_idle_timeout_ms: 60000,
  client_send_timeout_ms: 10000,
  max_client_connections: 10_000,
  listen_backlog: 4096,
};
const TOKENS_KEYS = ['default_max_tokens', 'offload_bytes', 'offload_threads', 'max_reservation', 'max_usage', 'models', 'count_budget_ms'] as const;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._:@/-]*$/;

/** tokens.*: max_usage defaults from max_reservation and the model tables (src/tokens/limits.ts). */
function readTokens(is: Issues, value: unknown): TokensConfig {
  const sec = Section.open(is, 'tokens', value, TOKENS_KEYS);
  const s = sec ?? Section.open(is, 'tokens', {}, TOKENS_KEYS)!;
  const models: Record<string, TokensModelConfig> = {};
  const rawModels = s.get('models');
  if (rawModels !== undefined && !isPlainObject(rawModels)) is.add(s.p('models'), 'must be an object');
  else if (rawModels !== undefined) {
    for (const name of Object.keys(rawModels)) {
      const path = childPath(s.p('models'), name);
      if (!MODEL_NAME.test(name)) { is.add(path, 'must be a model name (letters, digits, . _ : @ / -)'); continue; }
      const m = Section.open(is, path, rawModels[name], ['max_output_tokens', 'context_window']);
      if (m === undefined) continue;
      const out = m.int('max_output_tokens', POSITIVE, true);
      const ctx = m.int('context_window', POSITIVE, true);
      if (out !== undefined && ctx !== undefined) models[name] = { max_output_tokens: out, context_window: ctx };
    }
  }
  const maxReservation = s.int('max_reservation', { min: 1, max: 100_000_000 }) ?? DEFAULT_MAX_RESERVATION;
  return {
    default_max_tokens: s.int('default_max_tokens', POSITIVE) ?? 256,
    offload_bytes: s.int('offload_bytes', POSITIVE) ?? 4096,
    offload_threads: s.int('offload_threads', { min: 1, max: 64 }) ?? 1,
    max_reservation: maxReservation,
    max_usage: s.int('max_usage', POSITIVE) ?? defaultMaxUsage(maxReservation, models),
    models,
    count_budget_ms: s.int('count_budget_ms', { min: 1, max: 600_000 }) ?? 2000,
  };
}
const DEFAULT_SHUTDOWN: ShutdownConfig = { drain_timeout_ms: 30000 };
const DEFAULT_BATCHING: RedisBatchingConfig = { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 100000, reservation_lease_ms: 15000 };

function readEndpoint(is: Issues, path: string, value: unknown, def: AdminConfig): AdminConfig {
  const sec = Section.open(is, path, value, ['host', 'port']);
  if (sec === undefined) return def;
  let host = sec.str('host');
  if (host !== undefined && !isHost(host)) {
    is.add(sec.p('host'), 'must be an IP address or host name');
    host = undefined;
  }
  return { host: host ?? def.host, port: sec.int('port', PORT) ?? def.port };
}

/** listen: an endpoint plus `http1_guard` (the node:net HTTP/1.x guard serving the port instead of uWS; default on). */
function readListen(is: Issues, value: unknown): ListenConfig {
  const sec = Section.open(is, 'listen', value, ['host', 'port', 'http1_guard']);
  if (sec === undefined) return DEFAULT_LISTEN;
  let host = sec.str('host');
  if (host !== undefined && !isHost(host)) {
    is.add(sec.p('host'), 'must be an IP address or host name');
    host = undefined;
  }
  return { host: host ?? DEFAULT_LISTEN.host, port: sec.int('port', PORT) ?? DEFAULT_LISTEN.port, http1_guard: sec.bool('http1_guard') ?? DEFAULT_LISTEN.http1_guard };
}

/** Reads every key of `defaults` as a positive integer. */
function readPositiveInts<T extends object>(is: Issues, path: string, value: unknown, defaults: T, rules: Partial<Record<keyof T & string, IntRule>> = {}): T {
  const keys = Object.keys(defaults) as (keyof T & string)[];
  const sec = Section.open(is, path, value, keys);
  const out = { ...defaults };
  if (sec === undefined) return out;
  for (const k of keys) {
    const v = sec.int(k, rules[k] ?? POSITIVE);
    if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

/** Most serving threads: far above any core count Sluice is deployed on, low enough to catch a typo. */
const MAX_WORKERS = 256;

/** `workers`: serving threads, "auto" (one per core: os.availableParallelism()) or an integer 1..256. */
function readWorkers(is: Issues, v: unknown): number {
  if (v === undefined) return 1;
  if (v === 'auto') return Math.min(MAX_WORKERS, Math.max(1, availableParallelism()));
  const n = typeof v === 'string' && is.wholeEnv.has('workers') && /^\d{1,4}$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) {
    is.add('workers', `must be "auto" or an integer from 1 to ${MAX_WORKERS}`);
    return 1;
  }
  return n;
}

function readTrustedProxies(sec: Section): string[] {
  const list = sec.array('trusted_proxies') ?? [];
  const out: string[] = [];
  list.forEach((v, i) => {
    const path = childPath(sec.p('trusted_proxies'), i);
    if (typeof v !== 'string') {
      sec.is.add(path, 'must be an IP address or CIDR range');
      return;
    }
    try {
      parseIpRange(v);
      out.push(v);
    } catch {
      sec.is.add(path, 'must be an IP address or CIDR range');
    }
  });
  return out;
}

function readMethods(sec: Section): string[] {
  const list = sec.array('methods') ?? [];
  const out: string[] = [];
  list.forEach((v, i) => {
    const m = typeof v === 'string' ? v.toUpperCase() : undefined;
    if (m === undefined || !(METHODS as readonly string[]).includes(m)) {
      sec.is.add(childPath(sec.p('methods'), i), `must be one of: ${METHODS.join(', ')}`);
    } else if (!out.includes(m)) {
      out.push(m);
    }
  });
  return out;
}

function readRouteId(sec: Section, index: number): string {
  const raw = sec.get('id');
  if (raw === undefined) return `route-${index}`;
  // APISIX route ids are often numbers.
  const id = typeof raw === 'number' && Number.isSafeInteger(raw) && raw >= 0 ? String(raw) : raw;
  if (typeof id !== 'string' || !NAME_PATTERN.test(id)) {
    sec.is.add(sec.p('id'), typeof id === 'string' ? NAME_MESSAGE : stringMessage(id, 'must be a string'));
    return `route-${index}`;
  }
  return id;
}

interface RouteDraft {
  readonly route: RouteConfig;
  readonly path: string;
  /** APISIX `status: 0`: validated, not served. */
  readonly disabled: boolean;
}

/**
 * A plugin's config without APISIX's `_meta`, and whether `_meta.disable` turns the plugin off. Of `_meta`, only
 * `disable` has a meaning here (Sluice runs its plugins in one fixed order, on every request of the route).
 */
function pluginMeta(is: Issues, path: string, conf: unknown): { conf: unknown; disabled: boolean } {
  if (!isPlainObject(conf) || !Object.hasOwn(conf, '_meta')) return { conf, disabled: false };
  const { _meta: meta, ...rest } = conf;
  const metaPath = childPath(path, '_meta');
  if (!isPlainObject(meta)) { is.add(metaPath, 'must be an object'); return { conf: rest, disabled: false }; }
  for (const k of Object.keys(meta)) if (k !== 'disable') is.add(childPath(metaPath, k), 'not supported: of _meta, Sluice reads only disable');
  if (meta.disable !== undefined && typeof meta.disable !== 'boolean') is.add(childPath(metaPath, 'disable'), 'must be a boolean');
  return { conf: rest, disabled: meta.disable === true };
}

function readRoute(is: Issues, path: string, value: unknown, index: number): RouteDraft | undefined {
  const sec = Section.open(is, path, value, ROUTE_KEYS);
  if (sec === undefined) return undefined;
  const id = readRouteId(sec, index);
  let uri = sec.str('uri', { required: true });
  if (uri !== undefined && !URI.test(uri)) {
    is.add(sec.p('uri'), "must start with '/' and may end with '*' (prefix match); no query or whitespace");
    uri = undefined;
  } else if (uri !== undefined) {
    const problem = uriProblem(uri);
    if (problem !== undefined) { is.add(sec.p('uri'), problem); uri = undefined; }
  }
  const methods = readMethods(sec);
  if (sec.has('upstream') && !isPlainObject(sec.get('upstream'))) is.add(sec.p('upstream'), 'must be an object');
  sec.str('name');
  sec.str('desc', { empty: true });
  const status = sec.get('status');
  if (status !== undefined && status !== 0 && status !== 1) is.add(sec.p('status'), 'must be 1 (enabled) or 0 (disabled)');

  const pluginsPath = sec.p('plugins');
  const raw = sec.get('plugins');
  let plugins: Record<string, unknown> | undefined = {};
  if (raw !== undefined && !isPlainObject(raw)) {
    is.add(pluginsPath, 'must be an object');
    plugins = undefined;
  } else if (raw !== undefined) {
    plugins = raw;
  }
  const present = new Set<string>();
  const confs = new Map<string, unknown>();
  for (const name of Object.keys(plugins ?? {})) {
    if (!(PLUGINS as readonly string[]).includes(name)) { is.add(childPath(pluginsPath, name), unknownMessage('plugin', name, PLUGINS)); continue; }
    const m = pluginMeta(is, childPath(pluginsPath, name), plugins![name]);
    if (m.disabled) continue;
    present.add(name);
    confs.set(name, m.conf);
  }
  const conf = (name: string): unknown => confs.get(name);

  let proxy: AiProxyConfig | undefined;
  if (plugins !== undefined && present.has('ai-proxy') === present.has('ai-proxy-multi')) {
    is.add(pluginsPath, 'must contain exactly one of ai-proxy or ai-proxy-multi');
  }
  if (present.has('ai-proxy-multi')) {
    proxy = readAiProxyMulti(is, childPath(pluginsPath, 'ai-proxy-multi'), conf('ai-proxy-multi'));
  } else if (present.has('ai-proxy')) {
    // The single instance is named after the route when the route has an explicit id.
    // Named `ai-proxy-<provider>` as APISIX names it (X-AI-RateLimit-Remaining-ai-proxy-openai).
    proxy = readAiProxy(is, childPath(pluginsPath, 'ai-proxy'), conf('ai-proxy'));
  }
  const scope: InstanceScope = { kind: 'route', names: new Set(proxy?.instances.map((i) => i.name) ?? []) };
  const routePlugins: RoutePlugins = {
    'ai-proxy-multi': proxy,
    'key-auth': present.has('key-auth') ? readRouteKeyAuth(is, childPath(pluginsPath, 'key-auth'), conf('key-auth')) : undefined,
    'ai-rate-limiting': present.has('ai-rate-limiting')
      ? readAiRateLimiting(is, childPath(pluginsPath, 'ai-rate-limiting'), conf('ai-rate-limiting'), scope)
      : undefined,
    'ai-token-ratelimit': present.has('ai-token-ratelimit')
      ? readAiTokenRatelimit(is, childPath(pluginsPath, 'ai-token-ratelimit'), conf('ai-token-ratelimit'))
      : undefined,
  };
  headerClashes(is, pluginsPath, routePlugins);
  return { route: { id, uri: uri ?? '/', methods, plugins: routePlugins }, path, disabled: status === 0 };
}

/**
 * Quotas of one route that would write the same X-AI-<label>-RateLimit-* headers (a rule's header_prefix or
 * 1-based position, "Model" for model_limits, an ai-token-ratelimit rule_name): one would hide the other.
 */
function headerClashes(is: Issues, pluginsPath: string, plugins: RoutePlugins): void {
  const arl = plugins['ai-rate-limiting'];
  const tr = plugins['ai-token-ratelimit'];
  const seen = new Map<string, string>();
  const claim = (label: string, path: string): void => {
    const prev = seen.get(label.toLowerCase());
    if (prev === undefined) seen.set(label.toLowerCase(), path);
    // Two rules' header_prefix are compared by the plugin's reader already.
    else if (!(prev.endsWith('.header_prefix') && path.endsWith('.header_prefix'))) is.add(path, `writes the same X-AI-${label}-RateLimit-* headers as ${prev}`);
  };
  const arlPath = childPath(pluginsPath, 'ai-rate-limiting');
  // Only quotas that write X-AI-<label>-* headers: shown, in the APISIX style, without standard_headers.
  if (arl !== undefined && arl.show_limit_quota_header && arl.header_style === 'apisix' && !arl.standard_headers) {
    arl.rules.forEach((r, i) => claim(r.header_prefix ?? String(i + 1), r.header_prefix !== undefined ? `${arlPath}.rules[${i}].header_prefix` : `${arlPath}.rules[${i}]`));
    if (arl.model_limits !== undefined && arl.model_limits.length > 0) claim('Model', `${arlPath}.model_limits`);
  }
  if (tr !== undefined && tr.show_limit_quota_header) claim(tr.rule_name, `${childPath(pluginsPath, 'ai-token-ratelimit')}.rule_name`);
}

function readConsumers(sec: Section, routeInstances: ReadonlySet<string>): { consumers: ConsumerConfig[] } {
  const list = sec.array('consumers') ?? [];
  const consumers: ConsumerConfig[] = [];
  const names = new Map<string, number>();
  const keys = new Map<string, number>();
  list.forEach((value, i) => {
    const path = childPath(sec.p('consumers'), i);
    const c = Section.open(sec.is, path, value, ['username', 'plugins', 'credentials']);
    if (c === undefined) return;
    // API7/APISIX 3 create a consumer's key as a separate credential object; a standalone config writes it inline.
    if (c.written('credentials')) c.is.add(c.p('credentials'), 'is not read: write the key in the consumer\'s own plugins (plugins: { key-auth: { key: … } })');
    let username = c.str('username', { required: true });
    if (username !== undefined && !USERNAME.test(username)) {
      c.is.add(c.p('username'), "must contain only letters, digits, '_' and '-'");
      username = undefined;
    }
    if (username !== undefined) {
      const prev = names.get(username);
      if (prev !== undefined) c.is.add(c.p('username'), `duplicates consumers[${prev}].username`);
      else names.set(username, i);
    }
    const raw = c.get('plugins');
    const pluginsPath = c.p('plugins');
    if (raw !== undefined && !isPlainObject(raw)) c.is.add(pluginsPath, 'must be an object');
    const plugins = isPlainObject(raw) ? raw : {};
    for (const name of Object.keys(plugins)) {
      if ((CONSUMER_PLUGINS as readonly string[]).includes(name)) continue;
      c.is.add(childPath(pluginsPath, name), (PLUGINS as readonly string[]).includes(name)
        ? `is not supported on consumers (only ${CONSUMER_PLUGINS.join(', ')})`
        : unknownMessage('plugin', name, CONSUMER_PLUGINS));
    }
    const has = (n: string): boolean => Object.hasOwn(plugins, n);
    const key = has('key-auth') ? readConsumerKeyAuth(c.is, childPath(pluginsPath, 'key-auth'), plugins['key-auth']) : undefined;
    if (key !== undefined) {
      // The message names the other consumer, never the key itself.
      const prev = keys.get(key);
      if (prev !== undefined) c.is.add(childPath(childPath(pluginsPath, 'key-auth'), 'key'), `duplicates the key of consumers[${prev}]`);
      else keys.set(key, i);
    }
    // APISIX: a consumer's ai-proxy / ai-proxy-multi replaces the route's for that consumer's requests.
    let proxy: AiProxyConfig | undefined;
    if (has('ai-proxy') && has('ai-proxy-multi')) c.is.add(pluginsPath, 'must contain at most one of ai-proxy or ai-proxy-multi');
    else if (has('ai-proxy-multi')) proxy = readAiProxyMulti(c.is, childPath(pluginsPath, 'ai-proxy-multi'), plugins['ai-proxy-multi']);
    else if (has('ai-proxy')) proxy = readAiProxy(c.is, childPath(pluginsPath, 'ai-proxy'), plugins['ai-proxy']);
    const scope: InstanceScope = {
      kind: 'consumer',
      names: proxy === undefined ? routeInstances : new Set([...routeInstances, ...proxy.instances.map((inst) => inst.name)]),
    };
    const rl = has('ai-rate-limiting')
      ? readAiRateLimiting(c.is, childPath(pluginsPath, 'ai-rate-limiting'), plugins['ai-rate-limiting'], scope)
      : undefined;
    consumers.push({ username: username ?? '', key, ai_rate_limiting: rl, ...(proxy === undefined ? {} : { ai_proxy: proxy }) });
  });
  return { consumers };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/** A validated config that crossed a thread boundary (a structured clone is not frozen), frozen again. */
export function freezeConfig(config: SluiceConfig): SluiceConfig {
  return deepFreeze(config);
}

/** Why `raw` cannot be a config's root (a YAML list or scalar), or undefined when it is a mapping. */
export function rootShapeMessage(raw: unknown): string | undefined {
  if (isPlainObject(raw)) return undefined;
  const kind = Array.isArray(raw) ? 'a list' : typeof raw === 'string' || typeof raw === 'number' || typeof raw === 'boolean' ? `a ${typeof raw}` : undefined;
  return `the config must be a mapping (with routes)${kind === undefined ? '' : `, not ${kind}`}`;
}

/**
 * Whether two listeners on one port would take the same socket: the same address, a wildcard of the other's
 * family (`0.0.0.0` takes IPv4, `::` both, as node listens dual-stack), or a name such as localhost beside an
 * address it may resolve to. 127.0.0.1 and ::1 are two sockets.
 */
function hostsOverlap(a: string, b: string): boolean {
  const x = a.toLowerCase().replace(/^\[|\]$/g, '').replace(/^::ffff:/, '');
  const y = b.toLowerCase().replace(/^\[|\]$/g, '').replace(/^::ffff:/, '');
  if (x === y || x === '::' || y === '::') return true;
  // 0.0.0.0 takes every IPv4 address and any name (which may resolve to one); an IPv6 address has a ':'.
  if (x === '0.0.0.0') return !y.includes(':');
  if (y === '0.0.0.0') return !x.includes(':');
  // A name is compared with addresses it may stand for only when it is localhost: others are not resolved here.
  const loop = (h: string): boolean => h === 'localhost' || h === '127.0.0.1' || h === '::1';
  return (x === 'localhost' || y === 'localhost') && loop(x) && loop(y);
}

/** Whether the listen and admin listeners would need one socket (a port 0 is a fresh one each). */
export function listenersClash(listen: { host: string; port: number }, admin: { host: string; port: number }): boolean {
  return admin.port !== 0 && admin.port === listen.port && hostsOverlap(admin.host, listen.host);
}

/** Top-level keys starting with `x-` are the writer's own (a home for YAML anchors, as in Compose files): dropped
 *  before anything reads them, `$ENV://` references included. */
function withoutExtensions(raw: unknown): unknown {
  if (!isPlainObject(raw) || !Object.keys(raw).some((k) => k.startsWith('x-'))) return raw;
  const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  for (const k of Object.keys(raw)) if (!k.startsWith('x-')) out[k] = raw[k];
  return out;
}

/**
 * Validate, default and freeze a configuration. `$ENV://NAME` references in any string are resolved from
 * `env` first. Throws ConfigError listing every issue.
 */
export function validateConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): SluiceConfig {
  const is = new Issues();
  const input = substituteEnv(withoutExtensions(raw ?? {}), '', env, is);
  const shape = rootShapeMessage(input);
  if (shape !== undefined) is.add('', shape);
  const root = shape === undefined ? Section.open(is, '', input, TOP_KEYS) : undefined;
  if (root === undefined) throw is.error();

  const listen = readListen(is, root.get('listen'));
  const admin = readEndpoint(is, 'admin', root.get('admin'), DEFAULT_ADMIN);
  if (listenersClash(listen, admin)) {
    is.add('admin.port', 'must differ from listen.port');
  }
  const workers = readWorkers(is, root.get('workers'));
  const limits = readPositiveInts(is, 'limits', root.get('limits'), DEFAULT_LIMITS, {
    max_quota_keys: { min: 1, max: 100_000_000 },
    upstream_connect_timeout_ms: durationMs(1),
    upstream_first_byte_timeout_ms: durationMs(1),
    upstream_idle_timeout_ms: durationMs(1),
    upstream_body_timeout_ms: durationMs(1),
    client_body_timeout_ms: durationMs(1),
    client_header_timeout_ms: durationMs(1),
    client_idle_timeout_ms: durationMs(1),
    // uWS 20.30 closes a connection whose pending write made no progress for its fixed ~10 s (8–12 s: 4 s timer ticks).
    client_send_timeout_ms: { min: 1, max: 10_000 },
    max_client_connections: { min: 1, max: 10_000_000 },
    listen_backlog: { min: 1, max: 65_535 },
  });
  if (limits.max_inflight_body_bytes < limits.max_body_bytes) {
    // A body the per-request limit allows but the budget never could would get 503 "retry shortly" forever.
    is.add('limits.max_inflight_body_bytes', 'must be at least limits.max_body_bytes');
  }
  if (limits.max_inflight_answer_bytes < MAX_ANSWER_BYTES) {
    // One answer of the most Sluice buffers must fit, or it would be refused whatever else is in flight.
    is.add('limits.max_inflight_answer_bytes', `must be at least ${MAX_ANSWER_BYTES} (the largest buffered answer)`);
  }
  const tokens = readTokens(is, root.get('tokens'));
  // flush_interval_ms 0: synchronous mode (every admission is a Redis round trip).
  // A lease shorter than a few flush intervals would let live reservations lapse between renewals.
  const batching = readPositiveInts(is, 'redis_batching', root.get('redis_batching'), DEFAULT_BATCHING, { flush_interval_ms: durationMs(0), reservation_lease_ms: { min: 1000, max: 3_600_000 } });
  if ((batching.reservation_lease_ms ?? 0) < 3 * batching.flush_interval_ms) {
    is.add('redis_batching.reservation_lease_ms', 'must be at least 3 × redis_batching.flush_interval_ms');
  }
  if (batching.max_pending_keys < batching.max_batch_keys) {
    is.add('redis_batching.max_pending_keys', 'must be at least redis_batching.max_batch_keys');
  }
  const trusted = readTrustedProxies(root);
  // HMAC key for rule key values in counter ids; the value is never echoed in an issue or a log.
  let keyHashSecret = root.str('key_hash_secret');
  if (keyHashSecret !== undefined && Buffer.byteLength(keyHashSecret) < 16) {
    is.add('key_hash_secret', 'must be at least 16 bytes (a short key can be guessed offline from the counter ids in Redis)');
    keyHashSecret = undefined;
  }
  // drain_timeout_ms 0: cut in-flight requests at once.
  const shutdown = readPositiveInts(is, 'shutdown', root.get('shutdown'), DEFAULT_SHUTDOWN, { drain_timeout_ms: durationMs(0) });

  // Routes are matched in file order and the first match wins, so two routes with overlapping uri and
  // methods are legal: the later one only serves what the earlier one does not match.
  const drafts: RouteDraft[] = [];
  (root.array('routes') ?? []).forEach((v, i) => {
    const d = readRoute(is, childPath('routes', i), v, i);
    if (d !== undefined) drafts.push(d);
  });
  const ids = new Map<string, number>();
  drafts.forEach((d, i) => {
    const prev = ids.get(d.route.id);
    if (prev !== undefined) is.add(childPath(d.path, 'id'), `duplicates routes[${prev}].id`);
    else ids.set(d.route.id, i);
  });

  const allInstances = new Set<string>();
  for (const d of drafts) for (const inst of d.route.plugins['ai-proxy-multi']?.instances ?? []) allInstances.add(inst.name);
  const { consumers } = readConsumers(root, allInstances);

  if (is.list.length > 0) throw is.error();
  const config: SluiceConfig = {
    listen,
    admin,
    workers,
    limits,
    tokens,
    trusted_proxies: trusted,
    key_hash_secret: keyHashSecret,
    redis_batching: batching,
    shutdown,
    routes: drafts.filter((d) => !d.disabled).map((d) => d.route),
    consumers,
  };
  return deepFreeze(config);
}
