// Parent side of the load generator: one forked load.ts process serves every run in turn, so each run does
// not pay a fresh tsx start-up; specs go in over IPC and results come back the same way.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadResult, LoadSpec } from './load.ts';
import { stopChild, track } from './proc.ts';

const LOAD_ENTRY = fileURLToPath(new URL('./load.ts', import.meta.url));

type Message = { ready?: boolean; ok?: boolean; result?: LoadResult; error?: string };

export class LoadGenerator {
  private constructor(private readonly child: ChildProcess) {}

  get pid(): number { return this.child.pid!; }

  static start(timeoutMs = 30_000): Promise<LoadGenerator> {
    const child = fork(LOAD_ENTRY, ['--child'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    track(child);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { void stopChild(child); reject(new Error('load generator did not start')); }, timeoutMs);
      const onExit = (code: number | null) => { clearTimeout(timer); reject(new Error(`load generator exited (code ${code}) at start`)); };
      child.once('exit', onExit);
      child.once('message', (msg: Message) => {
        clearTimeout(timer);
        child.off('exit', onExit);
        if (msg.ready === true) resolve(new LoadGenerator(child));
        else { void stopChild(child); reject(new Error('load generator sent an unexpected first message')); }
      });
    });
  }

  /** Runs one spec; rejects if the generator fails, dies, or overruns its window by far. */
  run(spec: LoadSpec): Promise<LoadResult> {
    const child = this.child;
    const limitMs = spec.warmupMs + spec.durationMs + 30_000;
    return new Promise<LoadResult>((resolve, reject) => {
      const cleanup = () => { clearTimeout(timer); child.off('message', onMessage); child.off('exit', onExit); };
      const onMessage = (msg: Message) => {
        cleanup();
        if (msg.ok === true) resolve(msg.result!);
        else reject(new Error(`load generator failed: ${msg.error}`));
      };
      const onExit = (code: number | null) => { cleanup(); reject(new Error(`load generator exited (code ${code}) during a run`)); };
      const timer = setTimeout(() => { cleanup(); void stopChild(child); reject(new Error(`load generator gave no result in ${limitMs} ms`)); }, limitMs);
      child.on('message', onMessage);
      child.once('exit', onExit);
      child.send(spec);
    });
  }

  close(): Promise<void> {
    return stopChild(this.child);
  }
}
