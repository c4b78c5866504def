import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from '../../src/core/clock.ts';
import { CircuitBreaker, type BreakerState } from '../../src/quota/redis/breaker.ts';

function breaker(probe: () => Promise<void>): { b: CircuitBreaker; states: BreakerState[]; clock: ManualClock } {
  const states: BreakerState[] = [];
  const clock = new ManualClock();
  const b = new CircuitBreaker({ failureThreshold: 3, probeIntervalMs: 20, probe, onChange: (s) => states.push(s), clock });
  return { b, states, clock };
}

/** Let the probe's promise continuations run (event-loop turns, no wall-clock wait). */
async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

describe('circuit breaker', () => {
  it('opens after consecutive failures, not after interleaved ones', () => {
    const { b, states } = breaker(() => Promise.resolve());
    b.failure(false);
    b.failure(false);
    b.success();
    b.failure(false);
    b.failure(false);
    assert.equal(b.state, 'closed');
    b.failure(false);
    assert.equal(b.state, 'open');
    assert.deepEqual(states, ['open']);
    b.stop();
  });

  it('opens at once on a timeout', () => {
    const { b } = breaker(() => Promise.resolve());
    b.failure(true);
    assert.equal(b.state, 'open');
    b.stop();
  });

  it('probes while open and closes when the probe succeeds', async () => {
    let healthy = false;
    let probes = 0;
    const { b, states, clock } = breaker(async () => {
      probes++;
      if (!healthy) throw new Error('down');
    });
    b.open();
    clock.advance(19);
    await turns();
    assert.equal(probes, 0, 'no probe before the interval');
    for (let i = 0; i < 3; i++) {
      clock.advance(20);
      await turns();
    }
    assert.equal(b.state, 'open');
    assert.equal(probes, 3);
    healthy = true;
    clock.advance(20);
    await turns();
    assert.equal(b.state, 'closed');
    assert.deepEqual(states.slice(0, 3), ['open', 'half-open', 'open']);
    assert.equal(states.at(-1), 'closed');
    b.stop();
  });

  it('stops probing once stopped', async () => {
    let probes = 0;
    const { b, clock } = breaker(async () => {
      probes++;
      throw new Error('down');
    });
    b.open();
    b.stop();
    clock.advance(60);
    await turns();
    assert.equal(clock.pending, 0);
    assert.equal(probes, 0);
  });
});
