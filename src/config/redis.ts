// Redis connection settings from either plugin, normalised into one RedisTargetConfig. The target's `id`
// (mode, endpoints, username, database; never a password) names the Redis; `redisClientKey` adds the other
// client settings, so routes naming the same Redis with different timeouts or passwords get their own clients.

import { createHash, randomBytes } from 'node:crypto';
import type { RedisPolicy, RedisTargetConfig } from './types.ts';
import { childPath, type Issues } from './issues.ts';
import { isHost, parseHostPort } from './net.ts';
import { NON_NEGATIVE, SERVER_PORT, Section, durationMs, isPlainObject } from './section.ts';

/** The ai-rate-limiting (APISIX limit-count) Redis fields. */
export const APISIX_REDIS_KEYS = [
  'redis_host', 'redis_port', 'redis_username', 'redis_password', 'redis_database', 'redis_timeout',
  'redis_connect_timeout', 'redis_cluster_nodes', 'redis_cluster_name', 'redis_sentinels', 'redis_master_name',
  'redis_role', 'sentinel_username', 'sentinel_password',
] as const;

const HIGRESS_REDIS_KEYS = ['service_name', 'service_port', 'username', 'password', 'timeout', 'database'] as const;

const DEFAULT_PORT = 6379;
const DEFAULT_SENTINEL_PORT = 26379;
const DEFAULT_TIMEOUT_MS = 1000;

type Endpoint = { readonly host: string; readonly port: number };

function endpointText(e: Endpoint): string {
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

function sortedEndpoints(list: readonly Endpoint[]): string {
  return list.map(endpointText).sort().join(',');
}

function targetId(mode: RedisTargetConfig['mode'], endpoints: string, username: string | undefined, database: number, extra: string): string {
  const user = username === undefined ? '' : `${encodeURIComponent(username)}@`;
  return `${mode}://${user}${endpoints}/${database}${extra}`;
}

/** Every target is built here, so all have the same property order (one hidden class). */
function target(t: RedisTargetConfig): RedisTargetConfig {
  return {
    mode: t.mode, host: t.host, port: t.port, username: t.username, password: t.password, database: t.database,
    timeout_ms: t.timeout_ms, connect_timeout_ms: t.connect_timeout_ms, cluster_nodes: t.cluster_nodes,
    cluster_name: t.cluster_name, sentinels: t.sentinels, master_name: t.master_name, role: t.role,
    sentinel_username: t.sentinel_username, sentinel_password: t.sentinel_password, id: t.id,
  };
}

/** '' means "no credential", as in APISIX where an empty password skips AUTH. */
function optionalSecret(sec: Section, key: string): string | undefined {
  const v = sec.str(key, { empty: true });
  return v === '' ? undefined : v;
}

function readHost(sec: Section, key: string, required: boolean, requiredMessage?: string): string | undefined {
  const v = sec.str(key);
  if (v === undefined) {
    if (required && !sec.has(key)) sec.is.add(sec.p(key), requiredMessage ?? 'is required');
    return undefined;
  }
  if (!isHost(v)) {
    sec.is.add(sec.p(key), 'must be a host name or IP address');
    return undefined;
  }
  return v;
}

function readClusterNodes(sec: Section): Endpoint[] {
  const list = sec.array('redis_cluster_nodes', { nonEmpty: true });
  const out: Endpoint[] = [];
  list?.forEach((item, i) => {
    const e = typeof item === 'string' ? parseHostPort(item) : undefined;
    if (e === undefined) sec.is.add(childPath(sec.p('redis_cluster_nodes'), i), "must be 'host:port'");
    else out.push(e);
  });
  return out;
}

function readSentinels(sec: Section): Endpoint[] {
  const list = sec.array('redis_sentinels', { nonEmpty: true });
  const out: Endpoint[] = [];
  list?.forEach((item, i) => {
    const path = childPath(sec.p('redis_sentinels'), i);
    if (typeof item === 'string') {
      const e = parseHostPort(item);
      if (e === undefined) sec.is.add(path, "must be 'host:port' or {host, port}");
      else out.push(e);
      return;
    }
    if (!isPlainObject(item)) {
      sec.is.add(path, "must be 'host:port' or {host, port}");
      return;
    }
    const s = Section.open(sec.is, path, item, ['host', 'port']);
    if (s === undefined) return;
    const host = readHost(s, 'host', true);
    const port = s.int('port', SERVER_PORT) ?? DEFAULT_SENTINEL_PORT;
    if (host !== undefined) out.push({ host, port });
  });
  return out;
}

/**
 * The Redis target of an ai-rate-limiting config. Redis fields are type-checked whatever the policy (a file
 * switched to `policy: local` for a test may keep them), but only the policy's own fields build a target.
 */
export function readApisixRedis(sec: Section, policy: RedisPolicy): RedisTargetConfig | undefined {
  const host = readHost(sec, 'redis_host', policy === 'redis', 'is required when policy is redis');
  const port = sec.int('redis_port', SERVER_PORT) ?? DEFAULT_PORT;
  const username = sec.str('redis_username');
  const password = optionalSecret(sec, 'redis_password');
  const database = sec.int('redis_database', NON_NEGATIVE) ?? 0;
  const timeout = sec.int('redis_timeout', durationMs(1)) ?? DEFAULT_TIMEOUT_MS;
  const connectTimeout = sec.int('redis_connect_timeout', durationMs(1)) ?? DEFAULT_TIMEOUT_MS;
  const clusterName = sec.str('redis_cluster_name');
  const masterName = sec.str('redis_master_name');
  const role = sec.oneOf('redis_role', ['master', 'slave'] as const);
  const sentinelUsername = sec.str('sentinel_username');
  const sentinelPassword = optionalSecret(sec, 'sentinel_password');
  const clusterNodes = sec.has('redis_cluster_nodes') ? readClusterNodes(sec) : [];
  const sentinels = sec.has('redis_sentinels') ? readSentinels(sec) : [];

  const base = {
    username, password, database, timeout_ms: timeout, connect_timeout_ms: connectTimeout,
    cluster_nodes: [] as Endpoint[], cluster_name: undefined, sentinels: [] as Endpoint[], master_name: undefined,
    role: undefined, sentinel_username: undefined, sentinel_password: undefined,
  };
  switch (policy) {
    case 'local':
      return undefined;
    case 'redis':
      return target({ ...base, mode: 'standalone', host: host ?? '', port, id: targetId('standalone', endpointText({ host: host ?? '', port }), username, database, '') });
    case 'redis-cluster': {
      if (!sec.has('redis_cluster_nodes')) sec.is.add(sec.p('redis_cluster_nodes'), 'is required when policy is redis-cluster');
      if (database !== 0) sec.is.add(sec.p('redis_database'), 'must be 0: Redis Cluster has only database 0');
      const first = clusterNodes[0];
      return target({
        ...base, mode: 'cluster', host: first?.host ?? '', port: first?.port ?? DEFAULT_PORT,
        cluster_nodes: clusterNodes, cluster_name: clusterName,
        id: targetId('cluster', sortedEndpoints(clusterNodes), username, database, ''),
      });
    }
    case 'redis-sentinel': {
      if (!sec.has('redis_sentinels')) sec.is.add(sec.p('redis_sentinels'), 'is required when policy is redis-sentinel');
      if (!sec.has('redis_master_name')) sec.is.add(sec.p('redis_master_name'), 'is required when policy is redis-sentinel');
      const effectiveRole = role ?? 'master';
      const first = sentinels[0];
      const sentinelUser = sentinelUsername === undefined ? '' : `&sentinel_username=${encodeURIComponent(sentinelUsername)}`;
      return target({
        ...base, mode: 'sentinel', host: first?.host ?? '', port: first?.port ?? DEFAULT_SENTINEL_PORT,
        sentinels, master_name: masterName, role: effectiveRole,
        sentinel_username: sentinelUsername, sentinel_password: sentinelPassword,
        id: targetId('sentinel', sortedEndpoints(sentinels), username, database,
          `?master=${encodeURIComponent(masterName ?? '')}&role=${effectiveRole}${sentinelUser}`),
      });
    }
  }
}

/** The Higress ai-token-ratelimit `redis` block: one standalone server; `timeout` bounds connect and commands. */
export function readHigressRedis(is: Issues, path: string, value: unknown): RedisTargetConfig | undefined {
  const sec = Section.open(is, path, value, HIGRESS_REDIS_KEYS);
  if (sec === undefined) return undefined;
  const host = readHost(sec, 'service_name', true) ?? '';
  const port = sec.int('service_port', SERVER_PORT) ?? DEFAULT_PORT;
  const username = sec.str('username');
  const password = optionalSecret(sec, 'password');
  const timeout = sec.int('timeout', durationMs(1)) ?? DEFAULT_TIMEOUT_MS;
  const database = sec.int('database', NON_NEGATIVE) ?? 0;
  return target({
    mode: 'standalone', host, port, username, password, database, timeout_ms: timeout, connect_timeout_ms: timeout,
    cluster_nodes: [], cluster_name: undefined, sentinels: [], master_name: undefined, role: undefined,
    sentinel_username: undefined, sentinel_password: undefined,
    id: targetId('standalone', endpointText({ host, port }), username, database, ''),
  });
}

const KEY_SALT = randomBytes(16);

/**
 * What one Redis client (connection) of a process is built from: the target's id plus every other setting the
 * client takes (password, timeouts, cluster name). Routes agreeing on all of them share one client and one
 * quota store; routes differing in any (APISIX allows per-route `redis_timeout`, passwords, ...) each get their
 * own, so every route keeps its own settings. Secrets enter only through a salted hash: the key never holds them.
 */
export function redisClientKey(t: RedisTargetConfig): string {
  const settings = JSON.stringify([t.password ?? null, t.sentinel_password ?? null, t.timeout_ms, t.connect_timeout_ms, t.cluster_name ?? null]);
  return `${t.id}#${createHash('sha256').update(KEY_SALT).update(settings).digest('hex').slice(0, 16)}`;
}
