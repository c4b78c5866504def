// The gateway end to end: real uWS front end, worker threads, undici, mock upstreams on loopback, driven
// with the real openai SDK and plain fetch. Covers proxying, streaming, abort, fallback and every error.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { exchange } from '../helpers/raw-http.ts';
import { createServer, type Server } from 'node:http';
import OpenAI from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/free-port.ts';

/** An upstream that always answers one error status, OpenAI style. */
async function fixedStatusServer(status: number): Promise<Server> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `fixed ${status}`, type: status === 429 ? 'rate_limit_error' : 'server_error', code: null } }));
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

const MESSAGES = [{ role: 'system', content: 'You are a mathematician' }, { role: 'user', content: 'What is 1+1?' }];

for (const workers of [1, 2]) {
  describe(`gateway proxy (workers: ${workers})`, () => {
    let a: MockUpstream;
    let b: MockUpstream;
    let gw: TestGateway;
    let deadPort: number;
    let hang: Server;
    let hangPort: number;
    let limited: Server;
    let broken: Server;

    before(async () => {
      a = await startMockUpstream({ name: 'a', chunks: 6 });
      b = await startMockUpstream({ name: 'b', chunks: 6 });
      deadPort = await freePort();
      hang = createServer(() => { /* never answers: exercises the first-byte timeout */ });
      await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
      hangPort = (hang.address() as { port: number }).port;
      limited = await fixedStatusServer(429);
      broken = await fixedStatusServer(503);
      const limitedUrl = `http://127.0.0.1:${(limited.address() as { port: number }).port}`;
      const brokenUrl = `http://127.0.0.1:${(broken.address() as { port: number }).port}`;
      gw = await startGateway({
        workers,
        limits: { max_body_bytes: 64 * 1024, upstream_first_byte_timeout_ms: 400, upstream_connect_timeout_ms: 500 },
        routes: [
          { id: 'chat', uri: '/v1/chat/completions', methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [mockInstance('a', a.url)] } } },
          { id: 'metered', uri: '/metered/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('a', a.url)] }, 'ai-rate-limiting': { limit: 100000000, time_window: 60 } } },
          { id: 'completions', uri: '/v1/completions', methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [{ ...mockInstance('a', a.url), override: { endpoint: `${a.url}/v1/completions` } }] } } },
          {
            id: 'fallback', uri: '/fallback/v1/chat/completions', methods: ['POST'],
            plugins: { 'ai-proxy-multi': { fallback_strategy: ['http_429', 'http_5xx'], instances: [
              mockInstance('dead', `http://127.0.0.1:${deadPort}`, { priority: 2 }),
              mockInstance('a', a.url, { priority: 1 }),
              mockInstance('b', b.url, { priority: 0 }),
            ] } },
          },
          { id: 'status-fallback', uri: '/status-fallback/v1/chat/completions', plugins: { 'ai-proxy-multi': { fallback_strategy: ['http_429', 'http_5xx'], instances: [mockInstance('limited', limitedUrl, { priority: 2 }), mockInstance('broken', brokenUrl, { priority: 1 }), mockInstance('a', a.url, { priority: 0 })] } } },
          { id: 'no-status-fallback', uri: '/no-status-fallback/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('limited', limitedUrl, { priority: 1 }), mockInstance('a', a.url, { priority: 0 })] } } },
          { id: 'dead', uri: '/dead/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('dead', `http://127.0.0.1:${deadPort}`)] } } },
          { id: 'slow', uri: '/slow/v1/chat/completions', plugins: {
            'ai-proxy-multi': { instances: [mockInstance('hang', `http://127.0.0.1:${hangPort}`)] },
            'ai-rate-limiting': { instances: [{ name: 'hang', limit: 5000, time_window: 60 }] },
          } },
          { id: 'auth', uri: '/auth/*', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('a', a.url)] } } },
        ],
        consumers: [{ username: 'john', plugins: { 'key-auth': { key: 'john-key' } } }],
      });
    });

    after(async () => {
      await gw?.close();
      await a?.close();
      await b?.close();
      for (const s of [hang, limited, broken]) { s?.closeAllConnections(); await new Promise((r) => s?.close(r)); }
    });

    it('relays a non-streaming completion via the openai SDK, model rewritten, usage intact', async () => {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'client-key', maxRetries: 0 });
      const r = await client.chat.completions.create({ model: 'whatever', messages: MESSAGES as never, max_tokens: 12 });
      assert.equal(r.model, 'a-model');
      assert.equal(r.usage?.completion_tokens, 12);
      assert.ok((r.usage?.prompt_tokens ?? 0) > 0);
      assert.equal(r.usage?.total_tokens, (r.usage?.prompt_tokens ?? 0) + 12);
    });

    it('never forwards the client credential and sets the instance auth header', async () => {
      const r = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { authorization: 'Bearer client-secret', apikey: 'client-secret', 'x-mock-echo-headers': '1' });
      assert.equal(r.status, 200);
      const seen = r.body.mock_request_headers as Record<string, string>;
      assert.equal(seen.authorization, 'Bearer sk-a');
      assert.equal(seen.apikey, undefined);
      assert.ok(!JSON.stringify(seen).includes('client-secret'));
    });

    it('streams chunk by chunk through the SDK and strips the usage chunk the client did not ask for', async () => {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const stream = await client.chat.completions.create({ model: 'm', messages: MESSAGES as never, stream: true, max_tokens: 12 });
      let chunks = 0;
      let text = '';
      let sawUsage = false;
      for await (const c of stream) {
        chunks++;
        text += c.choices[0]?.delta?.content ?? '';
        if (c.usage) sawUsage = true;
      }
      assert.ok(chunks >= 6, `expected several chunks, got ${chunks}`);
      assert.ok(text.length > 0);
      assert.equal(sawUsage, false, 'usage chunk must be stripped when include_usage was not requested');
    });

    it('keeps the usage chunk when the client asks for it', async () => {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const stream = await client.chat.completions.create({ model: 'm', messages: MESSAGES as never, stream: true, max_tokens: 9, stream_options: { include_usage: true } });
      let usage: OpenAI.CompletionUsage | undefined;
      for await (const c of stream) if (c.usage) usage = c.usage;
      assert.equal(usage?.completion_tokens, 9);
    });

    it('delivers streamed frames incrementally, not buffered', async () => {
      const r = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-chunk-delay-ms': '60', 'x-mock-chunks': '4' },
        body: JSON.stringify({ model: 'm', messages: MESSAGES, stream: true }),
      });
      assert.equal(r.status, 200);
      assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
      const times: number[] = [];
      const t0 = performance.now();
      for await (const _ of r.body as unknown as AsyncIterable<Uint8Array>) times.push(performance.now() - t0);
      assert.ok(times.length >= 3, `got ${times.length} reads`);
      assert.ok(times[times.length - 1]! - times[0]! >= 120, 'frames must arrive spread over time');
    });

    it('proxies /v1/completions', async () => {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'k', maxRetries: 0 });
      const r = await client.completions.create({ model: 'm', prompt: 'Say hi', max_tokens: 5 });
      assert.equal(r.usage?.completion_tokens, 5);
    });

    it('cancels the upstream request when the client aborts a stream', async () => {
      a.reset();
      const ac = new AbortController();
      const r = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', signal: ac.signal,
        headers: { 'content-type': 'application/json', 'x-mock-chunk-delay-ms': '100', 'x-mock-chunks': '50' },
        body: JSON.stringify({ model: 'm', messages: MESSAGES, stream: true }),
      });
      const reader = (r.body as ReadableStream<Uint8Array>).getReader();
      await reader.read();
      ac.abort();
      await reader.cancel().catch(() => undefined);
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && a.stats().inFlight > 0) await new Promise((res) => setTimeout(res, 20));
      assert.equal(a.stats().inFlight, 0, 'upstream stream must be cancelled');
      assert.ok(a.stats().aborted >= 1);
    });

    it('falls back past a dead instance (connect error) to the next priority', async () => {
      const r = await post(`${gw.url}/fallback/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 200);
      assert.equal(r.body.model, 'a-model');
    });

    it('falls back on 429 and 5xx before the first byte when fallback_strategy allows', async () => {
      a.reset();
      const r = await post(`${gw.url}/status-fallback/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 200);
      assert.equal(r.body.model, 'a-model');
      assert.equal(a.stats().requests, 1);
      const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      assert.match(m, /sluice_fallbacks_total\{route="status-fallback",from_instance="limited",reason="http_429"\} 1/);
      assert.match(m, /sluice_fallbacks_total\{route="status-fallback",from_instance="broken",reason="http_5xx"\} 1/);
    });

    it('does not fall back on 429 when fallback_strategy does not list it: the upstream answer is relayed', async () => {
      a.reset();
      const r = await post(`${gw.url}/no-status-fallback/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 429);
      assert.equal(r.body.error.type, 'rate_limit_error');
      assert.equal(a.stats().requests, 0);
    });

    it('forwards fault headers so a per-request upstream 503 is relayed when no fallback applies', async () => {
      const r = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { 'x-mock-status': '503' });
      assert.equal(r.status, 503);
    });

    it('answers 400 for malformed JSON and for a body without messages', async () => {
      const bad = await post(`${gw.url}/v1/chat/completions`, '{"model":');
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.type, 'invalid_request_error');
      assert.equal(typeof bad.body.error.message, 'string');
      const noMsgs = await post(`${gw.url}/v1/chat/completions`, { model: 'm' });
      assert.equal(noMsgs.status, 400);
    });

    it('answers 401 without or with a wrong key under key-auth, 200 with the right one', async () => {
      const none = await post(`${gw.url}/auth/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(none.status, 401);
      assert.equal(none.body.error.code, 'SLC_UNAUTHORIZED');
      const wrong = await post(`${gw.url}/auth/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { apikey: 'nope' });
      assert.equal(wrong.status, 401);
      const ok = await post(`${gw.url}/auth/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { apikey: 'john-key' });
      assert.equal(ok.status, 200);
      const bearer = await post(`${gw.url}/auth/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { authorization: 'Bearer john-key' });
      assert.equal(bearer.status, 200);
      // An empty apikey header is no key: the Bearer key, then the query key, are read (it hid them with a 401).
      const emptyThenBearer = await post(`${gw.url}/auth/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { apikey: '', authorization: 'Bearer john-key' });
      assert.equal(emptyThenBearer.status, 200, emptyThenBearer.text);
      const emptyThenQuery = await post(`${gw.url}/auth/v1/chat/completions?apikey=john-key`, { model: 'm', messages: MESSAGES }, { apikey: '', authorization: 'Bearer ' });
      assert.equal(emptyThenQuery.status, 200, emptyThenQuery.text);
    });

    it('answers 404 for an unknown path and 405 for a wrong method', async () => {
      const nf = await post(`${gw.url}/nowhere`, { model: 'm', messages: MESSAGES });
      assert.equal(nf.status, 404);
      assert.equal(nf.body.error.code, 'SLC_NOT_FOUND');
      const r = await fetch(`${gw.url}/v1/chat/completions`);
      assert.equal(r.status, 405);
      assert.equal(((await r.json()) as any).error.code, 'SLC_METHOD_NOT_ALLOWED');
      // Counted as the front end's own refusals (404s and 405s have no route to be counted under).
      const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      assert.match(m, /sluice_frontend_rejected_total\{reason="not_found"\} [1-9]/);
      assert.match(m, /sluice_frontend_rejected_total\{reason="method_not_allowed"\} [1-9]/);
    });

    it('answers 413 for a body over max_body_bytes', async () => {
      const big = { model: 'm', messages: [{ role: 'user', content: 'x'.repeat(70 * 1024) }] };
      const r = await post(`${gw.url}/v1/chat/completions`, big);
      assert.equal(r.status, 413);
      assert.equal(r.body.error.code, 'SLC_BODY_TOO_LARGE');
    });

    it('answers 502 when the only upstream is unreachable', async () => {
      const r = await post(`${gw.url}/dead/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 502);
      assert.equal(r.body.error.code, 'SLC_UPSTREAM_ERROR');
    });

    it('answers 504 when the upstream does not answer in time', async () => {
      const r = await post(`${gw.url}/slow/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 504);
      assert.equal(r.body.error.code, 'SLC_UPSTREAM_TIMEOUT');
      // The instance's quota shows, as on a relayed upstream error, though its attempt's hold is released.
      assert.equal(r.headers.get('x-ai-ratelimit-limit-hang'), '5000');
      assert.equal(r.headers.get('x-ai-ratelimit-remaining-hang'), '5000');
    });

    it('survives garbage: odd methods, headers and bodies never crash the process', async () => {
      const junk = [Buffer.from([0xff, 0xfe, 0x00]), '[]', 'null', '{"messages":"x"}', '{"messages":[],"stream":"yes"}', '{"messages":[{"role":"user","content":1}],"max_tokens":-1}'];
      for (const body of junk) {
        const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
        assert.equal(r.status, 400, `body ${String(body)}`);
        await r.text();
      }
      const ok = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(ok.status, 200);
    });

    it('tokenizes a large prompt on a worker thread', async () => {
      const big = { model: 'm', messages: [{ role: 'user', content: 'lorem ipsum dolor '.repeat(2000) }], max_tokens: 3 };
      const r = await post(`${gw.url}/metered/v1/chat/completions`, big);
      assert.equal(r.status, 200);
      const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      assert.match(m, /sluice_worker_tasks_total\{kind="prepare",outcome="ok"\} [1-9]/);
    });


    it('serves Prometheus metrics, health and readiness on the admin port', async () => {
      const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      assert.match(m, /sluice_http_requests_total\{route="chat",instance="a",status="200"\}/);
      assert.match(m, /sluice_tokens_total\{route="chat",instance="a",consumer="",kind="completion"\}/);
      assert.match(m, /sluice_upstream_first_byte_seconds_bucket/);
      assert.ok(!m.includes('client-secret') && !m.includes('sk-a'), 'no secrets in metrics');
      assert.equal((await fetch(`${gw.adminUrl}/healthz`)).status, 200);
      assert.equal((await fetch(`${gw.adminUrl}/readyz`)).status, 200);
      // Load balancers probe with HEAD too: the GET's status and headers, no body. Other methods: 405 with Allow.
      for (const path of ['/healthz', '/readyz', '/metrics']) {
        const head = await fetch(`${gw.adminUrl}${path}`, { method: 'HEAD' });
        assert.equal(head.status, 200, path);
        assert.equal(await head.text(), '', path);
        const post = await fetch(`${gw.adminUrl}${path}`, { method: 'POST', body: 'x' });
        assert.equal(post.status, 405, path);
        assert.equal(post.headers.get('allow'), 'GET, HEAD');
        assert.equal((await post.json() as { error: { code: string } }).error.code, 'SLC_METHOD_NOT_ALLOWED');
      }
      assert.equal((await fetch(`${gw.adminUrl}/nope`)).status, 404);
      // HAProxy's httpchk and many monitors probe with HTTP/1.0, with or without a Host: answered, then closed.
      for (const probe of ['GET /healthz HTTP/1.0\r\n\r\n', 'HEAD /readyz HTTP/1.0\r\nHost: lb\r\n\r\n']) {
        const r = await exchange(Number(new URL(gw.adminUrl).port), probe, { waitMs: 10_000 });
        assert.match(r.raw, /^HTTP\/1\.[01] 200 /, probe);
        assert.equal(r.closed, true, probe);
      }
    });
  });
}

describe('gateway streaming backpressure', () => {
  it('a client that stops reading pauses the upstream read instead of buffering the stream', async () => {
    const { request } = await import('node:http');
    const mock = await startMockUpstream({ name: 'big' });
    const gw = await startGateway({ routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('big', mock.url)] } } }] });
    try {
      // 100k frames, ~20 MB of SSE: far more than the socket buffers between the processes can hold.
      const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'go' }], stream: true, max_tokens: 1_000_000 });
      let received = 0;
      const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
        const req = request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-chunks': '100000' } }, resolve);
        req.on('error', reject);
        req.end(body);
      });
      assert.equal(res.statusCode, 200);
      res.pause();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(mock.stats().inFlight, 1, 'the upstream is held back while the client does not read');
      const rss = process.memoryUsage().rss;
      res.on('data', (c: Buffer) => { received += c.length; });
      res.resume();
      await new Promise<void>((resolve, reject) => { res.on('end', resolve); res.on('error', reject); });
      assert.ok(received > 15_000_000, `received ${received} bytes`);
      assert.ok(process.memoryUsage().rss - rss < 200 * 1024 * 1024, 'the gateway did not buffer the stream whole');
      assert.equal(mock.stats().inFlight, 0);
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});

describe('very large bodies on a route without quotas', () => {
  it('are parsed on a worker thread (the event loop stays free), smaller ones inline', async () => {
    const mock = await startMockUpstream({ name: 'big-body' });
    const gw = await startGateway({ routes: [{ id: 'free', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('big-body', mock.url)] } } }] });
    try {
      const tasks = async (): Promise<number> => {
        const line = (await (await fetch(`${gw.adminUrl}/metrics`)).text()).split('\n').find((l) => l.startsWith('sluice_worker_tasks_total{kind="prepare",outcome="ok"}'));
        return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
      };
      const body = (n: number) => ({ model: 'm', messages: Array.from({ length: n }, () => ({ role: 'user', content: 'a' })) });
      assert.equal((await post(`${gw.url}/v1/chat/completions`, body(3000))).status, 200, 'about 100 KB: inline');
      assert.equal(await tasks(), 0);
      assert.equal((await post(`${gw.url}/v1/chat/completions`, body(9000))).status, 200, 'about 300 KB: on a worker');
      assert.equal(await tasks(), 1);
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});

describe('consumer quotas and routes without key-auth', () => {
  it('a route no consumer can be identified on has no quotas (no X-Sluice-Usage, no tokenizer); a key-auth route has the consumer\'s', async () => {
    const mock = await startMockUpstream({ name: 'cq' });
    const gw = await startGateway({
      routes: [
        { id: 'open', uri: '/open/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('o', mock.url)] } } },
        { id: 'keyed', uri: '/keyed/v1/chat/completions', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('k', mock.url)] } } },
      ],
      consumers: [{ username: 'bob', plugins: { 'key-auth': { key: 'bob-key' }, 'ai-rate-limiting': { limit: 1000, time_window: 60 } } }],
    });
    try {
      const open = await post(`${gw.url}/open/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(open.status, 200);
      assert.equal(open.headers.get('x-sluice-usage'), null);
      const keyed = await post(`${gw.url}/keyed/v1/chat/completions`, { model: 'm', messages: MESSAGES }, { apikey: 'bob-key' });
      assert.equal(keyed.status, 200);
      assert.match(keyed.headers.get('x-sluice-usage') ?? '', /^prompt=\d+/);
      assert.equal(keyed.headers.get('x-ai-ratelimit-limit-k'), '1000');
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});

describe('GET /v1/models', () => {
  it('lists the models the route\'s instances send (openai SDK models.list), after key-auth; nothing goes upstream', async () => {
    const mock = await startMockUpstream({ name: 'models' });
    const inst = (name: string, model?: string) => ({ ...mockInstance(name, mock.url), options: model === undefined ? {} : { model } });
    const gw = await startGateway({
      routes: [
        { id: 'multi', uri: '/v1/*', plugins: { 'ai-proxy-multi': { instances: [inst('a', 'gpt-4o-mini'), inst('b', 'gpt-4o'), inst('c', 'gpt-4o-mini'), inst('d')] } } },
        { id: 'slashed', uri: '/s/v1/*', plugins: { 'ai-proxy-multi': { instances: [inst('s', 'meta-llama/llama-3.1-8b-instruct'), inst('t', 'my model')] } } },
        { id: 'keyed', uri: '/k/v1/*', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [inst('k', 'claude-ish')] } } },
      ],
      consumers: [{ username: 'bob', plugins: { 'key-auth': { key: 'bob-key' } } }],
    });
    try {
      const before = mock.requests().length;
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'anything', maxRetries: 0 });
      const ids: string[] = [];
      for await (const m of client.models.list()) {
        assert.equal(m.object, 'model');
        assert.ok(Number.isInteger(m.created) && m.created > 0);
        ids.push(m.id);
      }
      assert.deepEqual(ids, ['gpt-4o-mini', 'gpt-4o'], 'each fixed model once; an instance passing the client\'s model names none');
      const head = await fetch(`${gw.url}/v1/models`, { method: 'HEAD' });
      assert.equal(head.status, 200);
      const keyed = new OpenAI({ baseURL: `${gw.url}/k/v1`, apiKey: 'wrong', maxRetries: 0 });
      await assert.rejects(keyed.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
      const bob = new OpenAI({ baseURL: `${gw.url}/k/v1`, apiKey: 'bob-key', maxRetries: 0 });
      assert.deepEqual((await bob.models.list()).data.map((m) => m.id), ['claude-ish']);
      // Retrieve: a listed model, or 404 in the client's shape.
      assert.equal((await client.models.retrieve('gpt-4o')).id, 'gpt-4o');
      await assert.rejects(client.models.retrieve('not-sent'), (e: unknown) => e instanceof OpenAI.NotFoundError);
      // Every listed id comes back from retrieve: the SDK escapes `/` and spaces in it; a slash may also come as it is.
      const slashed = new OpenAI({ baseURL: `${gw.url}/s/v1`, apiKey: 'anything', maxRetries: 0 });
      const listed = (await slashed.models.list()).data.map((m) => m.id);
      assert.deepEqual(listed, ['meta-llama/llama-3.1-8b-instruct', 'my model']);
      for (const id of listed) assert.equal((await slashed.models.retrieve(id)).id, id);
      assert.equal((await fetch(`${gw.url}/s/v1/models/meta-llama/llama-3.1-8b-instruct`)).status, 200);
      // Other methods on the list: 405 naming the ones it takes.
      for (const method of ['OPTIONS', 'DELETE', 'PUT']) {
        const r = await fetch(`${gw.url}/v1/models${method === 'DELETE' ? '/gpt-4o' : ''}`, { method });
        assert.equal(r.status, 405, method);
        assert.equal(r.headers.get('allow'), 'GET, HEAD');
      }
      // A Gemini v1 call under /v1/models/ is not the model list: it takes POST.
      const put = await fetch(`${gw.url}/v1/models/gemini-2.0-flash:generateContent`, { method: 'PUT' });
      assert.equal(put.status, 405);
      assert.equal(put.headers.get('allow'), 'POST');
      // The Anthropic SDK asks the same path with its version header and reads its own shape.
      const anth = (await (await fetch(`${gw.url}/v1/models`, { headers: { 'anthropic-version': '2023-06-01' } })).json()) as
        { data: { type: string; id: string }[]; has_more: boolean; first_id: string };
      assert.deepEqual(anth.data.map((m) => [m.type, m.id]), [['model', 'gpt-4o-mini'], ['model', 'gpt-4o']]);
      assert.equal(anth.has_more, false);
      assert.equal(anth.first_id, 'gpt-4o-mini');
      // Only the list paths: another GET ending in /models is not answered from the list.
      assert.notEqual((await fetch(`${gw.url}/v1/chat/completions/models`)).status, 200);
      assert.equal(mock.requests().length, before, 'nothing reached the upstream');
    } finally {
      await gw.close();
      await mock.close();
    }
  });
});

describe('key-auth decided from the head', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  before(async () => {
    mock = await startMockUpstream({ name: 'ka' });
    gw = await startGateway({
      consumers: [{ username: 'alice', plugins: { 'key-auth': { key: 'alice-key' } } }],
      routes: [
        { id: 'chat', uri: '/v1/chat/completions', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('ka', mock.url)] } } },
        { id: 'messages', uri: '/v1/messages', plugins: { 'key-auth': {}, 'ai-proxy-multi': { instances: [mockInstance('ka', mock.url)] } } },
      ],
    });
  });
  after(async () => { await gw?.close(); await mock?.close(); });

  it('a request without a valid key is refused 401 before its body: no 100 Continue, nothing uploaded', async () => {
    const { exchange } = await import('../helpers/raw-http.ts');
    const r = await exchange(gw.handle.port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n'
      + 'Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n', { waitMs: 20_000 });
    assert.equal(r.responses.length, 1, r.raw.slice(0, 200));
    assert.equal(r.responses[0]!.status, 401);
    assert.equal(r.responses[0]!.json?.error?.code, 'SLC_UNAUTHORIZED');
    assert.ok(!r.raw.includes('100 Continue'), 'no invitation to send the body');
  });

  it('the 401 is in the client API\'s own format, counted as before, and a valid key is still served', async () => {
    const anthropic = await post(`${gw.url}/v1/messages`, { model: 'claude-x', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }, { 'x-api-key': 'wrong' });
    assert.equal(anthropic.status, 401);
    assert.equal(anthropic.body?.type, 'error', anthropic.text);
    const openai = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, { authorization: 'Bearer nope' });
    assert.equal(openai.status, 401);
    assert.equal(openai.body?.error?.message, 'invalid API key');
    const ok = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, { authorization: 'Bearer alice-key' });
    assert.equal(ok.status, 200, ok.text);
    const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    assert.match(m, /sluice_http_requests_total\{route="chat",instance="",status="401"\} 2\b/);
    assert.match(m, /sluice_http_requests_total\{route="messages",instance="",status="401"\} 1\b/);
  });
});

describe('every instance failed', () => {
  it('an earlier instance\'s 429 outranks a later one that could not be reached: the client gets the 429 and its Retry-After', async () => {
    const limited = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '7' });
        res.end(JSON.stringify({ error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } }));
      });
    });
    await new Promise<void>((r) => limited.listen(0, '127.0.0.1', r));
    const closed = await freePort();
    const url = `http://127.0.0.1:${(limited.address() as { port: number }).port}`;
    const gw = await startGateway({ routes: [{ id: 'r', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { fallback_strategy: ['http_429', 'http_5xx'], instances: [
      mockInstance('limited', url, { priority: 1 }), mockInstance('gone', `http://127.0.0.1:${closed}`, { priority: 0 }),
    ] } } }] });
    try {
      const r = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: MESSAGES });
      assert.equal(r.status, 429);
      assert.equal(r.headers.get('retry-after'), '7');
      assert.equal((r.body as { error: { message: string } }).error.message, 'slow down');
      // Both were tried, in order.
      const m = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      assert.match(m, /sluice_fallbacks_total\{route="r",from_instance="limited",reason="http_429"\} 1/);
    } finally {
      await gw.close();
      await new Promise<void>((r) => limited.close(() => r()));
    }
  });
});
