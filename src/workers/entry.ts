// The worker thread's piscina handler: decode → dispatch by kind → encode. The same pure functions run
// inline on the main thread for small bodies.
import { countText } from '../tokens/count.ts';
import { warmTokenizers } from '../tokens/encoding.ts';
import { prepareRequest } from '../tokens/prepare.ts';
import { decodeTask, encodeMessage, transferable, type WorkerResult } from './protocol.ts';

// Load the common table while the thread starts, not on the first offloaded request.
warmTokenizers(['o200k_base']);

function run(input: Uint8Array): WorkerResult {
  const task = decodeTask(input);
  switch (task.kind) {
    case 'prepare': return { kind: 'prepare', result: prepareRequest(task.body, task.opts) };
    case 'count-text': return { kind: 'count-text', tokens: countText(task.text, task.enc) };
    default: return { kind: 'error', message: `unknown task kind ${String((task as { kind: unknown }).kind)}` };
  }
}

export default function handle(input: Uint8Array): Uint8Array {
  let result: WorkerResult;
  try {
    result = run(input);
  } catch (err) {
    result = { kind: 'error', message: err instanceof Error ? err.message : String(err) };
  }
  return transferable(encodeMessage(result));
}
