// APISIX ai-proxy / ai-proxy-multi fields beyond the basics (issue 8), one case per APISIX behaviour, against a
// real gateway and loopback upstreams: `options` merged into the upstream body (options win, as in APISIX's
// openai-base driver), the reservation seeing options.max_tokens, `override.endpoint` without a path,
// `timeout`, `ssl_verify`, `keepalive`, and the fields Sluice accepts without an effect.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { reservationPolicy } from '../../src/tokens/limits.ts';
import { bodyMembers, composeUpstreamBody } from '../../src/tokens/prepare.ts';
import { prepareRequest, type PreparedRequest } from '../helpers/prepare.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/free-port.ts';

const ASK = { model: 'client-model', messages: [{ role: 'user', content: 'What is 1+1?' }], max_tokens: 100, temperature: 0.9, user: 'u-1' };
const TLS_DIR = join(import.meta.dirname, '..', 'fixtures', 'tls');

interface TinyUpstream {
  readonly url: string;
  /** TCP (or TLS) connections accepted. */
  connections: number;
  requests: number;
  close(): Promise<void>;
}

/** A loopback upstream answering every POST with one fixed chat completion; counts connections. */
async function startTinyUpstream(tls: boolean): Promise<TinyUpstream> {
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    req.resume();
    req.on('end', () => {
      state.requests++;
      const body = JSON.stringify({
        id: 'c', object: 'chat.completion', created: 1, model: 'tiny',
        choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 },
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  };
  const server: Server = tls
    ? createHttpsServer({ key: readFileSync(join(TLS_DIR, 'self-signed.key')), cert: readFileSync(join(TLS_DIR, 'self-signed.crt')) }, handler)
    : createHttpServer(handler);
  const state = {
    url: '',
    connections: 0,
    requests: 0,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
  server.on(tls ? 'secureConnection' : 'connection', () => { state.connections++; });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}

describe('APISIX ai-proxy compatibility', () => {
  let mock: MockUpstream;
  const gateways: TestGateway[] = [];
  const closers: (() => Promise<void>)[] = [];
  before(async () => { mock = await startMockUpstream({ name: 'proxy-compat' }); });
  after(async () => {
    for (const g of gateways) await g.close();
    for (const c of closers) await c();
    await mock?.close();
  });

  async function gw(plugins: Record<string, unknown>, uri = '/v1/chat/completions'): Promise<TestGateway> {
    const g = await startGateway({ routes: [{ id: 'r', uri, plugins }] });
    gateways.push(g);
    return g;
  }

  it('options are merged into the upstream body and override the client fields (APISIX: options win); other client fields pass', async () => {
    const g = await gw({
      'ai-proxy-multi': { instances: [mockInstance('a', mock.url, { options: { model: 'opt-model', temperature: 0.2, max_tokens: 7, top_p: 0.5 } })] },
    });
    mock.reset();
    const r = await post(`${g.url}/v1/chat/completions`, ASK);
    assert.equal(r.status, 200, r.text);
    const body = mock.stats().lastRequest!.body as Record<string, unknown>;
    assert.equal(body.model, 'opt-model');
    assert.equal(body.temperature, 0.2);
    assert.equal(body.max_tokens, 7);
    assert.equal(body.top_p, 0.5);
    assert.equal(body.user, 'u-1');
    assert.deepEqual(body.messages, ASK.messages);
    // Each key once: the client's overridden value is not left in the body for a parser to pick.
    const raw = JSON.stringify(body);
    assert.equal(raw.split('"temperature"').length, 2);
  });

  it('options merge the same way for a large body prepared on a worker thread (metered route)', async () => {
    const g = await gw({
      'ai-proxy-multi': { instances: [mockInstance('a', mock.url, { options: { model: 'opt-model', temperature: 0.2 } })] },
      'ai-rate-limiting': { limit: 1_000_000, time_window: 60 },
    });
    mock.reset();
    const big = { ...ASK, messages: [{ role: 'user', content: 'word '.repeat(2000) }] };
    const r = await post(`${g.url}/v1/chat/completions`, big);
    assert.equal(r.status, 200, r.text);
    const body = mock.stats().lastRequest!.body as Record<string, unknown>;
    assert.equal(body.model, 'opt-model');
    assert.equal(body.temperature, 0.2);
    assert.equal(body.max_tokens, 100);
    assert.equal(JSON.stringify(body).split('"temperature"').length, 2);
  });

  it('an instance without those options on the same route gets the client\'s own values (options are per instance)', async () => {
    const dead = await freePort();
    const g = await gw({
      'ai-proxy-multi': {
        instances: [
          { name: 'dead', provider: 'openai-compatible', priority: 1, override: { endpoint: `http://127.0.0.1:${dead}/v1/chat/completions` }, options: { temperature: 0.2, max_tokens: 7, seed: 3 } },
          mockInstance('plain', mock.url, { priority: 0, options: undefined }),
        ],
      },
    });
    mock.reset();
    const r = await post(`${g.url}/v1/chat/completions`, ASK);
    assert.equal(r.status, 200, r.text);
    const body = mock.stats().lastRequest!.body as Record<string, unknown>;
    assert.equal(body.model, 'client-model');
    assert.equal(body.temperature, 0.9);
    assert.equal(body.max_tokens, 100);
    assert.equal(body.seed, undefined);
  });

  it('options.max_tokens and options.n are what the reservation sees (APISIX sends them upstream, so they bound the answer)', () => {
    const tokens = { default_max_tokens: 256, max_reservation: 32768, models: {} };
    const body = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1000, temperature: 1 }));
    const prep = (instances: { model: string | undefined; bodyOptions?: Record<string, unknown> }[]): PreparedRequest => {
      const r = prepareRequest(body, { kind: 'chat', countPrompt: false, ...reservationPolicy(tokens, instances) });
      assert.ok(r.ok);
      return r;
    };
    assert.equal(prep([{ model: 'gpt-4o-mini', bodyOptions: { max_tokens: 50 } }]).reserveCompletion, 50);
    assert.equal(prep([{ model: 'gpt-4o-mini', bodyOptions: { max_tokens: 50, n: 3 } }]).reserveCompletion, 150);
    // The reservation bounds whichever instance serves: one instance keeps the client's 1000.
    assert.equal(prep([{ model: 'gpt-4o-mini', bodyOptions: { max_tokens: 50 } }, { model: 'gpt-4o-mini' }]).reserveCompletion, 1000);
    // A request without max_tokens: the option, not tokens.default_max_tokens.
    const bare = Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }));
    const r = prepareRequest(bare, { kind: 'chat', countPrompt: false, ...reservationPolicy(tokens, [{ model: 'gpt-4o-mini', bodyOptions: { max_tokens: 40 } }]) });
    assert.ok(r.ok);
    assert.equal(r.reserveCompletion, 40);
    // Options without counting fields leave the client's reservation alone.
    assert.equal(prep([{ model: 'gpt-4o-mini', bodyOptions: { temperature: 0 } }]).reserveCompletion, 1000);
  });

  it('the merged body is one valid JSON object with every key once, with or without a model and client fields', () => {
    const tokens = { default_max_tokens: 256, max_reservation: 32768, models: {} };
    const instances = [{ model: undefined, bodyOptions: { temperature: 0, stop: ['\n'], 'x"y': { a: 1 } } }, { model: 'm2' }];
    const policy = reservationPolicy(tokens, instances);
    const optionJson = new Map(Object.entries(instances[0]!.bodyOptions!).map(([k, v]) => [k, JSON.stringify(v)]));
    for (const client of [{ messages: [{ role: 'user', content: 'é' }], temperature: 2, stop: 'x' }, { prompt: 'p' }]) {
      const kind = 'prompt' in client ? 'completion' : 'chat';
      const r = prepareRequest(Buffer.from(JSON.stringify(client)), { kind, countPrompt: false, ...policy });
      assert.ok(r.ok);
      for (const [model, opts] of [[undefined, optionJson], ['m2', undefined]] as const) {
        const out = composeUpstreamBody(model, r.tail, bodyMembers(r.fieldKeys!, r.clientFields!, opts));
        const parsed = JSON.parse(out.toString('utf8')) as Record<string, unknown>;
        const expected: Record<string, unknown> = { ...client, ...(opts === undefined ? {} : instances[0]!.bodyOptions) };
        if (model !== undefined) expected.model = model;
        assert.deepEqual(parsed, expected);
      }
    }
  });

  it('override.endpoint given as scheme://host:port uses the surface\'s default path (APISIX: the provider path)', async () => {
    const g = await gw({ 'ai-proxy': { provider: 'openai-compatible', override: { endpoint: mock.url }, forward_headers: ['x-mock-*'] } }, '/v1/*');
    mock.reset();
    assert.equal((await post(`${g.url}/v1/chat/completions`, ASK)).status, 200);
    assert.equal(mock.stats().lastRequest!.path, '/v1/chat/completions');
    const c = await post(`${g.url}/v1/completions`, { model: 'm', prompt: 'hi', max_tokens: 5 });
    assert.equal(c.status, 200, c.text);
    assert.equal(mock.stats().lastRequest!.path, '/v1/completions');
  });

  it('timeout (ms) bounds the wait for the instance\'s first byte: 504 past it; a longer timeout waits', async () => {
    const short = await gw({ 'ai-proxy': { provider: 'openai-compatible', timeout: 300, override: { endpoint: mock.url }, forward_headers: ['x-mock-*'] } });
    const r = await post(`${short.url}/v1/chat/completions`, ASK, { 'x-mock-delay-ms': '5000' });
    assert.equal(r.status, 504, r.text);
    assert.equal(r.body?.error?.code, 'SLC_UPSTREAM_TIMEOUT');
    const long = await gw({ 'ai-proxy-multi': { timeout: 20000, instances: [mockInstance('a', mock.url)] } });
    assert.equal((await post(`${long.url}/v1/chat/completions`, ASK, { 'x-mock-delay-ms': '600' })).status, 200);
  });

  it('ssl_verify: false accepts an upstream\'s self-signed certificate; the default (true) refuses it', async () => {
    const tls = await startTinyUpstream(true);
    closers.push(() => tls.close());
    const plugin = (extra: Record<string, unknown>) => ({ 'ai-proxy': { provider: 'openai-compatible', override: { endpoint: `${tls.url}/v1/chat/completions` }, ...extra } });
    const off = await gw(plugin({ ssl_verify: false }));
    const ok = await post(`${off.url}/v1/chat/completions`, ASK);
    assert.equal(ok.status, 200, ok.text);
    const on = await gw(plugin({}));
    const refused = await post(`${on.url}/v1/chat/completions`, ASK);
    assert.equal(refused.status, 502, refused.text);
    assert.equal(tls.requests, 1, 'only the ssl_verify: false instance got a request through');
  });

  it('keepalive: false opens a connection per request; the default reuses one (APISIX keepalive)', async () => {
    const up = await startTinyUpstream(false);
    closers.push(() => up.close());
    const plugin = (extra: Record<string, unknown>) => ({ 'ai-proxy': { provider: 'openai-compatible', override: { endpoint: up.url }, ...extra } });
    const closeEach = await gw(plugin({ keepalive: false }));
    for (let i = 0; i < 3; i++) assert.equal((await post(`${closeEach.url}/v1/chat/completions`, ASK)).status, 200);
    assert.equal(up.connections, 3);
    const reuse = await gw(plugin({ keepalive: true, keepalive_timeout: 60000 }));
    for (let i = 0; i < 3; i++) assert.equal((await post(`${reuse.url}/v1/chat/completions`, ASK)).status, 200);
    assert.equal(up.connections, 4, 'three sequential requests over one kept-alive connection');
  });

  it('keepalive_pool, logging and instances[].checks are accepted as APISIX writes them (no effect in Sluice)', () => {
    const c = validateConfig({
      routes: [{
        uri: '/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': {
            keepalive_pool: 30, logging: { summaries: true, payloads: false }, timeout: 30000, ssl_verify: true,
            balancer: { algorithm: 'roundrobin' },
            instances: [{
              name: 'a', provider: 'openai', weight: 1, auth: { header: { Authorization: 'Bearer x' }, query: { 'api-version': '1' } },
              checks: { active: { type: 'https', host: 'api.openai.com', http_path: '/v1/models', healthy: { interval: 5 } } },
            }],
          },
        },
      }],
    }, {});
    const inst = c.routes[0]!.plugins['ai-proxy-multi']!.instances[0]!;
    assert.deepEqual(inst.transport, { timeout_ms: 30000, ssl_verify: true, keepalive: true, keepalive_timeout_ms: 30000 });
    assert.deepEqual(inst.auth_query, { 'api-version': '1' });
  });
});
