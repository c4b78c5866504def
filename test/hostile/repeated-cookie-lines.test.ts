// A request may carry its cookies on several `Cookie:` lines (RFC 9113 §8.2.3 allows it; HTTP/1.1 clients and
// proxies send it). They are one cookie list, joined with '; ' as nginx joins them, so a `${cookie_x}` quota key
// finds its pair on any line, in any order: not a 400 for a key that was sent, nor a fresh counter per line order.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { exchange } from '../helpers/raw-http.ts';

const BODY = JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });

function post(cookieLines: string[]): string {
  const cookies = cookieLines.map((c) => `Cookie: ${c}\r\n`).join('');
  return `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(BODY)}\r\n${cookies}\r\n${BODY}`;
}

for (const guard of [true, false]) describe(`repeated Cookie lines (http1_guard: ${guard})`, () => {
  let mock: MockUpstream;
  let gw: TestGateway;

  before(async () => {
    mock = await startMockUpstream({ name: 'm' });
    gw = await startGateway({
      listen: { host: '127.0.0.1', port: 0, http1_guard: guard },
      routes: [{ id: 'chat', uri: '/v1/chat/completions', plugins: {
        'ai-proxy-multi': { instances: [mockInstance('m', mock.url)] },
        'ai-rate-limiting': { rules: [{ header_prefix: 'per-session', key: '${cookie_session}', count: 1_000_000, time_window: 3600 }] },
      } }],
    });
  });

  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('the key is found on either line, and both orders charge one counter', async () => {
    const remaining: number[] = [];
    for (const lines of [['other=1', 'session=k9'], ['session=k9', 'other=1'], ['session=k9; other=1']]) {
      const r = await exchange(gw.handle.port, post(lines), { responses: 1 });
      const res = r.responses[0];
      assert.equal(res?.status, 200, `${lines.join(' | ')}: ${r.raw.slice(0, 300)}`);
      remaining.push(Number(res.headers['x-ai-per-session-ratelimit-remaining']));
    }
    assert.ok(remaining.every((n) => Number.isInteger(n)), String(remaining));
    assert.ok(remaining[1]! < remaining[0]! && remaining[2]! < remaining[1]!, `one counter: ${remaining}`);
  });
});
