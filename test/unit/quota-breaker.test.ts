import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { CircuitBreaker, type BreakerState } from '../../src/quota/redis/breaker.ts';

function breaker(probe: () => Promise<void>): { b: CircuitBreaker; states: BreakerState[] } {
  const states: BreakerState[] = [];
  const b = new CircuitBreaker({ failureThreshold: 3, probeIntervalMs: 20, probe, onChange: (s) => states.push(s) });
  return { b, states };
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
    const { b, states } = breaker(async () => {
      probes++;
      if (!healthy) throw new Error('down');
    });
    b.open();
    await sleep(70);
    assert.notEqual(b.state, 'closed');
    assert.ok(probes >= 2, `probes ${probes}`);
    healthy = true;
    for (let i = 0; i < 50 && b.state !== 'closed'; i++) await sleep(10);
    assert.equal(b.state, 'closed');
    assert.deepEqual(states.slice(0, 3), ['open', 'half-open', 'open']);
    assert.equal(states.at(-1), 'closed');
    b.stop();
  });

  it('stops probing once stopped', async () => {
    let probes = 0;
    const { b } = breaker(async () => {
      probes++;
      throw new Error('down');
    });
    b.open();
    b.stop();
    await sleep(60);
    assert.equal(probes, 0);
  });
});
