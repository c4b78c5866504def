// Which quotas a request touches. `compileRouteQuotas` turns a route's ai-rate-limiting, its consumers'
// ai-rate-limiting and its ai-token-ratelimit into lookup tables once per config snapshot; `planRequest`
// then does only lookups, template resolution and (on a cache miss) one hash per dynamic key.
//
// Counter ids are stable across reloads and replicas and hold no secrets: they are built from config
// names, the window length and a truncated SHA-1 of dynamic key values (which may be API keys). Limits are
// not part of an id, so editing a limit keeps what has been consumed; a new window length starts afresh.
//
//   r/<route>/arl/i/<instance>/<window s>              route instance quota (listed, or the top-level limit)
//   r/<route>/arl/route/<window s>                     top-level limit on a route without ai-proxy-multi
//   r/<route>/arl/rule/<n>/<window s>/<hash>           rules[n-1]
//   c/<consumer>/arl/...                               the same shapes for a consumer's own plugin; shared by
//                                                      every route the consumer calls, as in APISIX
//   t/<rule_name>/g/<window s>                         ai-token-ratelimit global_threshold
//   t/<rule_name>/<kind>/<source>/<window s>/<hash>    ai-token-ratelimit rule item key; like Higress, the
//                                                      rule_name is the sharing group across routes

import { hash } from 'node:crypto';
import type {
  AiRateLimitingConfig,
  AiTokenRatelimitConfig,
  ConsumerConfig,
  LimitStrategy,
  RouteConfig,
  TokenLimitKey,
  TokenRuleItem,
} from '../config/types.ts';
import type { CounterSpec } from '../quota/types.ts';
import { compileCostExpr } from './cost-expr.ts';
import { clientIp, compileIpMatcher, newIpAddr, parseIpRange, rangeContains, type IpMatcher, type IpRange } from './ip.ts';
import { cookieValue, headerValue, queryParam, type RequestVars } from './request-vars.ts';
import { compileCountTemplate, compileTemplate, type CountTemplate, type KeyTemplate } from './template.ts';

export interface Usage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
}

export type HeaderTarget =
  /** X-AI-RateLimit-{Limit,Remaining,Reset}-<instance> */
  | { readonly kind: 'instance'; readonly instance: string }
  /** Top-level limit on a route without instances: X-AI-RateLimit-{Limit,Remaining,Reset} */
  | { readonly kind: 'route' }
  /** X-AI-<n>-RateLimit-* (n = 1-based rule position) or X-AI-<header_prefix>-RateLimit-* */
  | { readonly kind: 'rule'; readonly label: string }
  /** X-AI-<rule_name>-RateLimit-* */
  | { readonly kind: 'token-rule'; readonly label: string };

/** Header names precomputed at config load so responses build no strings beyond the values. */
export interface QuotaHeaderNames {
  /** The lower-cased limit header name: quotas with the same key share one set of headers, and the one
   *  with the least remaining is shown (a route and a consumer quota on one instance, say). */
  readonly key: string;
  readonly limit: string;
  readonly remaining: string;
  readonly reset: string;
  /** Structured-field string naming the quota in RateLimit-Policy / RateLimit (quoted). */
  readonly ietfLabel: string;
}

export interface PlannedQuota {
  readonly counter: CounterSpec;
  /** Tokens this quota charges for a usage (its limit strategy applied). */
  readonly cost: (u: Usage) => number;
  readonly header: HeaderTarget;
  readonly headerNames: QuotaHeaderNames;
  readonly showHeader: boolean;
  readonly headerStyle: 'apisix' | 'ietf';
  readonly rejectedCode: number;
  readonly rejectedMsg: string | undefined;
  /** Bounded metric label derived from config only. */
  readonly metricRule: string;
  readonly consumerScoped: boolean;
  /** The plugin config this quota comes from: the pipeline keeps one quota store per plugin (its policy). */
  readonly source: AiRateLimitingConfig | AiTokenRatelimitConfig;
}

export interface RequestQuotaPlan {
  /** Quotas that apply to every upstream attempt. */
  readonly common: readonly PlannedQuota[];
  /** Quotas of one upstream instance (may be empty). */
  perInstance(instanceName: string): readonly PlannedQuota[];
}

// Not frozen: V8 copies frozen arrays on a slow path, and callers may copy these.
const EMPTY: readonly PlannedQuota[] = [];
const EMPTY_MAP: ReadonlyMap<string, readonly PlannedQuota[]> = new Map();

class Plan implements RequestQuotaPlan {
  constructor(
    readonly common: readonly PlannedQuota[],
    private readonly instances: ReadonlyMap<string, readonly PlannedQuota[]>,
  ) {}

  perInstance(instanceName: string): readonly PlannedQuota[] {
    return this.instances.get(instanceName) ?? EMPTY;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Compile-time helpers

const COST: Readonly<Record<Exclude<LimitStrategy, 'expression'>, (u: Usage) => number>> = {
  total_tokens: (u) => u.total_tokens,
  prompt_tokens: (u) => u.prompt_tokens,
  completion_tokens: (u) => u.completion_tokens,
};

function costOf(strategy: LimitStrategy, expr: string | undefined, where: string): (u: Usage) => number {
  if (strategy !== 'expression') return COST[strategy];
  if (expr === undefined) throw new Error(`${where}: limit_strategy "expression" needs cost_expr`);
  return compileCostExpr(expr);
}

/** Counter id segment: config names may hold '/', which would make ids ambiguous. */
function seg(s: string): string {
  return encodeURIComponent(s);
}

/** 64 bits of SHA-1: no secret value appears in an id, collisions stay negligible. */
function keyHash(s: string): string {
  return hash('sha1', s, 'hex').slice(0, 16);
}

function headerToken(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ok = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || "!#$%&'*+-.^_`|~".includes(s[i]!);
    out += ok ? s[i] : '_';
  }
  return out;
}

function sfString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 34 || c === 92) out += '\\' + s[i];
    else out += c >= 32 && c <= 126 ? s[i] : '_';
  }
  return out + '"';
}

function headerSet(prefix: string, suffix: string, label: string): QuotaHeaderNames {
  const limit = `${prefix}Limit${suffix}`;
  return {
    key: limit.toLowerCase(),
    limit,
    remaining: `${prefix}Remaining${suffix}`,
    reset: `${prefix}Reset${suffix}`,
    ietfLabel: sfString(label),
  };
}

function namesFor(target: HeaderTarget): QuotaHeaderNames {
  switch (target.kind) {
    case 'instance':
      return headerSet('X-AI-RateLimit-', `-${headerToken(target.instance)}`, target.instance);
    case 'route':
      return headerSet('X-AI-RateLimit-', '', 'route');
    case 'rule':
      return headerSet(`X-AI-${headerToken(target.label)}-RateLimit-`, '', `rule-${target.label}`);
    case 'token-rule':
      return headerSet(`X-AI-${headerToken(target.label)}-RateLimit-`, '', target.label);
  }
}

/** The parts of a PlannedQuota shared by every quota of one plugin instance. */
interface QuotaBase {
  readonly showHeader: boolean;
  readonly headerStyle: 'apisix' | 'ietf';
  readonly rejectedCode: number;
  readonly rejectedMsg: string | undefined;
  readonly sliding: boolean;
  readonly consumerScoped: boolean;
  readonly source: AiRateLimitingConfig | AiTokenRatelimitConfig;
}

function makeQuota(
  base: QuotaBase,
  id: string,
  limit: number,
  windowSeconds: number,
  cost: (u: Usage) => number,
  header: HeaderTarget,
  headerNames: QuotaHeaderNames,
  metricRule: string,
): PlannedQuota {
  return {
    counter: { id, limit, windowMs: windowSeconds * 1000, sliding: base.sliding },
    cost,
    header,
    headerNames,
    showHeader: base.showHeader,
    headerStyle: base.headerStyle,
    rejectedCode: base.rejectedCode,
    rejectedMsg: base.rejectedMsg,
    metricRule,
    consumerScoped: base.consumerScoped,
    source: base.source,
  };
}

/** Dynamic-key quotas are cached per slot; a full cache is dropped, which bounds memory under key churn. */
const MAX_CACHED_KEYS = 4096;

function cachePut(cache: Map<string, PlannedQuota>, key: string, q: PlannedQuota): PlannedQuota {
  if (cache.size >= MAX_CACHED_KEYS) cache.clear();
  cache.set(key, q);
  return q;
}

// ---------------------------------------------------------------------------------------------------------
// ai-rate-limiting

interface RuleSlot {
  readonly keySrc: string;
  readonly key: KeyTemplate;
  readonly count: CountTemplate;
  readonly window: CountTemplate;
  readonly idPrefix: string;
  readonly base: QuotaBase;
  readonly cost: (u: Usage) => number;
  readonly header: HeaderTarget;
  readonly names: QuotaHeaderNames;
  readonly metricRule: string;
  readonly cache: Map<string, PlannedQuota>;
}

function resolveRule(slot: RuleSlot, vars: RequestVars): PlannedQuota | undefined {
  const value = slot.key(vars);
  if (value === undefined) return undefined;
  const limit = slot.count(vars);
  const windowS = slot.window(vars);
  if (limit === undefined || windowS === undefined) return undefined;
  const hit = slot.cache.get(value);
  if (hit !== undefined && hit.counter.limit === limit && hit.counter.windowMs === windowS * 1000) return hit;
  // The template source is hashed with the value so a rule re-keyed on another variable starts afresh.
  const id = `${slot.idPrefix}${windowS}/${keyHash(`${slot.keySrc}\n${value}`)}`;
  return cachePut(slot.cache, value, makeQuota(slot.base, id, limit, windowS, slot.cost, slot.header, slot.names, slot.metricRule));
}

interface CompiledArl {
  /** Instance name → quota (a listed instance, or the top-level limit applied to an unlisted one). */
  readonly instances: Map<string, PlannedQuota>;
  /** Top-level limit when the route has no instance list. */
  readonly routeWide: PlannedQuota | undefined;
  readonly rules: RuleSlot[];
}

function compileArl(
  cfg: AiRateLimitingConfig,
  prefix: string,
  consumerScoped: boolean,
  proxyInstances: readonly string[] | undefined,
  where: string,
): CompiledArl {
  const base: QuotaBase = {
    showHeader: cfg.show_limit_quota_header,
    headerStyle: cfg.header_style,
    rejectedCode: cfg.rejected_code,
    rejectedMsg: cfg.rejected_msg,
    sliding: cfg.window_type === 'sliding',
    consumerScoped,
    source: cfg,
  };
  const instances = new Map<string, PlannedQuota>();
  const instanceQuota = (name: string, limit: number, windowS: number, cost: (u: Usage) => number, metric: string): PlannedQuota => {
    const header: HeaderTarget = { kind: 'instance', instance: name };
    return makeQuota(base, `${prefix}i/${seg(name)}/${windowS}`, limit, windowS, cost, header, namesFor(header), metric);
  };
  for (const inst of cfg.instances) {
    const cost = costOf(inst.limit_strategy, inst.cost_expr, `${where}.instances[${inst.name}]`);
    instances.set(inst.name, instanceQuota(inst.name, inst.limit, inst.time_window, cost, consumerScoped ? 'consumer' : 'instance'));
  }
  let routeWide: PlannedQuota | undefined;
  if (cfg.limit !== undefined && cfg.time_window !== undefined) {
    const cost = costOf(cfg.limit_strategy, cfg.cost_expr, where);
    const metric = consumerScoped ? 'consumer' : 'route';
    if (proxyInstances !== undefined && proxyInstances.length > 0) {
      // APISIX semantics: the top-level quota is a separate counter for every instance not listed.
      for (const name of proxyInstances) {
        if (!instances.has(name)) instances.set(name, instanceQuota(name, cfg.limit, cfg.time_window, cost, metric));
      }
    } else {
      const header: HeaderTarget = { kind: 'route' };
      routeWide = makeQuota(base, `${prefix}route/${cfg.time_window}`, cfg.limit, cfg.time_window, cost, header, namesFor(header), metric);
    }
  }
  const ruleCost = cfg.rules.length > 0 ? costOf(cfg.limit_strategy, cfg.cost_expr, where) : COST.total_tokens;
  const rules = cfg.rules.map((r, i): RuleSlot => {
    const label = r.header_prefix ?? String(i + 1);
    const header: HeaderTarget = { kind: 'rule', label };
    const at = `${where}.rules[${i}]`;
    const wrap = <T>(what: string, f: () => T): T => {
      try {
        return f();
      } catch (err) {
        throw new Error(`${at}.${what}: ${(err as Error).message}`);
      }
    };
    return {
      keySrc: r.key,
      key: wrap('key', () => compileTemplate(r.key)),
      count: wrap('count', () => compileCountTemplate(r.count)),
      window: wrap('time_window', () => compileCountTemplate(r.time_window)),
      idPrefix: `${prefix}rule/${i + 1}/`,
      base,
      cost: ruleCost,
      header,
      names: namesFor(header),
      metricRule: consumerScoped ? `consumer-rule-${label}` : `rule-${label}`,
      cache: new Map(),
    };
  });
  return { instances, routeWide, rules };
}

// ---------------------------------------------------------------------------------------------------------
// ai-token-ratelimit

/** How a limit key matches a value. */
const MATCH_EXACT = 0;
const MATCH_REGEXP = 1;
const MATCH_ANY = 2;
const MATCH_IP = 3;
type MatchKind = typeof MATCH_EXACT | typeof MATCH_REGEXP | typeof MATCH_ANY | typeof MATCH_IP;

interface TokenKeySlot {
  readonly kind: MatchKind;
  readonly exact: string;
  readonly re: RegExp | undefined;
  readonly range: IpRange | undefined;
  readonly limit: number;
  readonly windowS: number;
  readonly idPrefix: string;
  /** The key's own shared counter (items that are not per-value). */
  readonly fixed: PlannedQuota | undefined;
  readonly cache: Map<string, PlannedQuota>;
}

interface TokenItemSlot {
  readonly source: (vars: RequestVars) => string | undefined;
  readonly isIp: boolean;
  readonly keys: readonly TokenKeySlot[];
}

interface CompiledTokenRl {
  readonly global: PlannedQuota | undefined;
  readonly items: readonly TokenItemSlot[];
  readonly base: QuotaBase;
  readonly header: HeaderTarget;
  readonly names: QuotaHeaderNames;
  readonly metricRule: string;
}

/** Parsed client address of the IP rule item being matched (synchronous use only). */
const ipScratch = newIpAddr();

function tokenSource(item: TokenRuleItem, trusted: IpMatcher, where: string): (vars: RequestVars) => string | undefined {
  switch (item.by) {
    case 'header': {
      const h = item.name.toLowerCase();
      return (v) => headerValue(v, h);
    }
    case 'param': {
      const p = item.name;
      return (v) => queryParam(v.query, p);
    }
    case 'cookie': {
      const c = item.name;
      return (v) => cookieValue(headerValue(v, 'cookie'), c);
    }
    case 'consumer':
      return (v) => (v.consumer === undefined || v.consumer === '' ? undefined : v.consumer);
    case 'ip': {
      // IP sources leave the parsed address in ipScratch for the range checks that follow.
      if (item.name === 'from-remote-addr') return (v) => clientIp(v.remoteAddr, undefined, trusted, ipScratch);
      if (item.name.startsWith('from-header-') && item.name.length > 12) {
        const h = item.name.slice(12).toLowerCase();
        // The header is believed only from a trusted proxy; clientIp falls back to the socket address.
        return (v) => clientIp(v.remoteAddr, headerValue(v, h), trusted, ipScratch);
      }
      throw new Error(`${where}: ip source must be "from-remote-addr" or "from-header-<name>", got "${item.name}"`);
    }
  }
}

function compileTokenRl(cfg: AiTokenRatelimitConfig, trusted: IpMatcher, where: string): CompiledTokenRl {
  const base: QuotaBase = {
    showHeader: cfg.show_limit_quota_header,
    headerStyle: 'apisix',
    rejectedCode: cfg.rejected_code,
    rejectedMsg: cfg.rejected_msg,
    sliding: cfg.window_type === 'sliding',
    consumerScoped: false,
    source: cfg,
  };
  const header: HeaderTarget = { kind: 'token-rule', label: cfg.rule_name };
  const names = namesFor(header);
  const metricRule = cfg.rule_name;
  const cost = COST.total_tokens;
  const rulePrefix = `t/${seg(cfg.rule_name)}/`;
  const g = cfg.global_threshold;
  const global = g === undefined
    ? undefined
    : makeQuota(base, `${rulePrefix}g/${g.window_seconds}`, g.tokens, g.window_seconds, cost, header, names, metricRule);

  const items = cfg.rule_items.map((item, i): TokenItemSlot => {
    const at = `${where}.rule_items[${i}]`;
    const isIp = item.by === 'ip';
    const kindSeg = `${item.per ? 'per-' : ''}${item.by}/${seg(item.name)}`;
    const keys = item.limit_keys.map((k: TokenLimitKey, j): TokenKeySlot => {
      let kind: MatchKind;
      let re: RegExp | undefined;
      let range: IpRange | undefined;
      if (k.key === '*') {
        kind = MATCH_ANY;
      } else if (isIp) {
        kind = MATCH_IP;
        try {
          range = parseIpRange(k.key);
        } catch (err) {
          throw new Error(`${at}.limit_keys[${j}].key: ${(err as Error).message}`);
        }
      } else if (k.key.startsWith('regexp:')) {
        kind = MATCH_REGEXP;
        try {
          re = new RegExp(k.key.slice(7));
        } catch (err) {
          throw new Error(`${at}.limit_keys[${j}].key: invalid regular expression: ${(err as Error).message}`);
        }
      } else {
        kind = MATCH_EXACT;
      }
      const idPrefix = `${rulePrefix}${kindSeg}/${k.window_seconds}/`;
      // A key that is not per-value has one counter shared by every value it matches, named by the key itself.
      const fixed = item.per
        ? undefined
        : makeQuota(base, idPrefix + keyHash(k.key), k.tokens, k.window_seconds, cost, header, names, metricRule);
      return { kind, exact: k.key, re, range, limit: k.tokens, windowS: k.window_seconds, idPrefix, fixed, cache: new Map() };
    });
    return { source: tokenSource(item, trusted, at), isIp, keys };
  });
  return { global, items, base, header, names, metricRule };
}

function keyMatches(k: TokenKeySlot, value: string): boolean {
  switch (k.kind) {
    case MATCH_EXACT: return value === k.exact;
    case MATCH_ANY: return true;
    case MATCH_REGEXP: return k.re!.test(value);
    case MATCH_IP: return rangeContains(k.range!, ipScratch);
  }
}

/** Higress order: the first rule item whose source is present and matches one of its keys; its first matching key. */
function resolveToken(t: CompiledTokenRl, vars: RequestVars): PlannedQuota | undefined {
  for (let i = 0; i < t.items.length; i++) {
    const item = t.items[i]!;
    const value = item.source(vars);
    if (value === undefined) continue;
    if (item.isIp && ipScratch.family === 0) continue;
    for (let j = 0; j < item.keys.length; j++) {
      const k = item.keys[j]!;
      if (!keyMatches(k, value)) continue;
      if (k.fixed !== undefined) return k.fixed;
      const hit = k.cache.get(value);
      if (hit !== undefined) return hit;
      const q = makeQuota(t.base, k.idPrefix + keyHash(value), k.limit, k.windowS, COST.total_tokens, t.header, t.names, t.metricRule);
      return cachePut(k.cache, value, q);
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Route compilation and request planning

/** Everything one kind of caller (anonymous, or one consumer) gets on this route. */
export interface RouteQuotaScope {
  readonly staticCommon: readonly PlannedQuota[];
  readonly rules: readonly RuleSlot[];
  readonly token: CompiledTokenRl | undefined;
  readonly instances: ReadonlyMap<string, readonly PlannedQuota[]>;
  /** Set when nothing depends on the request: the plan is returned as is. */
  readonly staticPlan: RequestQuotaPlan | undefined;
}

/** Built once per route and config snapshot. Fields other than routeId and active are internal to planRequest. */
export interface CompiledRouteQuotas {
  readonly routeId: string;
  /** False when neither the route nor any consumer defines a quota: every plan is empty. */
  readonly active: boolean;
  readonly anonymous: RouteQuotaScope;
  readonly byConsumer: ReadonlyMap<string, RouteQuotaScope>;
}

function buildScope(route: CompiledArl | undefined, consumer: CompiledArl | undefined, token: CompiledTokenRl | undefined): RouteQuotaScope {
  const staticCommon: PlannedQuota[] = [];
  if (route?.routeWide) staticCommon.push(route.routeWide);
  if (consumer?.routeWide) staticCommon.push(consumer.routeWide);
  if (token?.global) staticCommon.push(token.global);
  const rules = [...(route?.rules ?? []), ...(consumer?.rules ?? [])];
  const instances = new Map<string, PlannedQuota[]>();
  for (const arl of [route, consumer]) {
    if (arl === undefined) continue;
    for (const [name, q] of arl.instances) {
      const list = instances.get(name);
      if (list === undefined) instances.set(name, [q]);
      else list.push(q);
    }
  }
  const tokenDynamic = token !== undefined && token.items.length > 0;
  const staticPlan = rules.length === 0 && !tokenDynamic
    ? new Plan(staticCommon.length === 0 ? EMPTY : staticCommon, instances.size === 0 ? EMPTY_MAP : instances)
    : undefined;
  return { staticCommon, rules, token: tokenDynamic ? token : undefined, instances, staticPlan };
}

/**
 * Compile a route's quotas. Throws Error naming the offending field on a bad template, expression,
 * regular expression or IP range (config validation surfaces these with their paths).
 */
export function compileRouteQuotas(
  route: RouteConfig,
  consumers: readonly ConsumerConfig[],
  opts: { readonly trustedProxies: readonly string[] },
): CompiledRouteQuotas {
  const trusted = compileIpMatcher(opts.trustedProxies);
  const proxyInstances = route.plugins['ai-proxy-multi']?.instances.map((i) => i.name);
  const arlCfg = route.plugins['ai-rate-limiting'];
  const tokenCfg = route.plugins['ai-token-ratelimit'];
  const routeArl = arlCfg === undefined
    ? undefined
    : compileArl(arlCfg, `r/${seg(route.id)}/arl/`, false, proxyInstances, `routes[${route.id}].plugins.ai-rate-limiting`);
  const token = tokenCfg === undefined
    ? undefined
    : compileTokenRl(tokenCfg, trusted, `routes[${route.id}].plugins.ai-token-ratelimit`);
  const anonymous = buildScope(routeArl, undefined, token);
  const byConsumer = new Map<string, RouteQuotaScope>();
  for (const c of consumers) {
    if (c.ai_rate_limiting === undefined) continue;
    const arl = compileArl(c.ai_rate_limiting, `c/${seg(c.username)}/arl/`, true, proxyInstances, `consumers[${c.username}].ai_rate_limiting`);
    byConsumer.set(c.username, buildScope(routeArl, arl, token));
  }
  const active = routeArl !== undefined || token !== undefined || byConsumer.size > 0;
  return { routeId: route.id, active, anonymous, byConsumer };
}

const EMPTY_PLAN: RequestQuotaPlan = new Plan(EMPTY, EMPTY_MAP);

/** The quotas this request touches. Allocates only when rules or token rule items resolve per request. */
export function planRequest(c: CompiledRouteQuotas, vars: RequestVars): RequestQuotaPlan {
  if (!c.active) return EMPTY_PLAN;
  const scope = vars.consumer === undefined ? c.anonymous : (c.byConsumer.get(vars.consumer) ?? c.anonymous);
  if (scope.staticPlan !== undefined) return scope.staticPlan;
  const common: PlannedQuota[] = [];
  for (let i = 0; i < scope.staticCommon.length; i++) common.push(scope.staticCommon[i]!);
  for (let i = 0; i < scope.rules.length; i++) {
    const q = resolveRule(scope.rules[i]!, vars);
    if (q !== undefined) common.push(q);
  }
  if (scope.token !== undefined) {
    const q = resolveToken(scope.token, vars);
    if (q !== undefined) common.push(q);
  }
  return new Plan(common, scope.instances);
}
