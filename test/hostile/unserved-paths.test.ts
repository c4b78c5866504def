// Requests a route cannot serve are refused before anything reaches an upstream or a quota: a method other than
// POST on a metered API is 405 with `Allow: POST` (GET and HEAD list models), and an OpenAI API family Sluice does not
// meter (images, audio, files, a stored response, a misspelt chat path) is 404 naming it, where it was proxied and
// billed as a chat completion. Any other path on a route stays chat, as APISIX's ai-proxy sends it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';

const ANSWER = JSON.stringify({ id: 'c', object: 'chat.completion', created: 1, model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 5, completion_tokens: 1, total_tokens: 6 } });

describe('paths and methods a route cannot serve', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((_req, s) => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(ANSWER)}\r\n\r\n${ANSWER}`);
    });
    gw = await startGateway({ routes: [{
      id: 'r', uri: '/*',
      plugins: {
        'ai-proxy': { provider: 'openai-compatible', auth: { header: { authorization: 'Bearer k' } }, override: { endpoint: `${up.url}/v1/chat/completions` } },
        'ai-rate-limiting': { limit: 100_000, time_window: 3600 },
      },
    }] });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  const chat = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });

  it('a method other than POST on a metered API: 405 with Allow: POST, in the API\'s own error shape', async () => {
    for (const [method, path] of [['GET', '/v1/chat/completions'], ['DELETE', '/v1/chat/completions'], ['PUT', '/anything'], ['OPTIONS', '/v1/responses'], ['PATCH', '/v1/embeddings']]) {
      const r = await fetch(`${gw.url}${path}`, { method, headers: { 'content-type': 'application/json' }, body: method === 'GET' ? undefined : chat });
      assert.equal(r.status, 405, `${method} ${path}`);
      assert.equal(r.headers.get('allow'), 'POST');
      const e = (await r.json()) as { error: { type: string; message: string } };
      assert.equal(e.error.type, 'invalid_request_error');
      assert.match(e.error.message, /POST/);
    }
    const anthropic = await fetch(`${gw.url}/v1/messages`, { method: 'GET' });
    assert.equal(anthropic.status, 405);
    assert.equal(((await anthropic.json()) as { type: string }).type, 'error', 'Anthropic clients get Anthropic\'s error shape');
    // The model list is served on GET.
    const models = await fetch(`${gw.url}/v1/models`);
    assert.equal(models.status, 200);
    assert.equal(up.requests.length, 0, 'nothing reached the upstream');
  });

  it('an OpenAI API family Sluice does not meter is 404 naming it, never proxied as chat', async () => {
    const openai = new OpenAI({ apiKey: 'x', baseURL: `${gw.url}/v1`, maxRetries: 0 });
    await assert.rejects(openai.images.generate({ model: 'dall-e-3', prompt: 'a cat' }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.NotFoundError, String(err));
      assert.match(err.message, /images\/generations is not served/);
      return true;
    });
    await assert.rejects(openai.moderations.create({ input: 'x' }), OpenAI.NotFoundError);
    for (const path of ['/v1/audio/speech', '/v1/files', '/v1/chat/completion', '/v1/responses/resp_1/cancel', '/openai/v1/batches']) {
      const r = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: chat });
      assert.equal(r.status, 404, path);
      assert.match(((await r.json()) as { error: { message: string } }).error.message, /is not served/);
    }
    // Listed and fetched with GET too: still 404 naming it, not a 405.
    const listed = await fetch(`${gw.url}/v1/files`);
    assert.equal(listed.status, 404);
    // Anthropic's Message Batches (the SDK's messages.batches.*): 404 in Anthropic's shape, whatever the method.
    for (const [method, path] of [['POST', '/v1/messages/batches'], ['GET', '/v1/messages/batches'], ['GET', '/v1/messages/batches/msgbatch_1/results']]) {
      const r = await fetch(`${gw.url}${path}`, { method, headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' }, body: method === 'GET' ? undefined : '{"requests":[]}' });
      assert.equal(r.status, 404, `${method} ${path}`);
      const e = (await r.json()) as { type: string; error: { type: string; message: string } };
      assert.equal(e.type, 'error');
      assert.equal(e.error.type, 'not_found_error');
      assert.match(e.error.message, /messages\/batches.* is not served/);
    }
    // A Gemini path Sluice serves no API on gets Google's error shape.
    const gemini = await fetch(`${gw.url}/v1beta/models/gemini-2.5-flash`);
    assert.equal(gemini.status, 405);
    assert.equal(((await gemini.json()) as { error: { status?: string } }).error.status !== undefined, true, 'Google\'s error shape');
    assert.equal(up.requests.length, 0, 'nothing reached the upstream');
    assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="r"/), 0);
  });

  it('the paths Sluice serves, and any other path on the route (APISIX\'s /anything), are still chat', async () => {
    for (const path of ['/v1/chat/completions', '/anything', '/openai/deployments/d/chat/completions', '/anything/messages/x']) {
      const r = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: chat });
      assert.equal(r.status, 200, path);
      assert.equal(((await r.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'ok');
    }
    assert.equal(up.requests.length, 4);
  });
});
