// The worker pool under hostile load: a small task is never stuck behind large ones (time slices on each
// thread, small lane before large), a task past its counting budget ends with an upper bound, and close()
// does not wait for a runaway task. Assertions are about order and bounds, never about elapsed time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkerPool } from '../../src/workers/pool.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { countTextExact } from '../../src/tokens/text-count.ts';
import { parseOptions, prepareRequest } from '../helpers/prepare.ts';

const CHAT = { kind: 'chat', defaultMaxTokens: 256 } as const;
/** One pre-token piece per run: each merges exactly (pieces up to 256 KiB), in O(n log n), but takes a while. */
const run = (n: number, times: number): string => ('a'.repeat(n) + ' ').repeat(times);

function smallBody(i: number): Buffer {
  // ~5 KB: over tokens.offload_bytes, so it is prepared on a worker thread.
  return Buffer.from(JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: `question ${i}: ${'lorem ipsum dolor '.repeat(280)}` }] }));
}

test('one thread: a small prepare finishes while large adversarial counts are still running', async (t) => {
  // A budget no loaded machine reaches: the large counts must come back exact.
  const pool = new WorkerPool({ threads: 1, countBudgetMs: 600_000 });
  try {
    await pool.countText('warm the thread up', undefined);
    const done: string[] = [];
    const large = Array.from({ length: 4 }, (_, i) => pool.countText(run(150_000, 2), 'gpt-4o').then((n) => { done.push(`large${i}`); return n; }));
    const body = smallBody(1);
    const t0 = performance.now();
    const small = await pool.prepare(body, parseOptions(CHAT));
    const delay = performance.now() - t0;
    done.push('small');
    t.diagnostic(`small prepare behind 4 large counts: ${delay.toFixed(1)} ms; large done before it: ${done.indexOf('small')}`);
    assert.deepEqual(small, prepareRequest(body, CHAT));
    // Large tasks take hundreds of ms each; the small one needs one slice.
    assert.ok(done.indexOf('small') <= 1, done.join(','));
    const counts = await Promise.all(large);
    const exact = countTextExact(run(150_000, 2), 'o200k_base');
    for (const n of counts) assert.equal(n, exact);
  } finally {
    await pool.close();
  }
});

test('two threads: large tasks spread, small ones still go first', async () => {
  const pool = new WorkerPool({ threads: 2, countBudgetMs: 600_000 });
  try {
    await Promise.all([pool.countText('a', undefined), pool.countText('b', undefined)]);
    let largeDone = 0;
    const large = Array.from({ length: 8 }, () => pool.countText(run(150_000, 2), 'gpt-4o').then(() => { largeDone++; }));
    const smalls = await Promise.all(Array.from({ length: 20 }, (_, i) => pool.prepare(smallBody(i), parseOptions(CHAT)).then((r) => ({ r, largeDone }))));
    for (const s of smalls) assert.ok(s.r.ok);
    assert.ok(smalls.every((s) => s.largeDone <= 2), smalls.map((s) => s.largeDone).join(','));
    await Promise.all(large);
  } finally {
    await pool.close();
  }
});

test('past its counting budget a task ends with an upper bound (UTF-8 bytes of the rest)', async () => {
  const pool = new WorkerPool({ threads: 1, countBudgetMs: 1 });
  try {
    const text = run(200_000, 3);
    const bound = await pool.countText(text, 'gpt-4o');
    const exact = countTextExact(text, 'o200k_base');
    assert.ok(bound > exact, `bound ${bound} vs exact ${exact}`);
    assert.ok(bound <= Buffer.byteLength(text), 'never above the byte length');
    // Prepare: the prompt estimate is marked inexact, and still at least the exact count.
    const body = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: text }] }));
    const r = await pool.prepare(body, parseOptions(CHAT));
    const inline = prepareRequest(body, CHAT);
    assert.ok(r.ok && inline.ok);
    if (r.ok && inline.ok) {
      assert.equal(r.promptExact, false);
      assert.ok(r.promptTokens >= inline.promptTokens);
      assert.equal(inline.promptExact, true);
    }
  } finally {
    await pool.close();
  }
});

test('close() does not wait for a runaway task: it terminates the thread after closeTimeoutMs', async () => {
  const pool = new WorkerPool({ threads: 1, countBudgetMs: 600_000, closeTimeoutMs: 100 });
  await pool.countText('start the thread', undefined);
  let finished = false;
  // Seconds of exact merging, far longer than the close timeout.
  const runaway = pool.countText(run(200_000, 40), 'gpt-4o').then(() => { finished = true; });
  const outcome = runaway.then(() => undefined, (e: unknown) => e);
  await pool.close();
  assert.equal(finished, false, 'close returned before the runaway task ended');
  const err = await outcome;
  assert.ok(err instanceof SluiceError && err.code === 'SLC_INTERNAL', String(err));
  await assert.rejects(pool.countText('x', undefined), (e: unknown) => e instanceof SluiceError && e.code === 'SLC_INTERNAL');
});
