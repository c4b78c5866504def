// A real `sluice start` process (from the TypeScript sources, through tsx) for tests that need signals:
// SIGHUP reloads, SIGTERM drains. Writes the config file, picks free ports, waits for the listening line,
// keeps its log lines, reads its RSS from /proc, and is always killed by stop().
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePorts } from './free-port.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

export interface SluiceProcess {
  readonly pid: number;
  readonly url: string;
  readonly adminUrl: string;
  readonly configFile: string;
  /** Every stderr line so far (JSON log lines). */
  readonly logs: string[];
  /** Resolves with the exit code (or signal name) once the process is gone. */
  readonly exited: Promise<number | string>;
  /** Rewrite the config file (raw config, or file text as is). */
  writeConfig(raw: Record<string, unknown> | string): void;
  signal(sig: NodeJS.Signals): void;
  /** Resident set size in bytes, from /proc. */
  rss(): number;
  /** The summed value of every sample of a metric whose line matches `re`. */
  metric(re: RegExp): Promise<number>;
  /** SIGKILL if still running; removes the temp dir. */
  stop(): Promise<void>;
}

function configText(raw: Record<string, unknown> | string, port: number, adminPort: number): string {
  if (typeof raw === 'string') return raw;
  // A `listen` given keeps its other settings (http1_guard); host and port are always the free ones picked.
  const listen = typeof raw.listen === 'object' && raw.listen !== null ? raw.listen : {};
  return JSON.stringify({ ...raw, listen: { ...listen, host: '127.0.0.1', port }, admin: { host: '127.0.0.1', port: adminPort } }, null, 2);
}

/** `raw` as a string is written as is (its own listen/admin ports; url and adminUrl then name the free ones picked). `fileName` (default config.json) picks the parser: .yaml for YAML text. */
export async function startSluiceProcess(raw: Record<string, unknown> | string, opts: { env?: NodeJS.ProcessEnv; startTimeoutMs?: number; fileName?: string } = {}): Promise<SluiceProcess> {
  const [port, adminPort] = await freePorts(2) as [number, number];
  const dir = mkdtempSync(join(tmpdir(), 'sluice-proc-'));
  const configFile = join(dir, opts.fileName ?? 'config.json');
  writeFileSync(configFile, configText(raw, port, adminPort));
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', MAIN, 'start', '--config', configFile], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, SLUICE_LOG: 'info', ...opts.env },
  });
  const logs: string[] = [];
  let errTail = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    errTail += d;
    const lines = errTail.split('\n');
    errTail = lines.pop()!;
    logs.push(...lines);
  });
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, sig) => resolve(code ?? sig ?? 'unknown'));
  });
  const ready = new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      if (out.includes('sluice listening')) resolve();
    });
    void exited.then((code) => reject(new Error(`sluice exited (${code}) before listening:\n${logs.join('\n')}${errTail}`)));
  });
  const timeoutMs = opts.startTimeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('sluice did not start in time')), timeoutMs); });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await Promise.race([ready, timeout]);
  } catch (err) {
    await stop();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  return {
    pid: child.pid!,
    url: `http://127.0.0.1:${port}`,
    adminUrl,
    configFile,
    logs,
    exited,
    writeConfig: (next) => writeFileSync(configFile, configText(next, port, adminPort)),
    signal: (sig) => { child.kill(sig); },
    rss: () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      return m === null ? 0 : Number(m[1]) * 1024;
    },
    metric: async (re) => {
      // uWS closes an idle keep-alive connection after its fixed ~10 s: a scrape racing that close ("other side
      // closed") is retried once, on a new connection.
      const scrape = async () => (await fetch(`${adminUrl}/metrics`)).text();
      const text = await scrape().catch(scrape);
      let sum = 0;
      for (const line of text.split('\n')) if (re.test(line)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      return sum;
    },
    stop,
  };
}

/** Polls `check` until it returns true or `ms` pass (then fails with `what`). */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Peak RSS growth of `p` (sampled every 20 ms from /proc) while `done` runs. */
export async function peakGrowth(p: SluiceProcess, done: Promise<unknown>): Promise<number> {
  const base = p.rss();
  let peak = base;
  let running = true;
  const sampler = (async () => {
    while (running) {
      peak = Math.max(peak, p.rss());
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try { await done; } finally { running = false; await sampler; }
  return peak - base;
}
