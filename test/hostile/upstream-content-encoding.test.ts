// Upstream answers are asked for without a content coding (Accept-Encoding: identity: without the header any
// coding is acceptable, RFC 9110 §12.5.3). One compressed anyway can be neither metered nor relayed: it used to
// reach the client as gzip bytes labelled application/json, its usage lost. Now: 502, the prompt charged, no
// second instance tried (the answer was produced upstream).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';

const ANSWER = JSON.stringify({
  id: 'x', object: 'chat.completion', created: 1, model: 'm',
  choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 10, completion_tokens: 30, total_tokens: 40 },
});
const FRAME = `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', model: 'm', choices: [{ index: 0, delta: { content: 'hi' } }] })}\n\ndata: [DONE]\n\n`;

describe('an upstream answer with a content coding', () => {
  let up: ScriptedUpstream;
  let spare: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const stream = req.body.toString().includes('"stream":true');
      const coding = req.headers['x-coding'] ?? 'gzip';
      const body = coding === 'identity' ? Buffer.from(ANSWER) : gzipSync(stream ? FRAME : ANSWER);
      const type = `content-type: ${stream ? 'text/event-stream' : 'application/json'}\r\n`;
      if (coding === 'te-gzip') {
        // A transfer coding other than chunked, which Sluice never asks for (no TE header).
        s.write(`HTTP/1.1 200 OK\r\n${type}transfer-encoding: gzip, chunked\r\n\r\n${body.length.toString(16)}\r\n`);
        s.write(Buffer.concat([body, Buffer.from('\r\n0\r\n\r\n')]));
        return;
      }
      // Two coding lines: the first alone says identity.
      const codings = coding === 'lines' ? 'content-encoding: identity\r\ncontent-encoding: gzip\r\n' : `content-encoding: ${coding}\r\n`;
      s.write(`HTTP/1.1 200 OK\r\n${type}${codings}content-length: ${body.length}\r\n\r\n`);
      s.write(body);
    });
    spare = await startScriptedUpstream((_q, s) => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(ANSWER)}\r\n\r\n${ANSWER}`);
    });
    const inst = (name: string, url: string, priority: number) => ({
      name, provider: 'openai-compatible', priority, auth: { header: { authorization: 'Bearer k' } }, override: { endpoint: `${url}/v1/chat/completions` },
      forward_headers: ['x-coding'],
    });
    gw = await startGateway({
      routes: [{
        id: 'e', uri: '/v1/chat/completions',
        plugins: {
          'ai-proxy-multi': { fallback_strategy: ['http_5xx', 'instance_health_and_rate_limiting'], instances: [inst('gz', up.url, 2), inst('spare', spare.url, 1)] },
          'ai-rate-limiting': { limit: 1_000_000, time_window: 3600 },
        },
      }],
    });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
    await spare?.close();
  });

  const ask = (stream: boolean, coding?: string) => fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'accept-encoding': 'gzip, br', ...(coding === undefined ? {} : { 'x-coding': coding }) },
    body: JSON.stringify({ model: 'm', stream, max_tokens: 50, messages: [{ role: 'user', content: 'Say hello' }] }),
  });

  it('asks for identity whatever the client accepts; an identity answer passes', async () => {
    const r = await ask(false, 'identity');
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as { usage: { total_tokens: number } }).usage.total_tokens, 40);
    assert.equal(up.requests.at(-1)?.headers['accept-encoding'], 'identity');
  });

  for (const [coding, label] of [['gzip', 'gzip'], ['lines', 'identity then gzip on a second Content-Encoding line'], ['te-gzip', 'Transfer-Encoding: gzip, chunked']] as const) for (const stream of [false, true]) {
    it(`${label}, ${stream ? 'stream' : 'answer'}: 502 in the client's format, the prompt charged, no other instance asked`, async () => {
      const before = await metric(gw, /^sluice_quota_tokens_charged_total\{route="e"/);
      const broken = await metric(gw, /^sluice_usage_estimated_total\{route="e",reason="upstream_broken"\}/);
      const r = await ask(stream, coding);
      assert.equal(r.status, 502);
      const err = (await r.json()) as { error: { code: string; message: string } };
      assert.equal(err.error.code, 'SLC_UPSTREAM_ERROR');
      assert.match(err.error.message, /coding Sluice cannot meter/);
      assert.equal(spare.requests.length, 0);
      const charged = await metric(gw, /^sluice_quota_tokens_charged_total\{route="e"/);
      assert.ok(charged > before, 'the prompt is charged');
      // The 502 reports the quota as any answer after an admission does.
      assert.ok(Number(r.headers.get('x-ai-ratelimit-remaining-gz')) <= 1_000_000 - charged, `Remaining ${r.headers.get('x-ai-ratelimit-remaining-gz')}`);
      assert.equal(r.headers.get('x-ai-ratelimit-limit-gz'), '1000000');
      assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="e",reason="upstream_broken"\}/), broken + 1);
    });
  }
});
