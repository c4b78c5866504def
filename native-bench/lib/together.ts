// Worker threads for the micro-benches: started through tsx, each posts `{ ready: true }`, waits on a shared
// barrier, runs, and posts its result; the barrier opens once all are ready, so they run at the same time.
import { Worker } from 'node:worker_threads';

/** A worker running a TypeScript file through tsx. */
export function tsWorker(url: URL, options: ConstructorParameters<typeof Worker>[1]): Worker {
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  return new Worker(`import(${api}).then((t) => { t.register(); return import(${JSON.stringify(url.href)}); })`, { ...options, eval: true });
}

/**
 * Starts `n` workers from `make(i, barrier)`, opens the barrier once every one is ready, and resolves with their
 * results (each worker's first message other than `{ ready: true }`); the workers are terminated afterwards.
 */
export async function runTogether<R>(n: number, make: (i: number, barrier: Int32Array) => Worker): Promise<R[]> {
  const barrier = new Int32Array(new SharedArrayBuffer(4));
  const workers: Worker[] = [];
  const ready: Promise<void>[] = [];
  const done: Promise<R>[] = [];
  for (let i = 0; i < n; i++) {
    const w = make(i, barrier);
    workers.push(w);
    let onReady!: () => void;
    ready.push(new Promise((r) => { onReady = r; }));
    done.push(new Promise((resolve, reject) => {
      w.on('message', (m: { ready?: boolean } & R) => {
        if (m.ready === true) onReady();
        else resolve(m);
      });
      w.once('error', reject);
    }));
  }
  await Promise.all(ready);
  Atomics.store(barrier, 0, 1);
  Atomics.notify(barrier, 0);
  try {
    return await Promise.all(done);
  } finally {
    for (const w of workers) await w.terminate();
  }
}
