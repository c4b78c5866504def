// Whether a 2xx answer is relayed as a stream: the client asked for one and the upstream's media type, read
// case-insensitively, is text/event-stream. `Text/Event-Stream` was taken for JSON (502, the SSE bytes counted as
// text); a JSON answer under an SSE type to a request that asked for no stream was metered as an empty stream (its
// completion free); a real event stream there is not the client's answer (502, charged for its bytes).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, post, type TestGateway } from '../helpers/gateway.ts';
import { charged, eventually } from '../helpers/metrics.ts';

const chatFrames = [
  { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'x', choices: [{ index: 0, delta: { role: 'assistant', content: ' a b c d e' }, finish_reason: null }] },
  { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'x', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] },
  { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'x', choices: [], usage: { prompt_tokens: 11, completion_tokens: 5, total_tokens: 16 } },
];
const CHAT_SSE = `${chatFrames.map((f) => `data: ${JSON.stringify(f)}\n\n`).join('')}data: [DONE]\n\n`;
const CHAT_JSON = JSON.stringify({
  id: 'c', object: 'chat.completion', created: 1, model: 'x',
  choices: [{ index: 0, message: { role: 'assistant', content: 'word '.repeat(500) }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 11, completion_tokens: 500, total_tokens: 511 },
});
const ANTHROPIC_SSE = [
  ['message_start', { type: 'message_start', message: { id: 'm', type: 'message', role: 'assistant', model: 'x', content: [], usage: { input_tokens: 25, output_tokens: 1 } } }],
  ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
  ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'a b c' } }],
  ['content_block_stop', { type: 'content_block_stop', index: 0 }],
  ['message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 3 } }],
  ['message_stop', { type: 'message_stop' }],
].map(([e, d]) => `event: ${e as string}\ndata: ${JSON.stringify(d)}\n\n`).join('');

describe('the media type of a 2xx answer', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = req.body.toString('utf8');
      const [type, payload] = body.includes('case upper-sse') ? ['Text/Event-Stream; charset=UTF-8', CHAT_SSE]
        : body.includes('case anthropic-upper') ? ['TEXT/EVENT-STREAM', ANTHROPIC_SSE]
        : body.includes('case json-as-sse') ? ['text/event-stream', CHAT_JSON]
        : ['text/event-stream', CHAT_SSE];
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: ${type}\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  async function settledBy(route: string, before: number): Promise<number> {
    await eventually('settled', async () => (await charged(gw, route)) !== before);
    return (await charged(gw, route)) - before;
  }

  it('an SSE answer spelt Text/Event-Stream is relayed as the stream it is and charged its report', async () => {
    const before = await charged(gw, 'o');
    const r = await post(`${gw.url}/o/v1/chat/completions`, { model: 'x', stream: true, messages: [{ role: 'user', content: 'case upper-sse' }] });
    assert.equal(r.status, 200);
    assert.match(r.text, /data: \{.*" a b c d e"/);
    assert.match(r.text, /data: \[DONE\]/);
    assert.equal(await settledBy('o', before), 16);
  });

  it('an Anthropic stream spelt TEXT/EVENT-STREAM is relayed and charged its report', async () => {
    const before = await charged(gw, 'a');
    const r = await post(`${gw.url}/a/v1/messages`, { model: 'x', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'case anthropic-upper' }] });
    assert.equal(r.status, 200);
    assert.match(r.text, /event: message_stop/);
    assert.equal(await settledBy('a', before), 28);
  });

  it('a JSON answer under an SSE type to a request that asked for no stream is read as JSON and charged', async () => {
    const before = await charged(gw, 'o');
    const r = await post(`${gw.url}/o/v1/chat/completions`, { model: 'x', messages: [{ role: 'user', content: 'case json-as-sse' }] });
    assert.equal(r.status, 200);
    assert.equal(r.body.usage.completion_tokens, 500);
    assert.equal(await settledBy('o', before), 511);
  });

  it('a JSON answer under an SSE type to a request that asked for a stream is charged its report', async () => {
    const before = await charged(gw, 'o');
    const r = await post(`${gw.url}/o/v1/chat/completions`, { model: 'x', stream: true, messages: [{ role: 'user', content: 'case json-as-sse' }] });
    assert.equal(r.status, 200);
    assert.equal(await settledBy('o', before), 511);
  });

  it('an event stream answering a request that asked for no stream is a 502, charged for what it carried', async () => {
    const before = await charged(gw, 'o');
    const r = await post(`${gw.url}/o/v1/chat/completions`, { model: 'x', messages: [{ role: 'user', content: 'case plain-sse' }] });
    assert.equal(r.status, 502);
    assert.equal(r.body.error.code, 'SLC_UPSTREAM_ERROR');
    assert.ok(await settledBy('o', before) > 11, 'more than the prompt');
  });
});
