// One Redis client per target and client settings per process (redisClientKey), shared by every store
// (route, plugin) that names that Redis with the same settings, with reference counting. The client owns what
// belongs to the connection rather than to a store: the circuit breaker, and the dataset epoch that tells a
// reconnect to a fresh (emptied) Redis apart from a reconnect to the same data.
import { randomBytes } from 'node:crypto';
import { redisClientKey } from '../../config/redis.ts';
import type { RedisTargetConfig } from '../../config/types.ts';
import { CircuitBreaker, type BreakerState } from './breaker.ts';
import { EPOCH_KEY } from './keys.ts';
import { classifyError, createPort, type RedisErrorKind, type RedisPort } from './port.ts';

export interface SharedListener {
  /** `cause`: the client's last connection error, when there was one (logged with the breaker's change). */
  breaker(state: BreakerState, cause: string | undefined): void;
  /** Redis came back without the data it had (restart without persistence): re-send acknowledged deltas. */
  dataLost(): void;
  /** The client became usable again (connected and epoch checked). */
  usable(): void;
  /** A probe was sent (for the commands metric). */
  probe(): void;
  error(kind: RedisErrorKind, err: Error | undefined): void;
}

const FAILURE_THRESHOLD = 3;
const PROBE_INTERVAL_MS = 500;
const EPOCH_RETRY_MS = 200;
/** How often a connected client reads the epoch again: FLUSHALL (or the marker evicted) loses the data without a
 *  reconnect, and what this process wrote must then be sent again like after a restart. */
const EPOCH_WATCH_MS = 1_000;

export class SharedRedis {
  /** The registry key (redisClientKey): the target plus the client's settings. */
  readonly id: string;
  readonly port: RedisPort;
  readonly breaker: CircuitBreaker;
  private readonly listeners = new Set<SharedListener>();
  private epoch: string | undefined;
  /** The server's run_id at the last check: a new one is a restart, which may have reloaded an older snapshot. */
  private runId: string | undefined;
  private epochChecked = false;
  private epochTimer: NodeJS.Timeout | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private downTimer: NodeJS.Timeout | undefined;
  private readyWaiters: (() => void)[] = [];
  refs = 0;
  private closed = false;

  constructor(target: RedisTargetConfig, key = redisClientKey(target), port: RedisPort = createPort(target)) {
    this.id = key;
    this.port = port;
    // Connection-level errors (refused, unknown host, a wrong password) reach no command: counted here, so an alert
    // on sluice_redis_errors_total fires for a Redis that was never reachable too.
    port.onError = (err) => {
      if (this.closed) return;
      const kind = classifyError(err);
      for (const l of this.listeners) l.error(kind, err instanceof Error ? err : undefined);
      // Sentinel's connector retries unreachable sentinels (or a refused sentinel AUTH) without ever opening a
      // connection, so no 'down' comes: an error while not usable starts the same clock.
      if (!this.usable) this.armDown(target.timeout_ms);
    };
    this.breaker = new CircuitBreaker({
      failureThreshold: FAILURE_THRESHOLD,
      probeIntervalMs: PROBE_INTERVAL_MS,
      probe: () => this.probe(),
      onChange: (state) => {
        for (const l of this.listeners) l.breaker(state, state === 'closed' ? undefined : this.port.lastError);
      },
    });
    // Cluster failovers keep the data on the promoted replica; an epoch key would live on one master only.
    if (port.mode === 'cluster') this.epochChecked = true;
    else {
      this.watchTimer = setInterval(() => { if (this.usable && this.breaker.closed) void this.checkEpoch(true); }, EPOCH_WATCH_MS);
      this.watchTimer.unref();
    }
    port.on('ready', () => {
      if (port.mode === 'cluster') this.becameUsable();
      else void this.checkEpoch();
    });
    port.on('down', () => {
      if (port.mode !== 'cluster') this.epochChecked = false;
      this.armDown(target.timeout_ms);
    });
  }

  /** A connection that stays down opens the breaker even when no command notices (no traffic). */
  private armDown(timeoutMs: number): void {
    if (this.downTimer !== undefined || this.closed) return;
    this.downTimer = setTimeout(() => {
      this.downTimer = undefined;
      if (!this.usable && !this.closed) this.breaker.open();
    }, Math.max(timeoutMs, 100));
    this.downTimer.unref();
  }

  /** Connected, and (standalone/Sentinel) the dataset epoch was checked since the last connect. */
  get usable(): boolean {
    return this.port.ready && this.epochChecked && !this.closed;
  }

  subscribe(l: SharedListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Resolves true once usable, false after `timeoutMs`. */
  whenUsable(timeoutMs: number): Promise<boolean> {
    if (this.usable) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.readyWaiters = this.readyWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      timer.unref();
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.readyWaiters.push(done);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.breaker.stop();
    if (this.epochTimer !== undefined) clearTimeout(this.epochTimer);
    if (this.watchTimer !== undefined) clearInterval(this.watchTimer);
    if (this.downTimer !== undefined) clearTimeout(this.downTimer);
    this.listeners.clear();
    await this.port.quit();
  }

  private becameUsable(): void {
    if (!this.usable) return;
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w();
    for (const l of this.listeners) l.usable();
  }

  private async probe(): Promise<void> {
    for (const l of this.listeners) l.probe();
    if (!this.port.ready) throw new Error('redis not connected');
    if (!this.epochChecked) {
      await this.checkEpoch();
      if (!this.epochChecked) throw new Error('redis epoch not checked');
      return;
    }
    const [[err]] = (await this.port.exec([['ping']])) as [[Error | null, unknown]];
    if (err !== null) throw err;
  }

  /**
   * SET NX a random marker, then read it. The first reader after a data loss writes a new marker; every
   * process that remembers another value learns the data is gone and re-sends what it had written.
   */
  private async checkEpoch(again = false): Promise<void> {
    if (this.closed || (this.epochChecked && !again)) return;
    try {
      const token = randomBytes(8).toString('hex');
      const replies = await this.port.exec([['set', EPOCH_KEY, token, 'NX'], ['get', EPOCH_KEY], ['info', 'server']]);
      const [err, value] = replies[1]!;
      if (err !== null || typeof value !== 'string') throw err ?? new Error('epoch marker missing');
      // A server restarted from an RDB or AOF file keeps the marker but not the writes after its last save: its
      // run_id changes, so what was written is sent again as for an empty restart (absolute state: a value Redis
      // still holds is written unchanged). INFO may be refused (ACLs, renamed commands): then only the marker counts.
      const [infoErr, info] = replies[2] ?? [null, undefined];
      const runId = infoErr === null && typeof info === 'string' ? /^run_id:([0-9a-f]+)/m.exec(info)?.[1] : undefined;
      const restarted = runId !== undefined && this.runId !== undefined && runId !== this.runId;
      if (runId !== undefined) this.runId = runId;
      const lost = (this.epoch !== undefined && this.epoch !== value) || restarted;
      this.epoch = value;
      const first = !this.epochChecked;
      this.epochChecked = true;
      if (lost) for (const l of this.listeners) l.dataLost();
      if (first) this.becameUsable();
    } catch (err) {
      // A periodic check that fails is the breaker's business (the commands of the stores fail too).
      if (again) return;
      const kind = classifyError(err);
      for (const l of this.listeners) l.error(kind, err instanceof Error ? err : undefined);
      if (this.closed || !this.port.ready || this.epochTimer !== undefined) return;
      this.epochTimer = setTimeout(() => {
        this.epochTimer = undefined;
        void this.checkEpoch();
      }, EPOCH_RETRY_MS);
      this.epochTimer.unref();
    }
  }
}

const registry = new Map<string, SharedRedis>();

/** The process-wide client for a target (created on first use); pair every call with releaseRedis. */
export function acquireRedis(target: RedisTargetConfig): SharedRedis {
  const key = redisClientKey(target);
  let shared = registry.get(key);
  if (shared === undefined) {
    shared = new SharedRedis(target, key);
    registry.set(key, shared);
  }
  shared.refs++;
  return shared;
}

export async function releaseRedis(shared: SharedRedis): Promise<void> {
  if (--shared.refs > 0) return;
  if (registry.get(shared.id) === shared) registry.delete(shared.id);
  await shared.close();
}
