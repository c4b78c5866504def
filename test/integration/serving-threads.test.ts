// workers: 2 — two serving threads, each with its own uWS App and Gateway, behind one port: both serve, one
// quota holds across them (overshoot ≤ one request under a concurrent burst), /metrics sums the process,
// reloads reach every thread, SIGHUP and SIGTERM never break a stream in flight, a second process on the same
// port is refused (guard on and off), and with Redis the totals written are what the threads charged.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import type { MetricsJson } from '../../src/metrics/aggregate.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { avoidWindowEdge, mockInstance, post, startGateway, type JsonResponse, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually, startSluiceProcess, type SluiceProcess } from '../helpers/sluice-process.ts';
import { freePorts } from '../helpers/free-port.ts';
import { exchange } from '../helpers/raw-http.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], max_tokens: 20 };

function proxy(mockUrl: string) {
  return { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] } };
}

function routes(mockUrl: string, extra: Record<string, unknown>[] = []) {
  return [
    { id: 'free', uri: '/free/v1/chat/completions', plugins: proxy(mockUrl) },
    { id: 'q', uri: '/q/v1/chat/completions', plugins: { ...proxy(mockUrl), 'ai-rate-limiting': { limit: 3000, time_window: 3600 } } },
    ...extra,
  ];
}

/** `n` calls, at most `conc` at a time; every call runs (a failed one fails the burst once all have ended). */
async function burst<T>(n: number, conc: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(n);
  const failed: string[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (next < n) {
      const i = next++;
      try {
        out[i] = await fn(i);
      } catch (err) {
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        failed.push(`request ${i}: ${(err as Error).message}${cause === undefined ? '' : ` (${cause.code ?? ''} ${cause.message ?? ''})`}`);
      }
    }
  }));
  assert.deepEqual(failed, [], `${failed.length} of ${n} requests failed`);
  return out;
}

/** sluice_http_requests_total of `route` in one thread's registry. */
function served(json: MetricsJson, route: string): number {
  const m = json.find((x) => x.name === 'sluice_http_requests_total');
  return (m?.values ?? []).filter((v) => v.labels.route === route).reduce((s, v) => s + v.value, 0);
}

async function perThread(gw: TestGateway, route: string): Promise<number[]> {
  return (await gw.handle.threads!.perThreadMetrics()).map((j) => served(j, route));
}

/**
 * Requests per thread on `route` once every thread has answered one. Which thread accepts a connection is the
 * kernel's choice, and a burst may reuse keep-alive connections one thread accepted: new connections (one request
 * each, then closed), in rounds of 20, until each thread has answered on the route (or 30 s pass). Every status
 * must pass `ok`.
 */
async function untilEveryThreadServed(gw: TestGateway, route: string, path: string, ok: (status: number) => boolean): Promise<number[]> {
  const port = Number(new URL(gw.url).port);
  const body = JSON.stringify(MSG);
  const request = `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`;
  const deadline = Date.now() + 30_000;
  let each = await perThread(gw, route);
  while (!each.every((n) => n > 0) && Date.now() < deadline) {
    const results = await burst(20, 8, () => exchange(port, request, { responses: 1, waitMs: 20_000 }));
    assert.deepEqual(results.map((r) => r.responses[0]?.status ?? 0).filter((st) => !ok(st)), []);
    each = await perThread(gw, route);
  }
  return each;
}

describe('serving threads (workers: 2, in process)', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 20, chunks: 10 });
    gw = await startGateway({ workers: 2, routes: routes(mock.url) });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('serves on both threads, and /metrics request totals equal the requests sent', async () => {
    assert.equal(gw.handle.threads?.count, 2);
    const before = await metric(gw, /^sluice_http_requests_total\{route="free"/);
    const results = await burst(200, 32, () => post(`${gw.url}/free/v1/chat/completions`, MSG));
    assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => r.text), []);
    // Counters reach /metrics at scrape time from every thread's registry.
    assert.equal(await metric(gw, /^sluice_http_requests_total\{route="free"/) - before, 200);
    const each = await perThread(gw, 'free');
    assert.equal(each.length, 2);
    assert.equal(each[0]! + each[1]!, before + 200);
    const after = await untilEveryThreadServed(gw, 'free', '/free/v1/chat/completions', (st) => st === 200);
    assert.ok(after.every((n) => n > 0), `both threads served: ${after.join(' + ')}`);
    assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 200);
  });

  it('one local quota under a concurrent burst (200 requests, 32 at a time): overshoot ≤ one request', async () => {
    await avoidWindowEdge(3600, 20_000);
    const results = await burst(200, 32, () => post(`${gw.url}/q/v1/chat/completions`, MSG));
    const ok = results.filter((r) => r.status === 200);
    const rejected = results.filter((r) => r.status === 429);
    assert.equal(ok.length + rejected.length, 200, `only 200s and 429s: ${results.filter((r) => r.status !== 200 && r.status !== 429).map((r) => r.status).join(',')}`);
    const charged = ok.reduce((s, r: JsonResponse) => s + (r.body.usage.total_tokens as number), 0);
    const biggest = Math.max(...ok.map((r) => r.body.usage.total_tokens as number));
    assert.ok(charged <= 3000 + biggest, `charged ${charged} > limit + one request (${biggest})`);
    assert.ok(charged >= 3000 - biggest, `admission too strict: charged only ${charged}`);
    assert.ok(rejected.length > 0);
    await eventually('charged metric', async () => await metric(gw, /^sluice_quota_tokens_charged_total\{route="q"/) === charged);
    const each = await untilEveryThreadServed(gw, 'q', '/q/v1/chat/completions', (st) => st === 200 || st === 429);
    assert.ok(each.every((n) => n > 0), `both threads admitted or refused: ${each.join(' + ')}`);
  });

  it('a reload reaches every thread (and one raising limits.max_quota_keys keeps the ledger serving quotas)', async () => {
    // The ledger was sized for the default 100,000 keys at start; it cannot grow, and keeps serving.
    const next = validateConfig({
      listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, workers: 2,
      limits: { max_quota_keys: 1_000_000 },
      routes: routes(mock.url, [{ id: 'added', uri: '/added/v1/chat/completions', plugins: { ...proxy(mock.url), 'ai-rate-limiting': { limit: 1_000_000, time_window: 60 } } }]),
    }, {});
    const reloadsBefore = await metric(gw, /^sluice_config_reloads_total\{outcome="ok"\}/);
    gw.handle.reload(next);
    await gw.handle.threads!.settled();
    assert.equal(await metric(gw, /^sluice_config_reloads_total\{outcome="ok"\}/), reloadsBefore + 1);
    const results = await burst(60, 16, () => post(`${gw.url}/added/v1/chat/completions`, MSG));
    assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => r.status), []);
    const each = await untilEveryThreadServed(gw, 'added', '/added/v1/chat/completions', (st) => st === 200);
    assert.ok(each.every((n) => n > 0), `both threads serve the added route: ${each.join(' + ')}`);
  });
});

describe('serving threads (workers: 2, sluice processes)', () => {
  let mock: MockUpstream;
  const procs: SluiceProcess[] = [];
  before(async () => { mock = await startMockUpstream({ completionTokens: 20, chunks: 10 }); });
  after(async () => {
    for (const p of procs) await p.stop();
    await mock?.close();
  });

  async function stream(url: string, chunks = 12): Promise<string> {
    const r = await fetch(`${url}/free/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-mock-chunks': String(chunks), 'x-mock-chunk-delay-ms': '150' },
      body: JSON.stringify({ ...MSG, stream: true }),
    });
    assert.equal(r.status, 200);
    return r.text();
  }

  it('a stream in flight survives a SIGHUP reload, and SIGTERM drains every thread before exiting 0', async () => {
    const raw = { workers: 2, routes: routes(mock.url) };
    const p = await startSluiceProcess(raw);
    procs.push(p);
    // Long enough to outlast the reload (its file is read on a thread of its own, which starts slowly under tsx on a
    // loaded machine) and the burst after it: the second stream must start while the first still runs.
    const first = stream(p.url, 80);
    await eventually('the stream started', () => mock.stats().inFlight > 0);
    p.writeConfig({ ...raw, routes: routes(mock.url, [{ id: 'added', uri: '/added/v1/chat/completions', plugins: proxy(mock.url) }]) });
    p.signal('SIGHUP');
    await eventually('reloaded', () => p.logs.some((l) => l.includes('"config reloaded"')));
    const added = await burst(20, 8, () => post(`${p.url}/added/v1/chat/completions`, MSG));
    assert.deepEqual(added.map((r) => r.status), Array(20).fill(200));
    const second = stream(p.url);
    await eventually('the second stream started', () => mock.stats().inFlight > 1);
    p.signal('SIGTERM');
    for (const text of [await first, await second]) {
      assert.match(text, /"finish_reason":"(stop|length)"/);
      assert.match(text, /data: \[DONE\]\s*$/, 'the stream ended normally');
    }
    assert.equal(await p.exited, 0);
    assert.ok(p.logs.some((l) => l.includes('"stopped"')));
    assert.ok(!p.logs.some((l) => l.includes('"level":"error"')), p.logs.filter((l) => l.includes('"level":"error"')).join('\n'));
  });

  it('the longest drain time allowed drains: SIGTERM waits for the request in flight (its timer no longer overflows to 1 ms)', async () => {
    const p = await startSluiceProcess({ workers: 2, shutdown: { drain_timeout_ms: 2_147_483_647 }, routes: routes(mock.url) });
    procs.push(p);
    const slow = fetch(`${p.url}/free/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-ttft-ms': '1500' }, body: JSON.stringify(MSG) });
    await eventually('the request reached the upstream', () => mock.stats().inFlight > 0);
    p.signal('SIGTERM');
    const r = await slow;
    assert.equal(r.status, 200);
    assert.equal(await p.exited, 0);
    assert.ok(!p.logs.some((l) => l.includes('did not drain')), p.logs.join('\n'));
  });

  for (const guard of [true, false]) {
    it(`a second sluice on the same port is refused (http1_guard ${guard ? 'on' : 'off'})`, async () => {
      const raw = { workers: 2, listen: { http1_guard: guard }, routes: routes(mock.url) };
      const p = await startSluiceProcess(raw);
      procs.push(p);
      const port = Number(new URL(p.url).port);
      for (const workers of [2, 1]) {
        const [admin] = await freePorts(1) as [number];
        const text = JSON.stringify({ ...raw, workers, listen: { host: '127.0.0.1', port, http1_guard: guard }, admin: { host: '127.0.0.1', port: admin } });
        await assert.rejects(startSluiceProcess(text),
          (err: Error) => /address already in use \(another process, perhaps another sluice, is listening there\)/.test(err.message));
      }
      // The first one still serves on both threads.
      const results = await burst(20, 8, () => post(`${p.url}/free/v1/chat/completions`, MSG));
      assert.deepEqual(results.map((r) => r.status), Array(20).fill(200));
    });
  }
});

describe('serving threads with Redis (standalone)', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 20, chunks: 10 });
    redis = await startRedis({ password: 'threads-secret' });
  });
  after(async () => {
    await mock?.close();
    await redis?.stop();
  });

  it('two threads, one quota: Redis totals equal what was charged', async () => {
    await avoidWindowEdge(3600, 20_000);
    const gw = await startGateway({
      workers: 2,
      redis_batching: { flush_interval_ms: 20, max_batch_keys: 1000, max_pending_keys: 100000 },
      routes: [{
        id: 'rq', uri: '/v1/chat/completions',
        plugins: { ...proxy(mock.url), 'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_password: 'threads-secret', limit: 1_000_000, time_window: 3600 } },
      }],
    });
    let charged = 0;
    try {
      const results = await burst(120, 16, () => post(`${gw.url}/v1/chat/completions`, MSG));
      assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.text.slice(0, 300)} ${JSON.stringify(Object.fromEntries(r.headers))}`).slice(0, 3), []);
      charged = results.reduce((s, r) => s + (r.body.usage.total_tokens as number), 0);
      const each = await perThread(gw, 'rq');
      assert.ok(each.every((n) => n > 0), `both threads served: ${each.join(' + ')}`);
    } finally {
      await gw.close();
    }
    const totals = await redisTotals({ ...redis, password: 'threads-secret' }, 'r/rq/');
    assert.equal(totals.consumed, charged);
    assert.equal(totals.reserved, 0);
  });
});
