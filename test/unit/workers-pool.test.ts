import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkerPool } from '../../src/workers/pool.ts';
import { decodeResult, decodeTask, encodeMessage } from '../../src/workers/protocol.ts';
import { composeUpstreamBody } from '../../src/tokens/prepare.ts';
import { parseOptions, prepareRequest, type PreparedRequest } from '../helpers/prepare.ts';
import { countText } from '../../src/tokens/count.ts';
import { SluiceError } from '../../src/core/errors.ts';

const CHAT = { kind: 'chat', defaultMaxTokens: 256 } as const;

function chatBody(i: number, stream = false): Buffer {
  return Buffer.from(JSON.stringify({
    model: 'gpt-4o',
    stream,
    max_tokens: 10 + i,
    messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: `question number ${i}: ${'lorem ipsum '.repeat(i % 7)}` }],
  }));
}

test('protocol: encoded messages own their buffer and round-trip, tails as Buffers', () => {
  const a = encodeMessage({ kind: 'count-text', text: 'a', enc: 'o200k_base', budgetMs: 100 });
  const b = encodeMessage({ kind: 'count-text', text: 'b', enc: 'cl100k_base', budgetMs: 100 });
  assert.notEqual(a.buffer, b.buffer);
  assert.equal(a.byteOffset, 0);
  assert.equal(a.byteLength, a.buffer.byteLength);
  assert.deepEqual(decodeTask(a), { kind: 'count-text', text: 'a', enc: 'o200k_base', budgetMs: 100 });
  assert.deepEqual(decodeTask(b), { kind: 'count-text', text: 'b', enc: 'cl100k_base', budgetMs: 100 });

  const prepared = prepareRequest(chatBody(3, true), CHAT);
  const res = decodeResult(encodeMessage({ kind: 'prepare', result: prepared }));
  assert.equal(res.kind, 'prepare');
  if (res.kind !== 'prepare' || !res.result.ok) throw new Error('unexpected result');
  assert.ok(Buffer.isBuffer(res.result.tail));
  assert.deepEqual(res.result, prepared);
  // undefined fields survive msgpack (which has no undefined of its own).
  assert.equal(res.result.maxTokens, 13);
  const noMax = prepareRequest(Buffer.from('{"messages":[{"role":"user","content":"x"}]}'), CHAT);
  const back = decodeResult(encodeMessage({ kind: 'prepare', result: noMax }));
  assert.deepEqual(back, { kind: 'prepare', result: noMax });
});

for (const threads of [1, 2]) {
  test(`WorkerPool with ${threads} thread(s): prepare and countText match inline results`, async () => {
    const outcomes: string[] = [];
    const pool = new WorkerPool({ threads, onTask: (kind, outcome) => outcomes.push(`${kind}:${outcome}`) });
    try {
      assert.equal(pool.threads, threads);
      const body = chatBody(5, true);
      const viaPool = await pool.prepare(body, parseOptions(CHAT));
      assert.deepEqual(viaPool, prepareRequest(body, CHAT));
      const ok = viaPool as PreparedRequest;
      assert.deepEqual(JSON.parse(composeUpstreamBody('other', ok.tail).toString()).stream_options, { include_usage: true });

      const bad = await pool.prepare(Buffer.from('{not json'), parseOptions(CHAT));
      assert.deepEqual(bad, { ok: false, code: 'SLC_BAD_JSON', message: 'request body is not valid JSON' });

      assert.equal(await pool.countText('hello world', 'gpt-4o'), 2);
      assert.equal(await pool.countText('お誕生日おめでとう', 'gpt-4'), countText('お誕生日おめでとう', 'cl100k_base'));
      assert.equal(await pool.countText('<|endoftext|>', undefined), countText('<|endoftext|>', 'o200k_base'));

      // Many tasks in flight at once, answers matched to their requests.
      const n = 200;
      const bodies = Array.from({ length: n }, (_, i) => chatBody(i));
      const results = await Promise.all(bodies.map((b) => pool.prepare(b, parseOptions(CHAT))));
      for (let i = 0; i < n; i++) assert.deepEqual(results[i], prepareRequest(bodies[i]!, CHAT), `task ${i}`);
      const counts = await Promise.all(Array.from({ length: 50 }, (_, i) => pool.countText('tok '.repeat(i), 'gpt-4o')));
      for (let i = 0; i < 50; i++) assert.equal(counts[i], countText('tok '.repeat(i), 'o200k_base'));

      assert.equal(outcomes.length, 2 + 3 + n + 50);
      assert.ok(outcomes.every((o) => o.endsWith(':ok')));
      assert.equal(outcomes.filter((o) => o.startsWith('prepare:')).length, 2 + n);
    } finally {
      await pool.close();
    }
    await assert.rejects(pool.countText('x', undefined), (err: unknown) => err instanceof SluiceError && err.code === 'SLC_INTERNAL');
  });
}

test('WorkerPool refuses work beyond its queue bound with SLC_OVERLOADED', async () => {
  const outcomes: string[] = [];
  const pool = new WorkerPool({ threads: 1, maxQueue: 4, onTask: (kind, outcome) => outcomes.push(`${kind}:${outcome}`) });
  try {
    const big = 'word '.repeat(20_000);
    const settled = await Promise.allSettled(Array.from({ length: 40 }, () => pool.countText(big, 'gpt-4o')));
    const overloaded = settled.filter((s) => s.status === 'rejected');
    assert.ok(overloaded.length > 0, 'some tasks were refused');
    for (const s of overloaded) {
      const err = (s as PromiseRejectedResult).reason;
      assert.ok(err instanceof SluiceError);
      assert.equal(err.code, 'SLC_OVERLOADED');
      assert.equal(err.status, 503);
    }
    const done = settled.filter((s) => s.status === 'fulfilled') as PromiseFulfilledResult<number>[];
    assert.ok(done.length >= 4);
    for (const d of done) assert.equal(d.value, countText(big, 'o200k_base'));
    assert.equal(outcomes.filter((o) => o === 'count-text:error').length, overloaded.length);
    // The pool still works once the burst has drained.
    assert.equal(await pool.countText('hello world', undefined), 2);
  } finally {
    await pool.close();
  }
});
