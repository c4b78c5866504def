// The request-body budget (limits.max_inflight_body_bytes): the one-loop counter and the process-wide shared cell
// refuse exactly what passes the limit, releases make room again, and the shared cell is one budget for every
// budget object (thread) mapping it, with each one's gauge showing its own share.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { LocalByteBudget, SharedByteBudget, byteBudgetCell, type ByteBudget } from '../../src/core/byte-budget.ts';
import { createMetrics } from '../../src/metrics/registry.ts';

type Metrics = ReturnType<typeof createMetrics>;

async function gaugeValue(m: Metrics): Promise<number> {
  const json = await m.registry.getMetricsAsJSON();
  return json.find((x) => x.name === 'sluice_request_body_bytes_in_flight')?.values[0]?.value ?? 0;
}

function limitCases(make: (max: number) => ByteBudget, max: number): void {
  const b = make(max);
  assert.equal(b.tryReserve(max - 10), true);
  assert.equal(b.tryReserve(11), false, 'one byte over the limit');
  assert.equal(b.tryReserve(10), true, 'exactly the limit');
  assert.equal(b.tryReserve(1), false);
  assert.equal(b.tryReserve(0), true, 'an empty reservation always goes through');
  b.release(10);
  assert.equal(b.tryReserve(10), true);
  b.release(max);
  assert.equal(b.tryReserve(max), true);
  assert.equal(b.tryReserve(max + 1), false);
}

describe('body budget', () => {
  it('local counter: refuses what passes the limit, exactly', () => {
    limitCases((max) => new LocalByteBudget(max, undefined), 1000);
  });

  it('shared Int32 cell and BigInt64 cell (limit above 2 GiB − 1): the same answers', () => {
    limitCases((max) => new SharedByteBudget(byteBudgetCell(), max, undefined), 1000);
    limitCases((max) => new SharedByteBudget(byteBudgetCell(), max, undefined), 0x7fffffff);
    limitCases((max) => new SharedByteBudget(byteBudgetCell(), max, undefined), 6 * 1024 * 1024 * 1024);
  });

  for (const max of [1000, 5 * 1024 * 1024 * 1024]) {
    it(`two budgets on one cell share the limit (${max} bytes), each gauge shows its own share`, async () => {
      const cell = byteBudgetCell();
      const ma = createMetrics({ defaultMetrics: false });
      const mb = createMetrics({ defaultMetrics: false });
      const a = new SharedByteBudget(cell, max, ma.bodyBytesInFlight);
      const b = new SharedByteBudget(cell, max, mb.bodyBytesInFlight);
      const part = Math.floor(max / 3);
      assert.equal(a.tryReserve(part), true);
      assert.equal(b.tryReserve(part), true);
      assert.equal(a.tryReserve(max - 2 * part + 1), false, 'the other budget\'s bytes count');
      assert.equal(b.tryReserve(max - 2 * part), true);
      assert.equal(a.total(), max);
      assert.equal(await gaugeValue(ma), part);
      assert.equal(await gaugeValue(mb), max - part);
      a.release(part);
      assert.equal(b.tryReserve(part), true, 'room made by the other budget');
      assert.equal(a.tryReserve(1), false);
      b.release(max);
      assert.equal(b.total(), 0);
      assert.equal(await gaugeValue(ma), 0);
      assert.equal(await gaugeValue(mb), 0);
    });
  }
});
