// ai-token-ratelimit (Higress fields), as current Higress (PR #4011) validates them: at most 10 `rule_items`,
// and a `limit_by_per_*` key (other than per IP) must be `regexp:<re>` or exactly `*`. Every matching rule
// item applies (`rule_match: first` restores the older first-match behaviour). Differences, all deliberate:
// - `redis` is optional; without it counting is local to the process.
// - `global_threshold` and `rule_items` may both be set (Higress takes one or the other); both then apply.
// - Mistakes Higress accepts silently and then ignores fail here: more than one `token_per_*` on one entry
//   (Higress picks one at random), a `regexp:` or `*` key on an exact `limit_by_*` item (Higress only
//   matches them on `limit_by_per_*`), and a `limit_keys` entry repeating an earlier key (never matched).
// - `limit_strategy` / `cost_expr` (ai-rate-limiting's fields) choose what the rule's counters charge: a token
//   kind or an expression; Higress always charges input + output (the default, `total_tokens`).
// - `regexp:` patterns use RE2 syntax (Go's, as in Higress) and match in linear time (rules/regex.ts).

import type { AiTokenRatelimitConfig, LimitByKind, TokenLimitKey, TokenRuleItem, WindowType } from '../types.ts';
import { parseIpRange } from '../../rules/ip.ts';
import { compileRuleRegex } from '../../rules/regex.ts';
import { childPath, type Issues } from '../issues.ts';
import { isHeaderName } from '../net.ts';
import { readHigressRedis } from '../redis.ts';
import { readName } from './ai-proxy.ts';
import { STRATEGIES, readCostExpr } from './ai-rate-limiting.ts';
import { POSITIVE, Section, rejectedCode } from '../section.ts';

const KEYS = [
  'rule_name', 'global_threshold', 'rule_items', 'rejected_code', 'rejected_msg', 'show_limit_quota_header',
  'window_type', 'redis', 'allow_degradation', 'rule_match', 'limit_strategy', 'cost_expr',
] as const;
/** Current Higress caps rule_items (PR #4011): every matching item is checked on every request. */
const MAX_RULE_ITEMS = 10;

const WINDOWS = { token_per_second: 1, token_per_minute: 60, token_per_hour: 3600, token_per_day: 86400 } as const;
const WINDOW_KEYS = Object.keys(WINDOWS) as (keyof typeof WINDOWS)[];
const WINDOW_MESSAGE = `must set exactly one of ${WINDOW_KEYS.join(', ')}`;

const LIMIT_BY: Readonly<Record<string, { by: LimitByKind; per: boolean }>> = {
  limit_by_header: { by: 'header', per: false },
  limit_by_param: { by: 'param', per: false },
  limit_by_consumer: { by: 'consumer', per: false },
  limit_by_cookie: { by: 'cookie', per: false },
  limit_by_per_header: { by: 'header', per: true },
  limit_by_per_param: { by: 'param', per: true },
  limit_by_per_consumer: { by: 'consumer', per: true },
  limit_by_per_cookie: { by: 'cookie', per: true },
  limit_by_per_ip: { by: 'ip', per: true },
};
const LIMIT_BY_KEYS = Object.keys(LIMIT_BY);
const ITEM_KEYS = [...LIMIT_BY_KEYS, 'limit_keys'];
const LIMIT_KEY_KEYS = ['key', ...WINDOW_KEYS];
const IP_SOURCE = /^from-header-([!#$%&'*+.^_`|~0-9A-Za-z-]+)$/;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The one `token_per_*` of a threshold or limit key. */
function readRate(sec: Section): { tokens: number; window_seconds: number } | undefined {
  const set = WINDOW_KEYS.filter((k) => sec.has(k));
  if (set.length !== 1) {
    sec.is.add(sec.path, WINDOW_MESSAGE);
    return undefined;
  }
  const key = set[0]!;
  const tokens = sec.int(key, POSITIVE);
  return tokens === undefined ? undefined : { tokens, window_seconds: WINDOWS[key] };
}

/** The source name of a rule item: header (lower-cased, as the front end reports it), param, cookie or IP source. */
function readSourceName(sec: Section, key: string, by: LimitByKind): string | undefined {
  if (by === 'consumer') {
    // The value is unused ("no actual value needs to be added"); Higress examples write ''.
    sec.str(key, { empty: true });
    return '';
  }
  const name = sec.str(key, { required: true });
  if (name === undefined) return undefined;
  if (by === 'header' && !isHeaderName(name)) {
    sec.is.add(sec.p(key), 'is not a valid header name');
    return undefined;
  }
  if (by === 'ip') {
    if (name === 'from-remote-addr') return name;
    const m = IP_SOURCE.exec(name);
    if (m === null) {
      sec.is.add(sec.p(key), 'must be from-remote-addr or from-header-<header name>');
      return undefined;
    }
    return `from-header-${m[1]!.toLowerCase()}`;
  }
  return by === 'header' ? name.toLowerCase() : name;
}

function checkKey(is: Issues, path: string, key: string, by: LimitByKind, per: boolean): boolean {
  if (by === 'ip') {
    try {
      parseIpRange(key);
      return true;
    } catch {
      is.add(path, 'must be an IP address or CIDR range');
      return false;
    }
  }
  const pattern = key === '*' || key.startsWith('regexp:');
  if (pattern && !per) {
    is.add(path, 'regexp: and * keys are only allowed with limit_by_per_*');
    return false;
  }
  if (!pattern && per) {
    is.add(path, "must start with 'regexp:' or be exactly '*'");
    return false;
  }
  if (key.startsWith('regexp:')) {
    try {
      compileRuleRegex(key.slice('regexp:'.length));
    } catch (err) {
      is.add(path, is.fromEnv.has(path) ? 'is not a valid regular expression (the value, from $ENV, is not repeated)' : `is not a valid regular expression: ${errorText(err)}`);
      return false;
    }
  }
  return true;
}

function readLimitKeys(sec: Section, by: LimitByKind, per: boolean): TokenLimitKey[] {
  const list = sec.array('limit_keys', { required: true, nonEmpty: true }) ?? [];
  const out: TokenLimitKey[] = [];
  const firstIndex = new Map<string, number>();
  list.forEach((item, i) => {
    const lk = Section.open(sec.is, childPath(sec.p('limit_keys'), i), item, LIMIT_KEY_KEYS);
    if (lk === undefined) return;
    // YAML reads `key: 102234` as a number; Higress keys are strings. The loader keeps the source text of
    // such scalars (leading zeros included); a number that reaches here from JSON is printed in decimal.
    const raw = lk.get('key');
    let key: string | undefined;
    if (typeof raw === 'number' && Number.isFinite(raw)) key = String(raw);
    else key = lk.str('key', { required: true });
    if (key !== undefined && !checkKey(lk.is, lk.p('key'), key, by, per)) key = undefined;
    if (key !== undefined) {
      const prev = firstIndex.get(key);
      if (prev !== undefined) lk.is.add(lk.p('key'), `duplicates limit_keys[${prev}].key`);
      else firstIndex.set(key, i);
    }
    const rate = readRate(lk);
    if (key !== undefined && rate !== undefined) out.push({ key, tokens: rate.tokens, window_seconds: rate.window_seconds });
  });
  return out;
}

function readRuleItems(sec: Section): TokenRuleItem[] {
  const list = sec.array('rule_items', { nonEmpty: true }) ?? [];
  if (list.length > MAX_RULE_ITEMS) sec.is.add(sec.p('rule_items'), `must have at most ${MAX_RULE_ITEMS} items`);
  const out: TokenRuleItem[] = [];
  list.forEach((value, i) => {
    const item = Section.open(sec.is, childPath(sec.p('rule_items'), i), value, ITEM_KEYS);
    if (item === undefined) return;
    const set = LIMIT_BY_KEYS.filter((k) => item.written(k));
    if (set.length !== 1) {
      item.is.add(item.path, `must set exactly one of ${LIMIT_BY_KEYS.join(', ')}`);
      return;
    }
    const { by, per } = LIMIT_BY[set[0]!]!;
    const name = readSourceName(item, set[0]!, by);
    const limitKeys = readLimitKeys(item, by, per);
    if (name !== undefined) out.push({ by, per, name, limit_keys: limitKeys });
  });
  return out;
}

export function readAiTokenRatelimit(is: Issues, path: string, value: unknown): AiTokenRatelimitConfig | undefined {
  const sec = Section.open(is, path, value, KEYS);
  if (sec === undefined) return undefined;
  // In X-AI-<rule_name>-RateLimit-* header names, metric labels and counter ids.
  const ruleName = readName(sec, 'rule_name');
  let globalThreshold: AiTokenRatelimitConfig['global_threshold'];
  if (sec.has('global_threshold')) {
    const gt = sec.section('global_threshold', WINDOW_KEYS);
    globalThreshold = gt === undefined ? undefined : readRate(gt);
  }
  const ruleItems = readRuleItems(sec);
  if (!sec.has('global_threshold') && !sec.has('rule_items')) is.add(path, 'must set global_threshold or rule_items');
  const strategy = sec.oneOf('limit_strategy', STRATEGIES) ?? 'total_tokens';
  return {
    rule_name: ruleName ?? '',
    global_threshold: globalThreshold,
    rule_items: ruleItems,
    rule_match: sec.oneOf('rule_match', ['all', 'first'] as const) ?? 'all',
    limit_strategy: strategy,
    cost_expr: readCostExpr(sec, strategy, true),
    rejected_code: rejectedCode(sec),
    rejected_msg: sec.str('rejected_msg', { empty: true }) ?? 'Too many requests',
    show_limit_quota_header: sec.bool('show_limit_quota_header') ?? true,
    window_type: sec.oneOf('window_type', ['fixed', 'sliding'] as readonly WindowType[]) ?? 'fixed',
    redis: sec.has('redis') ? readHigressRedis(is, sec.p('redis'), sec.get('redis')) : undefined,
    allow_degradation: sec.bool('allow_degradation') ?? false,
  };
}
