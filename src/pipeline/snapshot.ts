// Compiles a validated config into the runtime snapshot the request path reads: route lookup tables,
// each instance's provider resolved once (addressing, auth, codecs: src/providers/), instance pickers,
// compiled quota plans and the quota store of each plugin.
// A reload builds a new snapshot and swaps it whole; quota stores outlive snapshots (see StoreRegistry).
import type {
  AiProxyConfig, AiRateLimitingConfig, AiTokenRatelimitConfig, ConsumerConfig, FallbackReason, InstanceConfig,
  KeyAuthRouteConfig, RouteConfig, SluiceConfig,
} from '../config/types.ts';
import type { QuotaStore } from '../quota/types.ts';
import { compileRouteQuotas, type CompiledRouteQuotas } from '../quota/plan.ts';
import { compileIpMatcher, type IpMatcher } from '../rules/ip.ts';
import { DEFAULT_MAX_USAGE } from '../streaming/usage.ts';
import { InstancePicker } from '../upstream/select.ts';
import { resolveTransport, type Transport } from '../upstream/client.ts';
import { ConfigError, childPath, type ConfigIssue } from '../config/issues.ts';
import { SURFACE_IDS, isIssues, promptScaleOf, resolveInstance } from '../providers/registry.ts';
import type { ResolvedProvider, ResolveIssue, SurfaceId } from '../providers/types.ts';
import { compileForwardPolicy, type ForwardPolicy } from './forward-headers.ts';

export interface CompiledInstance {
  readonly name: string;
  readonly weight: number;
  readonly priority: number;
  readonly model: string | undefined;
  /** The instance's provider: upstream origin and path, provider headers, body, codecs, error classification. */
  readonly provider: ResolvedProvider;
  /** Its config, from which a worker thread resolves the same provider to decode a large answer there. */
  readonly config: InstanceConfig;
  /** The instance's own timeout, TLS and keep-alive settings; undefined: the client's defaults. */
  readonly transport: Transport | undefined;
  /** Multiplier for text this instance generated and Sluice had to count (no usage, or an aborted stream): its
   *  provider module's estimate scale, 1 where o200k/cl100k is the model's own tokenizer. */
  readonly outputScale: number;
  /** Upstream request headers: content-type plus the instance's auth headers. */
  readonly headers: Readonly<Record<string, string>>;
  /** Which client headers this instance receives. */
  readonly forward: ForwardPolicy;
  /** `options` beyond `model` (the reservation reads max_tokens / n from them) and their JSON, for bodyMembers. */
  readonly bodyOptions: Readonly<Record<string, unknown>> | undefined;
  readonly optionJson: ReadonlyMap<string, string> | undefined;
}

/** How many of a proxy's instances serve a surface. */
export type Coverage = 'all' | 'some' | 'none';

/** Where a request goes: the route's ai-proxy, or the authenticated consumer's own (APISIX precedence). */
export interface CompiledProxy {
  readonly instances: readonly CompiledInstance[];
  readonly picker: InstancePicker<CompiledInstance>;
  readonly fallback: ReadonlySet<FallbackReason>;
  /** Per surface: whether every instance serves it, some (the others are skipped), or none (400). */
  readonly coverage: ReadonlyMap<SurfaceId, Coverage>;
  /** Prompt estimate multiplier: the largest of its instances' provider modules (ParseOptions.promptScale). */
  readonly promptScale: number;
}

export interface CompiledRoute {
  readonly id: string;
  readonly config: RouteConfig;
  readonly methods: ReadonlySet<string> | undefined;
  readonly instances: readonly CompiledInstance[];
  readonly picker: InstancePicker<CompiledInstance>;
  readonly fallback: ReadonlySet<FallbackReason>;
  readonly coverage: ReadonlyMap<SurfaceId, Coverage>;
  readonly promptScale: number;
  readonly keyAuth: KeyAuthRouteConfig | undefined;
  readonly quotas: CompiledRouteQuotas | undefined;
}

export type QuotaSource = AiRateLimitingConfig | AiTokenRatelimitConfig;

export interface Snapshot {
  readonly config: SluiceConfig;
  readonly exact: ReadonlyMap<string, readonly CompiledRoute[]>;
  readonly prefixes: readonly { readonly prefix: string; readonly route: CompiledRoute }[];
  readonly consumersByKey: ReadonlyMap<string, ConsumerConfig>;
  /** The store that keeps each quota plugin's counters. */
  readonly storeOf: ReadonlyMap<QuotaSource, QuotaStore>;
  /** Peers whose X-Forwarded-* headers are believed. */
  readonly trustedProxies: IpMatcher;
  /** Largest believable usage count of one response (tokens.max_usage). */
  readonly maxUsage: number;
  /** Consumers with their own ai-proxy / ai-proxy-multi, by username: used instead of the route's. */
  readonly consumerProxies: ReadonlyMap<string, CompiledProxy>;
}

/** Gives every quota plugin its store. Implemented by the app, which owns store lifetimes. */
export interface StoreResolver {
  storeFor(source: QuotaSource): QuotaStore;
}

/** Collects the issues of resolving instances, with their config paths, to throw them all at once. */
class ResolveErrors {
  readonly list: ConfigIssue[] = [];

  add(base: string, issues: readonly ResolveIssue[]): void {
    for (const i of issues) this.list.push({ path: i.path === '' ? base : childPath(base, i.path), message: i.message });
  }
}

function compileInstance(inst: InstanceConfig, path: string, errors: ResolveErrors): CompiledInstance | undefined {
  const provider = resolveInstance(inst);
  if (isIssues(provider)) {
    errors.add(path, provider);
    return undefined;
  }
  return {
    name: inst.name,
    weight: inst.weight,
    priority: inst.priority,
    model: inst.model,
    provider,
    config: inst,
    transport: resolveTransport(inst),
    outputScale: promptScaleOf(inst.provider),
    headers: Object.freeze({ 'content-type': 'application/json', ...inst.auth_header }),
    forward: compileForwardPolicy(inst.forward_headers),
    bodyOptions: inst.body_options,
    optionJson: inst.body_options === undefined
      ? undefined
      : new Map(Object.keys(inst.body_options).map((k) => [k, JSON.stringify(inst.body_options![k])])),
  };
}

/** An ai-proxy(-multi)'s instances compiled, with the paths config validation gave them. */
function compileProxy(proxy: AiProxyConfig | undefined, pluginsPath: string, errors: ResolveErrors): CompiledProxy {
  const configs = proxy?.instances ?? [];
  const instances: CompiledInstance[] = [];
  configs.forEach((inst, i) => {
    const path = proxy!.single ? childPath(pluginsPath, 'ai-proxy') : childPath(childPath(childPath(pluginsPath, 'ai-proxy-multi'), 'instances'), i);
    const c = compileInstance(inst, path, errors);
    if (c !== undefined) instances.push(c);
  });
  const coverage = new Map<SurfaceId, Coverage>();
  for (const s of SURFACE_IDS) {
    const n = instances.filter((i) => i.provider.mode(s) !== undefined).length;
    coverage.set(s, n === 0 ? 'none' : n === instances.length ? 'all' : 'some');
  }
  return {
    instances,
    picker: new InstancePicker(instances),
    fallback: new Set(proxy?.fallback_strategy ?? []),
    coverage,
    promptScale: Math.max(1, ...configs.map((i) => promptScaleOf(i.provider))),
  };
}

function compileRoute(route: RouteConfig, index: number, config: SluiceConfig, errors: ResolveErrors): CompiledRoute {
  const proxy = compileProxy(route.plugins['ai-proxy-multi'], `routes[${index}].plugins`, errors);
  // A consumer's quota applies where key-auth identifies the consumer: a route without key-auth has none of them.
  const hasQuota = route.plugins['ai-rate-limiting'] !== undefined || route.plugins['ai-token-ratelimit'] !== undefined ||
    (route.plugins['key-auth'] !== undefined && config.consumers.some((c) => c.ai_rate_limiting !== undefined));
  return {
    id: route.id,
    config: route,
    methods: route.methods.length > 0 ? new Set(route.methods) : undefined,
    ...proxy,
    keyAuth: route.plugins['key-auth'],
    quotas: hasQuota ? compileRouteQuotas(route, config.consumers, { trustedProxies: config.trusted_proxies, keyHashSecret: config.key_hash_secret }) : undefined,
  };
}

export function buildSnapshot(config: SluiceConfig, stores: StoreResolver): Snapshot {
  const exact = new Map<string, CompiledRoute[]>();
  const prefixes: { prefix: string; route: CompiledRoute }[] = [];
  const storeOf = new Map<QuotaSource, QuotaStore>();
  const errors = new ResolveErrors();
  config.routes.forEach((r, index) => {
    const compiled = compileRoute(r, index, config, errors);
    if (r.uri.endsWith('*')) prefixes.push({ prefix: r.uri.slice(0, -1), route: compiled });
    else {
      const list = exact.get(r.uri);
      if (list === undefined) exact.set(r.uri, [compiled]); else list.push(compiled);
    }
    const arl = r.plugins['ai-rate-limiting'];
    if (arl !== undefined) storeOf.set(arl, stores.storeFor(arl));
    const atr = r.plugins['ai-token-ratelimit'];
    if (atr !== undefined) storeOf.set(atr, stores.storeFor(atr));
  });
  const consumersByKey = new Map<string, ConsumerConfig>();
  const consumerProxies = new Map<string, CompiledProxy>();
  config.consumers.forEach((c, index) => {
    if (c.key !== undefined) consumersByKey.set(c.key, c);
    if (c.ai_proxy !== undefined) consumerProxies.set(c.username, compileProxy(c.ai_proxy, `consumers[${index}].plugins`, errors));
    if (c.ai_rate_limiting !== undefined) storeOf.set(c.ai_rate_limiting, stores.storeFor(c.ai_rate_limiting));
  });
  // Validation ran the same resolution when the registry was loaded; this catches a config validated without it.
  if (errors.list.length > 0) throw new ConfigError(errors.list);
  // Longest prefix first, so '/v1/*' does not shadow '/v1/chat/*'.
  prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  const maxUsage = config.tokens.max_usage;
  return {
    config, exact, prefixes, consumersByKey, storeOf, consumerProxies,
    trustedProxies: compileIpMatcher(config.trusted_proxies),
    maxUsage: Number.isSafeInteger(maxUsage) && maxUsage > 0 ? maxUsage : DEFAULT_MAX_USAGE,
  };
}

export type RouteLookup = { kind: 'found'; route: CompiledRoute } | { kind: 'not_found' } | { kind: 'method_not_allowed'; allow: string };

export function findRoute(s: Snapshot, method: string, path: string): RouteLookup {
  const candidates = s.exact.get(path);
  let allow: Set<string> | undefined;
  if (candidates !== undefined) {
    for (const r of candidates) {
      if (r.methods === undefined || r.methods.has(method)) return { kind: 'found', route: r };
      (allow ??= new Set()).add([...r.methods].join(', '));
    }
  }
  for (const p of s.prefixes) {
    if (!path.startsWith(p.prefix)) continue;
    if (p.route.methods === undefined || p.route.methods.has(method)) return { kind: 'found', route: p.route };
    (allow ??= new Set()).add([...p.route.methods].join(', '));
  }
  return allow === undefined ? { kind: 'not_found' } : { kind: 'method_not_allowed', allow: [...allow].join(', ') };
}
