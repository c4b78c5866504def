// A fixed 1..n-thread piscina pool running parse-task.ts, for bare-hop.ts --parse-in-worker (case (c) of
// uws-threads.bench.ts). Options match src/workers/pool.ts, so the hop costs what the gateway's pool costs.
import { Piscina } from 'piscina';

export interface ParseOffload {
  /** JSON.parse of the body on a pool thread; resolves with the message count (-1 when there is none). */
  parse(body: Buffer): Promise<number>;
  close(): Promise<void>;
}

export function startParseOffload(threads: number): ParseOffload {
  const pool = new Piscina<Uint8Array, number>({
    filename: new URL('./parse-task.ts', import.meta.url).href,
    minThreads: threads,
    maxThreads: threads,
    idleTimeout: Infinity,
    recordTiming: false,
  });
  // The body is cloned, not transferred: the main thread still forwards it after the answer comes back.
  return { parse: (body) => pool.run(body), close: () => pool.close() };
}
