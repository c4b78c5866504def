// Requests taking turns between two replicas on one Redis, one at a time, under a limit smaller than one
// reservation (the seed documents' 100-token examples): each is admitted while the quota has tokens left. Before,
// an answered request's reservation (prompt + 256) stayed in Redis until its replica's next batched write, up to a
// flush interval later, and the other replica's admission counted it: every request after the first got 429 with
// most of the limit left. A reservation released near the limit is now written on the next turn.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, post, type TestGateway } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';

const LIMIT = 100;
const MSG = { model: 'm', messages: [{ role: 'user', content: 'What is 1+1?' }] };

describe('two replicas taking turns under a small Redis quota', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  const gws: TestGateway[] = [];
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 5 });
    redis = await startRedis();
  });
  after(async () => {
    await Promise.allSettled(gws.map((g) => g.close()));
    await mock?.close();
    await redis?.stop();
  });

  for (const workers of [1, 2]) {
    it(`workers: ${workers}: each request is admitted while tokens are left`, async () => {
      const route = {
        id: `r${workers}`, uri: '/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] },
          'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_database: workers, limit: LIMIT, time_window: 3600 },
        },
      };
      // A second between flushes, and 20 ms between requests: the release must be written early, not by the timer,
      // and the test does not race the early write.
      const raw = { workers, redis_batching: { flush_interval_ms: 1_000 }, routes: [route] };
      const pair = [await startGateway(raw), await startGateway(raw)];
      gws.push(...pair);
      let charged = 0;
      const seen: string[] = [];
      for (let i = 0; i < 20; i++) {
        if (i > 0) await sleep(20);
        const r = await post(`${pair[i % 2]!.url}/v1/chat/completions`, MSG);
        seen.push(`${r.status}:${r.headers.get('x-ai-ratelimit-remaining-r' + workers) ?? r.headers.get('x-ai-ratelimit-remaining') ?? ''}`);
        if (r.status === 429) break;
        assert.equal(r.status, 200, r.text);
        charged += (r.body as { usage: { total_tokens: number } }).usage.total_tokens;
      }
      assert.ok(charged >= LIMIT, `refused with ${charged} of ${LIMIT} tokens charged: ${seen.join(' ')}`);
      assert.match(seen[seen.length - 1]!, /^429/, 'the spent quota is refused');
    });
  }
});
