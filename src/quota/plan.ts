// Which quotas a request touches. `compileRouteQuotas` turns a route's ai-rate-limiting, its consumers'
// ai-rate-limiting and its ai-token-ratelimit into lookup tables once per config snapshot; `planRequest`
// then does only lookups, template resolution and (on a cache miss) one keyed hash per dynamic key.
//
// Counter ids are stable across reloads and hold no secrets: they are built from config names, the window
// length and an HMAC-SHA256 of key values (which may be API keys) under `key_hash_secret` (a random
// per-process key when none is configured, so replicas must configure one to share per-key counters).
// Limits are not part of an id, so editing a limit, or a templated limit resolving differently, keeps what
// has been consumed; a new window length starts afresh.
//
//   r/<route>/arl/i/<instance>/<window s>              route instance quota (listed, or the top-level limit)
//   r/<route>/arl/route/<window s>                     top-level limit on a route without ai-proxy-multi
//   r/<route>/arl/rule/<n>/<window s>/<hash>           rules[n-1]
//   r/<route>/arl/m/<window s>/<hash of model>         model_limits: one counter per upstream model
//   c/<consumer>/arl/...                               the same shapes for a consumer's own plugin; shared by
//                                                      every route the consumer calls, as in APISIX
//   r/<route>/arl/c/<consumer>/...                     the route's plugin for a consumer with its own ai-proxy
//   t/<rule_name>/g/<window s>                         ai-token-ratelimit global_threshold
//   t/<rule_name>/<kind>/<source>/<window s>/<hash>    ai-token-ratelimit rule item key; like Higress, the
//                                                      rule_name is the sharing group across routes
//
// Quotas that name `${upstream_model}` (in a key, limit or window) and `model_limits` depend on the instance
// tried: they are resolved per attempt by `perInstance(name, upstreamModel)`, not at admission, so a spent
// model quota moves the request to the next instance under `fallback_strategy: rate_limiting`.

import { createHmac, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import type {
  AiRateLimitingConfig,
  AiTokenRatelimitConfig,
  ConsumerConfig,
  LimitStrategy,
  RouteConfig,
  TokenLimitKey,
  TokenRuleItem,
} from '../config/types.ts';
import type { CounterSpec } from './types.ts';
import { MAX_TIME_WINDOW_S } from '../config/types.ts';
import { SluiceError } from '../core/errors.ts';
import { compileCostExpr, type RawUsage } from '../rules/cost-expr.ts';
import { clientIp, compileIpMatcher, newIpAddr, parseIpRange, rangeContains, type IpMatcher, type IpRange } from '../rules/ip.ts';
import { compileRuleRegex, type RuleRegex } from '../rules/regex.ts';
import { INSTANCE_VARS, cookieValue, headerValue, queryParam, type RequestVars } from '../rules/request-vars.ts';
import {
  compileCountTemplate, compileTemplate, countVars, requiredVars, templateVars, type CountTemplate, type KeyTemplate, type RequiredVar,
} from '../rules/template.ts';

/** The normalised usage (streaming/usage.ts): the three kinds are parts of prompt / completion, never added on top. */
export interface Usage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
  /** Absent when not known: the reservation's estimate, or a usage counted from text. */
  readonly cached_prompt_tokens?: number;
  readonly cache_write_tokens?: number;
  readonly reasoning_tokens?: number;
  /** The upstream's usage object as it came (settlement only): cost expressions may name any numeric field. */
  readonly raw?: RawUsage;
}

export type HeaderTarget =
  /** X-AI-RateLimit-{Limit,Remaining,Reset}-<instance> */
  | { readonly kind: 'instance'; readonly instance: string }
  /** Top-level limit on a route without instances: X-AI-RateLimit-{Limit,Remaining,Reset} */
  | { readonly kind: 'route' }
  /** X-AI-<n>-RateLimit-* (n = 1-based rule position) or X-AI-<header_prefix>-RateLimit-* */
  | { readonly kind: 'rule'; readonly label: string }
  /** X-AI-<rule_name>-RateLimit-* */
  | { readonly kind: 'token-rule'; readonly label: string }
  /** model_limits: X-AI-Model-RateLimit-* (one upstream model per attempt, so one set) */
  | { readonly kind: 'model' };

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
  /** Extra header carrying the reset seconds on a rejection by this quota (Higress: X-TokenRateLimit-Reset). */
  readonly rejectResetHeader: string | undefined;
  readonly rejectedCode: number;
  readonly rejectedMsg: string | undefined;
  /** Bounded metric label derived from config only. */
  readonly metricRule: string;
  readonly consumerScoped: boolean;
  /** The plugin config this quota comes from: the pipeline keeps one quota store per plugin (its policy). */
  readonly source: AiRateLimitingConfig | AiTokenRatelimitConfig;
}

/** A request lacking a variable that a fail-closed rule or templated limit needs: answer this instead. */
export interface MissingVariable {
  readonly status: number;
  /** Names the plugin, the rule and the variable; never a value. */
  readonly message: string;
}

export interface RequestQuotaPlan {
  /** Quotas that apply to every upstream attempt. */
  readonly common: readonly PlannedQuota[];
  /**
   * Quotas of one upstream attempt (may be empty). `upstreamModel` is the model that instance sends (its own,
   * else the requested one): quotas on `${upstream_model}` and `model_limits` need it. Throws SluiceError
   * SLC_RULE_KEY_MISSING (with the plugin's missing_key_code) when a fail-closed quota lacks a variable.
   */
  perInstance(instanceName: string, upstreamModel?: string): readonly PlannedQuota[];
  /** perInstance without the throw: the missing variable is returned instead. */
  forInstance(instanceName: string, upstreamModel: string | undefined): readonly PlannedQuota[] | MissingVariable;
  /** Set when the request must be refused because a needed variable is absent; the quotas are then empty. */
  readonly missing: MissingVariable | undefined;
}

// Not frozen: V8 copies frozen arrays on a slow path, and callers may copy these.
const EMPTY: readonly PlannedQuota[] = [];
const EMPTY_MAP: ReadonlyMap<string, readonly PlannedQuota[]> = new Map();

/** A rule group whose instance-scoped rules decide, per attempt, whether any rule applied. */
interface DeferredGroup {
  readonly group: CompiledArl;
  readonly applied: number;
  readonly misses: readonly string[] | undefined;
}

/** What a plan still resolves per attempt: the request's variables and the scope's instance-scoped quotas. */
interface LateWork {
  readonly scope: RouteQuotaScope;
  readonly vars: RequestVars;
  readonly groups: readonly DeferredGroup[];
}

export function isMissingVariable(r: readonly PlannedQuota[] | MissingVariable): r is MissingVariable {
  return !Array.isArray(r);
}

class Plan implements RequestQuotaPlan {
  constructor(
    readonly common: readonly PlannedQuota[],
    private readonly instances: ReadonlyMap<string, readonly PlannedQuota[]>,
    readonly missing: MissingVariable | undefined = undefined,
    private readonly late: LateWork | undefined = undefined,
  ) {}

  perInstance(instanceName: string, upstreamModel?: string): readonly PlannedQuota[] {
    const r = this.forInstance(instanceName, upstreamModel);
    if (isMissingVariable(r)) throw new SluiceError('SLC_RULE_KEY_MISSING', r.message, { status: r.status });
    return r;
  }

  forInstance(instanceName: string, upstreamModel: string | undefined): readonly PlannedQuota[] | MissingVariable {
    const base = this.instances.get(instanceName) ?? EMPTY;
    return this.late === undefined ? base : resolveLate(this.late, instanceName, upstreamModel, base);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Compile-time helpers

const COST: Readonly<Record<Exclude<LimitStrategy, 'expression'>, (u: Usage) => number>> = {
  total_tokens: (u) => u.total_tokens,
  prompt_tokens: (u) => u.prompt_tokens,
  completion_tokens: (u) => u.completion_tokens,
  // Exact with the upstream's usage; bounded by the reserved prompt / completion before it (cost-expr.ts).
  cached_prompt_tokens: compileCostExpr('cached_prompt_tokens'),
  cache_write_tokens: compileCostExpr('cache_write_tokens'),
  reasoning_tokens: compileCostExpr('reasoning_tokens'),
  uncached_prompt_tokens: compileCostExpr('uncached_prompt_tokens'),
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

/** Used when the config sets no key_hash_secret: stable for the process, so reloads keep per-key counters. */
const PROCESS_SECRET = createSecretKey(randomBytes(32));

type KeyHasher = (s: string) => string;

/** 128 bits of HMAC-SHA256: a key value (an API key, say) cannot be recovered or confirmed from Redis without the secret. */
function keyHasher(secret: string | undefined): KeyHasher {
  // A KeyObject spares each HMAC the key setup a raw Buffer costs (about a third of the time, measured).
  const key: KeyObject = secret === undefined ? PROCESS_SECRET : createSecretKey(Buffer.from(secret, 'utf8'));
  return (s) => createHmac('sha256', key).update(s).digest('hex').slice(0, 32);
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

/** APISIX standard_headers: the suffix follows the limit strategy (an expression counts as Tokens). */
const STANDARD_SUFFIX: Readonly<Record<LimitStrategy, string>> = {
  total_tokens: 'Tokens',
  prompt_tokens: 'PromptTokens',
  completion_tokens: 'CompletionTokens',
  cached_prompt_tokens: 'CachedPromptTokens',
  cache_write_tokens: 'CacheWriteTokens',
  reasoning_tokens: 'ReasoningTokens',
  uncached_prompt_tokens: 'UncachedPromptTokens',
  expression: 'Tokens',
};

function namesFor(target: HeaderTarget, standard: LimitStrategy | undefined): QuotaHeaderNames {
  if (standard !== undefined) {
    const label = target.kind === 'instance' ? target.instance : target.kind === 'route' || target.kind === 'model' ? target.kind : target.label;
    return headerSet('X-RateLimit-', `-${STANDARD_SUFFIX[standard]}`, label);
  }
  switch (target.kind) {
    case 'instance':
      return headerSet('X-AI-RateLimit-', `-${headerToken(target.instance)}`, target.instance);
    case 'route':
      return headerSet('X-AI-RateLimit-', '', 'route');
    case 'rule':
      return headerSet(`X-AI-${headerToken(target.label)}-RateLimit-`, '', `rule-${target.label}`);
    case 'token-rule':
      return headerSet(`X-AI-${headerToken(target.label)}-RateLimit-`, '', target.label);
    case 'model':
      return headerSet('X-AI-Model-RateLimit-', '', 'model');
  }
}

/** The parts of a PlannedQuota shared by every quota of one plugin instance. */
interface QuotaBase {
  readonly showHeader: boolean;
  readonly headerStyle: 'apisix' | 'ietf';
  readonly rejectResetHeader: string | undefined;
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
    rejectResetHeader: base.rejectResetHeader,
    rejectedCode: base.rejectedCode,
    rejectedMsg: base.rejectedMsg,
    metricRule,
    consumerScoped: base.consumerScoped,
    source: base.source,
  };
}

/** Dynamic quotas are cached per slot; a full cache is dropped, which bounds memory under key churn. */
const MAX_CACHED_KEYS = 4096;

function cachePut(cache: Map<string, PlannedQuota>, key: string, q: PlannedQuota): PlannedQuota {
  if (cache.size >= MAX_CACHED_KEYS) cache.clear();
  cache.set(key, q);
  return q;
}

// ---------------------------------------------------------------------------------------------------------
// ai-rate-limiting

/** What to do when a request lacks a variable a slot needs. */
interface MissingPolicy {
  readonly reject: boolean;
  readonly status: number;
}

/** A limit and window, each a literal or a template resolved per request. */
interface LimitTemplate {
  readonly count: CountTemplate;
  readonly window: CountTemplate;
  readonly countSrc: string | number;
  readonly windowSrc: string | number;
  readonly countVars: readonly RequiredVar[];
  readonly windowVars: readonly RequiredVar[];
  /** Names an instance variable (`${upstream_model}`): resolved per attempt. */
  readonly late: boolean;
}

function namesInstanceVar(...srcs: (string | number)[]): boolean {
  return srcs.some((src) => templateVars(src).some((v) => INSTANCE_VARS.has(v)));
}

function limitTemplate(count: string | number, window: string | number, at: string, countField: string): LimitTemplate {
  const wrap = <T>(what: string, f: () => T): T => {
    try {
      return f();
    } catch (err) {
      throw new Error(`${at}.${what}: ${(err as Error).message}`);
    }
  };
  return {
    count: wrap(countField, () => compileCountTemplate(count, countField)),
    window: wrap('time_window', () => compileCountTemplate(window, 'time_window', MAX_TIME_WINDOW_S)),
    countSrc: count,
    windowSrc: window,
    countVars: countVars(count),
    windowVars: countVars(window),
    late: namesInstanceVar(count, window),
  };
}

/**
 * Why a template did not resolve: the first absent variable (a count's with a default is never absent: the
 * default stands in), or the one whose value is not what the field takes. The answer goes to the client, so it
 * names variables only: never a value, nor the template (config text).
 */
function describeMiss(vars: readonly RequiredVar[], req: RequestVars, range = 'a positive integer'): string {
  for (const v of vars) if (v.get(req) === undefined) return `request variable "${v.name}" is missing`;
  return vars.length > 0 ? `request variable "${vars[0]!.name}" is not ${range}` : 'the template did not resolve';
}

const WINDOW_RANGE = `an integer from 1 to ${MAX_TIME_WINDOW_S} (seconds)`;

/** A templated (or literal) top-level or instance quota: one counter per resolved window, limit applied per request. */
interface LimitSlot {
  readonly fixed: PlannedQuota | undefined;
  readonly tpl: LimitTemplate;
  readonly make: (limit: number, windowS: number) => PlannedQuota;
  readonly cache: Map<string, PlannedQuota>;
  readonly what: string;
  readonly missing: MissingPolicy;
}

type Resolved = PlannedQuota | MissingVariable | undefined;

function isMissing(r: Resolved): r is MissingVariable {
  return r !== undefined && (r as MissingVariable).message !== undefined && (r as PlannedQuota).counter === undefined;
}

function missingOf(policy: MissingPolicy, what: string, why: string): MissingVariable | undefined {
  return policy.reject ? { status: policy.status, message: `${what}: ${why}` } : undefined;
}

function resolveLimitSlot(slot: LimitSlot, vars: RequestVars): Resolved {
  if (slot.fixed !== undefined) return slot.fixed;
  const t = slot.tpl;
  const limit = t.count(vars);
  if (limit === undefined) return missingOf(slot.missing, `${slot.what} limit`, describeMiss(t.countVars, vars));
  const windowS = t.window(vars);
  if (windowS === undefined) return missingOf(slot.missing, `${slot.what} time_window`, describeMiss(t.windowVars, vars, WINDOW_RANGE));
  const cacheKey = `${limit}/${windowS}`;
  return slot.cache.get(cacheKey) ?? cachePut(slot.cache, cacheKey, slot.make(limit, windowS));
}

interface RuleSlot {
  readonly keySrc: string;
  readonly key: KeyTemplate;
  readonly keyVars: readonly RequiredVar[];
  readonly tpl: LimitTemplate;
  readonly idPrefix: string;
  readonly base: QuotaBase;
  readonly cost: (u: Usage) => number;
  readonly header: HeaderTarget;
  readonly names: QuotaHeaderNames;
  readonly metricRule: string;
  readonly cache: Map<string, PlannedQuota>;
  readonly hash: KeyHasher;
  readonly what: string;
  /** `rules[i]`, for the answer to a request no rule applies to. */
  readonly label: string;
  readonly missing: MissingPolicy;
  /** The key, count or window names `${upstream_model}`: resolved per attempt. */
  readonly late: boolean;
}

/** A rule whose key is absent: skipped, unless no rule of its plugin applies (then the request fails closed). */
interface KeyMiss {
  readonly keyMiss: string;
}

function resolveRule(slot: RuleSlot, vars: RequestVars): Resolved | KeyMiss {
  const value = slot.key(vars);
  if (value === undefined) return { keyMiss: `${slot.label}: ${describeMiss(slot.keyVars, vars)}` };
  // The key is there but its limit is not: the rule cannot be applied, and skipping it would serve unmetered.
  const t = slot.tpl;
  const limit = t.count(vars);
  if (limit === undefined) return missingOf(slot.missing, `${slot.what} count`, describeMiss(t.countVars, vars));
  const windowS = t.window(vars);
  if (windowS === undefined) return missingOf(slot.missing, `${slot.what} time_window`, describeMiss(t.windowVars, vars, WINDOW_RANGE));
  const hit = slot.cache.get(value);
  if (hit !== undefined && hit.counter.limit === limit && hit.counter.windowMs === windowS * 1000) return hit;
  // The template source is hashed with the value so a rule re-keyed on another variable starts afresh.
  const id = `${slot.idPrefix}${windowS}/${slot.hash(`${slot.keySrc}\n${value}`)}`;
  return cachePut(slot.cache, value, makeQuota(slot.base, id, limit, windowS, slot.cost, slot.header, slot.names, slot.metricRule));
}

interface CompiledArl {
  /** Instance name → quota (a listed instance, or the top-level limit applied to an unlisted one). */
  readonly instances: Map<string, LimitSlot>;
  /** Top-level limit when the route has no instance list. */
  readonly routeWide: LimitSlot | undefined;
  readonly rules: RuleSlot[];
  /** `rules` split: resolved at admission, and per attempt (they name `${upstream_model}`). */
  readonly commonRules: RuleSlot[];
  readonly lateRules: RuleSlot[];
  /** model_limits, in order (the first entry matching the upstream model applies). */
  readonly models: ModelSlot[];
  /** Names the plugin in a missing-variable answer. */
  readonly plugin: string;
  readonly missing: MissingPolicy;
}

/** One model_limits entry: a counter per matching upstream model. */
interface ModelSlot {
  readonly matches: (model: string) => boolean;
  readonly tpl: LimitTemplate;
  readonly idPrefix: string;
  readonly base: QuotaBase;
  readonly cost: (u: Usage) => number;
  readonly names: QuotaHeaderNames;
  readonly metricRule: string;
  readonly cache: Map<string, PlannedQuota>;
  readonly hash: KeyHasher;
  readonly what: string;
  readonly plugin: string;
  readonly missing: MissingPolicy;
}

const MODEL_HEADER: HeaderTarget = { kind: 'model' };

/** `*` matches any run of characters (none included); no regular expression, so matching is linear. */
function modelMatcher(pattern: string): (model: string) => boolean {
  if (!pattern.includes('*')) return (m) => m === pattern;
  const parts = pattern.split('*');
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  return (m) => {
    if (m.length < first.length + last.length || !m.startsWith(first) || !m.endsWith(last)) return false;
    const end = m.length - last.length;
    let at = first.length;
    for (let i = 1; i < parts.length - 1; i++) {
      const part = parts[i]!;
      const j = m.indexOf(part, at);
      if (j < 0 || j + part.length > end) return false;
      at = j + part.length;
    }
    return true;
  };
}

/** The quota of the first model_limits entry matching the attempt's upstream model (none when none matches). */
function resolveModel(slots: readonly ModelSlot[], vars: RequestVars): Resolved {
  const model = vars.upstreamModel;
  if (model === undefined || model === '') {
    // Every entry of one list shares its plugin's policy and name.
    const first = slots[0]!;
    return missingOf(first.missing, first.plugin, 'model_limits: request variable "upstream_model" is missing (the request names no model and the instance sets none)');
  }
  for (let i = 0; i < slots.length; i++) {
    const slot = slots[i]!;
    if (!slot.matches(model)) continue;
    const t = slot.tpl;
    const limit = t.count(vars);
    if (limit === undefined) return missingOf(slot.missing, `${slot.what} limit`, describeMiss(t.countVars, vars));
    const windowS = t.window(vars);
    if (windowS === undefined) return missingOf(slot.missing, `${slot.what} time_window`, describeMiss(t.windowVars, vars, WINDOW_RANGE));
    const hit = slot.cache.get(model);
    if (hit !== undefined && hit.counter.limit === limit && hit.counter.windowMs === windowS * 1000) return hit;
    const id = `${slot.idPrefix}${windowS}/${slot.hash(model)}`;
    return cachePut(slot.cache, model, makeQuota(slot.base, id, limit, windowS, slot.cost, MODEL_HEADER, slot.names, slot.metricRule));
  }
  return undefined;
}

function compileArl(
  cfg: AiRateLimitingConfig,
  prefix: string,
  consumerScoped: boolean,
  proxyInstances: readonly string[] | undefined,
  where: string,
  hash: KeyHasher,
): CompiledArl {
  const base: QuotaBase = {
    showHeader: cfg.show_limit_quota_header,
    headerStyle: cfg.header_style,
    rejectResetHeader: undefined,
    rejectedCode: cfg.rejected_code,
    rejectedMsg: cfg.rejected_msg,
    sliding: cfg.window_type === 'sliding',
    consumerScoped,
    source: cfg,
  };
  const missing: MissingPolicy = { reject: cfg.on_missing_key !== 'skip', status: cfg.missing_key_code };
  const plugin = consumerScoped ? `consumer ${prefix.split('/')[1] ?? ''} ai-rate-limiting` : 'ai-rate-limiting';
  const names = (header: HeaderTarget, strategy: LimitStrategy): QuotaHeaderNames => namesFor(header, cfg.standard_headers ? strategy : undefined);
  const limitSlot = (
    tpl: LimitTemplate, what: string, idOf: (windowS: number) => string, cost: (u: Usage) => number,
    header: HeaderTarget, strategy: LimitStrategy, metric: string,
  ): LimitSlot => {
    const headerNames = names(header, strategy);
    const make = (limit: number, windowS: number): PlannedQuota => makeQuota(base, idOf(windowS), limit, windowS, cost, header, headerNames, metric);
    const staticLimit = typeof tpl.countSrc === 'number' ? tpl.countSrc : undefined;
    const staticWindow = typeof tpl.windowSrc === 'number' ? tpl.windowSrc : undefined;
    const fixed = staticLimit !== undefined && staticWindow !== undefined ? make(staticLimit, staticWindow) : undefined;
    return { fixed, tpl, make, cache: new Map(), what, missing };
  };
  const instances = new Map<string, LimitSlot>();
  const instanceSlot = (name: string, tpl: LimitTemplate, strategy: LimitStrategy, cost: (u: Usage) => number, metric: string): LimitSlot => {
    const header: HeaderTarget = { kind: 'instance', instance: name };
    return limitSlot(tpl, `${plugin} instance "${name}"`, (w) => `${prefix}i/${seg(name)}/${w}`, cost, header, strategy, metric);
  };
  cfg.instances.forEach((inst, i) => {
    const at = `${where}.instances[${i}]`;
    const cost = costOf(inst.limit_strategy, inst.cost_expr, at);
    const tpl = limitTemplate(inst.limit, inst.time_window, at, 'limit');
    instances.set(inst.name, instanceSlot(inst.name, tpl, inst.limit_strategy, cost, consumerScoped ? 'consumer' : 'instance'));
  });
  let routeWide: LimitSlot | undefined;
  if (cfg.limit !== undefined && cfg.time_window !== undefined) {
    const cost = costOf(cfg.limit_strategy, cfg.cost_expr, where);
    const metric = consumerScoped ? 'consumer' : 'route';
    const tpl = limitTemplate(cfg.limit, cfg.time_window, where, 'limit');
    if (proxyInstances !== undefined && proxyInstances.length > 0) {
      // APISIX semantics: the top-level quota is a separate counter for every instance not listed.
      for (const name of proxyInstances) {
        if (!instances.has(name)) instances.set(name, instanceSlot(name, tpl, cfg.limit_strategy, cost, metric));
      }
    } else {
      const header: HeaderTarget = { kind: 'route' };
      routeWide = limitSlot(tpl, plugin, (w) => `${prefix}route/${w}`, cost, header, cfg.limit_strategy, metric);
    }
  }
  const ruleCost = cfg.rules.length > 0 ? costOf(cfg.limit_strategy, cfg.cost_expr, where) : COST.total_tokens;
  const rules = cfg.rules.map((r, i): RuleSlot => {
    const label = r.header_prefix ?? String(i + 1);
    const header: HeaderTarget = { kind: 'rule', label };
    const at = `${where}.rules[${i}]`;
    let key: KeyTemplate;
    try {
      key = compileTemplate(r.key);
    } catch (err) {
      throw new Error(`${at}.key: ${(err as Error).message}`);
    }
    const tpl = limitTemplate(r.count, r.time_window, at, 'count');
    return {
      keySrc: r.key,
      key,
      keyVars: requiredVars(r.key),
      tpl,
      idPrefix: `${prefix}rule/${i + 1}/`,
      base,
      cost: ruleCost,
      header,
      names: names(header, cfg.limit_strategy),
      metricRule: consumerScoped ? `consumer-rule-${label}` : `rule-${label}`,
      cache: new Map(),
      hash,
      what: `${plugin} rules[${i}]`,
      label: `rules[${i}]`,
      missing,
      late: tpl.late || namesInstanceVar(r.key),
    };
  });
  const models = (cfg.model_limits ?? []).map((m, i): ModelSlot => {
    const at = `${where}.model_limits[${i}]`;
    const label = String(i + 1);
    return {
      matches: modelMatcher(m.model),
      tpl: limitTemplate(m.limit, m.time_window, at, 'limit'),
      idPrefix: `${prefix}m/`,
      base,
      cost: costOf(m.limit_strategy, m.cost_expr, at),
      names: names(MODEL_HEADER, m.limit_strategy),
      metricRule: consumerScoped ? `consumer-model-${label}` : `model-${label}`,
      cache: new Map(),
      hash,
      what: `${plugin} model_limits[${i}]`,
      plugin,
      missing,
    };
  });
  return {
    instances, routeWide, rules, models, plugin, missing,
    commonRules: rules.filter((r) => !r.late),
    lateRules: rules.filter((r) => r.late),
  };
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
  readonly re: RuleRegex | undefined;
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
  /** Current Higress: every matching item applies; false: only the first matching one. */
  readonly allMatch: boolean;
  readonly base: QuotaBase;
  readonly header: HeaderTarget;
  readonly names: QuotaHeaderNames;
  readonly metricRule: string;
  readonly hash: KeyHasher;
  /** What every counter of the rule charges (`limit_strategy`, default total_tokens as in Higress). */
  readonly cost: (u: Usage) => number;
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

function compileTokenRl(cfg: AiTokenRatelimitConfig, trusted: IpMatcher, where: string, hash: KeyHasher): CompiledTokenRl {
  const base: QuotaBase = {
    showHeader: cfg.show_limit_quota_header,
    headerStyle: 'apisix',
    rejectResetHeader: 'X-TokenRateLimit-Reset',
    rejectedCode: cfg.rejected_code,
    rejectedMsg: cfg.rejected_msg,
    sliding: cfg.window_type === 'sliding',
    consumerScoped: false,
    source: cfg,
  };
  const header: HeaderTarget = { kind: 'token-rule', label: cfg.rule_name };
  const names = namesFor(header, undefined);
  const metricRule = cfg.rule_name;
  const cost = costOf(cfg.limit_strategy ?? 'total_tokens', cfg.cost_expr, where);
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
      let re: RuleRegex | undefined;
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
          re = compileRuleRegex(k.key.slice(7));
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
        : makeQuota(base, idPrefix + hash(k.key), k.tokens, k.window_seconds, cost, header, names, metricRule);
      return { kind, exact: k.key, re, range, limit: k.tokens, windowS: k.window_seconds, idPrefix, fixed, cache: new Map() };
    });
    return { source: tokenSource(item, trusted, at), isIp, keys };
  });
  return { global, items, allMatch: cfg.rule_match !== 'first', base, header, names, metricRule, hash, cost };
}

function keyMatches(k: TokenKeySlot, value: string): boolean {
  switch (k.kind) {
    case MATCH_EXACT: return value === k.exact;
    case MATCH_ANY: return true;
    case MATCH_REGEXP: return k.re!.test(value);
    case MATCH_IP: return rangeContains(k.range!, ipScratch);
  }
}

/**
 * Higress order within an item: its first matching key. Across items: every item whose source is present
 * and matches applies (current Higress), or only the first such item (`rule_match: first`).
 */
function resolveToken(t: CompiledTokenRl, vars: RequestVars, out: PlannedQuota[]): void {
  for (let i = 0; i < t.items.length; i++) {
    const item = t.items[i]!;
    const value = item.source(vars);
    if (value === undefined) continue;
    if (item.isIp && ipScratch.family === 0) continue;
    for (let j = 0; j < item.keys.length; j++) {
      const k = item.keys[j]!;
      if (!keyMatches(k, value)) continue;
      let q = k.fixed ?? k.cache.get(value);
      if (q === undefined) {
        q = cachePut(k.cache, value, makeQuota(t.base, k.idPrefix + t.hash(value), k.limit, k.windowS, t.cost, t.header, t.names, t.metricRule));
      }
      // Two items may resolve to one counter (the same key written twice): it is held once.
      if (!out.includes(q)) out.push(q);
      if (!t.allMatch) return;
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Route compilation and request planning

/** Everything one kind of caller (anonymous, or one consumer) gets on this route. */
export interface RouteQuotaScope {
  readonly staticCommon: readonly PlannedQuota[];
  readonly dynamicCommon: readonly LimitSlot[];
  /** Top-level limits naming `${upstream_model}`: resolved per attempt. */
  readonly lateCommon: readonly LimitSlot[];
  /** Instance name → its slots naming `${upstream_model}` (resolved per attempt, not in instanceSlots). */
  readonly lateInstances: ReadonlyMap<string, readonly LimitSlot[]>;
  /** model_limits of the route's plugin and of the consumer's, each list matched on its own. */
  readonly models: readonly (readonly ModelSlot[])[];
  /** Something is resolved per attempt. */
  readonly hasLate: boolean;
  /** The rules of the route's plugin and of the consumer's, each group failing closed on its own. */
  readonly rules: readonly CompiledArl[];
  readonly token: CompiledTokenRl | undefined;
  /** Instance name → its quota slots; `staticInstances` holds the same when none is templated. */
  readonly instanceSlots: ReadonlyMap<string, readonly LimitSlot[]>;
  readonly staticInstances: ReadonlyMap<string, readonly PlannedQuota[]> | undefined;
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
  const dynamicCommon: LimitSlot[] = [];
  const lateCommon: LimitSlot[] = [];
  for (const slot of [route?.routeWide, consumer?.routeWide]) {
    if (slot === undefined) continue;
    if (slot.fixed !== undefined) staticCommon.push(slot.fixed);
    else if (slot.tpl.late) lateCommon.push(slot);
    else dynamicCommon.push(slot);
  }
  const models = [route, consumer].filter((a): a is CompiledArl => a !== undefined && a.models.length > 0).map((a) => a.models);
  if (token?.global) staticCommon.push(token.global);
  const rules = [route, consumer].filter((a): a is CompiledArl => a !== undefined && a.rules.length > 0);
  const instanceSlots = new Map<string, LimitSlot[]>();
  const lateInstances = new Map<string, LimitSlot[]>();
  let allFixed = true;
  for (const arl of [route, consumer]) {
    if (arl === undefined) continue;
    for (const [name, slot] of arl.instances) {
      const into = slot.fixed === undefined && slot.tpl.late ? lateInstances : instanceSlots;
      if (slot.fixed === undefined && !slot.tpl.late) allFixed = false;
      const list = into.get(name);
      if (list === undefined) into.set(name, [slot]);
      else list.push(slot);
    }
  }
  let staticInstances: Map<string, PlannedQuota[]> | undefined;
  if (allFixed) {
    staticInstances = new Map();
    for (const [name, slots] of instanceSlots) staticInstances.set(name, slots.map((s) => s.fixed!));
  }
  const tokenDynamic = token !== undefined && token.items.length > 0;
  const hasLate = lateCommon.length > 0 || lateInstances.size > 0 || models.length > 0 || rules.some((g) => g.lateRules.length > 0);
  const staticPlan = rules.length === 0 && !tokenDynamic && dynamicCommon.length === 0 && !hasLate && staticInstances !== undefined
    ? new Plan(staticCommon.length === 0 ? EMPTY : staticCommon, staticInstances.size === 0 ? EMPTY_MAP : staticInstances)
    : undefined;
  return {
    staticCommon, dynamicCommon, lateCommon, lateInstances, models, hasLate, rules,
    token: tokenDynamic ? token : undefined, instanceSlots, staticInstances, staticPlan,
  };
}

export interface CompileOptions {
  readonly trustedProxies: readonly string[];
  /** `key_hash_secret`; absent: the process's random key. */
  readonly keyHashSecret?: string | undefined;
}

/**
 * Compile a route's quotas. Throws Error naming the offending field on a bad template, expression,
 * regular expression or IP range (config validation surfaces these with their paths).
 */
export function compileRouteQuotas(route: RouteConfig, consumers: readonly ConsumerConfig[], opts: CompileOptions): CompiledRouteQuotas {
  const trusted = compileIpMatcher(opts.trustedProxies);
  const hash = keyHasher(opts.keyHashSecret);
  const proxyInstances = route.plugins['ai-proxy-multi']?.instances.map((i) => i.name);
  const arlCfg = route.plugins['ai-rate-limiting'];
  const tokenCfg = route.plugins['ai-token-ratelimit'];
  const routeArl = arlCfg === undefined
    ? undefined
    : compileArl(arlCfg, `r/${seg(route.id)}/arl/`, false, proxyInstances, `routes[${route.id}].plugins.ai-rate-limiting`, hash);
  const token = tokenCfg === undefined
    ? undefined
    : compileTokenRl(tokenCfg, trusted, `routes[${route.id}].plugins.ai-token-ratelimit`, hash);
  const anonymous = buildScope(routeArl, undefined, token);
  const byConsumer = new Map<string, RouteQuotaScope>();
  for (const c of consumers) {
    // A consumer with its own ai-proxy(-multi) is served by its instances (APISIX: the consumer's plugin
    // replaces the route's): the route's ai-rate-limiting applies to them under counters of that consumer
    // alone, and the consumer's own top-level limit to each of its instances.
    const own = c.ai_proxy?.instances.map((i) => i.name);
    if (c.ai_rate_limiting === undefined && (own === undefined || arlCfg === undefined)) continue;
    const routeScoped = own === undefined || arlCfg === undefined
      ? routeArl
      : compileArl(arlCfg, `r/${seg(route.id)}/arl/c/${seg(c.username)}/`, false, own, `routes[${route.id}].plugins.ai-rate-limiting`, hash);
    const arl = c.ai_rate_limiting === undefined
      ? undefined
      : compileArl(c.ai_rate_limiting, `c/${seg(c.username)}/arl/`, true, own ?? proxyInstances, `consumers[${c.username}].ai_rate_limiting`, hash);
    byConsumer.set(c.username, buildScope(routeScoped, arl, token));
  }
  const active = routeArl !== undefined || token !== undefined || byConsumer.size > 0;
  return { routeId: route.id, active, anonymous, byConsumer };
}

const EMPTY_PLAN: RequestQuotaPlan = new Plan(EMPTY, EMPTY_MAP);

function missingPlan(m: MissingVariable): RequestQuotaPlan {
  return new Plan(EMPTY, EMPTY_MAP, m);
}

/**
 * The quotas this request touches. Allocates only when rules, templated limits or token rule items resolve
 * per request. A plan with `missing` set must be answered with that error (fail closed).
 */
export function planRequest(c: CompiledRouteQuotas, vars: RequestVars): RequestQuotaPlan {
  if (!c.active) return EMPTY_PLAN;
  const scope = vars.consumer === undefined ? c.anonymous : (c.byConsumer.get(vars.consumer) ?? c.anonymous);
  if (scope.staticPlan !== undefined) return scope.staticPlan;
  const common: PlannedQuota[] = [];
  for (let i = 0; i < scope.staticCommon.length; i++) common.push(scope.staticCommon[i]!);
  for (let i = 0; i < scope.dynamicCommon.length; i++) {
    const q = resolveLimitSlot(scope.dynamicCommon[i]!, vars);
    if (isMissing(q)) return missingPlan(q);
    if (q !== undefined) common.push(q);
  }
  let deferred: DeferredGroup[] | undefined;
  for (let g = 0; g < scope.rules.length; g++) {
    const group = scope.rules[g]!;
    let applied = 0;
    let misses: string[] | undefined;
    for (let i = 0; i < group.commonRules.length; i++) {
      const q = resolveRule(group.commonRules[i]!, vars);
      if (q === undefined) continue;
      if ((q as KeyMiss).keyMiss !== undefined) {
        (misses ??= []).push((q as KeyMiss).keyMiss);
        continue;
      }
      if (isMissing(q as Resolved)) return missingPlan(q as MissingVariable);
      common.push(q as PlannedQuota);
      applied++;
    }
    // Rules naming the upstream model may still apply: the attempt decides.
    if (group.lateRules.length > 0) {
      (deferred ??= []).push({ group, applied, misses });
      continue;
    }
    // APISIX: a request to which no rule applies is refused, not served unmetered.
    if (applied === 0 && misses !== undefined && group.missing.reject) {
      return missingPlan({ status: group.missing.status, message: `${group.plugin}: no rule applies to this request: ${misses.join('; ')}` });
    }
  }
  if (scope.token !== undefined) resolveToken(scope.token, vars, common);
  let instances: ReadonlyMap<string, readonly PlannedQuota[]> | undefined = scope.staticInstances;
  if (instances === undefined) {
    const resolved = new Map<string, PlannedQuota[]>();
    for (const [name, slots] of scope.instanceSlots) {
      const list: PlannedQuota[] = [];
      for (const slot of slots) {
        const q = resolveLimitSlot(slot, vars);
        if (isMissing(q)) return missingPlan(q);
        if (q !== undefined) list.push(q);
      }
      resolved.set(name, list);
    }
    instances = resolved;
  }
  const late: LateWork | undefined = scope.hasLate ? { scope, vars, groups: deferred ?? [] } : undefined;
  return new Plan(common, instances.size === 0 ? EMPTY_MAP : instances, undefined, late);
}

/** The per-attempt quotas of an instance: `base` (resolved at admission) plus what names the upstream model. */
function resolveLate(late: LateWork, instanceName: string, upstreamModel: string | undefined, base: readonly PlannedQuota[]): readonly PlannedQuota[] | MissingVariable {
  const { scope } = late;
  const vars: RequestVars = { ...late.vars, upstreamModel };
  const out = base.slice();
  const add = (q: Resolved): MissingVariable | undefined => {
    if (isMissing(q)) return q;
    if (q !== undefined && !out.includes(q)) out.push(q);
    return undefined;
  };
  for (let i = 0; i < scope.lateCommon.length; i++) {
    const m = add(resolveLimitSlot(scope.lateCommon[i]!, vars));
    if (m !== undefined) return m;
  }
  const slots = scope.lateInstances.get(instanceName);
  if (slots !== undefined) {
    for (let i = 0; i < slots.length; i++) {
      const m = add(resolveLimitSlot(slots[i]!, vars));
      if (m !== undefined) return m;
    }
  }
  for (let g = 0; g < late.groups.length; g++) {
    const d = late.groups[g]!;
    let applied = d.applied;
    let misses = d.misses;
    for (let i = 0; i < d.group.lateRules.length; i++) {
      const q = resolveRule(d.group.lateRules[i]!, vars);
      if (q === undefined) continue;
      if ((q as KeyMiss).keyMiss !== undefined) {
        misses = [...(misses ?? []), (q as KeyMiss).keyMiss];
        continue;
      }
      const m = add(q as Resolved);
      if (m !== undefined) return m;
      applied++;
    }
    if (applied === 0 && misses !== undefined && d.group.missing.reject) {
      return { status: d.group.missing.status, message: `${d.group.plugin}: no rule applies to this request: ${misses.join('; ')}` };
    }
  }
  for (let i = 0; i < scope.models.length; i++) {
    const m = add(resolveModel(scope.models[i]!, vars));
    if (m !== undefined) return m;
  }
  return out;
}
