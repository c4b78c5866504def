// Hostile input: client headers meant for the upstream's eyes only. OpenAI-Organization / OpenAI-Project come
// only from the instance config; X-Forwarded-* are written by the gateway (believed and extended only from a
// trusted proxy); everything else passes only through the allowlist (defaults, extended or replaced per
// instance with forward_headers). The upstream is the mock echoing the headers it received.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { validateConfig, ConfigError } from '../../src/config/validate.ts';
import { startGateway, post, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { exchange } from '../helpers/raw-http.ts';

const MSG = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
const HOSTILE = {
  'openai-organization': 'org-client',
  'openai-project': 'proj-client',
  'x-forwarded-for': '6.6.6.6',
  'x-forwarded-host': 'evil.example',
  'x-forwarded-proto': 'https',
  forwarded: 'for=6.6.6.6',
  'x-real-ip': '6.6.6.6',
  cookie: 'session=secret',
  authorization: 'Bearer client-secret',
  'x-custom': 'custom',
  'x-internal-debug': 'yes',
  traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  tracestate: 'vendor=1',
  'x-request-id': 'req-123',
  'x-b3-traceid': 'abc',
  'openai-beta': 'assistants=v2',
  accept: 'application/json',
  'x-mock-echo-headers': '1',
};

function route(id: string, uri: string, inst: Record<string, unknown>) {
  return { id, uri, plugins: { 'ai-proxy-multi': { instances: [inst] } } };
}

async function echoed(gw: TestGateway, path: string): Promise<Record<string, string>> {
  const r = await post(`${gw.url}${path}`, MSG, HOSTILE);
  assert.equal(r.status, 200, r.text);
  return r.body.mock_request_headers as Record<string, string>;
}

describe('client headers reaching the upstream', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let trustedGw: TestGateway;
  before(async () => {
    mock = await startMockUpstream();
    const routes = [
      route('default', '/v1/chat/completions', mockInstance('a', mock.url)),
      route('org', '/org/v1/chat/completions', mockInstance('b', mock.url, {
        auth: { header: { Authorization: 'Bearer sk-b', 'OpenAI-Organization': 'org-config', 'OpenAI-Project': 'proj-config' } },
      })),
      route('extend', '/extend/v1/chat/completions', mockInstance('c', mock.url, { forward_headers: ['x-mock-*', 'X-Custom'] })),
      route('replace', '/replace/v1/chat/completions', mockInstance('d', mock.url, { forward_headers: { replace: true, headers: ['x-mock-*', 'x-custom'] } })),
    ];
    gw = await startGateway({ routes });
    trustedGw = await startGateway({ trusted_proxies: ['127.0.0.1'], routes });
  });
  after(async () => {
    await gw?.close();
    await trustedGw?.close();
    await mock?.close();
  });

  it('the default allowlist passes tracing, content negotiation and beta flags, and nothing else', async () => {
    const h = await echoed(gw, '/v1/chat/completions');
    for (const k of ['traceparent', 'tracestate', 'x-request-id', 'x-b3-traceid', 'openai-beta', 'accept']) {
      assert.equal(h[k], HOSTILE[k as keyof typeof HOSTILE], `${k} is forwarded`);
    }
    for (const k of ['openai-organization', 'openai-project', 'forwarded', 'x-real-ip', 'cookie', 'x-custom', 'x-internal-debug']) {
      assert.equal(h[k], undefined, `${k} is not forwarded`);
    }
    assert.equal(h.authorization, 'Bearer sk-a', 'the instance credential, never the client one');
  });

  it('headers the client\'s Connection header names stay at the gateway, allowed ones included (RFC 9110 §7.6.1)', async () => {
    const body = JSON.stringify(MSG);
    const port = Number(new URL(gw.url).port);
    const r = await exchange(port, `POST /extend/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n`
      + `Connection: keep-alive, traceparent,X-Custom\r\ntraceparent: ${HOSTILE.traceparent}\r\nx-custom: hop\r\nx-request-id: req-9\r\n`
      + `x-mock-echo-headers: 1\r\nContent-Length: ${body.length}\r\n\r\n${body}`, { responses: 1 });
    assert.equal(r.responses[0]?.status, 200, r.raw);
    const h = r.responses[0]!.json.mock_request_headers as Record<string, string>;
    assert.equal(h.traceparent, undefined, 'listed in Connection: not forwarded');
    assert.equal(h['x-custom'], undefined, 'listed in Connection: not forwarded, though forward_headers allows it');
    assert.equal(h['x-request-id'], 'req-9', 'an allowed header not listed is forwarded');
  });

  it('guard off (uWS checks no Host): a client Host that is not host[:port] never becomes X-Forwarded-Host', async () => {
    const bare = await startGateway({ listen: { http1_guard: false }, routes: [route('default', '/v1/chat/completions', mockInstance('a', mock.url))] });
    try {
      const body = JSON.stringify(MSG);
      const port = Number(new URL(bare.url).port);
      const ask = async (host: string) => {
        const r = await exchange(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: ${host}\r\nContent-Type: application/json\r\nx-mock-echo-headers: 1\r\n`
          + `Content-Length: ${body.length}\r\n\r\n${body}`, { responses: 1 });
        assert.equal(r.responses[0]?.status, 200, r.raw);
        return r.responses[0]!.json.mock_request_headers as Record<string, string>;
      };
      assert.equal((await ask('evil.com/../x@y'))['x-forwarded-host'], undefined);
      assert.equal((await ask('evil.com,good.com'))['x-forwarded-host'], undefined);
      assert.equal((await ask('gw.example:8080'))['x-forwarded-host'], 'gw.example:8080');
    } finally { await bare.close(); }
  });

  it('X-Forwarded-* are the gateway\'s own from an untrusted peer', async () => {
    const h = await echoed(gw, '/v1/chat/completions');
    assert.equal(h['x-forwarded-for'], '127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.equal(h['x-forwarded-host'], new URL(gw.url).host);
  });

  it('a trusted proxy\'s X-Forwarded-* are kept, and the peer appended to X-Forwarded-For', async () => {
    const h = await echoed(trustedGw, '/v1/chat/completions');
    assert.equal(h['x-forwarded-for'], '6.6.6.6, 127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h['x-forwarded-host'], 'evil.example');
    assert.equal(h['openai-organization'], undefined, 'trust covers X-Forwarded-* only');
  });

  it('organisation and project come from the instance config only', async () => {
    const h = await echoed(gw, '/org/v1/chat/completions');
    assert.equal(h['openai-organization'], 'org-config');
    assert.equal(h['openai-project'], 'proj-config');
  });

  it('forward_headers extends the default list, or replaces it', async () => {
    const ext = await echoed(gw, '/extend/v1/chat/completions');
    assert.equal(ext['x-custom'], 'custom');
    assert.equal(ext.traceparent, HOSTILE.traceparent);
    assert.equal(ext['x-internal-debug'], undefined);
    const rep = await echoed(gw, '/replace/v1/chat/completions');
    assert.equal(rep['x-custom'], 'custom');
    assert.equal(rep.traceparent, undefined, 'replaced: the default list no longer applies');
    assert.equal(rep['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For is written whatever the list');
  });

  it('forward_headers can never name credentials, organisation/project or X-Forwarded-*', () => {
    for (const bad of ['authorization', 'Cookie', 'OpenAI-Organization', 'openai-*', 'x-forwarded-for', 'x-forwarded-*', 'host', '*', 'bad header']) {
      assert.throws(
        () => validateConfig({ routes: [route('r', '/x', { name: 'a', provider: 'openai', forward_headers: [bad] })] }),
        (err: unknown) => err instanceof ConfigError && err.issues.some((i) => i.path === 'routes[0].plugins.ai-proxy-multi.instances[0].forward_headers[0]'),
        bad,
      );
    }
    assert.throws(() => validateConfig({ routes: [route('r', '/x', { name: 'a', provider: 'openai', forward_headers: 'x-a' })] }), ConfigError);
    const ok = validateConfig({ routes: [{ id: 'r', uri: '/x', plugins: { 'ai-proxy': { provider: 'openai', forward_headers: { replace: true, headers: ['X-Tenant'] } } } }] });
    assert.deepEqual(ok.routes[0]!.plugins['ai-proxy-multi']!.instances[0]!.forward_headers, { headers: ['x-tenant'], replace: true });
  });
});
