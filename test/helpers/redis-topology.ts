// Real Redis topologies for integration tests and benchmarks: standalone, Cluster (3 masters + 3 replicas)
// and Sentinel (master + replica + 3 sentinels). Every server is a child process of /usr/bin/redis-server or
// /usr/bin/redis-sentinel bound to 127.0.0.1 on a free port, without persistence, with its own temp dir.
// Readiness and topology probes speak raw RESP over node:net (no client library), so this module has no
// dependency beyond node and can be used outside node:test.
//
// Cleanup is layered: handle.stop()/stopAll() stop gracefully; a process 'exit' hook (and SIGINT/SIGTERM/SIGHUP
// when nobody else handles them) SIGKILLs leftovers; and a detached watchdog shell kills them if this process
// dies without running any hook (e.g. SIGKILL).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts } from './free-port.ts';

const REDIS_SERVER = '/usr/bin/redis-server';
const REDIS_SENTINEL = '/usr/bin/redis-sentinel';
const REDIS_CLI = '/usr/bin/redis-cli';
const HOST = '127.0.0.1';
const POLL_MS = 50;
const PROBE_TIMEOUT_MS = 500;
const START_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5_000;
const TOPOLOGY_TIMEOUT_MS = 30_000;
const FAILOVER_TIMEOUT_MS = 20_000;
const SYNC_TIMEOUT_MS = 5_000;
const PORT_RETRIES = 4;
const LOG_TAIL_LINES = 20;
const SLOTS = 16384;
const MASTER_NAME = 'mymaster';

export interface HostPort { host: string; port: number }

export interface RedisAuth { password?: string; username?: string }

// ---------------------------------------------------------------------------------------------------------
// Minimal RESP2 client (probes, topology admin, and tests that need ASKING/WAIT on one connection)

export type RespValue = string | number | null | RespError | RespValue[];

/** An error reply from the server (e.g. `MOVED 1234 127.0.0.1:7001`). */
export class RespError extends Error {
  override name = 'RespError';
}

interface Parsed { value: RespValue; end: number }

function parseReply(buf: Buffer, pos: number): Parsed | undefined {
  if (pos >= buf.length) return undefined;
  const lineEnd = buf.indexOf('\r\n', pos);
  if (lineEnd < 0) return undefined;
  const line = buf.toString('utf8', pos + 1, lineEnd);
  const next = lineEnd + 2;
  switch (buf[pos]) {
    case 0x2b: return { value: line, end: next }; // +
    case 0x2d: return { value: new RespError(line), end: next }; // -
    case 0x3a: return { value: Number(line), end: next }; // :
    case 0x24: { // $
      const len = Number(line);
      if (len < 0) return { value: null, end: next };
      if (buf.length < next + len + 2) return undefined;
      return { value: buf.toString('utf8', next, next + len), end: next + len + 2 };
    }
    case 0x2a: { // *
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items: RespValue[] = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, at);
        if (item === undefined) return undefined;
        items.push(item.value);
        at = item.end;
      }
      return { value: items, end: at };
    }
    default: throw new Error(`unexpected RESP type byte 0x${(buf[pos] ?? 0).toString(16)}`);
  }
}

function encodeCommand(args: readonly (string | number)[]): Buffer {
  const parts: string[] = [`*${args.length}\r\n`];
  for (const a of args) {
    const s = String(a);
    parts.push(`$${Buffer.byteLength(s)}\r\n${s}\r\n`);
  }
  return Buffer.from(parts.join(''));
}

interface Pending { resolve: (v: RespValue) => void; reject: (e: Error) => void; name: string }

export interface RespClientOptions extends RedisAuth { timeoutMs?: number }

/** One RESP2 connection; replies are matched to calls in order. Error messages name only the command, never arguments. */
export class RespClient {
  private buf: Buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private failure: Error | undefined;
  private timer: NodeJS.Timeout | undefined;

  private constructor(private readonly socket: Socket, readonly target: HostPort, private readonly timeoutMs: number) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new Error(`redis ${target.host}:${target.port}: ${err.message}`)));
    socket.on('close', () => this.fail(new Error(`redis ${target.host}:${target.port}: connection closed`)));
  }

  static async connect(target: HostPort, opts: RespClientOptions = {}): Promise<RespClient> {
    const timeoutMs = opts.timeoutMs ?? 2_000;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect({ host: target.host, port: target.port });
      const timer = setTimeout(() => { s.destroy(); reject(new Error(`redis ${target.host}:${target.port}: connect timed out after ${timeoutMs} ms`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(timer); s.removeAllListeners('error'); resolve(s); });
      s.once('error', (err) => { clearTimeout(timer); reject(new Error(`redis ${target.host}:${target.port}: ${err.message}`)); });
    });
    socket.setNoDelay(true);
    const client = new RespClient(socket, target, timeoutMs);
    if (opts.password !== undefined) {
      try {
        await client.call(...(opts.username !== undefined ? ['AUTH', opts.username, opts.password] : ['AUTH', opts.password]));
      } catch (err) {
        client.close();
        throw err;
      }
    }
    return client;
  }

  /** Send one command; resolves with its reply, rejects with RespError for an error reply. */
  call(...args: (string | number)[]): Promise<RespValue> {
    if (this.failure) return Promise.reject(this.failure);
    const name = String(args[0] ?? '').toUpperCase();
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject, name });
      this.socket.write(encodeCommand(args));
      this.armTimer();
    });
  }

  close(): void {
    this.fail(new Error(`redis ${this.target.host}:${this.target.port}: client closed`));
  }

  private armTimer(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      const name = this.pending[0]?.name ?? '';
      this.fail(new Error(`redis ${this.target.host}:${this.target.port}: ${name} timed out after ${this.timeoutMs} ms`));
    }, this.timeoutMs);
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    let at = 0;
    for (;;) {
      let parsed: Parsed | undefined;
      try {
        parsed = parseReply(this.buf, at);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      if (parsed === undefined) break;
      at = parsed.end;
      const p = this.pending.shift();
      if (p === undefined) continue;
      if (parsed.value instanceof RespError) p.reject(parsed.value);
      else p.resolve(parsed.value);
    }
    this.buf = this.buf.subarray(at);
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length > 0) this.armTimer();
  }

  private fail(err: Error): void {
    if (this.failure === undefined) this.failure = err;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.socket.destroy();
    for (const p of this.pending.splice(0)) p.reject(this.failure);
  }
}

/** One command on a fresh connection (AUTH first when a password is given). */
export async function redisCall(target: HostPort, args: (string | number)[], opts: RespClientOptions = {}): Promise<RespValue> {
  const client = await RespClient.connect(target, opts);
  try {
    return await client.call(...args);
  } finally {
    client.close();
  }
}

/** Run /usr/bin/redis-cli against a server (`-c` with cluster: true). The password goes through REDISCLI_AUTH, not argv. */
export function redisCli(target: HostPort, args: string[], opts: RedisAuth & { cluster?: boolean; timeoutMs?: number } = {}): Promise<string> {
  const argv = ['-h', target.host, '-p', String(target.port), '--no-auth-warning'];
  if (opts.cluster) argv.push('-c');
  if (opts.username !== undefined) argv.push('--user', opts.username);
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.REDISCLI_AUTH;
  if (opts.password !== undefined) env.REDISCLI_AUTH = opts.password;
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI, [...argv, ...args], { env, timeout: opts.timeoutMs ?? 5_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args[0] ?? ''} failed: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout).trim());
    });
  });
}

/** Parse an INFO reply into key → value. */
export function parseInfo(text: RespValue): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof text !== 'string') return out;
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Process registry, temp dirs and leftover cleanup

const live = new Set<RedisProcess>();
const owners = new Set<{ stop(): Promise<void> }>();
let rootDir: string | undefined;
let watchdog: ChildProcess | undefined;
let hooksInstalled = false;

function root(): string {
  if (rootDir === undefined) {
    rootDir = mkdtempSync(join(tmpdir(), `sluice-redis-${process.pid}-`));
    installCleanupHooks();
    startWatchdog(rootDir);
  }
  return rootDir;
}

function newDir(label: string): string {
  return mkdtempSync(join(root(), `${label}-`));
}

function writePidFile(): void {
  if (rootDir === undefined) return;
  const pids = [...live].map((p) => p.pid).filter((pid): pid is number => pid !== undefined);
  try { writeFileSync(join(rootDir, 'pids'), pids.join('\n') + '\n'); } catch { /* root already removed at exit */ }
}

function killLeftoversSync(): void {
  for (const p of live) {
    const pid = p.pid;
    if (pid !== undefined) try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  live.clear();
  if (watchdog?.pid !== undefined) try { process.kill(watchdog.pid, 'SIGKILL'); } catch { /* already gone */ }
  watchdog = undefined;
  if (rootDir !== undefined) try { rmSync(rootDir, { recursive: true, force: true }); } catch { /* best effort at exit */ }
  rootDir = undefined;
}

function installCleanupHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.once('exit', killLeftoversSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killLeftoversSync();
      // Keep the default behaviour (terminate) unless someone else handles the signal.
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, onSignal);
  }
}

function startWatchdog(dir: string): void {
  // If this process dies without running hooks, kill whatever pids are still listed (only redis processes).
  const script = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; ' +
    'if [ -f "$2/pids" ]; then for p in $(cat "$2/pids"); do grep -q redis "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p" 2>/dev/null; done; fi; ' +
    'rm -rf "$2"';
  watchdog = spawn('/bin/sh', ['-c', script, 'sluice-redis-watchdog', String(process.pid), dir], { detached: true, stdio: 'ignore' });
  watchdog.on('error', () => { /* cleanup hooks still run */ });
  watchdog.unref();
}

/** Pids of redis processes started by this module that are still running. */
export function liveServerPids(): number[] {
  return [...live].map((p) => p.pid).filter((pid): pid is number => pid !== undefined);
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function redact(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s.length > 0) out = out.split(s).join('***');
  return out;
}

function tailFile(path: string, lines: number, from = 0): string {
  try {
    const size = statSync(path).size;
    const start = Math.max(from, size - 16 * 1024);
    const fd = openSync(path, 'r');
    try {
      const buf = Buffer.alloc(size - start);
      readSync(fd, buf, 0, buf.length, start);
      return buf.toString('utf8').split('\n').filter((l) => l.length > 0).slice(-lines).join('\n');
    } finally {
      closeSync(fd);
    }
  } catch {
    return '';
  }
}

/** Poll `probe` until it returns a value (not undefined/false), or throw after timeoutMs with `context()` appended. */
async function waitUntil<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | false>, context: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const last = lastError === undefined ? '' : ` (last error: ${errorMessage(lastError)})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last}\n${context()}`);
    }
    await sleep(POLL_MS);
  }
}

function quote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n').replace(/\r/g, '\\r')}"`;
}

function hp(port: number): HostPort {
  return { host: HOST, port };
}

class PortInUseError extends Error {}

// ---------------------------------------------------------------------------------------------------------
// One redis-server / redis-sentinel child process

interface ProcessSpec {
  readonly bin: string;
  readonly label: string;
  readonly dir: string;
  readonly port: number;
  readonly auth: RedisAuth;
  readonly secrets: readonly string[];
  /** Arguments after the config file (extraArgs); the config file is `<dir>/redis.conf`. */
  readonly args: readonly string[];
  /** Cluster bus port (cluster nodes only). */
  readonly busPort?: number;
}

class RedisProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(readonly spec: ProcessSpec) {}

  get port(): number { return this.spec.port; }
  get address(): HostPort { return hp(this.spec.port); }
  get pid(): number | undefined { return this.running ? this.child?.pid : undefined; }
  get running(): boolean {
    const c = this.child;
    return c !== undefined && c.pid !== undefined && c.exitCode === null && c.signalCode === null;
  }
  get logFile(): string { return join(this.spec.dir, 'redis.log'); }

  logTail(lines = LOG_TAIL_LINES, from = 0): string {
    const tail = tailFile(this.logFile, lines, from);
    return `--- ${this.spec.label} (${HOST}:${this.spec.port}) log tail ---\n${redact(tail, this.spec.secrets) || '(empty)'}`;
  }

  /** Spawn and wait until it answers (INFO server from this very process). `runtimeArgs` apply to this start only (e.g. --replicaof). */
  async start(runtimeArgs: readonly string[] = [], timeoutMs = START_TIMEOUT_MS): Promise<void> {
    if (this.running) throw new Error(`${this.spec.label} on port ${this.spec.port} is already running`);
    const logFrom = existsSync(this.logFile) ? statSync(this.logFile).size : 0;
    const fd = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(this.spec.bin, [join(this.spec.dir, 'redis.conf'), ...this.spec.args, ...runtimeArgs], {
        cwd: this.spec.dir, stdio: ['ignore', fd, fd],
      });
    } finally {
      closeSync(fd);
    }
    this.child = child;
    let spawnError: Error | undefined;
    this.exited = new Promise((resolve) => {
      const done = (): void => { live.delete(this); writePidFile(); resolve(); };
      child.once('exit', done);
      child.once('error', (err) => { spawnError = err; done(); });
    });
    if (child.pid !== undefined) {
      live.add(this);
      writePidFile();
    }
    // Unref'd so a test that forgets cleanup still lets node exit (the exit hook then kills the server).
    child.unref();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) {
        if (spawnError !== undefined) throw new Error(`${this.spec.label}: cannot spawn ${this.spec.bin}: ${spawnError.message}`);
        const log = tailFile(this.logFile, LOG_TAIL_LINES, logFrom);
        if (/Address already in use/i.test(log)) throw new PortInUseError(`${this.spec.label}: port ${this.spec.port} is in use`);
        throw new Error(`${this.spec.label} on port ${this.spec.port} exited during startup\n${this.logTail(LOG_TAIL_LINES, logFrom)}`);
      }
      try {
        // Check the pid too: whatever else might have grabbed the port must not pass for our server.
        const info = parseInfo(await redisCall(this.address, ['INFO', 'server'], { ...this.spec.auth, timeoutMs: PROBE_TIMEOUT_MS }));
        if (Number(info.process_id) === child.pid) return;
      } catch { /* not up yet */ }
      if (Date.now() >= deadline) {
        await this.kill();
        throw new Error(`${this.spec.label} on port ${this.spec.port} did not answer PING within ${timeoutMs} ms\n${this.logTail(LOG_TAIL_LINES, logFrom)}`);
      }
      await sleep(20);
    }
  }

  /** Send a signal and wait (bounded) until the process is gone (SIGKILL by default). */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return this.exited;
    child.ref(); // keep node alive while we wait for the exit event
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.spec.label} on port ${this.spec.port} still runs ${STOP_GRACE_MS} ms after ${signal}`)), STOP_GRACE_MS);
    });
    try {
      await Promise.race([this.exited, limit]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM, then SIGKILL after a grace period. Idempotent. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return this.exited;
    child.ref();
    child.kill('SIGTERM');
    const timer = setTimeout(() => { if (this.running) child.kill('SIGKILL'); }, STOP_GRACE_MS);
    await this.exited;
    clearTimeout(timer);
  }

  pause(): void { if (this.running) this.child?.kill('SIGSTOP'); }
  resume(): void { if (this.running) this.child?.kill('SIGCONT'); }
}

/** Config shared by every data node: loopback only, no persistence, quick replication, auth if asked. */
function dataNodeConfig(port: number, dir: string, auth: RedisAuth, extra: readonly string[] = []): string {
  const lines = [
    `port ${port}`,
    `bind ${HOST}`,
    'daemonize no',
    `dir ${quote(dir)}`,
    'save ""',
    'appendonly no',
    'always-show-logo no',
    'repl-diskless-sync-delay 0',
    'enable-debug-command local',
  ];
  if (auth.username !== undefined) {
    if (auth.password === undefined) throw new Error('a Redis username needs a password');
    if (!/^[A-Za-z0-9_.:-]+$/.test(auth.username)) throw new Error('Redis username may contain only letters, digits and _.:-');
    // The default user is switched off so a client that forgets the username is refused.
    lines.push('user default off', `user ${auth.username} on ${quote('>' + auth.password)} ~* &* +@all`,
      `masteruser ${auth.username}`, `masterauth ${quote(auth.password)}`);
  } else if (auth.password !== undefined) {
    lines.push(`requirepass ${quote(auth.password)}`, `masterauth ${quote(auth.password)}`);
  }
  return [...lines, ...extra].join('\n') + '\n';
}

function writeConfig(dir: string, text: string): void {
  writeFileSync(join(dir, 'redis.conf'), text, { mode: 0o600 });
}

/**
 * Start a process on free ports (`initial` if given, else fresh ones); when a port was taken between choosing
 * and binding, choose again.
 */
async function startOnFreePorts(portCount: number, make: (ports: number[]) => RedisProcess, initial?: number[]): Promise<RedisProcess> {
  for (let attempt = 1; ; attempt++) {
    const proc = make(attempt === 1 && initial !== undefined ? initial : await freePorts(portCount));
    try {
      await proc.start();
      return proc;
    } catch (err) {
      if (!(err instanceof PortInUseError) || attempt >= PORT_RETRIES) throw err;
    }
  }
}

/** Restart on the same port; retry briefly if a transient socket holds the port. */
async function restartSamePort(proc: RedisProcess, runtimeArgs: readonly string[] = []): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await proc.start(runtimeArgs);
      return;
    } catch (err) {
      if (!(err instanceof PortInUseError) || attempt >= PORT_RETRIES) throw err;
      await sleep(250);
    }
  }
}

function throwFirstRejection(results: readonly PromiseSettledResult<unknown>[]): void {
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

function secretsOf(...values: (string | undefined)[]): string[] {
  return values.filter((v): v is string => v !== undefined && v.length > 0);
}

// ---------------------------------------------------------------------------------------------------------
// Standalone

export interface RedisServerHandle extends HostPort {
  readonly password?: string;
  readonly username?: string;
  /** Temp dir holding redis.conf and redis.log (removed by stop). */
  readonly dir: string;
  /** Send a signal and resolve when the process is gone (SIGKILL by default). Use pause() for SIGSTOP. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same port with the same config, resolve when PING answers. */
  restart(): Promise<void>;
  /** SIGSTOP: the server keeps its connections but answers nothing (a hung Redis). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Graceful stop (SIGTERM, SIGKILL after 5 s), removes the temp dir. Idempotent. */
  stop(): Promise<void>;
  readonly running: boolean;
  logTail(lines?: number): string;
}

export interface StartRedisOptions {
  password?: string;
  /** ACL user with `password` and all permissions; the default user is then disabled. */
  username?: string;
  /** Extra redis-server arguments, e.g. ['--maxmemory', '10mb']. */
  extraArgs?: string[];
}

export async function startRedis(opts: StartRedisOptions = {}): Promise<RedisServerHandle> {
  const dir = newDir('standalone');
  const auth: RedisAuth = { password: opts.password, username: opts.username };
  let proc: RedisProcess;
  try {
    proc = await startOnFreePorts(1, ([port]) => {
      writeConfig(dir, dataNodeConfig(port!, dir, auth));
      return new RedisProcess({ bin: REDIS_SERVER, label: 'redis', dir, port: port!, auth, secrets: secretsOf(opts.password), args: opts.extraArgs ?? [] });
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  let stopping: Promise<void> | undefined;
  const handle: RedisServerHandle = {
    host: HOST,
    port: proc.port,
    password: opts.password,
    username: opts.username,
    dir,
    kill: (signal) => proc.kill(signal),
    restart: () => restartSamePort(proc),
    pause: () => proc.pause(),
    resume: () => proc.resume(),
    get running() { return proc.running; },
    logTail: (lines) => proc.logTail(lines),
    stop: () => {
      stopping ??= (async () => {
        proc.resume();
        await proc.stop();
        rmSync(dir, { recursive: true, force: true });
        owners.delete(handle);
      })();
      return stopping;
    },
  };
  owners.add(handle);
  return handle;
}

// ---------------------------------------------------------------------------------------------------------
// Cluster

export interface ClusterNodeInfo {
  readonly id: string;
  readonly port: number;
  readonly flags: readonly string[];
  /** Master id for replicas, null for masters. */
  readonly masterId: string | null;
  readonly connected: boolean;
  /** Owned slot ranges, inclusive. Migration markers are not included. */
  readonly slots: readonly (readonly [number, number])[];
}

export function parseClusterNodes(text: RespValue): ClusterNodeInfo[] {
  if (typeof text !== 'string') return [];
  const out: ClusterNodeInfo[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(' ');
    if (f.length < 8) continue;
    const addr = f[1]!.split(',')[0]!.split('@')[0]!;
    const slots: [number, number][] = [];
    for (const s of f.slice(8)) {
      if (s.startsWith('[')) continue;
      const [lo, hi] = s.split('-');
      slots.push([Number(lo), Number(hi ?? lo)]);
    }
    out.push({
      id: f[0]!,
      port: Number(addr.slice(addr.lastIndexOf(':') + 1)),
      flags: f[2]!.split(','),
      masterId: f[3] === '-' ? null : f[3]!,
      connected: f[7] === 'connected',
      slots,
    });
  }
  return out;
}

function isMaster(n: ClusterNodeInfo): boolean { return n.flags.includes('master'); }
function isFailed(n: ClusterNodeInfo): boolean {
  return n.flags.some((f) => f === 'fail' || f === 'fail?' || f === 'handshake' || f === 'noaddr');
}
function ownerOf(view: readonly ClusterNodeInfo[], slot: number): ClusterNodeInfo | undefined {
  return view.find((n) => isMaster(n) && !n.flags.includes('fail') && n.slots.some(([lo, hi]) => slot >= lo && slot <= hi));
}

export interface KilledMaster extends HostPort {
  /** The replica that took over its slots. */
  readonly promoted: HostPort;
}

export interface SlotMigration {
  readonly slot: number;
  readonly source: HostPort;
  readonly target: HostPort;
  /** MIGRATE the given keys (default: every key still in the slot) from source to target. */
  moveKeys(keys?: string[]): Promise<void>;
  /** Move the remaining keys, assign the slot to the target on every master, wait until all nodes agree. */
  finish(): Promise<void>;
}

export interface ClusterHandle {
  /** All 6 nodes (initially nodes[0..2] are masters and nodes[3..5] their replicas, in that order). */
  readonly nodes: HostPort[];
  readonly password?: string;
  /** Current masters serving slots (from CLUSTER NODES), ordered by their first slot. */
  masters(): Promise<HostPort[]>;
  /** CLUSTER NODES as seen by a live node. */
  view(): Promise<ClusterNodeInfo[]>;
  /** The slot of a key (CLUSTER KEYSLOT). */
  slotOf(key: string): Promise<number>;
  /** The master currently serving a slot. */
  ownerOfSlot(slot: number): Promise<HostPort>;
  /**
   * SIGKILL the master serving the key's slot (or the first master). By default waits first until its replicas
   * have every write it had acknowledged, so test data survives. Resolves after a replica was promoted and every
   * survivor reports cluster_state:ok; returns the killed node with the promoted one.
   */
  killMaster(forSlotOfKey?: string, opts?: { waitForSync?: boolean }): Promise<KilledMaster>;
  /** Start a killed node again (same port, same nodes.conf) and wait until the whole cluster is consistent again. */
  restartNode(node: HostPort): Promise<void>;
  /** Move one slot with its keys to another master (default: the next master). */
  migrateSlot(slot: number, to?: HostPort): Promise<void>;
  /** Start a migration and stop half-way (slot MIGRATING on source, IMPORTING on target) so tests can see ASK. */
  beginSlotMigration(slot: number, to?: HostPort): Promise<SlotMigration>;
  stop(): Promise<void>;
}

export interface StartClusterOptions { password?: string }

const MASTER_SLOT_RANGES: readonly (readonly [number, number])[] = [[0, 5460], [5461, 10922], [10923, SLOTS - 1]];

class ClusterTopology implements ClusterHandle {
  private stopping: Promise<void> | undefined;

  constructor(private readonly procs: RedisProcess[], private readonly dir: string, readonly password: string | undefined) {}

  get nodes(): HostPort[] { return this.procs.map((p) => p.address); }

  private get auth(): RedisAuth { return { password: this.password }; }
  private get alive(): RedisProcess[] { return this.procs.filter((p) => p.running); }
  logs(): string { return this.procs.map((p) => p.logTail(8)).join('\n'); }
  private call(target: HostPort, ...args: (string | number)[]): Promise<RespValue> {
    return redisCall(target, args, { ...this.auth, timeoutMs: 5_000 });
  }
  private procFor(node: HostPort): RedisProcess {
    const proc = this.procs.find((p) => p.port === node.port);
    if (proc === undefined) throw new Error(`port ${node.port} is not a node of this cluster`);
    return proc;
  }

  async view(): Promise<ClusterNodeInfo[]> {
    let lastError: unknown = new Error('no cluster node is running');
    for (const p of this.alive) {
      try {
        return parseClusterNodes(await redisCall(p.address, ['CLUSTER', 'NODES'], { ...this.auth, timeoutMs: PROBE_TIMEOUT_MS * 2 }));
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError;
  }

  async masters(): Promise<HostPort[]> {
    const view = await this.view();
    return view
      .filter((n) => isMaster(n) && !isFailed(n) && n.slots.length > 0)
      .sort((a, b) => a.slots[0]![0] - b.slots[0]![0])
      .map((n) => hp(n.port));
  }

  async slotOf(key: string): Promise<number> {
    const p = this.alive[0];
    if (p === undefined) throw new Error('no cluster node is running');
    return Number(await this.call(p.address, 'CLUSTER', 'KEYSLOT', key));
  }

  async ownerOfSlot(slot: number): Promise<HostPort> {
    const owner = ownerOf(await this.view(), slot);
    if (owner === undefined) throw new Error(`no master serves slot ${slot}`);
    return hp(owner.port);
  }

  /**
   * Every live node reports cluster_state:ok, lists every live node as healthy, and all live nodes agree on roles
   * and slot owners, with every slot served by a live master; every live replica's link to its master is up.
   */
  async checkHealthy(): Promise<ClusterNodeInfo[] | false> {
    const alive = this.alive;
    const livePorts = new Set(alive.map((p) => p.port));
    let reference: string | undefined;
    let view: ClusterNodeInfo[] = [];
    for (const p of alive) {
      const client = await RespClient.connect(p.address, { ...this.auth, timeoutMs: PROBE_TIMEOUT_MS * 2 });
      try {
        const [info, nodes] = await Promise.all([client.call('CLUSTER', 'INFO'), client.call('CLUSTER', 'NODES')]);
        if (parseInfo(info).cluster_state !== 'ok') return false;
        view = parseClusterNodes(nodes);
        const byPort = new Map(view.map((n) => [n.port, n]));
        for (const port of livePorts) {
          const n = byPort.get(port);
          if (n === undefined || isFailed(n) || (!n.flags.includes('myself') && !n.connected)) return false;
        }
        let covered = 0;
        for (const n of view) {
          if (!isMaster(n) || n.slots.length === 0) continue;
          if (!livePorts.has(n.port) || isFailed(n)) return false;
          for (const [lo, hi] of n.slots) covered += hi - lo + 1;
        }
        if (covered !== SLOTS) return false;
        const idToPort = new Map(view.map((n) => [n.id, n.port]));
        const summary = view
          .filter((n) => livePorts.has(n.port))
          .map((n) => `${n.port}:${n.masterId === null ? 'm' : idToPort.get(n.masterId)}:${n.slots.map(([lo, hi]) => `${lo}-${hi}`).join(',')}`)
          .sort()
          .join(' ');
        if (reference === undefined) reference = summary;
        else if (summary !== reference) return false;
        const me = view.find((n) => n.flags.includes('myself'));
        if (me !== undefined && !isMaster(me)) {
          if (parseInfo(await client.call('INFO', 'replication')).master_link_status !== 'up') return false;
        }
      } finally {
        client.close();
      }
    }
    return view;
  }

  waitHealthy(what: string, timeoutMs: number): Promise<ClusterNodeInfo[]> {
    return waitUntil(what, timeoutMs, () => this.checkHealthy(), () => this.logs());
  }

  async killMaster(forSlotOfKey?: string, opts: { waitForSync?: boolean } = {}): Promise<KilledMaster> {
    const view = await this.view();
    const slot = forSlotOfKey === undefined ? 0 : await this.slotOf(forSlotOfKey);
    const master = forSlotOfKey === undefined
      ? view.filter((n) => isMaster(n) && !isFailed(n) && n.slots.length > 0).sort((a, b) => a.slots[0]![0] - b.slots[0]![0])[0]
      : ownerOf(view, slot);
    if (master === undefined) throw new Error(`no master serves slot ${slot}`);
    const firstSlot = master.slots[0]![0];
    const replicas = view.filter((n) => n.masterId === master.id && !isFailed(n) && this.procs.some((p) => p.port === n.port && p.running));
    if (replicas.length === 0) throw new Error(`master ${HOST}:${master.port} has no live replica to promote`);
    if (opts.waitForSync ?? true) await waitReplicasSynced(hp(master.port), replicas.map((r) => hp(r.port)), this.auth, () => this.logs());
    await this.procFor(hp(master.port)).kill('SIGKILL');
    const after = await this.waitHealthy(`a replica of ${HOST}:${master.port} to be promoted`, FAILOVER_TIMEOUT_MS);
    const promoted = ownerOf(after, firstSlot);
    if (promoted === undefined) throw new Error(`slot ${firstSlot} has no owner after failover`);
    return { host: HOST, port: master.port, promoted: hp(promoted.port) };
  }

  async restartNode(node: HostPort): Promise<void> {
    const proc = this.procFor(node);
    await restartSamePort(proc);
    await this.waitHealthy(`node ${HOST}:${node.port} to rejoin the cluster`, FAILOVER_TIMEOUT_MS);
  }

  async beginSlotMigration(slot: number, to?: HostPort): Promise<SlotMigration> {
    if (!Number.isInteger(slot) || slot < 0 || slot >= SLOTS) throw new RangeError(`slot must be an integer in 0..${SLOTS - 1}`);
    const view = await this.view();
    const source = ownerOf(view, slot);
    if (source === undefined) throw new Error(`no master serves slot ${slot}`);
    const target = to === undefined
      ? view.filter((n) => isMaster(n) && !isFailed(n) && n.slots.length > 0 && n.id !== source.id).sort((a, b) => a.slots[0]![0] - b.slots[0]![0])[0]
      : view.find((n) => n.port === to.port);
    if (target === undefined || !isMaster(target) || isFailed(target)) throw new Error(`migration target ${to?.port ?? '(next master)'} is not a healthy master`);
    if (target.id === source.id) throw new Error(`slot ${slot} is already served by ${HOST}:${target.port}`);
    const src = hp(source.port);
    const dst = hp(target.port);
    await this.call(dst, 'CLUSTER', 'SETSLOT', slot, 'IMPORTING', source.id);
    await this.call(src, 'CLUSTER', 'SETSLOT', slot, 'MIGRATING', target.id);
    const migrateAuth = this.password === undefined ? [] : ['AUTH', this.password];
    const moveKeys = async (keys?: string[]): Promise<void> => {
      if (keys !== undefined) {
        if (keys.length > 0) await this.call(src, 'MIGRATE', HOST, dst.port, '', 0, 5_000, ...migrateAuth, 'KEYS', ...keys);
        return;
      }
      for (let round = 0; round < 10_000; round++) {
        const batch = await this.call(src, 'CLUSTER', 'GETKEYSINSLOT', slot, 100);
        if (!Array.isArray(batch) || batch.length === 0) return;
        await this.call(src, 'MIGRATE', HOST, dst.port, '', 0, 5_000, ...migrateAuth, 'KEYS', ...(batch as string[]));
      }
      throw new Error(`slot ${slot} still has keys after 10000 MIGRATE rounds`);
    };
    let finishing: Promise<void> | undefined;
    const finish = (): Promise<void> => {
      finishing ??= (async () => {
        await moveKeys();
        // Target first (it bumps its config epoch), then source, then the other masters, like redis-cli does.
        const masters = view.filter((n) => isMaster(n) && !isFailed(n) && n.id !== source.id && n.id !== target.id);
        for (const n of [target, source, ...masters]) await this.call(hp(n.port), 'CLUSTER', 'SETSLOT', slot, 'NODE', target.id);
        await waitUntil(`all nodes to agree that slot ${slot} moved to ${HOST}:${dst.port}`, TOPOLOGY_TIMEOUT_MS, async () => {
          const healthy = await this.checkHealthy();
          return healthy !== false && ownerOf(healthy, slot)?.port === dst.port;
        }, () => this.logs());
      })();
      return finishing;
    };
    return { slot, source: src, target: dst, moveKeys, finish };
  }

  async migrateSlot(slot: number, to?: HostPort): Promise<void> {
    const migration = await this.beginSlotMigration(slot, to);
    await migration.finish();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await Promise.all(this.procs.map((p) => { p.resume(); return p.stop(); }));
      rmSync(this.dir, { recursive: true, force: true });
      owners.delete(this);
    })();
    return this.stopping;
  }
}

/** Wait until every replica has processed everything the master had written when we asked. */
async function waitReplicasSynced(master: HostPort, replicas: HostPort[], auth: RedisAuth, logs: () => string): Promise<void> {
  await waitUntil(`replicas of ${HOST}:${master.port} to catch up`, SYNC_TIMEOUT_MS, async () => {
    const offset = Number(parseInfo(await redisCall(master, ['INFO', 'replication'], { ...auth, timeoutMs: PROBE_TIMEOUT_MS })).master_repl_offset);
    for (const r of replicas) {
      const info = parseInfo(await redisCall(r, ['INFO', 'replication'], { ...auth, timeoutMs: PROBE_TIMEOUT_MS }));
      if (info.master_link_status !== 'up' || !(Number(info.slave_repl_offset) >= offset)) return false;
    }
    return true;
  }, logs);
}

/** 6 nodes, 3 masters + 3 replicas, node-timeout 2000; resolves when the cluster is fully formed and consistent. */
export async function startCluster(opts: StartClusterOptions = {}): Promise<ClusterHandle> {
  const dir = newDir('cluster');
  const auth: RedisAuth = { password: opts.password };
  const procs: RedisProcess[] = [];
  const topology = new ClusterTopology(procs, dir, opts.password);
  owners.add(topology);
  try {
    const started = await Promise.allSettled([0, 1, 2, 3, 4, 5].map((i) => {
      const nodeDir = join(dir, `node-${i}`);
      mkdirSync(nodeDir);
      return startOnFreePorts(2, ([port, busPort]) => {
        writeConfig(nodeDir, dataNodeConfig(port!, nodeDir, auth, [
          'cluster-enabled yes',
          'cluster-config-file nodes.conf',
          `cluster-port ${busPort}`,
          'cluster-node-timeout 2000',
          // Let a replica take over however long its link was down: the harness decides when masters die.
          'cluster-replica-validity-factor 0',
        ]));
        return new RedisProcess({ bin: REDIS_SERVER, label: `cluster-node-${i}`, dir: nodeDir, port: port!, busPort, auth, secrets: secretsOf(opts.password), args: [] });
      }).then((proc) => { procs[i] = proc; });
    }));
    throwFirstRejection(started);
    const call = (p: RedisProcess, ...args: (string | number)[]): Promise<RespValue> => redisCall(p.address, args, { ...auth, timeoutMs: 5_000 });
    const ids = (await Promise.all(procs.map((p) => call(p, 'CLUSTER', 'MYID')))) as string[];
    await Promise.all(procs.map((p, i) => call(p, 'CLUSTER', 'SET-CONFIG-EPOCH', i + 1)));
    await Promise.all(MASTER_SLOT_RANGES.map(([lo, hi], i) => call(procs[i]!, 'CLUSTER', 'ADDSLOTSRANGE', lo, hi)));
    const meet = (from: RedisProcess, to: RedisProcess): Promise<RespValue> => call(from, 'CLUSTER', 'MEET', HOST, to.port, to.spec.busPort!);
    // Each replica first meets only its master and replicates it, so the other nodes learn its role from the
    // handshake itself instead of from gossip (which runs about once a second).
    await Promise.all([3, 4, 5].map((i) => meet(procs[i]!, procs[i - 3]!)));
    await waitUntil('each cluster replica to know its master', TOPOLOGY_TIMEOUT_MS, async () => {
      for (const i of [3, 4, 5]) {
        const master = parseClusterNodes(await call(procs[i]!, 'CLUSTER', 'NODES')).find((n) => n.id === ids[i - 3]);
        if (master === undefined || isFailed(master)) return false;
      }
      return true;
    }, () => topology.logs());
    await Promise.all([3, 4, 5].map((i) => call(procs[i]!, 'CLUSTER', 'REPLICATE', ids[i - 3]!)));
    const pairs: Promise<RespValue>[] = [];
    for (let i = 0; i < procs.length; i++) {
      for (let j = i + 1; j < procs.length; j++) if (j !== i + 3) pairs.push(meet(procs[i]!, procs[j]!));
    }
    await Promise.all(pairs);
    await topology.waitHealthy('the cluster to be ready (cluster_state:ok, replicas linked)', TOPOLOGY_TIMEOUT_MS);
    return topology;
  } catch (err) {
    await topology.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Sentinel

export interface SentinelHandle {
  readonly masterName: string;
  /** The 3 sentinels. */
  readonly sentinels: HostPort[];
  /** The data nodes (initially nodes[0] is the master and nodes[1] its replica). */
  readonly nodes: HostPort[];
  readonly password?: string;
  readonly sentinelPassword?: string;
  /** The master address according to the sentinels. */
  master(): Promise<HostPort>;
  /**
   * SIGKILL the current master (after its replica caught up, unless waitForSync is false), wait until every
   * sentinel reports the promoted replica and it has role:master; return it.
   */
  failover(opts?: { waitForSync?: boolean }): Promise<HostPort>;
  /** Start a killed data node again, as a replica of the current master; wait until it is linked and every sentinel sees it. */
  restartNode(node: HostPort): Promise<void>;
  stop(): Promise<void>;
}

export interface StartSentinelOptions {
  /** requirepass/masterauth on the data nodes; the sentinels get `sentinel auth-pass`. */
  password?: string;
  /** requirepass on the sentinels themselves. */
  sentinelPassword?: string;
}

function sentinelFields(reply: RespValue): Record<string, string> {
  const out: Record<string, string> = {};
  if (!Array.isArray(reply)) return out;
  for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
  return out;
}

const UNHEALTHY_SENTINEL_FLAGS = new Set(['s_down', 'o_down', 'disconnected', 'failover_in_progress', 'promoted']);

/** Sentinel flags for an instance of this role that is up. 'master_down' on a peer only records its last vote. */
function healthyAs(flags: string | undefined, role: string): boolean {
  const list = (flags ?? '').split(',');
  return list.includes(role) && !list.some((f) => UNHEALTHY_SENTINEL_FLAGS.has(f));
}

class SentinelTopology implements SentinelHandle {
  readonly masterName = MASTER_NAME;
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly dataProcs: RedisProcess[],
    private readonly sentinelProcs: RedisProcess[],
    private readonly dir: string,
    readonly password: string | undefined,
    readonly sentinelPassword: string | undefined,
  ) {}

  get sentinels(): HostPort[] { return this.sentinelProcs.map((p) => p.address); }
  get nodes(): HostPort[] { return this.dataProcs.map((p) => p.address); }

  private get dataAuth(): RedisAuth { return { password: this.password }; }
  private get sentinelAuth(): RedisAuth { return { password: this.sentinelPassword }; }
  logs(): string { return [...this.dataProcs, ...this.sentinelProcs].map((p) => p.logTail(8)).join('\n'); }
  private askSentinel(p: RedisProcess, ...args: (string | number)[]): Promise<RespValue> {
    return redisCall(p.address, ['SENTINEL', ...args], { ...this.sentinelAuth, timeoutMs: PROBE_TIMEOUT_MS * 2 });
  }

  async master(): Promise<HostPort> {
    let lastError: unknown = new Error('no sentinel is running');
    for (const s of this.sentinelProcs.filter((p) => p.running)) {
      try {
        const addr = await this.askSentinel(s, 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME);
        if (Array.isArray(addr) && addr.length === 2) return { host: String(addr[0]), port: Number(addr[1]) };
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError;
  }

  /** Every sentinel sees the master healthy, 2 other sentinels, and the expected replicas healthy. */
  async waitConsistent(what: string, timeoutMs: number): Promise<HostPort> {
    return waitUntil(what, timeoutMs, async () => {
      const liveData = this.dataProcs.filter((p) => p.running).map((p) => p.port);
      let agreed: number | undefined;
      for (const s of this.sentinelProcs) {
        const m = sentinelFields(await this.askSentinel(s, 'MASTER', MASTER_NAME));
        const port = Number(m.port);
        if (!healthyAs(m.flags, 'master') || Number(m['num-other-sentinels']) !== this.sentinelProcs.length - 1) return false;
        if (agreed === undefined) agreed = port;
        else if (agreed !== port) return false;
        const peers = await this.askSentinel(s, 'SENTINELS', MASTER_NAME);
        if (!Array.isArray(peers) || peers.map(sentinelFields).some((x) => !healthyAs(x.flags, 'sentinel'))) return false;
        const replicas = await this.askSentinel(s, 'REPLICAS', MASTER_NAME);
        if (!Array.isArray(replicas)) return false;
        const healthy = new Set(replicas.map(sentinelFields).filter((r) => healthyAs(r.flags, 'slave') && r['master-link-status'] === 'ok').map((r) => Number(r.port)));
        if (liveData.some((p) => p !== port && !healthy.has(p))) return false;
      }
      if (agreed === undefined || !liveData.includes(agreed)) return false;
      const info = parseInfo(await redisCall(hp(agreed), ['INFO', 'replication'], { ...this.dataAuth, timeoutMs: PROBE_TIMEOUT_MS }));
      if (info.role !== 'master' || Number(info.connected_slaves) !== liveData.length - 1) return false;
      return hp(agreed);
    }, () => this.logs());
  }

  async failover(opts: { waitForSync?: boolean } = {}): Promise<HostPort> {
    const old = await this.master();
    const proc = this.dataProcs.find((p) => p.port === old.port);
    if (proc === undefined || !proc.running) throw new Error(`master ${old.host}:${old.port} is not a running node of this topology`);
    const replicas = this.dataProcs.filter((p) => p !== proc && p.running).map((p) => p.address);
    if (replicas.length === 0) throw new Error('no live replica to promote');
    if (opts.waitForSync ?? true) await waitReplicasSynced(old, replicas, this.dataAuth, () => this.logs());
    await proc.kill('SIGKILL');
    const promoted = await waitUntil(`the sentinels to promote a replica of ${old.host}:${old.port}`, FAILOVER_TIMEOUT_MS, async () => {
      let agreed: number | undefined;
      for (const s of this.sentinelProcs.filter((p) => p.running)) {
        const addr = await this.askSentinel(s, 'GET-MASTER-ADDR-BY-NAME', MASTER_NAME);
        if (!Array.isArray(addr)) return false;
        const port = Number(addr[1]);
        if (port === old.port || (agreed !== undefined && agreed !== port)) return false;
        agreed = port;
      }
      if (agreed === undefined) return false;
      const info = parseInfo(await redisCall(hp(agreed), ['INFO', 'replication'], { ...this.dataAuth, timeoutMs: PROBE_TIMEOUT_MS }));
      return info.role === 'master' ? hp(agreed) : false;
    }, () => this.logs());
    // After switch-master each sentinel reconnects to the new master within about a second; until then it
    // reports it 'disconnected', and a restart in that window can make the sentinels fail over again.
    const settled = await this.waitConsistent('the sentinels to connect to the promoted master', FAILOVER_TIMEOUT_MS);
    if (settled.port !== promoted.port) throw new Error(`sentinels moved on from ${HOST}:${promoted.port} to ${HOST}:${settled.port} right after the failover`);
    return promoted;
  }

  async restartNode(node: HostPort): Promise<void> {
    const proc = this.dataProcs.find((p) => p.port === node.port);
    if (proc === undefined) throw new Error(`port ${node.port} is not a data node of this topology`);
    const current = await this.master();
    // Started as a replica directly: sentinel would only demote a returning old master after ~10 s.
    await restartSamePort(proc, current.port === node.port ? [] : ['--replicaof', current.host, String(current.port)]);
    const settled = await this.waitConsistent(`node ${HOST}:${node.port} to rejoin as a replica`, FAILOVER_TIMEOUT_MS);
    if (settled.port !== current.port) throw new Error(`the sentinels failed over from ${HOST}:${current.port} to ${HOST}:${settled.port} while ${HOST}:${node.port} restarted`);
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await Promise.all(this.sentinelProcs.map((p) => p.stop()));
      await Promise.all(this.dataProcs.map((p) => { p.resume(); return p.stop(); }));
      rmSync(this.dir, { recursive: true, force: true });
      owners.delete(this);
    })();
    return this.stopping;
  }
}

/** Master + 1 replica + 3 sentinels (quorum 2, down-after 1000, failover-timeout 5000). */
export async function startSentinel(opts: StartSentinelOptions = {}): Promise<SentinelHandle> {
  const dir = newDir('sentinel');
  const auth: RedisAuth = { password: opts.password };
  const secrets = secretsOf(opts.password, opts.sentinelPassword);
  const dataProcs: RedisProcess[] = [];
  const sentinelProcs: RedisProcess[] = [];
  const topology = new SentinelTopology(dataProcs, sentinelProcs, dir, opts.password, opts.sentinelPassword);
  owners.add(topology);
  try {
    const startData = (i: number, replicaOf?: number): Promise<RedisProcess> => {
      const nodeDir = join(dir, `node-${i}`);
      mkdirSync(nodeDir);
      return startOnFreePorts(1, ([port]) => {
        writeConfig(nodeDir, dataNodeConfig(port!, nodeDir, auth, replicaOf === undefined ? [] : [`replicaof ${HOST} ${replicaOf}`]));
        return new RedisProcess({ bin: REDIS_SERVER, label: `sentinel-data-${i}`, dir: nodeDir, port: port!, auth, secrets, args: [] });
      });
    };
    const master = await startData(0);
    dataProcs.push(master);
    const replica = await startData(1, master.port);
    dataProcs.push(replica);
    // A failover needs a synced replica; and sentinels refresh a master's replica list only every 10 s.
    await waitUntil('the replica to link to the master', TOPOLOGY_TIMEOUT_MS, async () =>
      parseInfo(await redisCall(replica.address, ['INFO', 'replication'], { ...auth, timeoutMs: PROBE_TIMEOUT_MS })).master_link_status === 'up',
    () => topology.logs());
    // Each sentinel is told its id and the other sentinels up front (as its own config rewrite would record
    // them), so they need not discover each other through hello messages, which go out every 2 s.
    const ids = [0, 1, 2].map(() => randomBytes(20).toString('hex'));
    const sentinelPorts = await freePorts(3);
    const started = await Promise.allSettled([0, 1, 2].map((i) => {
      const sDir = join(dir, `sentinel-${i}`);
      mkdirSync(sDir);
      return startOnFreePorts(1, ([port]) => {
        sentinelPorts[i] = port!;
        const lines = [
          `port ${port}`,
          `bind ${HOST}`,
          'daemonize no',
          `dir ${quote(sDir)}`,
          `sentinel monitor ${MASTER_NAME} ${HOST} ${master.port} 2`,
          `sentinel down-after-milliseconds ${MASTER_NAME} 1000`,
          `sentinel failover-timeout ${MASTER_NAME} 5000`,
          `sentinel parallel-syncs ${MASTER_NAME} 1`,
          `sentinel myid ${ids[i]}`,
          `sentinel known-replica ${MASTER_NAME} ${HOST} ${replica.port}`,
          ...[0, 1, 2].filter((j) => j !== i).map((j) => `sentinel known-sentinel ${MASTER_NAME} ${HOST} ${sentinelPorts[j]} ${ids[j]}`),
        ];
        if (opts.password !== undefined) lines.push(`sentinel auth-pass ${MASTER_NAME} ${quote(opts.password)}`);
        // Sentinels also authenticate to each other with this password.
        if (opts.sentinelPassword !== undefined) lines.push(`requirepass ${quote(opts.sentinelPassword)}`);
        writeConfig(sDir, lines.join('\n') + '\n'); // sentinel rewrites it, so it stays writable
        return new RedisProcess({ bin: REDIS_SENTINEL, label: `sentinel-${i}`, dir: sDir, port: port!, auth: { password: opts.sentinelPassword }, secrets, args: [] });
      }, [sentinelPorts[i]!]).then((proc) => { sentinelProcs[i] = proc; });
    }));
    throwFirstRejection(started);
    await topology.waitConsistent('every sentinel to see the master, 1 replica and 2 other sentinels', TOPOLOGY_TIMEOUT_MS);
    return topology;
  } catch (err) {
    await topology.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------

/** Stop everything started by this module (gracefully; temp dirs removed). */
export async function stopAll(): Promise<void> {
  await Promise.all([...owners].map((o) => o.stop()));
}
