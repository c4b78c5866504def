// Child processes for the benchmark: each server runs in its own process so its CPU is accounted apart.
// Every child is registered and killed on exit, on SIGINT/SIGTERM and on error, by its own pid.
import { spawn, type ChildProcess } from 'node:child_process';

const live = new Set<ChildProcess>();
let hooked = false;

function killAllSync(): void {
  for (const c of live) {
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }
  live.clear();
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => { killAllSync(); process.exit(130); });
  }
}

export function track(child: ChildProcess): void {
  hookExit();
  live.add(child);
  child.once('exit', () => live.delete(child));
}

export interface Server {
  readonly name: string;
  readonly pid: number;
  readonly port: number;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

/** Sends SIGTERM, then SIGKILL after graceMs; resolves once the process has exited. */
export function stopChild(child: ChildProcess, graceMs = 2000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, graceMs);
    child.once('exit', () => { clearTimeout(t); resolve(); });
    try { child.kill('SIGTERM'); } catch { clearTimeout(t); resolve(); }
  });
}

export interface StartOptions {
  readonly name: string;
  /** Arguments after `node`, e.g. ['--import', 'tsx', 'file.ts', '--port', '0']. */
  readonly args: readonly string[];
  readonly cwd: string;
  /** Matches the readiness line on stdout; group 1 is the port. */
  readonly ready: RegExp;
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

/** Starts `node <args>` and resolves once its stdout prints the readiness line. */
export function startServer(opts: StartOptions): Promise<Server> {
  const child = spawn(process.execPath, [...opts.args], {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track(child);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise<Server>((resolve, reject) => {
    let out = '';
    let err = '';
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      void stopChild(child);
      const tail = (err || out).trim().split('\n').slice(-15).join('\n');
      reject(new Error(`${opts.name}: ${why}${tail ? `\n--- output ---\n${tail}` : ''}`));
    };
    const timer = setTimeout(() => fail(`not ready after ${timeoutMs} ms`), timeoutMs);
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (s: string) => {
      if (settled) return;
      out += s;
      const m = opts.ready.exec(out);
      if (m === null) return;
      settled = true;
      clearTimeout(timer);
      out = '';
      resolve({ name: opts.name, pid: child.pid!, port: Number(m[1]), child, stop: () => stopChild(child) });
    });
    // Keep draining both pipes so a chatty child never blocks on a full pipe; keep a bounded tail for errors.
    child.stderr!.on('data', (s: string) => { err = (err + s).slice(-8192); });
    child.once('error', (e) => fail(e.message));
    child.once('exit', (code, sig) => fail(`exited early (code ${code}, signal ${sig})`));
  });
}
