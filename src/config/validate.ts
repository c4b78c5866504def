// Validation of a raw configuration tree (parsed YAML or JSON) into a defaulted, deep-frozen SluiceConfig.
// Every problem is collected with its path and reported at once in a ConfigError; nothing stops early.

import type {
  AdminConfig, AiProxyConfig, ConsumerConfig, LimitsConfig, ListenConfig, RedisBatchingConfig, RouteConfig,
  RoutePlugins, SluiceConfig, TokensConfig,
} from './types.ts';
import { substituteEnv } from './env.ts';
import { ConfigError, Issues, childPath, type ConfigIssue } from './issues.ts';
import { isHost } from './net.ts';
import { readAiProxy, readAiProxyMulti, NAME_MESSAGE, NAME_PATTERN } from './plugins/ai-proxy.ts';
import { readAiRateLimiting, type InstanceScope } from './plugins/ai-rate-limiting.ts';
import { readAiTokenRatelimit } from './plugins/ai-token-ratelimit.ts';
import { readConsumerKeyAuth, readRouteKeyAuth } from './plugins/key-auth.ts';
import { RedisTargets } from './redis.ts';
import { NON_NEGATIVE, POSITIVE, PORT, Section, isPlainObject, unknownMessage, type IntRule } from './section.ts';
import { parseIpRange } from '../rules/ip.ts';

export { ConfigError };
export type { ConfigIssue };

const TOP_KEYS = ['listen', 'admin', 'workers', 'limits', 'tokens', 'trusted_proxies', 'redis_batching', 'routes', 'consumers'] as const;
// `upstream` is accepted because APISIX route definitions (seed 001's rules example) carry one; as in APISIX,
// ai-proxy and ai-proxy-multi choose the upstream themselves, so it is checked to be an object and unused.
const ROUTE_KEYS = ['id', 'uri', 'methods', 'plugins', 'upstream'] as const;
const PLUGINS = ['ai-proxy', 'ai-proxy-multi', 'key-auth', 'ai-rate-limiting', 'ai-token-ratelimit'] as const;
const CONSUMER_PLUGINS = ['key-auth', 'ai-rate-limiting'] as const;
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'] as const;
/** An exact path, or a prefix ending in '*'; no query, fragment or whitespace. */
const URI = /^\/[^\s?#*]*\*?$/;
const USERNAME = /^[a-zA-Z0-9_-]+$/;

const DEFAULT_LISTEN: ListenConfig = { host: '127.0.0.1', port: 9080 };
const DEFAULT_ADMIN: AdminConfig = { host: '127.0.0.1', port: 9091 };
const DEFAULT_LIMITS: LimitsConfig = {
  max_body_bytes: 8 * 1024 * 1024,
  upstream_connect_timeout_ms: 2000,
  upstream_first_byte_timeout_ms: 60000,
  upstream_idle_timeout_ms: 60000,
};
const DEFAULT_TOKENS: TokensConfig = { default_max_tokens: 256, offload_bytes: 4096 };
const DEFAULT_BATCHING: RedisBatchingConfig = { flush_interval_ms: 100, max_batch_keys: 1000, max_pending_keys: 100000 };

function readEndpoint(is: Issues, path: string, value: unknown, def: ListenConfig): ListenConfig {
  const sec = Section.open(is, path, value, ['host', 'port']);
  if (sec === undefined) return def;
  let host = sec.str('host');
  if (host !== undefined && !isHost(host)) {
    is.add(sec.p('host'), 'must be an IP address or host name');
    host = undefined;
  }
  return { host: host ?? def.host, port: sec.int('port', PORT) ?? def.port };
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
    sec.is.add(sec.p('id'), typeof id === 'string' ? NAME_MESSAGE : 'must be a string');
    return `route-${index}`;
  }
  return id;
}

interface RouteDraft {
  readonly route: RouteConfig;
  readonly path: string;
}

function readRoute(is: Issues, path: string, value: unknown, index: number): RouteDraft | undefined {
  const sec = Section.open(is, path, value, ROUTE_KEYS);
  if (sec === undefined) return undefined;
  const id = readRouteId(sec, index);
  let uri = sec.str('uri', { required: true });
  if (uri !== undefined && !URI.test(uri)) {
    is.add(sec.p('uri'), "must start with '/' and may end with '*' (prefix match); no query or whitespace");
    uri = undefined;
  }
  const methods = readMethods(sec);
  if (sec.has('upstream') && !isPlainObject(sec.get('upstream'))) is.add(sec.p('upstream'), 'must be an object');

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
  for (const name of Object.keys(plugins ?? {})) {
    if ((PLUGINS as readonly string[]).includes(name)) present.add(name);
    else is.add(childPath(pluginsPath, name), unknownMessage('plugin', name, PLUGINS));
  }
  const conf = (name: string): unknown => plugins?.[name];

  let proxy: AiProxyConfig | undefined;
  if (plugins !== undefined && present.has('ai-proxy') === present.has('ai-proxy-multi')) {
    is.add(pluginsPath, 'must contain exactly one of ai-proxy or ai-proxy-multi');
  }
  if (present.has('ai-proxy-multi')) {
    proxy = readAiProxyMulti(is, childPath(pluginsPath, 'ai-proxy-multi'), conf('ai-proxy-multi'));
  } else if (present.has('ai-proxy')) {
    // The single instance is named after the route when the route has an explicit id.
    proxy = readAiProxy(is, childPath(pluginsPath, 'ai-proxy'), conf('ai-proxy'), sec.has('id') ? id : 'ai-proxy');
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
  return { route: { id, uri: uri ?? '/', methods, plugins: routePlugins }, path };
}

function readConsumers(sec: Section, routeInstances: ReadonlySet<string>): { consumers: ConsumerConfig[]; paths: string[] } {
  const list = sec.array('consumers') ?? [];
  const consumers: ConsumerConfig[] = [];
  const paths: string[] = [];
  const names = new Map<string, number>();
  const keys = new Map<string, number>();
  const scope: InstanceScope = { kind: 'consumer', names: routeInstances };
  list.forEach((value, i) => {
    const path = childPath(sec.p('consumers'), i);
    const c = Section.open(sec.is, path, value, ['username', 'plugins']);
    if (c === undefined) return;
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
        ? 'is not supported on consumers (only key-auth and ai-rate-limiting)'
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
    const rl = has('ai-rate-limiting')
      ? readAiRateLimiting(c.is, childPath(pluginsPath, 'ai-rate-limiting'), plugins['ai-rate-limiting'], scope)
      : undefined;
    consumers.push({ username: username ?? '', key, ai_rate_limiting: rl });
    paths.push(path);
  });
  return { consumers, paths };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Validate, default and freeze a configuration. `$ENV://NAME` references in any string are resolved from
 * `env` first. Throws ConfigError listing every issue.
 */
export function validateConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): SluiceConfig {
  const is = new Issues();
  const input = substituteEnv(raw ?? {}, '', env, is);
  const root = Section.open(is, '', input, TOP_KEYS);
  if (root === undefined) throw new ConfigError(is.list);

  const listen = readEndpoint(is, 'listen', root.get('listen'), DEFAULT_LISTEN);
  const admin = readEndpoint(is, 'admin', root.get('admin'), DEFAULT_ADMIN);
  if (admin.port !== 0 && admin.port === listen.port && admin.host === listen.host) {
    is.add('admin.port', 'must differ from listen.port');
  }
  const workers = root.int('workers', { min: 1, max: 64 }) ?? 1;
  const limits = readPositiveInts(is, 'limits', root.get('limits'), DEFAULT_LIMITS);
  const tokens = readPositiveInts(is, 'tokens', root.get('tokens'), DEFAULT_TOKENS);
  // flush_interval_ms 0: synchronous mode (every admission is a Redis round trip).
  const batching = readPositiveInts(is, 'redis_batching', root.get('redis_batching'), DEFAULT_BATCHING, { flush_interval_ms: NON_NEGATIVE });
  if (batching.max_pending_keys < batching.max_batch_keys) {
    is.add('redis_batching.max_pending_keys', 'must be at least redis_batching.max_batch_keys');
  }
  const trusted = readTrustedProxies(root);

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
  const { consumers, paths: consumerPaths } = readConsumers(root, allInstances);

  const targets = new RedisTargets();
  for (const d of drafts) {
    const rl = d.route.plugins['ai-rate-limiting'];
    if (rl?.redis !== undefined) targets.register(is, `${d.path}.plugins.ai-rate-limiting`, rl.redis);
    const tr = d.route.plugins['ai-token-ratelimit'];
    if (tr?.redis !== undefined) targets.register(is, `${d.path}.plugins.ai-token-ratelimit.redis`, tr.redis);
  }
  consumers.forEach((c, i) => {
    if (c.ai_rate_limiting?.redis !== undefined) {
      targets.register(is, `${consumerPaths[i]!}.plugins.ai-rate-limiting`, c.ai_rate_limiting.redis);
    }
  });

  if (is.list.length > 0) throw new ConfigError(is.list);
  const config: SluiceConfig = {
    listen,
    admin,
    workers,
    limits,
    tokens,
    trusted_proxies: trusted,
    redis_batching: batching,
    routes: drafts.map((d) => d.route),
    consumers,
  };
  return deepFreeze(config);
}
