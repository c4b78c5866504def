// limits.max_quota_keys on the local store, invalid amounts at the store boundary, and the config keys of
// issue 7 (max_quota_keys, reservation_lease_ms) with their path-specific errors.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../../src/config/issues.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { isSluiceError } from '../../src/core/errors.ts';
import { createMetrics } from '../../src/metrics/registry.ts';
import { LocalQuotaStore } from '../../src/quota/local-store.ts';
import type { AcquireResult, CounterSpec, Grant } from '../../src/quota/types.ts';
import { MAX_TOKENS_PER_REQUEST } from '../../src/quota/window.ts';

const T0 = 1_700_000_000_000;
const spec = (id: string, windowMs = 60_000): CounterSpec => ({ id, limit: 1_000, windowMs, sliding: false });

function sync(r: AcquireResult | Promise<AcquireResult>): Grant {
  assert.ok(!(r instanceof Promise), 'decided synchronously');
  assert.ok(r.ok, 'admitted');
  return r;
}

async function metricSum(m: { get(): Promise<{ values: { value: number; labels: Record<string, string | number> }[] }> }, match: Record<string, string> = {}): Promise<number> {
  const got = await m.get();
  return got.values.filter((v) => Object.entries(match).every(([k, want]) => v.labels[k] === want)).reduce((a, v) => a + v.value, 0);
}

describe('local store key cap', () => {
  it('evicts counters that carry nothing, never one holding usage in a live window: a new key then gets SLC_OVERLOADED', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const store = new LocalQuotaStore('local', { maxKeys: 3, metrics });
    store.settle(sync(store.acquire([{ counter: spec('a'), amount: 10 }], T0)), [10]);
    store.settle(sync(store.acquire([{ counter: spec('b'), amount: 10 }], T0)), [10]);
    // Released without usage: nothing to lose by forgetting it.
    store.release(sync(store.acquire([{ counter: spec('empty'), amount: 10 }], T0)));
    store.settle(sync(store.acquire([{ counter: spec('c'), amount: 10 }], T0)), [10]);
    assert.equal(store.size, 3);
    assert.equal(await metricSum(metrics.quotaKeyEvictions, { outcome: 'evicted' }), 1);
    const over = store.acquire([{ counter: spec('d'), amount: 10 }], T0);
    assert.ok(over instanceof Promise);
    await assert.rejects(over, (e: unknown) => isSluiceError(e) && e.code === 'SLC_OVERLOADED' && e.status === 503);
    assert.equal(await metricSum(metrics.quotaKeyEvictions, { outcome: 'overflow' }), 1);
    // The tracked counters keep their usage (nothing was handed out again).
    assert.equal(store.peek(spec('a'), T0).consumed, 10);
    // A peek at an untracked key does not track it.
    assert.equal(store.peek(spec('e'), T0).consumed, 0);
    assert.equal(store.size, 3);
    assert.equal(await metricSum(metrics.quotaTrackedKeys), 3);
  });

  it('setMaxKeys (a reload): a raised cap has room at once; a lowered one is reached as new keys come, never by dropping usage', async () => {
    const store = new LocalQuotaStore('local', { maxKeys: 4 });
    for (const id of ['e1', 'e2', 'e3', 'e4']) store.release(sync(store.acquire([{ counter: spec(id), amount: 10 }], T0)));
    store.setMaxKeys(2);
    // Three idle counters go for one new key: below the lowered cap.
    store.settle(sync(store.acquire([{ counter: spec('u1'), amount: 10 }], T0)), [10]);
    assert.equal(store.size, 2);
    store.settle(sync(store.acquire([{ counter: spec('u2'), amount: 10 }], T0)), [10]);
    assert.equal(store.size, 2);
    // Both hold usage: a third key waits, however low the cap went.
    store.setMaxKeys(1);
    await assert.rejects(Promise.resolve(store.acquire([{ counter: spec('u3'), amount: 10 }], T0)), (e: unknown) => isSluiceError(e) && e.code === 'SLC_OVERLOADED');
    assert.equal(store.peek(spec('u1'), T0).consumed, 10);
    store.setMaxKeys(10);
    store.settle(sync(store.acquire([{ counter: spec('u3'), amount: 10 }], T0)), [10]);
    assert.equal(store.size, 3);
  });

  it('evicts counters whose windows are over first, even while full of usage', () => {
    const store = new LocalQuotaStore('local', { maxKeys: 2 });
    store.settle(sync(store.acquire([{ counter: spec('old', 1_000), amount: 10 }], T0)), [10]);
    store.settle(sync(store.acquire([{ counter: spec('live'), amount: 10 }], T0)), [10]);
    store.settle(sync(store.acquire([{ counter: spec('new'), amount: 10 }], T0 + 5_000)), [10]);
    assert.equal(store.peek(spec('live'), T0 + 5_000).consumed, 10);
    assert.equal(store.size, 2);
  });

  it('refuses amounts no upstream can produce: a settlement is charged its reservation, an estimate is capped', async () => {
    const metrics = createMetrics({ defaultMetrics: false });
    const store = new LocalQuotaStore('local', { metrics });
    const c = { ...spec('x'), limit: 1e12 };
    for (const bad of [1e300, Number.POSITIVE_INFINITY, Number.NaN, -1]) store.settle(sync(store.acquire([{ counter: c, amount: 20 }], T0)), [bad]);
    assert.equal(store.peek(c, T0).consumed, 80);
    const g = sync(store.acquire([{ counter: c, amount: Number.POSITIVE_INFINITY }], T0));
    assert.equal(store.peek(c, T0).reserved, MAX_TOKENS_PER_REQUEST);
    store.release(g);
    assert.equal(await metricSum(metrics.quotaInvalidAmounts, { op: 'settle' }), 4);
    assert.equal(await metricSum(metrics.quotaInvalidAmounts, { op: 'acquire' }), 1);
  });
});

describe('config: max_quota_keys and reservation_lease_ms', () => {
  const issues = (raw: unknown): [string, string][] => {
    try {
      validateConfig(raw, {});
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.issues.map((i) => [i.path, i.message]);
    }
    return [];
  };

  it('defaults and accepts valid values', () => {
    const c = validateConfig({ limits: { max_quota_keys: 5 }, redis_batching: { reservation_lease_ms: 30_000 } }, {});
    assert.equal(c.limits.max_quota_keys, 5);
    assert.equal(c.redis_batching.reservation_lease_ms, 30_000);
    assert.equal(validateConfig({}, {}).limits.max_quota_keys, 100_000);
  });

  it('reports each bad value at its path', () => {
    assert.deepEqual(issues({ limits: { max_quota_keys: 0 } }), [['limits.max_quota_keys', 'must be an integer between 1 and 100000000']]);
    assert.deepEqual(issues({ limits: { max_quota_keys: 'many' } }), [['limits.max_quota_keys', 'must be an integer between 1 and 100000000']]);
    assert.deepEqual(issues({ redis_batching: { reservation_lease_ms: 10 } }), [['redis_batching.reservation_lease_ms', 'must be an integer between 1000 and 3600000']]);
    assert.deepEqual(issues({ redis_batching: { flush_interval_ms: 1_000, reservation_lease_ms: 2_000 } }), [['redis_batching.reservation_lease_ms', 'must be at least 3 × redis_batching.flush_interval_ms']]);
  });
});
