// Review findings on the serving-threads runtime (workers > 1), each a case that failed before its fix:
// the abstract-socket lock refuses a second threaded Sluice on the same port under another spelling of the
// address, /metrics still answers (in bounded time, counters not going down) when a thread does not, and a
// thread crash (exit 1) still flushes what was charged to Redis.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { startSluice, type SluiceHandle } from '../../src/app.ts';
import { mockInstance, post } from '../helpers/gateway.ts';
import { eventually } from '../helpers/sluice-process.ts';
import { freePorts } from '../helpers/free-port.ts';
import { startCrashChild } from '../helpers/crash-child.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';


const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], max_tokens: 20 };

function routes(mockUrl: string) {
  return [{ id: 'free', uri: '/free/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] } } }];
}

function start(raw: Record<string, unknown>, opts: { port?: number; onThreadFailure?: (err: Error) => void } = {}): Promise<SluiceHandle> {
  const config = validateConfig({ admin: { host: '127.0.0.1', port: 0 }, ...raw }, {});
  return startSluice(config, { adminPort: 0, defaultMetrics: false, ...opts });
}

function requestsTotal(text: string): number {
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith('sluice_http_requests_total{')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

describe('serving threads: review findings', () => {
  let mock: MockUpstream;
  const handles: SluiceHandle[] = [];
  before(async () => { mock = await startMockUpstream({ completionTokens: 5, chunks: 2 }); });
  after(async () => {
    await Promise.allSettled(handles.map((h) => h.close({ drainMs: 500 })));
    await mock?.close();
  });

  it('a second threaded sluice naming the same port under another host spelling is refused (guard off)', async () => {
    const [port] = await freePorts(1) as [number];
    const a = await start({ workers: 2, listen: { host: '127.0.0.1', port, http1_guard: false }, routes: routes(mock.url) });
    handles.push(a);
    // `127.1` and `localhost` are 127.0.0.1 (or ::1) too: with a lock named after the host they took another
    // lock and joined the first one's socket through SO_REUSEPORT, stealing part of its connections.
    for (const host of ['127.1', 'localhost']) {
      let b: SluiceHandle | undefined;
      try {
        b = await start({ workers: 2, listen: { host, port, http1_guard: false }, routes: routes(mock.url) });
      } catch (err) {
        assert.match((err as Error).message, /address already in use/);
      }
      if (b !== undefined) {
        await b.close({ drainMs: 500 });
        assert.fail(`a second sluice started on ${host}:${port}`);
      }
    }
    const r = await post(`http://127.0.0.1:${a.port}/free/v1/chat/completions`, MSG);
    assert.equal(r.status, 200);
  });

  it('/metrics answers with the last known parts of threads that do not answer', async () => {
    let failed: Error | undefined;
    const gw = await start({ workers: 2, listen: { host: '127.0.0.1', port: 0 }, routes: routes(mock.url) }, { port: 0, onThreadFailure: (err) => { failed = err; } });
    handles.push(gw);
    for (let i = 0; i < 6; i++) assert.equal((await post(`http://127.0.0.1:${gw.port}/free/v1/chat/completions`, MSG)).status, 200);
    const scrape = () => fetch(`http://127.0.0.1:${gw.adminPort}/metrics`, { signal: AbortSignal.timeout(60_000) });
    const first = await scrape();
    assert.equal(first.status, 200);
    const before = requestsTotal(await first.text());
    assert.equal(before, 6);
    // A crashed thread (its process would exit; here onThreadFailure keeps it up) answers no scrape any more.
    gw.threads!.crash(0);
    await eventually('the thread failure was reported', () => failed !== undefined, 60_000);
    const second = await scrape();
    const body = await second.text();
    assert.equal(second.status, 200, body.slice(0, 300));
    assert.equal(requestsTotal(body), before);
  });
});

describe('serving threads: a thread crash loses no charged token', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 7, chunks: 2 });
    redis = await startRedis();
  });
  after(async () => {
    await mock?.close();
    await redis?.stop();
  });

  it('the process exits 1 after folding the ledger into Redis and flushing it', async () => {
    const raw = {
      listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, workers: 2,
      // Nothing reaches Redis on the flush timer during the test: only the exit's final flush can carry it.
      redis_batching: { flush_interval_ms: 600_000, reservation_lease_ms: 1_800_000, max_batch_keys: 1000, max_pending_keys: 100000 },
      routes: [{
        id: 'crash', uri: '/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': { instances: [mockInstance('inst', mock.url)] },
          'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, limit: 1_000_000, time_window: 3600 },
        },
      }],
    };
    const child = await startCrashChild(raw);
    try {
      let charged = 0;
      for (let i = 0; i < 10; i++) {
        const r = await post(`http://127.0.0.1:${child.port}/v1/chat/completions`, MSG);
        assert.equal(r.status, 200, r.text);
        charged += r.body.usage.total_tokens as number;
      }
      assert.ok(charged > 0);
      const code = await child.crash(90_000);
      assert.equal(code, 1, child.stderr().slice(-2000));
      const totals = await redisTotals(redis, 'r/crash/');
      assert.equal(totals.consumed, charged);
      assert.equal(totals.reserved, 0);
    } finally {
      child.kill();
    }
  });
});
