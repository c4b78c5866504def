// Hostile timing: SIGHUP while quota-metered requests are in flight (one buffered, waiting for its answer;
// one streaming). Each finishes on the snapshot it started with and is charged; a store the new config no
// longer uses is closed only after its last request ended. Real `sluice start` processes, local and Redis.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedUpstream, chatAnswer, sseDelta, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { mockInstance, avoidWindowEdge } from '../helpers/gateway.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import { startSluiceProcess, eventually, type SluiceProcess } from '../helpers/sluice-process.ts';

const WINDOW = 3600;
const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }], max_tokens: 30 };

function config(mockUrl: string, limit: number, quota: Record<string, unknown>) {
  return {
    redis_batching: { flush_interval_ms: 50 },
    routes: [
      { id: 'metered', uri: '/v1/chat/completions', plugins: {
        'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] },
        'ai-rate-limiting': { limit, time_window: WINDOW, ...quota },
      } },
      // The reload also changes the route set.
      ...(limit > 100_000 ? [{ id: 'added', uri: '/added', plugins: { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] } } }] : []),
    ],
  };
}

interface InFlight {
  buffered: Promise<{ status: number; usage: number }>;
  streamed: Promise<{ status: number; usage: number }>;
  done: () => boolean;
}

const USAGE = { prompt_tokens: 12, completion_tokens: 20, total_tokens: 32 };

/** An upstream that answers at once, except a request with `x-mock-hold` (held until released) and a stream
 *  (its first event at once, the rest with its usage when released): the reload always lands while both run. */
async function holdingUpstream(): Promise<{ up: ScriptedUpstream; held: Map<string, () => void> }> {
  const held = new Map<string, () => void>();
  const chunk = (text: string) => `${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`;
  const up = await startScriptedUpstream((req, s) => {
    if ((JSON.parse(req.body.toString()) as { stream?: boolean }).stream === true) {
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n${chunk(sseDelta('One'))}`);
      held.set('streamed', () => {
        const rest = [' two', ' three', ' four'].map(sseDelta).join('') +
          `data: {"id":"x","object":"chat.completion.chunk","model":"m","choices":[],"usage":${JSON.stringify(USAGE)}}\n\ndata: [DONE]\n\n`;
        if (!s.destroyed) s.write(`${chunk(rest)}0\r\n\r\n`);
      });
    } else if (req.headers['x-mock-hold'] !== undefined) {
      held.set('buffered', () => { if (!s.destroyed) s.write(chatAnswer('One two three four', USAGE)); });
    } else {
      s.write(chatAnswer('One two three four', USAGE));
    }
  });
  return { up, held };
}

/** One buffered request the upstream holds and one stream it holds after its first event (usage asked for, so
 *  the client sees it). */
function startRequests(gw: SluiceProcess): InFlight {
  let finished = 0;
  const buffered = (async () => {
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-hold': '1' }, body: JSON.stringify(MSG),
    });
    const body = await r.json() as { usage?: { total_tokens: number } };
    finished++;
    return { status: r.status, usage: body.usage?.total_tokens ?? -1 };
  })();
  const streamed = (async () => {
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...MSG, stream: true, stream_options: { include_usage: true } }),
    });
    const text = await r.text();
    finished++;
    const m = /"usage":\{"prompt_tokens":\d+,"completion_tokens":\d+,"total_tokens":(\d+)\}/.exec(text);
    assert.match(text, /data: \[DONE\]/, 'the stream ended properly');
    return { status: r.status, usage: m === null ? -1 : Number(m[1]) };
  })();
  return { buffered, streamed, done: () => finished > 0 };
}

/** Reload while both requests are at the upstream; returns their usage. */
async function reloadDuringRequests(gw: SluiceProcess, held: Map<string, () => void>, next: Record<string, unknown>): Promise<number> {
  held.clear();
  const inflight = startRequests(gw);
  await eventually('both requests reached the upstream', () => held.size === 2);
  gw.writeConfig(next);
  gw.signal('SIGHUP');
  await eventually('the reload is counted', async () => (await gw.metric(/^sluice_config_reloads_total\{outcome="ok"\}/)) === 1);
  assert.equal(inflight.done(), false, 'the reload happened while both requests were in flight');
  for (const release of held.values()) release();
  const [b, s] = await Promise.all([inflight.buffered, inflight.streamed]);
  assert.equal(b.status, 200);
  assert.equal(s.status, 200);
  assert.ok(b.usage > 0 && s.usage > 0);
  assert.ok(!gw.logs.some((l) => l.includes('quota plugin without a store')), 'no request lost its store');
  return b.usage + s.usage;
}

describe('reload with quota-metered requests in flight', () => {
  let mock: ScriptedUpstream;
  let held: Map<string, () => void>;
  let redis: RedisServerHandle;
  before(async () => {
    ({ up: mock, held } = await holdingUpstream());
    redis = await startRedis();
  });
  after(async () => {
    await mock?.close();
    await redis?.stop();
  });

  it('policy local: both complete and are charged; the counters survive the reload', async () => {
    await avoidWindowEdge(WINDOW, 30_000);
    const gw = await startSluiceProcess(config(mock.url, 100_000, {}));
    try {
      const used = await reloadDuringRequests(gw, held, config(mock.url, 200_000, {}));
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(MSG) });
      const u = (await r.json() as { usage: { total_tokens: number } }).usage.total_tokens;
      assert.equal(r.headers.get('x-ai-ratelimit-remaining-inst'), String(200_000 - used - u), 'the new limit, and what the in-flight requests used');
    } finally { await gw.stop(); }
  });

  it('policy redis, same store: both complete and Redis has their usage', async () => {
    await avoidWindowEdge(WINDOW, 30_000);
    const quota = { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_database: 2 };
    const gw = await startSluiceProcess(config(mock.url, 100_000, quota));
    try {
      const used = await reloadDuringRequests(gw, held, config(mock.url, 200_000, quota));
      gw.signal('SIGTERM');
      assert.equal(await gw.exited, 0);
      const totals = await redisTotals({ ...redis, database: 2 }, 'r/metered/');
      assert.equal(totals.consumed, used);
      assert.equal(totals.reserved, 0);
    } finally { await gw.stop(); }
  });

  it('policy redis, the store replaced: the old one serves its requests to the end, then closes', async () => {
    await avoidWindowEdge(WINDOW, 30_000);
    const before = { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port, redis_database: 3 };
    const afterQuota = { ...before, redis_database: 4 };
    const gw = await startSluiceProcess(config(mock.url, 100_000, before));
    try {
      const used = await reloadDuringRequests(gw, held, config(mock.url, 200_000, afterQuota));
      await eventually('the old store is closed', () => gw.logs.some((l) => l.includes('quota store no longer used')));
      const closedAt = gw.logs.findIndex((l) => l.includes('quota store no longer used'));
      assert.ok(closedAt >= 0);
      const totals = await redisTotals({ ...redis, database: 3 }, 'r/metered/');
      assert.equal(totals.consumed, used, 'the in-flight requests were charged to the store they started on');
      assert.equal(totals.reserved, 0);
      // New requests use the new store.
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(MSG) });
      assert.equal(r.status, 200);
      gw.signal('SIGTERM');
      assert.equal(await gw.exited, 0);
      const fresh = await redisTotals({ ...redis, database: 4 }, 'r/metered/');
      assert.ok(fresh.consumed > 0);
    } finally { await gw.stop(); }
  });
});
