// A body over limits.max_body_bytes gets a 413 that real clients can read, for bodies up to 64 MiB: the front
// end drains the rest of the body before answering (lingering close) instead of closing under a client that is
// still sending (which gave Node's fetch EPIPE). Node's fetch, undici, the openai SDK and curl.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { request } from 'undici';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { exchange } from '../helpers/raw-http.ts';

const MiB = 1024 * 1024;
const SIZES = [9 * MiB, 64 * MiB];
const haveCurl = spawnSync('sh', ['-c', 'command -v curl']).status === 0;

function curl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.on('error', reject);
    c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`curl exited ${code}: ${out}`))));
  });
}

describe('413 is readable by real clients for bodies up to 64 MiB', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  let url: string;
  let dir: string;

  before(async () => {
    mock = await startMockUpstream({ name: 'm' });
    gw = await startGateway({
      limits: { max_body_bytes: MiB },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }],
    });
    url = `${gw.url}/v1/chat/completions`;
    dir = mkdtempSync(join(tmpdir(), 'sluice-413-'));
  });

  after(async () => {
    await gw?.close();
    await mock?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const size of SIZES) {
    const mb = size / MiB;

    it(`Node's fetch, ${mb} MiB Buffer body`, async () => {
      const r = await fetch(url, { method: 'POST', body: Buffer.alloc(size, 'a'), headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 413);
      assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'SLC_BODY_TOO_LARGE');
    });

    it(`undici request, ${mb} MiB body`, async () => {
      const r = await request(url, { method: 'POST', body: Buffer.alloc(size, 'a'), headers: { 'content-type': 'application/json' } });
      assert.equal(r.statusCode, 413);
      assert.equal(((await r.body.json()) as { error: { code: string } }).error.code, 'SLC_BODY_TOO_LARGE');
    });

    it(`openai SDK, ${mb} MiB prompt`, async () => {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
      await assert.rejects(
        client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'a'.repeat(size) }] }),
        (err: unknown) => {
          assert.ok(err instanceof OpenAI.APIError, String(err));
          assert.equal(err.status, 413);
          assert.equal(err.code, 'SLC_BODY_TOO_LARGE');
          return true;
        },
      );
    });

    it(`curl --data-binary, ${mb} MiB (Expect: 100-continue)`, { skip: haveCurl ? false : 'curl not installed' }, async () => {
      const file = join(dir, `body-${mb}`);
      writeFileSync(file, Buffer.alloc(size, 'a'));
      const out = await curl(['-s', '-o', '-', '-w', '\n%{http_code}', '-H', 'content-type: application/json', '--data-binary', `@${file}`, url]);
      const [body, status] = out.split('\n');
      assert.equal(status, '413');
      assert.equal(JSON.parse(body!).error.code, 'SLC_BODY_TOO_LARGE');
    });
  }

  it('a declared length past max_drain_bytes, its body paused: 413 at once and the connection closed (the body could never be drained)', async () => {
    const port = Number(new URL(gw.url).port);
    const started = Date.now();
    // 100 MB declared (max_drain_bytes is 64 MiB), a few bytes sent, then nothing: before, the 413 waited for
    // client_body_timeout_ms (60 s).
    const answer = await exchange(port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"messages":', { waitMs: 30_000 });
    assert.ok(answer.closed, 'no answer in 30 s');
    assert.match(answer.raw, /^HTTP\/1\.1 413 /);
    assert.match(answer.raw, /SLC_BODY_TOO_LARGE/);
    assert.ok(Date.now() - started < 20_000, `answered after ${Date.now() - started} ms`);
    // Any other refusal of such a body too (a 404 here): answered from the head, the connection closed.
    const other = await exchange(port, 'POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"messages":', { waitMs: 30_000 });
    assert.ok(other.closed, 'no answer in 30 s');
    assert.match(other.raw, /^HTTP\/1\.1 404 /);
    // Guard off, a path refused before routing (a bad escape): the same (it was left unanswered until uWS's timeout).
    const bare = await startGateway({ listen: { http1_guard: false }, limits: { max_drain_bytes: MiB },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] } } }] });
    try {
      const badPath = await exchange(Number(new URL(bare.url).port), `POST /%zz HTTP/1.1\r\nHost: x\r\nContent-Length: ${2 * MiB}\r\n\r\n`, { waitMs: 30_000 });
      assert.ok(badPath.closed, 'no answer in 30 s');
      assert.match(badPath.raw, /^HTTP\/1\.1 400 /);
    } finally { await bare.close(); }
  });
});

// The front end's own refusals (413, 415, 404, 405, 408, 503) answer in the format of the client API the path belongs
// to, as the pipeline's errors do: an Anthropic or Gemini SDK reads them as its own errors.
describe('the front end\'s refusals are in the client API\'s format', () => {
  let gw: TestGateway;

  before(async () => {
    const inst = (provider: string, auth: Record<string, string>) => ({ name: 'u', provider, auth: { header: auth }, override: { endpoint: 'http://127.0.0.1:9' } });
    gw = await startGateway({
      limits: { max_body_bytes: 4096 },
      routes: [
        { id: 'a', uri: '/v1/messages', methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [inst('anthropic', { 'x-api-key': 'k' })] } } },
        { id: 'g', uri: '/v1beta/*', methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [inst('gemini', { 'x-goog-api-key': 'k' })] } } },
      ],
    });
  });

  after(async () => { await gw?.close(); });

  const send = (path: string, body: string, headers: Record<string, string> = {}, method = 'POST') =>
    fetch(`${gw.url}${path}`, { method, headers: { 'content-type': 'application/json', ...headers }, body });

  it('Anthropic Messages: 413, 415 and 405 as Anthropic errors', async () => {
    const big = await send('/v1/messages', JSON.stringify({ pad: 'x'.repeat(8000) }));
    assert.equal(big.status, 413);
    assert.deepEqual(await big.json(), { type: 'error', error: { type: 'request_too_large', message: 'request body exceeds 4096 bytes', code: 'SLC_BODY_TOO_LARGE' } });
    const gz = await send('/v1/messages', '{}', { 'content-encoding': 'gzip' });
    assert.equal(gz.status, 415);
    const gzBody = (await gz.json()) as { type: string; error: { code: string } };
    assert.equal(gzBody.type, 'error');
    assert.equal(gzBody.error.code, 'SLC_UNSUPPORTED_ENCODING');
    const put = await send('/v1/messages', '{}', {}, 'PUT');
    assert.equal(put.status, 405);
    assert.equal(((await put.json()) as { type: string }).type, 'error');
  });

  it('Gemini generateContent: 413 as a google.rpc error', async () => {
    const big = await send('/v1beta/models/g:generateContent', JSON.stringify({ pad: 'x'.repeat(8000) }));
    assert.equal(big.status, 413);
    const body = (await big.json()) as { error: { code: number; status: string; details: { reason: string }[] } };
    assert.equal(body.error.code, 413);
    assert.equal(typeof body.error.status, 'string');
    assert.equal(body.error.details[0]?.reason, 'SLC_BODY_TOO_LARGE');
  });

  it('an OpenAI path keeps the OpenAI shape', async () => {
    const r = await send('/v1/chat/completions', '{}');
    assert.equal(r.status, 404);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'SLC_NOT_FOUND');
  });
});
