// Reads a route's quota totals straight from Redis, whatever the process wrote: consumed (`…:c`, an integer)
// and reserved (`…:r`: an integer in key layout v1, a hash of "<seq>:<consumed>:<reserved>:<lease>" per
// process in v2). Summed over every counter key of the route and window.
import { RespClient, type HostPort, type RedisAuth, type RespValue } from './redis-topology.ts';

export interface RedisTotals {
  consumed: number;
  reserved: number;
  keys: number;
}

function strings(v: RespValue): string[] {
  return Array.isArray(v) ? v.map((x) => String(x)) : [];
}

/** Totals of every counter whose id starts with `idPrefix` (e.g. 'r/<route id>/'), in database `database` (default 0). */
export async function redisTotals(redis: HostPort & RedisAuth & { database?: number }, idPrefix: string): Promise<RedisTotals> {
  const c = await RespClient.connect(redis, { password: redis.password, username: redis.username });
  try {
    if (redis.database !== undefined) await c.call('SELECT', redis.database);
    const keys = strings(await c.call('KEYS', 'sluice:*')).filter((k) => k.includes(`{${idPrefix}`));
    const out: RedisTotals = { consumed: 0, reserved: 0, keys: keys.length };
    for (const k of keys) {
      if (k.endsWith(':c')) {
        out.consumed += Number(await c.call('GET', k) ?? 0);
      } else if (k.endsWith(':r')) {
        const type = String(await c.call('TYPE', k));
        if (type === 'string') {
          out.reserved += Number(await c.call('GET', k) ?? 0);
        } else if (type === 'hash') {
          const flat = strings(await c.call('HGETALL', k));
          for (let i = 1; i < flat.length; i += 2) out.reserved += Number(flat[i]!.split(':')[2] ?? 0);
        }
      }
    }
    return out;
  } finally {
    c.close();
  }
}
