// The identity of a quota plugin's backend store: app.ts's StoreRegistry shares one store per key between
// snapshots. Keys are only comparable inside one thread (redisClientKey salts its hash per module instance), so
// the main thread computes them and sends each serving thread the key of every quota plugin by its config path.
import { redisClientKey } from '../config/redis.ts';
import type { SluiceConfig } from '../config/types.ts';
import type { QuotaSource } from '../pipeline/snapshot.ts';

/** The key of the process's one local store. */
export const LOCAL_STORE_KEY = 'local';

export function quotaStoreKey(source: QuotaSource): string {
  // Validation leaves `redis` undefined under policy local (and for ai-token-ratelimit without a redis block).
  const target = source.redis;
  return target === undefined ? LOCAL_STORE_KEY : `${redisClientKey(target)}|${source.allow_degradation ? 'degrade' : 'strict'}`;
}

/** Every quota plugin of a config with a path that names it in any copy of that config. */
export function quotaSources(config: SluiceConfig): [string, QuotaSource][] {
  const out: [string, QuotaSource][] = [];
  config.routes.forEach((r, i) => {
    const arl = r.plugins['ai-rate-limiting'];
    if (arl !== undefined) out.push([`routes[${i}].ai-rate-limiting`, arl]);
    const atr = r.plugins['ai-token-ratelimit'];
    if (atr !== undefined) out.push([`routes[${i}].ai-token-ratelimit`, atr]);
  });
  config.consumers.forEach((c, i) => {
    if (c.ai_rate_limiting !== undefined) out.push([`consumers[${i}].ai-rate-limiting`, c.ai_rate_limiting]);
  });
  return out;
}

/** Per quota plugin path: its backend store's name in the ledger (its key, numbered per store made) and metric label. */
export type StoreMap = Readonly<Record<string, { readonly key: string; readonly label: string }>>;
