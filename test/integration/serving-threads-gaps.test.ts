// Gaps of the serving-threads runtime, each a case that failed before its fix: a config swap a thread answers
// after its timeout no longer lets the main thread close the stores that thread then serves with (the new version
// at once, or a later reload while the late thread still runs requests on it: Redis then missed their tokens);
// the metric series of a quota store closed by a reload leave /metrics (one thread and two); and
// limits.max_inflight_body_bytes is one budget for the whole process, not one per serving thread.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest, type ClientRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startSluice, type SluiceHandle, type StartOptions } from '../../src/app.ts';
import { mockInstance, post, testConfig } from '../helpers/gateway.ts';
import { eventually } from '../helpers/metrics.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import type { MetricsJson } from '../../src/metrics/aggregate.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import { startScriptedUpstream, chatAnswer, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], max_tokens: 20 };

function proxy(mockUrl: string) {
  return { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] } };
}


function start(raw: Record<string, unknown>, opts: StartOptions = {}): Promise<SluiceHandle> {
  return startSluice(testConfig(raw), { port: 0, adminPort: 0, defaultMetrics: false, ...opts });
}

async function scrape(h: SluiceHandle): Promise<string> {
  return (await fetch(`http://127.0.0.1:${h.adminPort}/metrics`, { signal: AbortSignal.timeout(60_000) })).text();
}

/** The `store` label values of every sample in a /metrics text. */
function storeLabels(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /[{,]store="([^"]+)"/.exec(line);
    if (m !== null) out.add(m[1]!);
  }
  return out;
}

describe('serving threads: a config swap answered after its timeout', () => {
  let mock: MockUpstream;
  const handles: SluiceHandle[] = [];
  before(async () => { mock = await startMockUpstream({ completionTokens: 5, chunks: 2 }); });
  after(async () => {
    await Promise.allSettled(handles.map((h) => h.close({ drainMs: 500 })));
    await mock?.close();
  });

  it('keeps the stores of the version the late threads then serve (requests are not refused 503)', async () => {
    const quota = { 'ai-rate-limiting': { limit: 1_000_000, time_window: 60 } };
    const v0 = { workers: 2, routes: [{ id: 'q', uri: '/q/v1/chat/completions', plugins: { ...proxy(mock.url), ...quota } }] };
    const v1 = { ...v0, routes: [...v0.routes, { id: 'q2', uri: '/q2/v1/chat/completions', plugins: { ...proxy(mock.url), ...quota } }] };
    const gw = await start(v0, { testHooks: { swapTimeoutMs: 200 } });
    handles.push(gw);
    const url = `http://127.0.0.1:${gw.port}`;
    assert.equal((await post(`${url}/q/v1/chat/completions`, MSG)).status, 200);
    // Both threads are busy well past the swap's timeout, then take the swap anyway (it waited in their queue).
    gw.threads!.stall(0, 2_000);
    gw.threads!.stall(1, 2_000);
    gw.reload(testConfig(v1));
    await gw.threads!.settled();
    // Answered after the stall, behind the late 'swapped' and 'retired' messages: the main thread has seen them.
    await gw.threads!.perThreadMetrics();
    await eventually('the new route is served', async () => (await post(`${url}/q2/v1/chat/completions`, MSG)).status !== 404, 60_000);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await post(`${url}/q2/v1/chat/completions`, MSG)).status);
    // Before the fix: the version nobody answered for in time was retired at once, the local store closed when
    // the threads then retired the old version, and every admission on the new route failed 503.
    assert.deepEqual(statuses, Array(8).fill(200));
  });
});

function gaugeOf(json: MetricsJson, name: string): number {
  return json.find((m) => m.name === name)?.values[0]?.value ?? 0;
}

/** A POST on a connection of its own (so the kernel picks a thread for it), asking `content`; the upstream holds it. */
function slowPost(port: number, path: string, content: string): { req: ClientRequest; done: Promise<{ status: number; text: string }> } {
  const body = JSON.stringify({ ...MSG, messages: [{ role: 'user', content }] });
  const req = httpRequest({
    host: '127.0.0.1', port, path, method: 'POST', agent: false,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
  });
  const done = new Promise<{ status: number; text: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  req.end(body);
  return { req, done };
}

describe('serving threads: a late thread\'s version outlives a later reload while its requests run', () => {
  let mock: MockUpstream;
  let redis: RedisServerHandle;
  let gw: SluiceHandle | undefined;
  // The q2 route's upstream holds each answer until the test releases it (by the request's content): the held
  // request ends only after the reload it must outlive, however slow the machine.
  let holding: ScriptedUpstream;
  const release = new Map<string, () => void>();
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 5, chunks: 2 });
    holding = await startScriptedUpstream((req, s) => {
      const content = (JSON.parse(req.body.toString()) as typeof MSG).messages[0]!.content;
      release.set(content, () => { if (!s.destroyed) s.write(chatAnswer('held', { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 })); });
    });
    redis = await startRedis();
  });
  after(async () => {
    await gw?.close({ drainMs: 500 });
    await holding?.close();
    await mock?.close();
    await redis?.stop();
  });

  it('the store only that version uses closes after the late thread\'s last request: Redis gets every token', async () => {
    const free = { id: 'free', uri: '/free/v1/chat/completions', plugins: proxy(mock.url) };
    const q2 = {
      id: 'q2', uri: '/q2/v1/chat/completions',
      plugins: { ...proxy(holding.url), 'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, limit: 1_000_000, time_window: 3600 } },
    };
    const v0 = { workers: 2, listen: { host: '127.0.0.1', port: 0, http1_guard: false }, redis_batching: { flush_interval_ms: 20 }, routes: [free] };
    gw = await start(v0, { testHooks: { swapTimeoutMs: 200 } });
    const h = gw;
    // Thread 1 takes version 1 (the only one with the Redis store) after the swap's timeout; thread 0 in time.
    h.threads!.stall(1, 2_000);
    h.reload(testConfig({ ...v0, routes: [free, q2] }));
    await h.threads!.settled();
    await h.threads!.perThreadMetrics();
    const inFlight = async (): Promise<number[]> => (await h.threads!.perThreadMetrics()).map((j) => gaugeOf(j, 'sluice_requests_in_flight'));
    // A slow request held on thread 1; ones the kernel gives thread 0 are cut at once (they settle then).
    let onThread1: ReturnType<typeof slowPost> | undefined;
    let heldContent = '';
    for (let attempt = 0; onThread1 === undefined; attempt++) {
      assert.ok(attempt < 40, 'no request landed on thread 1');
      const before = await inFlight();
      const content = `held ${attempt}`;
      const r = slowPost(h.port, '/q2/v1/chat/completions', content);
      r.done.catch(() => { /* cut by the test */ });
      let thread = -1;
      await eventually('the request is in flight', async () => {
        thread = (await inFlight()).findIndex((n, i) => n > before[i]!);
        return thread >= 0;
      }, 60_000);
      if (thread === 1) { onThread1 = r; heldContent = content; } else {
        r.req.destroy();
        await eventually('the cut request ended', async () => (await inFlight())[0] === 0, 60_000);
      }
    }
    // Version 2 drops the route: thread 0 retires version 1 at once, thread 1 only when its request ends.
    h.reload(testConfig(v0));
    await h.threads!.settled();
    await eventually('thread 0 has no request left', async () => (await inFlight())[0] === 0, 60_000);
    await eventually('the held request reached the upstream', async () => release.has(heldContent), 60_000);
    release.get(heldContent)!();
    const last = await onThread1.done;
    assert.equal(last.status, 200, last.text);
    await eventually('no request in flight', async () => (await inFlight()).every((n) => n === 0), 60_000);
    const charged = async (): Promise<number> => {
      let sum = 0;
      for (const line of (await scrape(h)).split('\n')) {
        if (line.startsWith('sluice_quota_tokens_charged_total{route="q2"')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      }
      return sum;
    };
    const want = await charged();
    assert.ok(want >= JSON.parse(last.text).usage.total_tokens);
    // Before the fix the store closed (final flush) when thread 0 retired version 1: the held request's tokens
    // never reached Redis, and its reservation stayed there.
    let seen = { consumed: -1, reserved: -1 };
    await eventually('Redis holds every charged token', async () => {
      seen = await redisTotals(redis, 'r/q2/');
      return seen.consumed === want && seen.reserved === 0;
    }, 30_000).catch((err: unknown) => assert.fail(`${(err as Error).message}: Redis ${JSON.stringify(seen)}, charged ${want}`));
  });
});

describe('quota store metrics after a reload drops the store', () => {
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
    it(`workers: ${workers}: the closed store's series leave /metrics, the kept store's stay`, async () => {
      const redisQuota = (database: number) => ({
        'ai-rate-limiting': { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_database: database, limit: 1_000_000, time_window: 60 },
      });
      // Two stores (another database is another Redis target): labels standalone-0 (route a) and standalone-1 (b).
      const a = { id: 'a', uri: '/a/v1/chat/completions', plugins: { ...proxy(mock.url), ...redisQuota(1) } };
      const b = { id: 'b', uri: '/b/v1/chat/completions', plugins: { ...proxy(mock.url), ...redisQuota(0) } };
      const raw = { workers, redis_batching: { flush_interval_ms: 20 }, routes: [a, b] };
      const gw = await start(raw);
      handles.push(gw);
      const url = `http://127.0.0.1:${gw.port}`;
      for (const r of ['a', 'b']) assert.equal((await post(`${url}/${r}/v1/chat/completions`, MSG)).status, 200);
      await eventually('both stores have series', async () => {
        const l = storeLabels(await scrape(gw));
        return l.has('standalone-0') && l.has('standalone-1');
      });
      gw.reload(testConfig({ ...raw, routes: [b] }));
      await gw.threads?.settled();
      await eventually('the dropped store\'s series are gone', async () => !storeLabels(await scrape(gw)).has('standalone-0'));
      assert.equal((await post(`${url}/b/v1/chat/completions`, MSG)).status, 200);
      // The kept store flushes within its 20 ms interval of the answer; poll rather than race it.
      const flushed = /^sluice_redis_flushes_total\{store="standalone-1",outcome="ok"\} [1-9]/m;
      await eventually('the kept store has flushed', async () => flushed.test(await scrape(gw)));
      const text = await scrape(gw);
      assert.deepEqual([...storeLabels(text)], ['standalone-1']);
      assert.match(text, flushed);
    });
  }
});

/** A client that sends a request head declaring `declared` body bytes and a few of them, then holds. */
function holdBody(port: number, declared: number): { sock: Socket; answer: () => string | undefined } {
  const sock = connect({ host: '127.0.0.1', port });
  let got = '';
  sock.on('data', (d) => { got += d.toString('latin1'); });
  sock.on('error', () => { /* closed by the test or by the gateway after its answer */ });
  // All but the last byte: a body holds the budget for the bytes that came, not for the length it declares.
  sock.write(`POST /free/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${declared}\r\n\r\n{"model":${' '.repeat(declared - 10)}`);
  return { sock, answer: () => (got.includes('\r\n\r\n') ? got : undefined) };
}

function bodyGauge(json: MetricsJson): number {
  return json.find((m) => m.name === 'sluice_request_body_bytes_in_flight')?.values[0]?.value ?? 0;
}

describe('limits.max_inflight_body_bytes with workers: 2', () => {
  let mock: MockUpstream;
  let gw: SluiceHandle | undefined;
  const socks: Socket[] = [];
  before(async () => { mock = await startMockUpstream({ completionTokens: 5, chunks: 2 }); });
  after(async () => {
    for (const s of socks) s.destroy();
    await gw?.close({ drainMs: 500 });
    await mock?.close();
  });

  it('is one budget for the process: bodies held on both threads spend it, the next is refused 503', async () => {
    const SIZE = 40_000;
    // Two bodies fit the process; before the fix each thread had the whole budget (four fitted).
    gw = await start({
      workers: 2, listen: { host: '127.0.0.1', port: 0, http1_guard: false },
      limits: { max_body_bytes: 50_000, max_inflight_body_bytes: 100_000, client_body_timeout_ms: 120_000 },
      routes: [{ id: 'free', uri: '/free/v1/chat/completions', plugins: proxy(mock.url) }],
    });
    const h = gw;
    const gauges = async (): Promise<number[]> => (await h.threads!.perThreadMetrics()).map(bodyGauge);
    /** Opens a holding client; resolves with the thread whose gauge took its body (-1: it was answered). */
    const open = async (): Promise<{ sock: Socket; thread: number; answer: () => string | undefined }> => {
      const before = await gauges();
      const c = holdBody(h.port, SIZE);
      socks.push(c.sock);
      let thread = -1;
      // Held once its thread's gauge took (nearly) the whole body: SIZE − 1 bytes came, reserved as they came.
      await eventually('the body is held or refused', async () => {
        if (c.answer() !== undefined) return true;
        thread = (await gauges()).findIndex((g, i) => g - before[i]! >= SIZE - 1);
        return thread >= 0;
      }, 60_000);
      return { ...c, thread };
    };
    // The kernel spreads connections over the threads: hold one body on each (bounded attempts).
    const held: { sock: Socket; thread: number }[] = [];
    for (let attempt = 0; !(held.length === 2 && held[0]!.thread !== held[1]!.thread); attempt++) {
      assert.ok(attempt < 40, 'two held bodies never landed on different threads');
      if (held.length === 2) {
        const drop = held.pop()!;
        const was = (await gauges())[drop.thread]!;
        drop.sock.destroy();
        await eventually('the dropped body is released', async () => (await gauges())[drop.thread]! <= was - (SIZE - 1), 60_000);
      }
      const c = await open();
      assert.ok(c.thread >= 0, `a body within the budget was refused: ${c.answer()?.split('\r\n')[0]}`);
      held.push(c);
    }
    for (const g of await gauges()) assert.ok(g >= SIZE - 1 && g <= SIZE, `a thread holds ${g}`);
    // The budget is spent across the threads: every further body is refused (once it has been read), whichever
    // thread takes it. Before the fix each thread still had room for one more, so these were answered 200.
    const full = JSON.stringify({ ...MSG, user: '' });
    const body = full.replace('"user":""', `"user":"${'x'.repeat(SIZE - full.length)}"`);
    assert.equal(Buffer.byteLength(body), SIZE);
    for (let i = 0; i < 4; i++) {
      const r = await post(`http://127.0.0.1:${h.port}/free/v1/chat/completions`, body);
      assert.equal(r.status, 503, r.text);
      assert.equal(r.body?.error?.code, 'SLC_OVERLOADED');
      assert.equal(r.headers.get('retry-after'), '1');
    }
    for (const c of held) c.sock.destroy();
    await eventually('every body is released', async () => (await gauges()).every((g) => g === 0), 60_000);
    const text = await scrape(h);
    assert.match(text, /^sluice_request_body_bytes_in_flight 0$/m);
    assert.equal((await post(`http://127.0.0.1:${h.port}/free/v1/chat/completions`, MSG)).status, 200);
  });
});

describe('serving threads: a store made again under the same key', () => {
  let mock: MockUpstream;
  let a: RedisServerHandle;
  let b: RedisServerHandle;
  let gw: SluiceHandle | undefined;
  before(async () => {
    mock = await startMockUpstream({ completionTokens: 5, chunks: 2 });
    [a, b] = await Promise.all([startRedis(), startRedis()]);
  });
  after(async () => {
    await gw?.close({ drainMs: 500 });
    await mock?.close();
    await Promise.allSettled([a?.stop(), b?.stop()]);
  });

  const routeOn = (redis: RedisServerHandle | undefined) => ({
    id: 'q', uri: '/q/v1/chat/completions',
    plugins: { ...proxy(mock.url), 'ai-rate-limiting': redis === undefined
      ? { limit: 1_000_000, time_window: 3600 }
      : { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, limit: 1_000_000, time_window: 3600 } },
  });
  const chargedOn = async (h: SluiceHandle): Promise<number> => {
    let sum = 0;
    for (const line of (await scrape(h)).split('\n')) if (line.startsWith('sluice_quota_tokens_charged_total{route="q"')) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    return sum;
  };

  it('Redis A, then B, then A again within the ledger\'s eviction scan: A\'s total is what was charged, not the old usage again', async () => {
    const vA = { workers: 2, listen: { host: '127.0.0.1', port: 0, http1_guard: false }, redis_batching: { flush_interval_ms: 20 }, routes: [routeOn(a)] };
    const vB = { ...vA, routes: [routeOn(b)] };
    gw = await start(vA);
    const h = gw;
    const ten = async (): Promise<void> => {
      for (let i = 0; i < 10; i++) assert.equal((await post(`http://127.0.0.1:${h.port}/q/v1/chat/completions`, MSG)).status, 200);
    };
    await ten();
    for (let cycle = 0; cycle < 3; cycle++) {
      h.reload(testConfig(vB));
      await h.threads!.settled();
      h.reload(testConfig(vA));
      await h.threads!.settled();
      await ten();
    }
    const charged = await chargedOn(h);
    assert.ok(charged > 0);
    // Before the fix the new A store took over the old one's ledger slots and wrote their usage again (×2–3).
    await eventually('Redis A holds what was charged', async () => (await redisTotals(a, 'r/q/')).consumed === charged, 30_000);
    assert.equal((await redisTotals(b, 'r/q/')).consumed, 0);
    // Nothing is pending once Redis acknowledged it (the gauge read 1 for good: the batch just written was counted).
    await eventually('sluice_redis_pending_deltas falls to 0', async () => {
      const lines = (await scrape(h)).split('\n').filter((l) => l.startsWith('sluice_redis_pending_deltas{'));
      return lines.length > 0 && lines.every((l) => l.endsWith(' 0'));
    }, 30_000);
    await h.close({ drainMs: 500 });
    gw = undefined;
    assert.equal((await redisTotals(a, 'r/q/')).consumed, charged);
  });

  for (const workers of [1, 2]) {
    it(`workers: ${workers}: local quotas dropped by a reload and brought back keep what was spent`, async () => {
      const vLocal = { workers, listen: { host: '127.0.0.1', port: 0, http1_guard: false }, routes: [routeOn(undefined)] };
      const vRedis = { ...vLocal, routes: [routeOn(b)] };
      gw = await start(vLocal);
      const h = gw;
      const remaining = async (): Promise<number> => {
        const r = await post(`http://127.0.0.1:${h.port}/q/v1/chat/completions`, MSG);
        assert.equal(r.status, 200, r.text);
        return Number(r.headers.get('x-ai-ratelimit-remaining-inst'));
      };
      await remaining();
      const before = await remaining();
      h.reload(testConfig(vRedis));
      if (h.threads !== undefined) await h.threads.settled();
      await remaining();
      h.reload(testConfig(vLocal));
      if (h.threads !== undefined) await h.threads.settled();
      const after = await remaining();
      // Before the fix the local store was closed with the reload and made again empty: after > before.
      assert.ok(after < before, `remaining ${after} after the round trip, ${before} before it`);
      await h.close({ drainMs: 500 });
      gw = undefined;
    });
  }
});
