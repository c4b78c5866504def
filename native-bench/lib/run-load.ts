// Parent side of the load generator: forks load.ts, hands it a spec over IPC and waits for its result.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadResult, LoadSpec } from './load.ts';
import { stopChild, track } from './proc.ts';

const LOAD_ENTRY = fileURLToPath(new URL('./load.ts', import.meta.url));

export function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const child = fork(LOAD_ENTRY, ['--child'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(child);
  const limitMs = spec.warmupMs + spec.durationMs + 30_000;
  return new Promise<LoadResult>((resolve, reject) => {
    let done = false;
    const finish = (err: Error | undefined, result?: LoadResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void stopChild(child);
      if (err !== undefined) reject(err); else resolve(result!);
    };
    const timer = setTimeout(() => finish(new Error(`load generator gave no result in ${limitMs} ms`)), limitMs);
    child.on('message', (msg: { ready?: boolean; ok?: boolean; result?: LoadResult; error?: string }) => {
      if (msg.ready === true) child.send(spec);
      else if (msg.ok === true) finish(undefined, msg.result);
      else finish(new Error(`load generator failed: ${msg.error}`));
    });
    child.once('exit', (code) => finish(new Error(`load generator exited (code ${code}) without a result`)));
  });
}
