// The few Redis operations the quota store needs, over ioredis, for the three topologies. This folder is
// the only place that imports ioredis. Options favour bounded latency over persistence of commands:
// no offline queue (a command on a down connection fails at once), no resending of unanswered commands
// by the client (the store decides what to send again), short reconnect backoff.
import { createRequire } from 'node:module';
import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis';

// Loaded on the first Redis port, not at import: a gateway with local quotas only never pays for ioredis
// (~70 ms of start-up). ioredis is CommonJS, so a synchronous require keeps the constructors synchronous.
let ioredisModule: typeof import('ioredis') | undefined;
function ioredis(): typeof import('ioredis') {
  return (ioredisModule ??= createRequire(import.meta.url)('ioredis') as typeof import('ioredis'));
}
import type { RedisTargetConfig } from '../../config/types.ts';
import { SCRIPTS } from './scripts.ts';

export type PortArg = string | number;
export type PortCommand = readonly [name: string, ...args: PortArg[]];
/** One reply per command: [error, value]. */
export type PortReply = [Error | null, unknown];

export interface RedisPort {
  readonly mode: RedisTargetConfig['mode'];
  /** Commands whose keys map to the same group may share one pipeline (Cluster: slots served by the same nodes). */
  groupOf(slot: number): string;
  /**
   * Send the commands as one pipeline, resolving with one [error, reply] per command; rejects when the
   * pipeline failed as a whole. `readOnly` pipelines may go to a replica (Sentinel with role 'slave').
   */
  exec(commands: readonly PortCommand[], readOnly?: boolean): Promise<PortReply[]>;
  /** Whether commands can be written now. */
  readonly ready: boolean;
  /** Read-only pipelines go to a replica (Sentinel with role 'slave'). */
  readonly readsFromReplica: boolean;
  /** A reply said a slot moved (MOVED/ASK): re-read the slot map (Cluster). */
  slotsMoved(): void;
  on(event: 'ready' | 'down', listener: () => void): void;
  /** Set by the owner: called with every connection-level error of the client (refused, DNS, AUTH, ...). */
  onError: ((err: unknown) => void) | undefined;
  /** The message of the client's last connection error (WRONGPASS, ECONNREFUSED, ...): never holds a password. */
  readonly lastError: string | undefined;
  quit(): Promise<void>;
}

/** How a Redis failure is classified: metrics, the breaker, and whether a command may have been applied. */
export type RedisErrorKind = 'timeout' | 'connection' | 'not_sent' | 'reply';

/** MOVED or ASK: the key's slot is (being) served elsewhere; nothing was applied. */
export function isRedirection(err: Error | null): boolean {
  return err !== null && /^(MOVED|ASK) /.test(err.message);
}

export function classifyError(err: unknown): RedisErrorKind {
  const e = err as { name?: string; message?: string };
  const msg = e?.message ?? '';
  if (/timed? ?out/i.test(msg)) return 'timeout';
  if (/enableOfflineQueue|isn't writeable|Connection is closed|not ready|None of startup nodes/i.test(msg)) return 'not_sent';
  if (e?.name === 'ReplyError') return 'reply';
  return 'connection';
}

const RETRY_MS = (times: number): number => Math.min(50 * times, 200);
/** A standalone/Sentinel client that gave up reconnecting is started again after this long. */
const RESTART_AFTER_END_MS = 100;
/** How often a starting Cluster client checks whether its master connections are open. */
const MASTERS_POLL_MS = 10;

function common(t: RedisTargetConfig): NonNullable<ClusterOptions['redisOptions']> {
  return {
    username: t.username,
    password: t.password,
    connectTimeout: t.connect_timeout_ms,
    commandTimeout: t.timeout_ms,
    // A socket that stops answering while commands are pending is torn down and reconnected.
    socketTimeout: Math.max(2 * t.timeout_ms, 1000),
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    enableAutoPipelining: false,
    connectionName: 'sluice',
  };
}

function silenceErrorEvents(client: Redis | Cluster, seen: { lastError: string | undefined; onError: ((err: unknown) => void) | undefined }): void {
  // An 'error' listener keeps ioredis from printing them; they are counted (sluice_redis_errors_total) by the owner.
  // The last one is kept for the breaker's log line: a wrong password must not look like a Redis that is down.
  client.on('error', (err: unknown) => {
    seen.lastError = err instanceof Error ? err.message.slice(0, 200) : String(err).slice(0, 200);
    seen.onError?.(err);
  });
}

class StandalonePort implements RedisPort {
  readonly mode: RedisTargetConfig['mode'];
  lastError: string | undefined = undefined;
  onError: ((err: unknown) => void) | undefined = undefined;
  private readonly writer: Redis;
  private readonly reader: Redis | undefined;
  private closing = false;

  constructor(target: RedisTargetConfig) {
    this.mode = target.mode;
    const base: RedisOptions = { ...common(target), db: target.database, retryStrategy: RETRY_MS, enableOfflineQueue: false };
    if (target.mode === 'sentinel') {
      const sentinel: RedisOptions = {
        ...base,
        sentinels: target.sentinels.map((s) => ({ host: s.host, port: s.port })),
        name: target.master_name,
        sentinelUsername: target.sentinel_username,
        sentinelPassword: target.sentinel_password,
        sentinelCommandTimeout: target.timeout_ms,
        sentinelRetryStrategy: (times: number) => Math.min(100 * times, 1000),
        failoverDetector: true,
      };
      // Counters are written, so the writer always follows the master; role 'slave' sends reads to a replica.
      this.writer = new (ioredis().Redis)({ ...sentinel, role: 'master' });
      this.reader = target.role === 'slave' ? new (ioredis().Redis)({ ...sentinel, role: 'slave', connectionName: 'sluice-reader' }) : undefined;
    } else {
      this.writer = new (ioredis().Redis)({ ...base, host: target.host, port: target.port });
      this.reader = undefined;
    }
    silenceErrorEvents(this.writer, this);
    this.keepConnecting(this.writer);
    if (this.reader !== undefined) {
      silenceErrorEvents(this.reader, this);
      this.keepConnecting(this.reader);
    }
  }

  /**
   * ioredis gives up for good ('end') when a reconnect is cut short: during a Sentinel failover its failover
   * detector disconnects the client while the connector is still asking a sentinel for the master, the
   * connector then fails with "Connection is closed", and the client never reconnects. Start it again.
   */
  private keepConnecting(client: Redis): void {
    client.on('end', () => {
      if (this.closing) return;
      const timer = setTimeout(() => {
        if (!this.closing && client.status === 'end') client.connect().catch(() => undefined);
      }, RESTART_AFTER_END_MS);
      timer.unref();
    });
  }

  groupOf(): string {
    return '';
  }

  get ready(): boolean {
    return this.writer.status === 'ready';
  }

  get readsFromReplica(): boolean {
    return this.reader !== undefined;
  }

  slotsMoved(): void {
    // No slots outside Cluster.
  }

  exec(commands: readonly PortCommand[], readOnly = false): Promise<PortReply[]> {
    const client = readOnly && this.reader !== undefined && this.reader.status === 'ready' ? this.reader : this.writer;
    return execScripts((cmds) => client.pipeline(cmds as unknown as string[][]).exec().then(results), commands);
  }

  on(event: 'ready' | 'down', listener: () => void): void {
    if (event === 'ready') this.writer.on('ready', listener);
    else this.writer.on('close', listener);
  }

  async quit(): Promise<void> {
    this.closing = true;
    await Promise.allSettled([quit(this.writer), this.reader === undefined ? undefined : quit(this.reader)]);
  }
}

class ClusterPort implements RedisPort {
  readonly mode = 'cluster' as const;
  lastError: string | undefined = undefined;
  onError: ((err: unknown) => void) | undefined = undefined;
  readonly readsFromReplica = false;
  private readonly client: Cluster;
  private readonly readyListeners: (() => void)[] = [];
  /** Every master's connection was opened since the cluster client last became ready. */
  private mastersUp = false;

  constructor(target: RedisTargetConfig) {
    const opts: ClusterOptions = {
      redisOptions: common(target),
      enableOfflineQueue: false,
      enableReadyCheck: true,
      scaleReads: 'master',
      // During a failover or resharding commands are retried on the new owner rather than failed.
      retryDelayOnFailover: 100,
      retryDelayOnClusterDown: 100,
      retryDelayOnTryAgain: 50,
      retryDelayOnMoved: 0,
      maxRedirections: 16,
      slotsRefreshTimeout: Math.max(target.connect_timeout_ms, 1000),
      clusterRetryStrategy: (times: number) => Math.min(100 * times, 1000),
    };
    const nodes = target.cluster_nodes.length > 0 ? target.cluster_nodes : [{ host: target.host, port: target.port }];
    this.client = new (ioredis().Cluster)(nodes.map((n) => ({ host: n.host, port: n.port })), opts);
    silenceErrorEvents(this.client, this);
    // ioredis opens node connections lazily. A pipeline sent to a node whose connection is still being
    // opened fails inside ioredis and is retried `retryDelayOnFailover` later, behind pipelines sent after
    // it, so Redis applies them out of order. Every master is therefore connected as soon as it is known,
    // and the port reports ready once they are (bounded by the connect timeout), which keeps the order of
    // a connection's commands (the store relies on it) outside real failovers.
    this.client.on('ready', () => void this.connectMasters(target.connect_timeout_ms));
    this.client.on('+node', () => setImmediate(() => void this.connectMasters(target.connect_timeout_ms)));
    this.client.on('close', () => {
      this.mastersUp = false;
    });
  }

  private async connectMasters(timeoutMs: number): Promise<void> {
    // Not while the cluster itself is connecting: ioredis drives those connections then.
    if (this.client.status !== 'ready') return;
    const masters = this.client.nodes('master');
    for (const node of masters) {
      if (node.status === 'wait') node.connect().catch(() => undefined);
    }
    if (this.mastersUp) return;
    const deadline = performance.now() + timeoutMs;
    while (this.client.status === 'ready' && masters.some((n) => n.status !== 'ready') && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, MASTERS_POLL_MS));
    }
    if (this.client.status !== 'ready' || this.mastersUp) return;
    this.mastersUp = true;
    for (const l of this.readyListeners) l();
  }

  slotsMoved(): void {
    // ioredis follows redirections of a pipeline only when every reply in it is the same redirection;
    // a mixed pipeline leaves its slot map stale, so refresh it (one refresh at a time, inside ioredis).
    this.client.refreshSlotsCache();
  }

  groupOf(slot: number): string {
    const nodes = this.client.slots[slot];
    return nodes === undefined || nodes.length === 0 ? '?' : nodes.join(';');
  }

  get ready(): boolean {
    return this.client.status === 'ready' && this.mastersUp;
  }

  exec(commands: readonly PortCommand[]): Promise<PortReply[]> {
    return execScripts((cmds) => this.client.pipeline(cmds as unknown as string[][]).exec().then(results), commands);
  }

  on(event: 'ready' | 'down', listener: () => void): void {
    if (event === 'ready') this.readyListeners.push(listener);
    else this.client.on('close', listener);
  }

  async quit(): Promise<void> {
    await quit(this.client);
  }
}

function results(r: [Error | null, unknown][] | null): PortReply[] {
  if (r === null) throw new Error('pipeline was not executed');
  return r;
}

/**
 * Sends a pipeline; EVALSHA commands answered NOSCRIPT (a restarted or newly promoted node) are sent again
 * with the script body. Safe because every store script is idempotent (sequence-numbered absolute writes).
 */
async function execScripts(send: (cmds: readonly PortCommand[]) => Promise<PortReply[]>, commands: readonly PortCommand[]): Promise<PortReply[]> {
  const replies = await send(commands);
  let missing: number[] | undefined;
  for (let i = 0; i < replies.length; i++) {
    const err = replies[i]![0];
    if (err !== null && err.message.startsWith('NOSCRIPT') && commands[i]![0] === 'evalsha') (missing ??= []).push(i);
  }
  if (missing === undefined) return replies;
  const again = missing.map((i): PortCommand => {
    const [, sha, ...rest] = commands[i]!;
    return ['eval', SCRIPTS.get(String(sha)) ?? '', ...rest];
  });
  const second = await send(again);
  missing.forEach((i, k) => {
    replies[i] = second[k] ?? [new Error('missing reply'), null];
  });
  return replies;
}

/** How long a closing store waits for Redis to answer QUIT: a hung server (or one behind a stalled network) answers it
 *  only when redis_timeout fails the commands queued before it, which could hold a shutdown far past its drain. */
const QUIT_WAIT_MS = 1000;

async function quit(client: Redis | Cluster): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    if (client.status === 'ready') {
      // Its failure after the wait (the connection closed below) is nobody's to handle.
      const quitting = client.quit().then(() => undefined, () => undefined);
      await Promise.race([quitting, new Promise<void>((r) => { timer = setTimeout(r, QUIT_WAIT_MS); })]);
    }
  } catch {
    // Closing anyway below.
  } finally {
    clearTimeout(timer);
  }
  client.disconnect();
}

export function createPort(target: RedisTargetConfig): RedisPort {
  return target.mode === 'cluster' ? new ClusterPort(target) : new StandalonePort(target);
}
