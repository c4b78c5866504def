// Time-sliced counting on a worker thread (see entry.ts).
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { CountJob } from '../tokens/text-count.ts';

/** Longest stretch one task counts before letting the thread's other tasks run. */
export const SLICE_MS = 2;

/** Runs a job to the end in slices; past budgetMs of its own counting time, finishes it with an upper bound. */
export async function driveJob(job: CountJob, budgetMs: number, sliceMs = SLICE_MS): Promise<void> {
  let used = 0;
  for (;;) {
    const start = performance.now();
    if (job.run(start + Math.min(sliceMs, budgetMs - used))) return;
    used += performance.now() - start;
    if (used >= budgetMs) {
      job.finishWithBound();
      return;
    }
    await yieldToLoop();
  }
}
