// A reload during a Redis outage must not hand an allow_degradation quota its whole limit again. A reload that
// changes a Redis store's options (here its timeout) makes a new store; the retired one still holds the usage
// it could not write. Before the fix the new store's degraded estimate started from zero: a probe had 1,400
// tokens admitted against a limit of 280 over four reloads (and, changing the username, a review 540).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startSluice, type SluiceHandle } from '../../src/app.ts';
import { mockInstance, post, testConfig } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], max_tokens: 20 };
const LIMIT = 280;


describe('reloads during a Redis outage (allow_degradation)', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  const handles: SluiceHandle[] = [];
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 5, chunks: 2 });
    redis = await startRedis();
  });
  after(async () => {
    await Promise.allSettled(handles.map((h) => h.close({ drainMs: 500 })));
    await mock?.close();
    await redis?.stop();
  });

  for (const workers of [1, 2]) {
    it(`workers: ${workers}: a new store counts what the retired one could not write`, async () => {
      if (!redis.running) await redis.restart();
      const version = (timeoutMs: number, user?: string) => ({
        workers,
        redis_batching: { flush_interval_ms: 20 },
        routes: [{
          id: 'q', uri: '/q/v1/chat/completions',
          plugins: {
            'ai-proxy-multi': { instances: [mockInstance('inst', mock.url)] },
            'ai-rate-limiting': {
              policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_database: workers,
              redis_timeout: timeoutMs, ...(user === undefined ? {} : { redis_username: user }), allow_degradation: true, limit: LIMIT, time_window: 3600,
            },
          },
        }],
      });
      const h = await startSluice(testConfig(version(500)), { port: 0, adminPort: 0, defaultMetrics: false });
      handles.push(h);
      const url = `http://127.0.0.1:${h.port}/q/v1/chat/completions`;
      // One answer while Redis is up: the counter is known, then Redis goes away.
      assert.equal((await post(url, MSG)).status, 200);
      await redis.kill();

      let charged = 0;
      const spend = async (): Promise<number> => {
        let admitted = 0;
        for (let i = 0; i < 60; i++) {
          const r = await post(url, MSG);
          if (r.status === 429) break;
          assert.equal(r.status, 200, r.text);
          const usage = (r.body as { usage: { total_tokens: number } }).usage;
          charged += usage.total_tokens;
          admitted++;
        }
        return admitted;
      };
      await spend();
      assert.equal((await post(url, MSG)).status, 429, 'the degraded quota is spent');
      const spentBefore = charged;

      // Six reloads, alternating the store's options (each makes a new store; some bring back settings whose store
      // has been retired): its timeout, then its username (part of the target's id, not of the dataset).
      for (const [timeoutMs, user] of [[700, undefined], [500, undefined], [900, undefined], [500, 'default'], [500, undefined], [500, 'default']] as const) {
        h.reload(testConfig(version(timeoutMs, user)));
        await h.threads?.settled();
        await spend();
      }
      // At most one request's worth over the limit in all, however many stores the reloads made.
      assert.ok(charged <= LIMIT + 40, `charged ${charged} of ${LIMIT} (${spentBefore} before the reloads)`);
      await redis.restart();
    });
  }
});
