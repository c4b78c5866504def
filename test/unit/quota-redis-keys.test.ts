import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cellKeys, counterTag, escapeId, hashSlot } from '../../src/quota/redis/keys.ts';

describe('redis key layout', () => {
  it('versions keys and puts the counter id in a hash tag', () => {
    const tag = counterTag('route-1/arl/i/openai/');
    assert.deepEqual(cellKeys(tag, 1_700_000_000_000), {
      c: 'sluice:v2:{route-1/arl/i/openai/}:1700000000000:c',
      r: 'sluice:v2:{route-1/arl/i/openai/}:1700000000000:r',
    });
  });

  it('escapes braces so a counter id cannot end the hash tag early, injectively', () => {
    assert.equal(escapeId('a{b}c'), 'a%7Bb%7Dc');
    assert.equal(escapeId('50%'), '50%25');
    assert.notEqual(escapeId('%7B'), escapeId('{'));
    assert.equal(escapeId('plain/id'), 'plain/id');
  });

  it('computes Redis Cluster slots (CRC16/XMODEM mod 16384, hash tags honoured)', () => {
    // Reference values from the Redis Cluster specification and CLUSTER KEYSLOT.
    assert.equal(hashSlot('foo'), 12182);
    assert.equal(hashSlot('123456789'), 12739);
    assert.equal(hashSlot('{user1000}.following'), hashSlot('user1000'));
    assert.equal(hashSlot('a{}b'), 13694, 'an empty tag hashes the whole key');
  });

  it('places every window of a counter in one slot', () => {
    const tag = counterTag('route/x{y}');
    const slots = new Set([0, 60_000, 120_000].flatMap((w) => Object.values(cellKeys(tag, w)).map(hashSlot)));
    assert.equal(slots.size, 1);
  });
});
