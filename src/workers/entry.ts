// The worker thread's piscina handler: decode → dispatch by kind → encode. The same pure functions run
// inline on the main thread for small bodies. Counting runs in slices of a few milliseconds with a yield to
// the thread's event loop between them, so the pool can run several tasks on one thread at once
// (concurrentTasksPerWorker) and a small task that arrives behind a large one starts within one slice per
// task ahead of it instead of waiting for it to end. Each task has a budget of counting time; past it the rest
// of its text is bounded by its UTF-8 byte length (src/tokens/text-count.ts).
import { promptCountJob } from '../tokens/count.ts';
import { warmTokenizers } from '../tokens/encoding.ts';
import { finishCall, parseCall } from '../providers/prepare.ts';
import { isIssues, resolveInstance } from '../providers/registry.ts';
import { CountJob } from '../tokens/text-count.ts';
import { driveJob } from './drive.ts';
import { decodeTask, encodeMessage, transferable, type WorkerResult, type WorkerTask } from './protocol.ts';

// Load the common table while the thread starts, not on the first offloaded request.
warmTokenizers(['o200k_base']);

async function run(task: WorkerTask): Promise<WorkerResult> {
  switch (task.kind) {
    case 'prepare': {
      const parsed = parseCall(task.body, task.opts);
      if (!parsed.ok) return { kind: 'prepare', result: parsed };
      if (parsed.parts === undefined) return { kind: 'prepare', result: finishCall(parsed, 0, true) };
      const job = promptCountJob(parsed.parts, parsed.enc);
      await driveJob(job, task.budgetMs);
      return { kind: 'prepare', result: finishCall(parsed, job.total, job.exact) };
    }
    case 'count-text': {
      const job = new CountJob([task.text], task.enc);
      await driveJob(job, task.budgetMs);
      return { kind: 'count-text', tokens: job.total, exact: job.exact };
    }
    case 'decode': {
      const provider = resolveInstance(task.instance);
      if (isIssues(provider)) return { kind: 'error', message: 'instance does not resolve on the worker' };
      const decoded = provider.decode(task.call, Buffer.from(task.body.buffer, task.body.byteOffset, task.body.byteLength), task.maxUsage);
      // Usage.raw is not enumerable (it stays out of JSON): it crosses as a field of its own.
      return { kind: 'decode', decoded, raw: decoded.usage?.raw };
    }
    default: return { kind: 'error', message: `unknown task kind ${String((task as { kind: unknown }).kind)}` };
  }
}

export default async function handle(input: Uint8Array): Promise<Uint8Array> {
  let result: WorkerResult;
  try {
    result = await run(decodeTask(input));
  } catch (err) {
    result = { kind: 'error', message: err instanceof Error ? err.message : String(err) };
  }
  return transferable(encodeMessage(result));
}
