// Compiles a validated config into the runtime snapshot the request path reads: route lookup tables,
// resolved upstream targets, instance pickers, compiled quota plans and the quota store of each plugin.
// A reload builds a new snapshot and swaps it whole; quota stores outlive snapshots (see StoreRegistry).
import type {
  AiRateLimitingConfig, AiTokenRatelimitConfig, ConsumerConfig, FallbackReason, InstanceConfig,
  KeyAuthRouteConfig, RouteConfig, SluiceConfig,
} from '../config/types.ts';
import type { QuotaStore } from '../quota/types.ts';
import { compileRouteQuotas, type CompiledRouteQuotas } from '../rules/quota-plan.ts';
import { compileIpMatcher, type IpMatcher } from '../rules/ip.ts';
import { DEFAULT_MAX_USAGE } from '../streaming/usage.ts';
import { InstancePicker } from '../upstream/select.ts';
import { resolveTarget, type Target } from '../upstream/client.ts';
import { compileForwardPolicy, type ForwardPolicy } from './forward-headers.ts';

export interface CompiledInstance {
  readonly name: string;
  readonly weight: number;
  readonly priority: number;
  readonly model: string | undefined;
  readonly target: Target;
  /** Upstream request headers: content-type plus the instance's auth headers. */
  readonly headers: Readonly<Record<string, string>>;
  /** Which client headers this instance receives. */
  readonly forward: ForwardPolicy;
  /** `options` beyond `model` (the reservation reads max_tokens / n from them) and their JSON, for bodyMembers. */
  readonly bodyOptions: Readonly<Record<string, unknown>> | undefined;
  readonly optionJson: ReadonlyMap<string, string> | undefined;
}

/** Where a request goes: the route's ai-proxy, or the authenticated consumer's own (APISIX precedence). */
export interface CompiledProxy {
  readonly instances: readonly CompiledInstance[];
  readonly picker: InstancePicker<CompiledInstance>;
  readonly fallback: ReadonlySet<FallbackReason>;
}

export interface CompiledRoute {
  readonly id: string;
  readonly config: RouteConfig;
  readonly methods: ReadonlySet<string> | undefined;
  readonly instances: readonly CompiledInstance[];
  readonly picker: InstancePicker<CompiledInstance>;
  readonly fallback: ReadonlySet<FallbackReason>;
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

function compileInstance(inst: InstanceConfig): CompiledInstance {
  return {
    name: inst.name,
    weight: inst.weight,
    priority: inst.priority,
    model: inst.model,
    target: resolveTarget(inst),
    headers: Object.freeze({ 'content-type': 'application/json', ...inst.auth_header }),
    forward: compileForwardPolicy(inst.forward_headers),
    bodyOptions: inst.body_options,
    optionJson: inst.body_options === undefined
      ? undefined
      : new Map(Object.keys(inst.body_options).map((k) => [k, JSON.stringify(inst.body_options![k])])),
  };
}

function compileRoute(route: RouteConfig, config: SluiceConfig): CompiledRoute {
  const proxy = route.plugins['ai-proxy-multi'];
  const instances = (proxy?.instances ?? []).map(compileInstance);
  const hasQuota = route.plugins['ai-rate-limiting'] !== undefined || route.plugins['ai-token-ratelimit'] !== undefined ||
    config.consumers.some((c) => c.ai_rate_limiting !== undefined);
  return {
    id: route.id,
    config: route,
    methods: route.methods.length > 0 ? new Set(route.methods) : undefined,
    instances,
    picker: new InstancePicker(instances),
    fallback: new Set(proxy?.fallback_strategy ?? []),
    keyAuth: route.plugins['key-auth'],
    quotas: hasQuota ? compileRouteQuotas(route, config.consumers, { trustedProxies: config.trusted_proxies, keyHashSecret: config.key_hash_secret }) : undefined,
  };
}

export function buildSnapshot(config: SluiceConfig, stores: StoreResolver): Snapshot {
  const exact = new Map<string, CompiledRoute[]>();
  const prefixes: { prefix: string; route: CompiledRoute }[] = [];
  const storeOf = new Map<QuotaSource, QuotaStore>();
  for (const r of config.routes) {
    const compiled = compileRoute(r, config);
    if (r.uri.endsWith('*')) prefixes.push({ prefix: r.uri.slice(0, -1), route: compiled });
    else {
      const list = exact.get(r.uri);
      if (list === undefined) exact.set(r.uri, [compiled]); else list.push(compiled);
    }
    const arl = r.plugins['ai-rate-limiting'];
    if (arl !== undefined) storeOf.set(arl, stores.storeFor(arl));
    const atr = r.plugins['ai-token-ratelimit'];
    if (atr !== undefined) storeOf.set(atr, stores.storeFor(atr));
  }
  const consumersByKey = new Map<string, ConsumerConfig>();
  const consumerProxies = new Map<string, CompiledProxy>();
  for (const c of config.consumers) {
    if (c.key !== undefined) consumersByKey.set(c.key, c);
    if (c.ai_proxy !== undefined) {
      const instances = c.ai_proxy.instances.map(compileInstance);
      consumerProxies.set(c.username, { instances, picker: new InstancePicker(instances), fallback: new Set(c.ai_proxy.fallback_strategy) });
    }
    if (c.ai_rate_limiting !== undefined) storeOf.set(c.ai_rate_limiting, stores.storeFor(c.ai_rate_limiting));
  }
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
