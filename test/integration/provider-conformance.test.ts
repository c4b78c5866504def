// The provider conformance table (test/conformance/provider.case.ts) on every (client surface, instance provider)
// pair: one gateway on local quotas for every case, and one on a real redis-server (standalone) for the
// exact-settlement variant. Both gateways and the mock serve every pair at once (one route per pair and kind),
// so the whole table runs in one process start.
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import {
  PAIRS, pairRoutes, registrationProblem, runProviderConformance, servingProblem, type Env, type Pair, type RouteKind,
} from '../conformance/provider.case.ts';

const LOCAL_KINDS: readonly RouteKind[] = ['c', 'f', 'q', 's'];
const REDIS_PASSWORD = 'provider-conformance';

let mock: MockUpstream | undefined;
let redis: RedisServerHandle | undefined;
let gw: TestGateway | undefined;
let redisGw: TestGateway | undefined;

async function setup(): Promise<Env> {
  mock = await startMockUpstream({ completionTokens: 24, chunks: 6 });
  redis = await startRedis({ password: REDIS_PASSWORD });
  const runnable = PAIRS.filter((p) => registrationProblem(p) === undefined);
  const redisCfg = { redis_host: '127.0.0.1', redis_port: redis.port, redis_password: REDIS_PASSWORD };
  gw = await startGateway({ routes: runnable.flatMap((p) => pairRoutes(p, mock!.url, LOCAL_KINDS)) });
  redisGw = await startGateway({
    redis_batching: { flush_interval_ms: 20 },
    routes: runnable.flatMap((p) => pairRoutes(p, mock!.url, ['r'], redisCfg)),
  });
  const r = redis;
  return {
    gw, mock, redisGw,
    redisTotals: (routeId) => redisTotals({ host: '127.0.0.1', port: r.port, password: REDIS_PASSWORD }, `r/${routeId}/`),
    problem: (p: Pair) => registrationProblem(p) ?? servingProblem(p, gw!, LOCAL_KINDS) ?? servingProblem(p, redisGw!, ['r']),
  };
}

async function teardown(): Promise<void> {
  await Promise.allSettled([gw?.close(), redisGw?.close()]);
  await Promise.allSettled([mock?.close(), redis?.stop()]);
}

runProviderConformance(setup, teardown);
