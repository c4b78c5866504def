// Shared by the upstream client's tests: the failure a call rejects with, and polling for a condition with a
// generous deadline (never a fixed sleep before asserting).
import assert from 'node:assert/strict';
import { UpstreamFailure } from '../../src/upstream/client.ts';

export async function failureOf(p: Promise<unknown>): Promise<UpstreamFailure> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof UpstreamFailure, String(err));
    return err;
  }
  assert.fail('expected a failure');
}

export async function until(cond: () => boolean, what: string, deadlineMs = 20_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
