// Token accounting through the whole gateway on the local policy: concurrency bound, streams (complete,
// aborted, usage-less), released reservations, reloads that edit a limit, expressions and header styles.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { eventually, metric } from '../helpers/metrics.ts';
import { avoidWindowEdge } from '../helpers/gateway.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'Count to ten please' }] };

function route(mockUrl: string, arl: Record<string, unknown>, id = 'q') {
  return { id, uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('inst', mockUrl)] }, 'ai-rate-limiting': arl } };
}

/** A request the quota admits but whose upstream fails with 503 before producing any token. */
async function failedAttempt(gw: TestGateway): Promise<void> {
  const r = await post(`${gw.url}/v1/chat/completions`, MSG, { 'x-mock-status': '503' });
  assert.equal(r.status, 503);
}

describe('token accounting (local policy)', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ completionTokens: 20, chunks: 10 }); });
  after(async () => { await mock?.close(); });

  it('50 concurrent requests overshoot the limit by no more than one request', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 500, time_window: 60 })] });
    try {
      const results = await Promise.all(Array.from({ length: 50 }, () => post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 20 })));
      const served = results.filter((r) => r.status === 200);
      const rejected = results.filter((r) => r.status === 429);
      assert.equal(served.length + rejected.length, 50);
      const charged = served.reduce((s, r) => s + r.body.usage.total_tokens, 0);
      const biggest = Math.max(...served.map((r) => r.body.usage.total_tokens));
      assert.ok(charged <= 500 + biggest, `charged ${charged} > limit + one request (${biggest})`);
      assert.ok(charged >= 500 - biggest, `admission too strict: charged only ${charged}`);
      assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="q"/), charged);
    } finally { await gw.close(); }
  });

  it('a streamed response is charged its usage; an aborted stream is charged the tokens produced', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 100000, time_window: 60 })] });
    try {
      const head = async () => Number((await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 1 })).headers.get('x-ai-ratelimit-remaining-inst'));
      const r0 = await head();
      const s = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...MSG, stream: true, max_tokens: 40 }) });
      await s.text();
      const r1 = await head();
      const oneTokenAnswer = r0 - r1; // cost of the stream plus one 1-token answer
      assert.ok(oneTokenAnswer >= 40, `stream charged ${oneTokenAnswer}`);

      const ac = new AbortController();
      const a = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', signal: ac.signal,
        headers: { 'content-type': 'application/json', 'x-mock-chunk-delay-ms': '50', 'x-mock-chunks': '40' },
        body: JSON.stringify({ ...MSG, stream: true, max_tokens: 400 }),
      });
      const reader = (a.body as ReadableStream<Uint8Array>).getReader();
      for (let i = 0; i < 4; i++) await reader.read();
      ac.abort();
      await reader.cancel().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 300));
      const r2 = await head();
      const abortedCost = r1 - r2;
      assert.ok(abortedCost > 10, `the aborted stream's produced tokens are charged (${abortedCost})`);
      assert.ok(abortedCost < 400, `but not its whole reservation (${abortedCost})`);
      assert.ok(await metric(gw, /^sluice_usage_estimated_total\{route="q",reason="client_abort"\}/) >= 1);
    } finally { await gw.close(); }
  });

  it('a usage-less stream is charged from its counted text, with a metric', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 100000, time_window: 60 })] });
    try {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-usage': 'off' }, body: JSON.stringify({ ...MSG, stream: true, max_tokens: 30 }) });
      await r.text();
      const after = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 1 });
      const used = 100000 - Number(after.headers.get('x-ai-ratelimit-remaining-inst'));
      assert.ok(used >= 30 + after.body.usage.total_tokens, `used ${used}`);
      assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="q",reason="no_usage"\}/), 1);
    } finally { await gw.close(); }
  });

  it('a failed attempt releases its reservation: nothing is charged', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 1000, time_window: 60 })] });
    try {
      for (let i = 0; i < 5; i++) await failedAttempt(gw);
      const ok = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      assert.equal(Number(ok.headers.get('x-ai-ratelimit-remaining-inst')), 1000 - ok.body.usage.total_tokens);
    } finally { await gw.close(); }
  });

  it('a client that leaves before its request reached the upstream is not charged; after it was written, the prompt is', async () => {
    await avoidWindowEdge(60);
    // Both servers accept and never answer. Over TLS the handshake never completes, so the request is never
    // written; over plain TCP it is written at once and the upstream holds the prompt.
    const got: Buffer[] = [];
    let accepted = 0;
    const silent = net.createServer((c) => { accepted++; c.on('data', (d: Buffer) => got.push(d)); c.on('error', () => undefined); });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    const inst = (scheme: string) => mockInstance('inst', `${scheme}://127.0.0.1:${port}`);
    // Accepted sockets are destroyed with the server: a hanging TLS handshake must not keep the test file alive.
    const sockets = new Set<net.Socket>();
    silent.on('connection', (c) => { sockets.add(c); c.on('close', () => sockets.delete(c)); });
    const closeSilent = () => { for (const c of sockets) c.destroy(); silent.close(); };
    let gw: TestGateway;
    let closed = false;
    try {
      gw = await startGateway({ routes: [
        { id: 'tls', uri: '/tls', plugins: { 'ai-proxy-multi': { instances: [inst('https')] }, 'ai-rate-limiting': { limit: 100000, time_window: 60 } } },
        { id: 'tcp', uri: '/tcp', plugins: { 'ai-proxy-multi': { instances: [inst('http')] }, 'ai-rate-limiting': { limit: 100000, time_window: 60 } } },
      ] });
    } catch (err) {
      closeSilent();
      throw err;
    }
    const aborted = (route: string) => metric(gw, new RegExp(`^sluice_upstream_attempts_total\\{route="${route}",.*outcome="aborted"`));
    const leave = async (path: string, arrived: () => boolean) => {
      const ac = new AbortController();
      const p = fetch(`${gw.url}${path}`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...MSG, max_tokens: 5 }) }).catch(() => undefined);
      await eventually(`${path}: the upstream saw the request's connection`, async () => arrived());
      ac.abort();
      await p;
      await eventually(`${path}: the gateway recorded the abort`, async () => await aborted(path.slice(1)) > 0);
    };
    try {
      await leave('/tls', () => accepted > 0);
      assert.equal(Buffer.concat(got).includes('Count to ten'), false, 'no request bytes went out over TLS');
      assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="tls"/), 0, 'never written: not charged');
      await leave('/tcp', () => Buffer.concat(got).includes('Count to ten'));
      await eventually('the written prompt is charged', async () => await metric(gw, /^sluice_quota_tokens_charged_total\{route="tcp"/) > 0);
      assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="tls"/), 0);
      // Cut by a shutdown while still in the handshake: not charged either.
      const seen = accepted;
      const pending = fetch(`${gw.url}/tls`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...MSG, max_tokens: 5 }) }).then((r) => r.status, () => 0);
      await eventually('the upstream saw the connection', async () => accepted > seen);
      closed = true;
      await gw.handle.close({ drainMs: 200 });
      assert.equal(await pending, 503);
      const text = await gw.handle.metrics.registry.metrics();
      assert.equal(text.split('\n').filter((l) => l.startsWith('sluice_quota_tokens_charged_total{route="tls"')).length, 0, 'nothing charged to the TLS route');
    } finally {
      if (!closed) await gw.close();
      closeSilent();
    }
  });

  it('a request body the upstream never took whole (it does not read) is not charged when the client leaves', async () => {
    await avoidWindowEdge(60);
    const held = new Set<net.Socket>();
    // Accepts and never reads: a 7.5 MB body cannot all reach the kernel's buffers, so the request is never written.
    const stuck = net.createServer({ pauseOnConnect: true }, (c) => { held.add(c); c.on('error', () => undefined); });
    await new Promise<void>((r) => stuck.listen(0, '127.0.0.1', r));
    const port = (stuck.address() as net.AddressInfo).port;
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway({ routes: [{ id: 'big', uri: '/big', plugins: {
        'ai-proxy-multi': { instances: [mockInstance('inst', `http://127.0.0.1:${port}`)] }, 'ai-rate-limiting': { limit: 100_000_000, time_window: 60 } } }] });
      const g = gw;
      const ac = new AbortController();
      const p = fetch(`${g.url}/big`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...MSG, max_tokens: 5, messages: [{ role: 'user', content: 'word '.repeat(1_500_000) }] }) }).catch(() => undefined);
      await eventually('the upstream took the connection', async () => held.size > 0);
      ac.abort();
      await p;
      await eventually('the gateway recorded the abort', async () => await metric(g, /^sluice_upstream_attempts_total\{route="big",.*outcome="aborted"/) > 0);
      assert.equal(await metric(g, /^sluice_quota_tokens_charged_total\{route="big"/), 0);
    } finally {
      await gw?.close();
      for (const c of held) c.destroy();
      stuck.close();
    }
  });

  it('a 429 caused only by running requests\' reservations says Retry-After 1, not the window\'s end', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 300, time_window: 60 })] });
    try {
      // A slow stream reserves nearly the whole quota; nothing is consumed yet.
      const ac = new AbortController();
      const s = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', signal: ac.signal,
        headers: { 'content-type': 'application/json', 'x-mock-chunk-delay-ms': '200', 'x-mock-chunks': '50' },
        body: JSON.stringify({ ...MSG, stream: true, max_tokens: 290 }),
      });
      try {
        const held = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
        assert.equal(held.status, 429);
        assert.equal(held.headers.get('retry-after'), '1');
        assert.equal(held.headers.get('x-ai-ratelimit-remaining-inst'), '0');
        assert.ok(Number(held.headers.get('x-ai-ratelimit-reset-inst')) > 1, 'the window\'s reset is still the window\'s');
      } finally {
        ac.abort();
        await s.body?.cancel().catch(() => undefined);
      }
      // Spent by consumed tokens: the window's end.
      const gw2 = await startGateway({ routes: [route(mock.url, { limit: 10, time_window: 60 })] });
      try {
        assert.equal((await post(`${gw2.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 })).status, 200);
        const spent = await post(`${gw2.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
        assert.equal(spent.status, 429);
        assert.ok(Number(spent.headers.get('retry-after')) > 1, `retry-after ${spent.headers.get('retry-after')}`);
      } finally { await gw2.close(); }
    } finally { await gw.close(); }
  });

  it('every instance spent: Retry-After is when the first of them has room, not the last', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [{ id: 'fb', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { fallback_strategy: ['rate_limiting'], instances: [mockInstance('a', mock.url, { priority: 2 }), mockInstance('b', mock.url, { priority: 1 })] },
      'ai-rate-limiting': { instances: [{ name: 'a', limit: 10, time_window: 60 }, { name: 'b', limit: 10, time_window: 3600 }] },
    } }] });
    try {
      // a serves and is spent; b serves and is spent; then nothing has room.
      for (let i = 0; i < 2; i++) assert.equal((await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 })).status, 200);
      const r = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      assert.equal(r.status, 429);
      assert.ok(Number(r.headers.get('x-ai-ratelimit-reset-b')) > 60, 'b waits for its hour');
      const after = Number(r.headers.get('retry-after'));
      assert.ok(after >= 1 && after <= 60, `retry-after ${after}: a's window ends within a minute`);
    } finally { await gw.close(); }
  });

  it('editing a limit on reload keeps what was consumed', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 1000, time_window: 60 })] });
    try {
      const a = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      const used = a.body.usage.total_tokens;
      gw.handle.reload(validateConfig({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, routes: [route(mock.url, { limit: 2000, time_window: 60 })] }));
      const b = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      assert.equal(b.headers.get('x-ai-ratelimit-limit-inst'), '2000');
      assert.equal(Number(b.headers.get('x-ai-ratelimit-remaining-inst')), 2000 - used - b.body.usage.total_tokens);
    } finally { await gw.close(); }
  });

  it('limit_strategy expression charges cost_expr over the usage', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 10000, time_window: 60, limit_strategy: 'expression', cost_expr: 'prompt_tokens + 4 * completion_tokens' })] });
    try {
      const r = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 10 });
      const u = r.body.usage;
      assert.equal(Number(r.headers.get('x-ai-ratelimit-remaining-inst')), 10000 - (u.prompt_tokens + 4 * u.completion_tokens));
    } finally { await gw.close(); }
  });

  it('prompt_tokens and completion_tokens strategies count only their part', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { instances: [{ name: 'inst', limit: 10000, time_window: 60, limit_strategy: 'completion_tokens' }] })] });
    try {
      const r = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 7 });
      assert.equal(r.headers.get('x-ai-ratelimit-remaining-inst'), String(10000 - 7));
    } finally { await gw.close(); }
  });

  it('sends OpenAI-style x-ratelimit-*-tokens headers, and the IETF draft form on request', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 5000, time_window: 60 }), { ...route(mock.url, { limit: 5000, time_window: 60, header_style: 'ietf' }, 'ietf'), uri: '/ietf/v1/chat/completions' }] });
    try {
      const r = await post(`${gw.url}/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      assert.equal(r.headers.get('x-ratelimit-limit-tokens'), '5000');
      assert.equal(Number(r.headers.get('x-ratelimit-remaining-tokens')), 5000 - r.body.usage.total_tokens);
      assert.ok(r.headers.get('x-ratelimit-reset-tokens'));
      const i = await post(`${gw.url}/ietf/v1/chat/completions`, { ...MSG, max_tokens: 5 });
      assert.match(i.headers.get('ratelimit-policy') ?? '', /q=5000/);
      assert.match(i.headers.get('ratelimit') ?? '', /r=\d+/);
    } finally { await gw.close(); }
  });

  it('show_limit_quota_header: false hides the headers but still limits', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [route(mock.url, { limit: 10, time_window: 60, show_limit_quota_header: false })] });
    try {
      const a = await post(`${gw.url}/v1/chat/completions`, MSG);
      assert.equal(a.status, 200);
      assert.equal(a.headers.get('x-ai-ratelimit-limit-inst'), null);
      const b = await post(`${gw.url}/v1/chat/completions`, MSG);
      assert.equal(b.status, 429);
      assert.equal(b.headers.get('x-ai-ratelimit-limit-inst'), null);
      assert.ok(b.headers.get('retry-after'));
    } finally { await gw.close(); }
  });
});
