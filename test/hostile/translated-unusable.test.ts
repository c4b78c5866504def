// A 2xx answer from an Anthropic or Gemini instance that cannot be translated for an OpenAI client (not JSON, not
// an object, an error object) is a 502 in the client's format, charged as a 2xx that broke off (the prompt and its
// bytes counted). It was a 200: `{"error":…}` or the raw bytes, which the openai SDK takes for a completion.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';

const CASES: { route: string; answer: string; message: RegExp }[] = [
  { route: 'a', answer: 'not json', message: /not a JSON object/ },
  { route: 'a', answer: '[1,2,3]', message: /not a JSON object/ },
  { route: 'a', answer: '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', message: /2xx with an error: Overloaded/ },
  { route: 'g', answer: 'garbage', message: /not a JSON object/ },
  { route: 'g', answer: '[{"candidates":[]}]', message: /not a JSON object/ },
];

describe('an untranslatable 2xx answer on a translated route', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = Buffer.from(req.headers['x-answer'] ?? '', 'base64');
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`);
      s.write(body);
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url, { forward_headers: ['x-answer'] }) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  for (const c of CASES) {
    it(`${c.route === 'a' ? 'Anthropic' : 'Gemini'} answering ${c.answer.slice(0, 40)}: 502 in OpenAI's shape, the prompt charged`, async () => {
      const charged = new RegExp(`^sluice_quota_tokens_charged_total\\{route="${c.route}"`);
      const before = await metric(gw, charged);
      const r = await fetch(`${gw.url}/${c.route}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-answer': Buffer.from(c.answer).toString('base64') },
        body: JSON.stringify({ model: 'm', max_tokens: 20, messages: [{ role: 'user', content: 'Say hello' }] }),
      });
      assert.equal(r.status, 502);
      const body = (await r.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, 'SLC_UPSTREAM_ERROR');
      assert.match(body.error.message, c.message);
      assert.ok(await metric(gw, charged) > before, 'the prompt is charged');
    });
  }

  it('a request part an Anthropic instance cannot take (input_audio) is a 400 before anything is sent, nothing charged', async () => {
    const sent = up.requests.length;
    const charged = await metric(gw, /^sluice_quota_tokens_charged_total\{route="a"/);
    const r = await fetch(`${gw.url}/a/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }, { role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }] }] }),
    });
    assert.equal(r.status, 400);
    const body = (await r.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'SLC_BAD_REQUEST');
    assert.match(body.error.message, /input_audio.*cannot be sent to an Anthropic instance/);
    assert.equal(up.requests.length, sent);
    assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="a"/), charged);
  });

  it('recorded as broken answers', async () => {
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="a",reason="upstream_broken"\}/), 3);
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="g",reason="upstream_broken"\}/), 2);
  });
});
