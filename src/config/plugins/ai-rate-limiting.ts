// ai-rate-limiting (APISIX / API7 fields) on routes and consumers. Unlike APISIX, `instances` and `rules`
// may be combined on one route. Expressions and templates are compiled here once, by the same code the
// request path uses, so a config that validates cannot fail to compile later.

import { MAX_TIME_WINDOW_S, type AiRateLimitingConfig, type HeaderStyle, type InstanceQuotaConfig, type LimitStrategy, type ModelLimitConfig, type RedisPolicy, type RuleConfig, type WindowType } from '../types.ts';
import { compileCostExpr } from '../../rules/cost-expr.ts';
import { compileCountTemplate, compileTemplate, parsePositiveInt } from '../../rules/template.ts';
import { childPath, type Issues } from '../issues.ts';
import { APISIX_REDIS_KEYS, readApisixRedis } from '../redis.ts';
import { POSITIVE, Section, checkInt, rejectedCode } from '../section.ts';
import { NAME_MESSAGE, NAME_PATTERN } from './ai-proxy.ts';

const KEYS = [
  'limit', 'time_window', 'limit_strategy', 'cost_expr', 'instances', 'rules', 'model_limits', 'rejected_code', 'rejected_msg',
  'show_limit_quota_header', 'header_style', 'standard_headers', 'on_missing_key', 'missing_key_code', 'window_type',
  'policy', 'allow_degradation', ...APISIX_REDIS_KEYS,
] as const;
const INSTANCE_KEYS = ['name', 'limit', 'time_window', 'limit_strategy', 'cost_expr'] as const;
const RULE_KEYS = ['key', 'count', 'time_window', 'header_prefix'] as const;
const MODEL_LIMIT_KEYS = ['model', 'limit', 'time_window', 'limit_strategy', 'cost_expr'] as const;
/** Each request scans the entries for the first matching model: keep the list short. */
const MAX_MODEL_LIMITS = 64;
const MAX_MODEL_PATTERN = 256;

/** Token kinds (streaming/usage.ts) and `expression`; shared with ai-token-ratelimit. */
export const STRATEGIES: readonly LimitStrategy[] = [
  'total_tokens', 'prompt_tokens', 'completion_tokens', 'cached_prompt_tokens', 'cache_write_tokens', 'reasoning_tokens',
  'uncached_prompt_tokens', 'expression',
];
const POLICIES: readonly RedisPolicy[] = ['local', 'redis', 'redis-cluster', 'redis-sentinel'];
const HEADER_STYLES: readonly HeaderStyle[] = ['apisix', 'ietf'];
const WINDOW_TYPES: readonly WindowType[] = ['fixed', 'sliding'];
const MISSING_KEY = ['reject', 'skip'] as const;
const HEADER_PREFIX = /^[A-Za-z0-9-]+$/;

/** Where `instances[].name` must point: the route's own ai-proxy instances, or (consumers) any route's. */
export interface InstanceScope {
  readonly kind: 'route' | 'consumer';
  readonly names: ReadonlySet<string>;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A template or expression error; when the value came from `$ENV://` it may be a secret, so only the position is told. */
function quotedError(is: Issues, path: string, err: unknown): string {
  const text = errorText(err);
  if (!is.fromEnv.has(path)) return text;
  const at = / at position \d+$/.exec(text);
  return `is not valid${at === null ? '' : at[0]} (the value, from $ENV, is not repeated)`;
}

/** The expression source for `strategy`, checked; `inherited` is the plugin-level expression instances fall back to. */
export function readCostExpr(sec: Section, strategy: LimitStrategy, needed: boolean, inherited?: string): string | undefined {
  const src = sec.str('cost_expr');
  if (src !== undefined && strategy !== 'expression') {
    sec.is.add(sec.p('cost_expr'), 'is only used when limit_strategy is expression');
    return undefined;
  }
  if (strategy !== 'expression') return undefined;
  if (src === undefined) {
    if (inherited === undefined && needed && !sec.has('cost_expr')) sec.is.add(sec.p('cost_expr'), 'is required when limit_strategy is expression');
    return inherited;
  }
  try {
    compileCostExpr(src);
  } catch (err) {
    sec.is.add(sec.p('cost_expr'), `is not a valid expression: ${quotedError(sec.is, sec.p('cost_expr'), err)}`);
    return undefined;
  }
  return src;
}

/** `limit` and `time_window` come as a pair; each a positive integer or a template resolved per request. */
function readPair(sec: Section, required: boolean): { limit: number | string | undefined; window: number | string | undefined } {
  const read = (key: string): number | string | undefined => {
    if (!sec.has(key)) {
      if (required) sec.required(key);
      return undefined;
    }
    return readTemplateNumber(sec.is, sec.p(key), sec.get(key), key, key === 'time_window' ? MAX_TIME_WINDOW_S : undefined);
  };
  const limit = read('limit');
  const window = read('time_window');
  if (!required) {
    if (sec.has('limit') && !sec.has('time_window')) sec.is.add(sec.p('time_window'), 'is required when limit is set');
    if (sec.has('time_window') && !sec.has('limit')) sec.is.add(sec.p('limit'), 'is required when time_window is set');
  }
  return { limit, window };
}

function readInstances(sec: Section, scope: InstanceScope, strategy: LimitStrategy, costExpr: string | undefined): InstanceQuotaConfig[] {
  const list = sec.array('instances') ?? [];
  const out: InstanceQuotaConfig[] = [];
  const firstIndex = new Map<string, number>();
  list.forEach((item, i) => {
    const inst = Section.open(sec.is, childPath(sec.p('instances'), i), item, INSTANCE_KEYS);
    if (inst === undefined) return;
    const name = inst.str('name', { required: true });
    if (name !== undefined) {
      const prev = firstIndex.get(name);
      if (prev !== undefined) inst.is.add(inst.p('name'), `duplicates instances[${prev}].name`);
      else firstIndex.set(name, i);
      // A name no instance may carry gets the instance's own complaint, not "names no instance".
      if (!NAME_PATTERN.test(name)) inst.is.add(inst.p('name'), NAME_MESSAGE);
      else if (!scope.names.has(name)) {
        inst.is.add(inst.p('name'), scope.kind === 'route'
          ? "does not name an instance of this route's ai-proxy-multi or ai-proxy"
          : 'does not name an instance of any route');
      }
    }
    const { limit, window } = readPair(inst, true);
    const own = inst.oneOf('limit_strategy', STRATEGIES);
    const instStrategy = own ?? strategy;
    out.push({
      name: name ?? '',
      limit: limit ?? 1,
      time_window: window ?? 1,
      limit_strategy: instStrategy,
      cost_expr: readCostExpr(inst, instStrategy, true, own === undefined || own === 'expression' ? costExpr : undefined),
    });
  });
  return out;
}

function readModelLimits(sec: Section, strategy: LimitStrategy, costExpr: string | undefined): ModelLimitConfig[] {
  const list = sec.array('model_limits') ?? [];
  if (list.length > MAX_MODEL_LIMITS) sec.is.add(sec.p('model_limits'), `must have at most ${MAX_MODEL_LIMITS} entries`);
  const out: ModelLimitConfig[] = [];
  const firstIndex = new Map<string, number>();
  let catchAll: number | undefined;
  list.forEach((item, i) => {
    const ml = Section.open(sec.is, childPath(sec.p('model_limits'), i), item, MODEL_LIMIT_KEYS);
    if (ml === undefined) return;
    let model = ml.str('model', { required: true });
    if (model !== undefined) {
      if (model.length > MAX_MODEL_PATTERN) {
        ml.is.add(ml.p('model'), `must be at most ${MAX_MODEL_PATTERN} characters`);
        model = undefined;
      } else if (catchAll !== undefined) {
        ml.is.add(ml.p('model'), `is never used: model_limits[${catchAll}].model "*" matches every model first`);
      } else {
        const prev = firstIndex.get(model);
        if (prev !== undefined) ml.is.add(ml.p('model'), `duplicates model_limits[${prev}].model`);
        else firstIndex.set(model, i);
        if (model === '*') catchAll = i;
      }
    }
    const { limit, window } = readPair(ml, true);
    const own = ml.oneOf('limit_strategy', STRATEGIES);
    const st = own ?? strategy;
    out.push({
      model: model ?? '',
      limit: limit ?? 1,
      time_window: window ?? 1,
      limit_strategy: st,
      cost_expr: readCostExpr(ml, st, true, own === undefined || own === 'expression' ? costExpr : undefined),
    });
  });
  return out;
}

/** A count or window: a positive integer (at most `max`), or a template resolved per request. */
function readTemplateNumber(is: Issues, path: string, v: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number | string | undefined {
  const rule = max === Number.MAX_SAFE_INTEGER ? POSITIVE : { min: 1, max };
  if (typeof v === 'string') {
    // '500' (or a `$ENV://N` number, which arrives as text) is the number it spells.
    const literal = parsePositiveInt(v.trim());
    if (literal !== undefined) return checkInt(is, path, literal, rule);
    try {
      compileCountTemplate(v, what, max);
      return v;
    } catch (err) {
      is.add(path, quotedError(is, path, err));
      return undefined;
    }
  }
  if (typeof v === 'number') return checkInt(is, path, v, rule);
  is.add(path, 'must be a positive integer or a template such as ${var} or ${var ?? 500}');
  return undefined;
}

function readRules(sec: Section): RuleConfig[] {
  const list = sec.array('rules') ?? [];
  const out: RuleConfig[] = [];
  const prefixes = new Map<string, number>();
  list.forEach((item, i) => {
    const rule = Section.open(sec.is, childPath(sec.p('rules'), i), item, RULE_KEYS);
    if (rule === undefined) return;
    let key = rule.str('key', { required: true });
    if (key !== undefined) {
      try {
        compileTemplate(key);
      } catch (err) {
        rule.is.add(rule.p('key'), quotedError(rule.is, rule.p('key'), err));
        key = undefined;
      }
    }
    const count = rule.required('count') ? readTemplateNumber(rule.is, rule.p('count'), rule.get('count'), 'count') : undefined;
    const window = rule.required('time_window') ? readTemplateNumber(rule.is, rule.p('time_window'), rule.get('time_window'), 'time_window', MAX_TIME_WINDOW_S) : undefined;
    let prefix = rule.str('header_prefix');
    if (prefix !== undefined) {
      if (!HEADER_PREFIX.test(prefix)) {
        rule.is.add(rule.p('header_prefix'), "must contain only letters, digits and '-'");
        prefix = undefined;
      } else {
        // Two rules with one prefix would write the same X-AI-<prefix>-RateLimit-* headers.
        const prev = prefixes.get(prefix.toLowerCase());
        if (prev !== undefined) rule.is.add(rule.p('header_prefix'), `duplicates rules[${prev}].header_prefix`);
        else prefixes.set(prefix.toLowerCase(), i);
      }
    }
    out.push({ key: key ?? '', count: count ?? 1, time_window: window ?? 1, header_prefix: prefix });
  });
  return out;
}

export function readAiRateLimiting(is: Issues, path: string, value: unknown, scope: InstanceScope): AiRateLimitingConfig | undefined {
  const sec = Section.open(is, path, value, KEYS);
  if (sec === undefined) return undefined;
  const { limit, window } = readPair(sec, false);
  const strategy = sec.oneOf('limit_strategy', STRATEGIES) ?? 'total_tokens';
  const rules = readRules(sec);
  // The plugin-level expression is required when something charges by it directly (the top-level limit or
  // rules); instances that inherit the expression report its absence themselves.
  const costExpr = readCostExpr(sec, strategy, sec.has('limit') || rules.length > 0);
  const instances = readInstances(sec, scope, strategy, costExpr);
  const modelLimits = readModelLimits(sec, strategy, costExpr);
  if (!sec.has('limit') && !sec.has('time_window') && instances.length === 0 && rules.length === 0 && !sec.has('model_limits')) {
    is.add(path, 'must set at least one of limit, instances, rules or model_limits');
  }
  const policy = sec.oneOf('policy', POLICIES) ?? 'local';
  const rejected = rejectedCode(sec);
  const rejectedMsg = sec.str('rejected_msg', { empty: true });
  const showHeader = sec.bool('show_limit_quota_header') ?? true;
  const headerStyle = sec.oneOf('header_style', HEADER_STYLES) ?? 'apisix';
  const standardHeaders = sec.bool('standard_headers') ?? false;
  if (standardHeaders && headerStyle === 'ietf') sec.is.add(sec.p('standard_headers'), 'cannot be combined with header_style: ietf');
  return {
    limit,
    time_window: window,
    limit_strategy: strategy,
    cost_expr: costExpr,
    instances,
    rules,
    // Absent unless configured, so configs without it keep their shape.
    ...(sec.has('model_limits') ? { model_limits: modelLimits } : {}),
    rejected_code: rejected,
    rejected_msg: rejectedMsg,
    show_limit_quota_header: showHeader,
    header_style: headerStyle,
    standard_headers: standardHeaders,
    on_missing_key: sec.oneOf('on_missing_key', MISSING_KEY) ?? 'reject',
    missing_key_code: sec.int('missing_key_code', { min: 400, max: 599 }) ?? 400,
    window_type: sec.oneOf('window_type', WINDOW_TYPES) ?? 'fixed',
    policy,
    redis: readApisixRedis(sec, policy),
    allow_degradation: sec.bool('allow_degradation') ?? false,
  };
}
