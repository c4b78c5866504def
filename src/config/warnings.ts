// Things a config may say that validate but are probably not what was meant. `sluice validate` prints them
// (the file still validates) and the gateway logs them at start and on reload. Never includes a secret.

import { costExprIdentifiers, KNOWN_USAGE_FIELDS } from '../rules/cost-expr.ts';
import { templateVars } from '../rules/template.ts';
import { headerOfVar } from '../rules/request-vars.ts';
import type { AiProxyConfig, AiRateLimitingConfig, SluiceConfig, TokenRuleItem } from './types.ts';
import { childPath, type ConfigIssue } from './issues.ts';

function costExprWarnings(cfg: AiRateLimitingConfig, path: string, out: ConfigIssue[]): void {
  const check = (src: string | undefined, at: string): void => {
    if (src === undefined) return;
    let names: string[];
    try {
      names = costExprIdentifiers(src);
    } catch {
      return;
    }
    const unknown = names.filter((n) => !KNOWN_USAGE_FIELDS.has(n));
    if (unknown.length > 0) {
      out.push({ path: at, message: `names ${unknown.map((n) => `"${n}"`).join(', ')}, which no known provider reports in its usage: counted as 0 unless the upstream sends it` });
    }
  };
  check(cfg.cost_expr, childPath(path, 'cost_expr'));
  cfg.instances.forEach((inst, i) => {
    if (inst.cost_expr !== cfg.cost_expr) check(inst.cost_expr, childPath(childPath(childPath(path, 'instances'), i), 'cost_expr'));
  });
  (cfg.model_limits ?? []).forEach((m, i) => {
    if (m.cost_expr !== cfg.cost_expr) check(m.cost_expr, childPath(childPath(childPath(path, 'model_limits'), i), 'cost_expr'));
  });
}

/** The variables a template names; none when it does not compile (validation has reported that already). */
function namedVars(src: string): string[] {
  try {
    return templateVars(src);
  } catch {
    return [];
  }
}

/** Variables a client sets as it likes (headers, query parameters, cookies, what it asks for). */
function clientSet(name: string): boolean {
  return name.startsWith('http_') || name.startsWith('arg_') || name.startsWith('cookie_') || name === 'model' || name === 'uri' || name === 'host';
}

/** A window is part of a counter's identity: one a client chooses gives it a fresh counter per value it sends. */
function windowWarnings(cfg: AiRateLimitingConfig, path: string, out: ConfigIssue[]): void {
  const check = (src: number | string | undefined, at: string): void => {
    if (typeof src !== 'string') return;
    const chosen = namedVars(src).filter(clientSet);
    if (chosen.length > 0) {
      out.push({ path: at, message: `comes from ${chosen.map((n) => `\${${n}}`).join(', ')}, which the client sets: each window length it sends is a counter of its own, a fresh quota; template it on a variable a trusted layer sets` });
    }
  };
  check(cfg.time_window, childPath(path, 'time_window'));
  cfg.instances.forEach((inst, i) => check(inst.time_window, childPath(childPath(childPath(path, 'instances'), i), 'time_window')));
  cfg.rules.forEach((r, i) => check(r.time_window, childPath(childPath(childPath(path, 'rules'), i), 'time_window')));
  (cfg.model_limits ?? []).forEach((m, i) => check(m.time_window, childPath(childPath(childPath(path, 'model_limits'), i), 'time_window')));
}

/** A rule key naming no variable (`x_subscription_id` for `${http_x_subscription_id}`): one counter for everybody. */
function constantRuleKeys(cfg: AiRateLimitingConfig, path: string, out: ConfigIssue[]): void {
  cfg.rules.forEach((r, i) => {
    if (r.key === '' || namedVars(r.key).length > 0) return;
    out.push({ path: childPath(childPath(childPath(path, 'rules'), i), 'key'), message: 'names no request variable: every request shares this rule\'s one counter (a per-caller key is a template such as ${http_x_subscription_id} or ${consumer_name})' });
  });
}

/** `${NAME}` (a shell's, or APISIX's docs' placeholder) or `$env://NAME` in another case: sent as written. */
const NOT_SUBSTITUTED = /\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$env:\/\//i;

/** Credentials that look like environment references Sluice does not substitute (the upstream would get them
 *  as written, and answer 401 with nothing pointing at the cause). The value is not quoted: it may be a secret. */
function envLookalikes(proxy: AiProxyConfig | undefined, path: string, out: ConfigIssue[]): void {
  proxy?.instances.forEach((inst, i) => {
    const at = childPath(childPath(path, 'instances'), i);
    for (const [kind, values] of [['header', inst.auth_header], ['query', inst.auth_query]] as const) {
      for (const name of Object.keys(values)) {
        if (!NOT_SUBSTITUTED.test(values[name]!)) continue;
        out.push({ path: childPath(childPath(childPath(at, 'auth'), kind), name), message: 'looks like an environment reference but is sent as written: only $ENV://NAME is substituted' });
      }
    }
  });
}

/** Quotas keyed by the consumer on a route that authenticates nobody: no request there ever has one. */
function consumerWithoutAuth(r: SluiceConfig['routes'][number], path: string, out: ConfigIssue[]): void {
  if (r.plugins['key-auth'] !== undefined) return;
  const arl = r.plugins['ai-rate-limiting'];
  arl?.rules.forEach((rule, j) => {
    if (!namedVars(rule.key).includes('consumer_name')) return;
    out.push({
      path: childPath(childPath(childPath(path, 'ai-rate-limiting.rules'), j), 'key'),
      message: `names \${consumer_name}, but this route has no key-auth: no request has a consumer, so ${arl.on_missing_key === 'skip' ? 'this rule never limits anything' : `every request is refused (${arl.missing_key_code})`}`,
    });
  });
  r.plugins['ai-token-ratelimit']?.rule_items.forEach((item, j) => {
    if (item.by !== 'consumer') return;
    out.push({ path: childPath(childPath(path, 'ai-token-ratelimit.rule_items'), j), message: 'limits by consumer, but this route has no key-auth: no request has a consumer, so this item never applies' });
  });
}

/** Quotas keyed on the credential as the client writes it, on a key-auth route: key-auth accepts other spellings of
 *  one key (header or Bearer or query, the scheme's case, spaces), each of which would be a counter of its own. */
function keyedOnCredential(r: SluiceConfig['routes'][number], path: string, out: ConfigIssue[]): void {
  const ka = r.plugins['key-auth'];
  if (ka === undefined) return;
  const headers = new Set(['authorization', ka.header.toLowerCase()]);
  const message = 'keys on the API key as the client writes it, which key-auth also accepts spelt otherwise (Authorization: Bearer or '
    + `the ${ka.header} header or the ${ka.query} query parameter, any case of the scheme, extra spaces), each spelling a counter of its own: `
    + 'key on ${consumer_name} (limit_by_consumer) to count the consumer key-auth found';
  r.plugins['ai-rate-limiting']?.rules.forEach((rule, j) => {
    const names = namedVars(rule.key);
    if (!names.some((v) => headers.has(headerOfVar(v) ?? '') || v === `arg_${ka.query}`)) return;
    out.push({ path: childPath(childPath(childPath(path, 'ai-rate-limiting.rules'), j), 'key'), message });
  });
  r.plugins['ai-token-ratelimit']?.rule_items.forEach((item, j) => {
    const credential = (item.by === 'header' && headers.has(item.name.toLowerCase())) || (item.by === 'param' && item.name === ka.query);
    if (credential) out.push({ path: childPath(childPath(path, 'ai-token-ratelimit.rule_items'), j), message });
  });
}

/** Model quotas on Azure deployments that set no model: the model they see is the client's body model, which Azure
 *  ignores (the URL's deployment serves), so a client naming another escapes a spent one. */
function azureModelQuotas(r: SluiceConfig['routes'][number], path: string, out: ConfigIssue[]): void {
  const arl = r.plugins['ai-rate-limiting'];
  const proxy = r.plugins['ai-proxy-multi'];
  if (arl === undefined || proxy === undefined) return;
  const byModel = (arl.model_limits ?? []).length > 0 || arl.rules.some((rule) => namedVars(rule.key).includes('upstream_model'));
  if (!byModel) return;
  proxy.instances.forEach((inst, j) => {
    if (inst.provider !== 'azure-openai' || inst.model !== undefined || inst.endpoint?.includes('/openai/deployments/') !== true) return;
    out.push({
      path: childPath(childPath(childPath(path, 'ai-proxy-multi.instances'), j), 'options.model'),
      message: 'is not set on an Azure deployment: model quotas see the model the client writes in the body, which Azure ignores (the deployment serves), so a client naming another model escapes a spent one; set it to the deployment\'s model',
    });
  });
}

/** uWS (the guard off) answers no request with a header name of anything but letters, digits and '-'. */
const UWS_HEADER_NAME = /^[A-Za-z0-9-]+$/;

/** With the guard off, a header a route reads that clients cannot send through uWS. */
function uwsHeaderNames(r: SluiceConfig['routes'][number], path: string, out: ConfigIssue[]): void {
  const message = (name: string): string => `"${name}": with listen.http1_guard false, uWS leaves every request carrying a header so named `
    + 'unanswered (it takes only letters, digits and "-" in a name), so clients cannot send it: rename it or keep the guard on';
  const ka = r.plugins['key-auth'];
  if (ka !== undefined && !UWS_HEADER_NAME.test(ka.header)) out.push({ path: childPath(path, 'key-auth.header'), message: message(ka.header) });
  r.plugins['ai-token-ratelimit']?.rule_items.forEach((item, j) => {
    if (item.by === 'header' && !UWS_HEADER_NAME.test(item.name)) out.push({ path: childPath(childPath(path, 'ai-token-ratelimit.rule_items'), j), message: message(item.name) });
  });
  r.plugins['ai-proxy-multi']?.instances.forEach((inst, j) => {
    for (const h of inst.forward_headers?.headers ?? []) {
      const name = h.endsWith('*') ? h.slice(0, -1) : h;
      if (name !== '' && !UWS_HEADER_NAME.test(name)) out.push({ path: childPath(childPath(childPath(path, 'ai-proxy-multi.instances'), j), 'forward_headers'), message: message(h) });
    }
  });
}

/** A consumer's own upstreams replace the route's; instance quotas name instances: one naming none of the consumer's leaves it unlimited. */
function consumerInstancesUnlimited(config: SluiceConfig, out: ConfigIssue[]): void {
  config.routes.forEach((r, i) => {
    const arl = r.plugins['ai-rate-limiting'];
    if (r.plugins['key-auth'] === undefined || arl === undefined || arl.instances.length === 0) return;
    if (arl.limit !== undefined || arl.rules.length > 0 || (arl.model_limits ?? []).length > 0) return;
    const named = new Set(arl.instances.map((q) => q.name));
    config.consumers.forEach((c, j) => {
      if (c.ai_proxy === undefined || c.ai_rate_limiting !== undefined || c.ai_proxy.instances.some((inst) => named.has(inst.name))) return;
      out.push({
        path: `consumers[${j}].plugins`,
        message: `has its own ai-proxy, whose instances routes[${i}].plugins.ai-rate-limiting.instances does not name: that route's quotas do not limit this consumer there (name an instance alike, or add a route-wide limit or a rule)`,
      });
    });
  });
}

/** An IP rule that reads a header (Higress `from-header-x-forwarded-for`) with no trusted proxy: Sluice believes the
 *  header only from a peer in trusted_proxies, so every request would be keyed by its connection's address. */
function ipFromHeaderUntrusted(items: readonly TokenRuleItem[], path: string, out: ConfigIssue[]): void {
  items.forEach((item, j) => {
    if (item.by !== 'ip' || !item.name.startsWith('from-header-')) return;
    out.push({
      path: childPath(path, j),
      message: `reads the client address from ${item.name.slice('from-header-'.length)}, which is believed only from a peer in trusted_proxies, and trusted_proxies is empty: every request is keyed by its connection's address (list the proxies that set the header)`,
    });
  });
}

export function configWarnings(config: SluiceConfig): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const perKeyOnRedis: string[] = [];
  consumerInstancesUnlimited(config, out);
  config.routes.forEach((r, i) => {
    const path = `routes[${i}].plugins`;
    envLookalikes(r.plugins['ai-proxy-multi'], childPath(path, 'ai-proxy-multi'), out);
    consumerWithoutAuth(r, path, out);
    keyedOnCredential(r, path, out);
    azureModelQuotas(r, path, out);
    if (!config.listen.http1_guard) uwsHeaderNames(r, path, out);
    const arl = r.plugins['ai-rate-limiting'];
    if (arl !== undefined) {
      costExprWarnings(arl, childPath(path, 'ai-rate-limiting'), out);
      windowWarnings(arl, childPath(path, 'ai-rate-limiting'), out);
      constantRuleKeys(arl, childPath(path, 'ai-rate-limiting'), out);
      if (arl.redis !== undefined && arl.rules.length > 0) perKeyOnRedis.push(childPath(path, 'ai-rate-limiting.rules'));
    }
    const atr = r.plugins['ai-token-ratelimit'];
    if (atr?.redis !== undefined && atr.rule_items.length > 0) perKeyOnRedis.push(childPath(path, 'ai-token-ratelimit.rule_items'));
    if (atr !== undefined && config.trusted_proxies.length === 0) ipFromHeaderUntrusted(atr.rule_items, childPath(path, 'ai-token-ratelimit.rule_items'), out);
    if (atr !== undefined && atr.redis === undefined) {
      // Higress requires redis; a config carried over without it (or with it misspelt away) counts per process.
      out.push({ path: childPath(path, 'ai-token-ratelimit'), message: "has no redis: its counters are this process's own, so each gateway replica grants the whole quota (add redis to share it)" });
    }
  });
  config.consumers.forEach((c, i) => {
    envLookalikes(c.ai_proxy, `consumers[${i}].plugins.ai-proxy-multi`, out);
    if (c.ai_proxy !== undefined && c.key === undefined) {
      out.push({ path: `consumers[${i}].plugins`, message: 'has ai-proxy but no key-auth key: the consumer is never authenticated, so its upstreams are never used' });
    }
    const arl = c.ai_rate_limiting;
    if (arl === undefined) return;
    const path = `consumers[${i}].plugins.ai-rate-limiting`;
    costExprWarnings(arl, path, out);
    windowWarnings(arl, path, out);
    constantRuleKeys(arl, path, out);
    if (arl.redis !== undefined && arl.rules.length > 0) perKeyOnRedis.push(childPath(path, 'rules'));
  });
  if (config.key_hash_secret === undefined && perKeyOnRedis.length > 0) {
    out.push({
      path: 'key_hash_secret',
      message: `is not set, so per-key counters (${perKeyOnRedis.join(', ')}) are keyed by a random per-process secret: `
        + 'replicas sharing Redis do not share them and a restart starts them afresh; set key_hash_secret (e.g. $ENV://SLUICE_KEY_HASH_SECRET) to the same value on every replica',
    });
  }
  return out;
}

/** Settings read once at start: a reload that changes them is applied without them (the listeners, threads and
 *  front-end limits stay as started). */
const RESTART_ONLY_LIMITS = [
  'max_inflight_body_bytes', 'max_inflight_answer_bytes', 'max_header_fields', 'max_header_line_bytes', 'max_header_bytes', 'max_drain_bytes', 'client_body_timeout_ms',
  'client_header_timeout_ms', 'client_idle_timeout_ms', 'client_send_timeout_ms', 'max_client_connections', 'listen_backlog',
] as const;

/** Read once as well: the token-count pool's budget at start, a quota store's batching when the store is made (a
 *  reload keeps the stores of the Redis targets it still names, with their counters and batching). */
const RESTART_ONLY_BATCHING = ['flush_interval_ms', 'max_batch_keys', 'max_pending_keys', 'reservation_lease_ms'] as const;

/**
 * Paths of the restart-only settings `next` changes from `started`: the config the process started with (what
 * it runs), not the last one loaded, so a reload repeating a change still says so, and one undoing it does not.
 */
export function restartOnlyChanges(started: SluiceConfig, next: SluiceConfig): string[] {
  const out: string[] = [];
  if (started.listen.host !== next.listen.host) out.push('listen.host');
  if (started.listen.port !== next.listen.port) out.push('listen.port');
  if (started.listen.http1_guard !== next.listen.http1_guard) out.push('listen.http1_guard');
  if (started.admin.host !== next.admin.host) out.push('admin.host');
  if (started.admin.port !== next.admin.port) out.push('admin.port');
  if (started.workers !== next.workers) out.push('workers');
  if (started.tokens.offload_threads !== next.tokens.offload_threads) out.push('tokens.offload_threads');
  for (const k of RESTART_ONLY_LIMITS) if (started.limits[k] !== next.limits[k]) out.push(`limits.${k}`);
  if (started.tokens.count_budget_ms !== next.tokens.count_budget_ms) out.push('tokens.count_budget_ms');
  for (const k of RESTART_ONLY_BATCHING) if (started.redis_batching[k] !== next.redis_batching[k]) out.push(`redis_batching.${k}`);
  return out;
}

/** What a reload from `prev` (the config served until now) to `next` does that the operator may not expect. */
export function reloadWarnings(prev: SluiceConfig, next: SluiceConfig): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  // Rule key values are hashed under the secret into counter ids: new ids, so counters from zero (never quoted).
  if (prev.key_hash_secret !== next.key_hash_secret) {
    out.push({ path: 'key_hash_secret', message: 'changed: every per-key counter (ai-rate-limiting rules, ai-token-ratelimit rule_items) starts again from zero; the usage counted under the old secret no longer applies' });
  }
  // A route's counters are keyed by its id; a route without one is `route-<position>`.
  const before = new Map(prev.routes.map((r) => [r.id, r]));
  const gone = prev.routes.filter((r) => !next.routes.some((n) => n.id === r.id)).map((r) => r.id);
  next.routes.forEach((r, i) => {
    const was = before.get(r.id);
    if (was === undefined && gone.length > 0) {
      out.push({ path: `routes[${i}].id`, message: `"${r.id}" is new and ${gone.map((g) => `"${g}"`).join(', ')} no longer exist${gone.length === 1 ? 's' : ''}: a route's counters are keyed by its id, so if it was renamed its quotas start again from zero` });
    } else if (was !== undefined && was.uri !== r.uri && /^route-\d+$/.test(r.id)) {
      out.push({ path: `routes[${i}]`, message: `has no id, so its counters are keyed "${r.id}" by position, which served ${JSON.stringify(was.uri)} before this reload: it takes over that route's counters; give each route an id` });
    }
  });
  return out;
}

/**
 * What a reload cannot apply on top of the settings the process started with, so the reload is refused (the old
 * config stays): a body cap above the in-flight body budget (restart-only) would refuse such bodies for good
 * with a 503 that says "retry shortly".
 */
export function reloadConflicts(started: SluiceConfig, next: SluiceConfig): ConfigIssue[] {
  const budget = started.limits.max_inflight_body_bytes;
  if (next.limits.max_body_bytes <= budget) return [];
  return [{ path: 'limits.max_body_bytes', message: `must be at most the running limits.max_inflight_body_bytes (${budget}), which changes only at restart: restart to raise both` }];
}
