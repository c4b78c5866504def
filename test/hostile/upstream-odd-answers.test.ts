// Upstream answers that carry no usable body: a 304 to a POST is an upstream failure (502), never relayed with a
// body a client would read as its next answer; an error body in a content coding goes to an OpenAI-native client with
// its Content-Encoding (it was relayed coded, without the header), and is not quoted into a translated error's message;
// a buffered 2xx body that stalls past the idle timeout is a 504, charged as broken off.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync, gunzipSync } from 'node:zlib';
import { request } from 'node:http';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { charged, eventually } from '../helpers/metrics.ts';
import { exchange } from '../helpers/raw-http.ts';

const ERROR_JSON = JSON.stringify({ error: { message: 'bad model name', type: 'invalid_request_error', code: 'model_not_found' } });
const GZ = gzipSync(ERROR_JSON);

describe('upstream answers without a usable body', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = req.body.toString('utf8');
      if (body.includes('case 304')) s.write('HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n');
      else if (body.includes('case gzip-error')) {
        s.write(`HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: ${GZ.length}\r\n\r\n`);
        s.write(GZ);
      } else if (body.includes('case te-gzip-error')) {
        s.write(`HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n${GZ.length.toString(16)}\r\n`);
        s.write(GZ);
        s.write('\r\n0\r\n\r\n');
      } else if (body.includes('case stall')) {
        s.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"partial words here');
      }
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url), limits: { upstream_idle_timeout_ms: 1500 } });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  for (const [name, path, body] of [
    ['OpenAI-compatible', '/o/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'case 304' }] }],
    ['Anthropic, translated', '/a/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'case 304' }] }],
    ['Gemini, translated', '/g/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'case 304' }] }],
  ] as const) {
    it(`${name}: a 304 is a 502, and the connection stays in step`, async () => {
      const json = JSON.stringify(body);
      const req = (close: boolean): string => `POST ${path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\n${close ? 'connection: close\r\n' : ''}\r\n${json}`;
      // Two requests on one connection: the second answer must parse as an answer, not as the first one's body.
      const r = await exchange(gw.handle.port, req(false) + req(true), { waitMs: 20_000 });
      assert.equal(r.responses.length, 2, r.raw.slice(0, 600));
      for (const a of r.responses) {
        assert.equal(a.status, 502);
        assert.equal(a.json?.error?.code, 'SLC_UPSTREAM_ERROR');
      }
    });
  }

  it('a gzip error body reaches an OpenAI-native client with its Content-Encoding', async () => {
    const json = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'case gzip-error' }] });
    const { status, headers, raw } = await new Promise<{ status: number; headers: Record<string, unknown>; raw: Buffer }>((resolve, reject) => {
      const q = request({ host: '127.0.0.1', port: gw.handle.port, method: 'POST', path: '/o/v1/chat/completions', headers: { 'content-type': 'application/json' } }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, raw: Buffer.concat(parts) }));
      });
      q.on('error', reject);
      q.end(json);
    });
    assert.equal(status, 400);
    assert.equal(headers['content-encoding'], 'gzip');
    assert.equal(gunzipSync(raw).toString(), ERROR_JSON);
  });

  it('an error body in a transfer coding (which nobody undoes) is not relayed as it came', async () => {
    const r = await fetch(`${gw.url}/o/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'case te-gzip-error' }] }),
    });
    assert.equal(r.status, 400);
    const raw = Buffer.from(await r.arrayBuffer());
    assert.ok(!raw.includes(GZ.subarray(0, 10)), 'no coded bytes');
  });

  it('a gzip error body is not quoted into a translated error', async () => {
    const r = await fetch(`${gw.url}/a/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'case gzip-error' }] }),
    });
    assert.equal(r.status, 400);
    assert.equal(r.headers.get('content-encoding'), null);
    const body = await r.json() as { error: { message: string } };
    assert.equal(typeof body.error.message, 'string');
    assert.ok(!body.error.message.includes('\u001f') && !/[\u0080-\uffff]/.test(body.error.message), `no coded bytes: ${JSON.stringify(body.error.message)}`);
  });

  it('a buffered 2xx that stalls past the idle timeout is a 504, charged as broken off', { timeout: 60_000 }, async () => {
    const before = await charged(gw, 'o');
    const r = await fetch(`${gw.url}/o/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'case stall' }] }),
    });
    assert.equal(r.status, 504);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'SLC_UPSTREAM_TIMEOUT');
    await eventually('charged', async () => (await charged(gw, 'o')) !== before);
    assert.ok((await charged(gw, 'o')) - before > 0);
  });
});
