// Runs test/helpers/thread-crash-child.ts (a real gateway process, workers > 1, default failure handling) with a
// raw config, waits until it listens, and lets a test make serving thread 0 crash and wait for the exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { eventually } from './sluice-process.ts';

const CHILD = new URL('./thread-crash-child.ts', import.meta.url);

export interface CrashChild {
  readonly port: number;
  /** Everything the child wrote to stderr (its log) so far. */
  stderr(): string;
  /** Makes serving thread 0 throw; resolves with the exit code (or signal), or a message after `waitMs`. */
  crash(waitMs: number): Promise<number | string>;
  /** SIGKILL if still running (for finally blocks). */
  kill(): void;
}

export async function startCrashChild(raw: Record<string, unknown>): Promise<CrashChild> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', CHILD.pathname, JSON.stringify(raw)], {
    stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, SLUICE_LOG: 'info' },
  });
  const kill = (): void => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); };
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, sig) => resolve(code ?? sig ?? 'unknown')));
  try {
    await eventually('the child listens', () => /listening \d+/.test(out), 120_000);
  } catch (e) {
    kill();
    throw e;
  }
  return {
    port: Number(/listening (\d+)/.exec(out)![1]),
    stderr: () => err,
    crash: (waitMs) => {
      child.stdin!.write('crash\n');
      return Promise.race([exited, new Promise<string>((r) => setTimeout(() => r(`still running after ${waitMs / 1000} s`), waitMs).unref())]);
    },
    kill,
  };
}
