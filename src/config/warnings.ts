// Things a config may say that validate but are probably not what was meant. `sluice validate` prints them
// (the file still validates) and the gateway logs them at start and on reload. Never includes a secret.

import { costExprIdentifiers, KNOWN_USAGE_FIELDS } from '../rules/cost-expr.ts';
import type { AiRateLimitingConfig, SluiceConfig } from './types.ts';
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

export function configWarnings(config: SluiceConfig): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const perKeyOnRedis: string[] = [];
  config.routes.forEach((r, i) => {
    const path = `routes[${i}].plugins`;
    const arl = r.plugins['ai-rate-limiting'];
    if (arl !== undefined) {
      costExprWarnings(arl, childPath(path, 'ai-rate-limiting'), out);
      if (arl.redis !== undefined && arl.rules.length > 0) perKeyOnRedis.push(childPath(path, 'ai-rate-limiting.rules'));
    }
    const atr = r.plugins['ai-token-ratelimit'];
    if (atr?.redis !== undefined && atr.rule_items.length > 0) perKeyOnRedis.push(childPath(path, 'ai-token-ratelimit.rule_items'));
  });
  config.consumers.forEach((c, i) => {
    if (c.ai_proxy !== undefined && c.key === undefined) {
      out.push({ path: `consumers[${i}].plugins`, message: 'has ai-proxy but no key-auth key: the consumer is never authenticated, so its upstreams are never used' });
    }
    const arl = c.ai_rate_limiting;
    if (arl === undefined) return;
    const path = `consumers[${i}].plugins.ai-rate-limiting`;
    costExprWarnings(arl, path, out);
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
