// An upstream that sends a stream's last event (chat's [DONE], Anthropic's message_stop, a Responses terminal
// event) and then neither ends its body nor closes: the client's answer ends soon after that event (200, charged the
// report), not after the upstream idle timeout as a 502 (the openai SDK reads on after [DONE] until the end, so its
// call failed after a whole answer). The connection is not reused.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { charged, eventually, metric } from '../helpers/metrics.ts';

const sse = (events: [string | undefined, unknown][]): string =>
  events.map(([e, d]) => `${e === undefined ? '' : `event: ${e}\n`}data: ${typeof d === 'string' ? d : JSON.stringify(d)}\n\n`).join('');

const CHAT = sse([
  [undefined, { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'x', choices: [{ index: 0, delta: { role: 'assistant', content: 'one two three' }, finish_reason: 'stop' }] }],
  [undefined, { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'x', choices: [], usage: { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 } }],
  [undefined, '[DONE]'],
]);
const ANTHROPIC = sse([
  ['message_start', { type: 'message_start', message: { id: 'm', type: 'message', role: 'assistant', model: 'x', content: [], usage: { input_tokens: 20, output_tokens: 1 } } }],
  ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
  ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'one two' } }],
  ['content_block_stop', { type: 'content_block_stop', index: 0 }],
  ['message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 } }],
  ['message_stop', { type: 'message_stop' }],
]);
const RESPONSES = sse([
  ['response.output_text.delta', { type: 'response.output_text.delta', item_id: 'i', output_index: 0, content_index: 0, delta: 'one two' }],
  ['response.completed', { type: 'response.completed', response: { id: 'r', object: 'response', status: 'completed', output: [], usage: { input_tokens: 9, output_tokens: 2, total_tokens: 11 } } }],
]);

describe('an upstream that holds its connection open after the last event', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = req.body.toString('utf8');
      const payload = req.head.includes('/v1/messages') ? ANTHROPIC : req.head.includes('/v1/responses') ? RESPONSES : CHAT;
      // Chunked, without the last chunk; or close-delimited, never closed.
      if (body.includes('close-delimited')) s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n${payload}`);
      else s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n${Buffer.byteLength(payload).toString(16)}\r\n${payload}\r\n`);
    });
    // An idle timeout far longer than any wait below: the answer must end on its own.
    gw = await startGateway({ routes: surfaceRoutes(up.url), limits: { upstream_idle_timeout_ms: 120_000 } });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  async function stream(path: string, body: Record<string, unknown>): Promise<{ status: number; text: string; ms: number }> {
    const t0 = Date.now();
    const r = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
    const text = await r.text();
    return { status: r.status, text, ms: Date.now() - t0 };
  }

  it('a client that closes on [DONE] while the upstream holds on had the whole answer: recorded 200, charged the report', { timeout: 60_000 }, async () => {
    const before = await charged(gw, 'o');
    const ok = await metric(gw, /^sluice_http_requests_total\{route="o".*status="200"/);
    const aborted = await metric(gw, /^sluice_http_requests_total\{route="o".*status="499"/);
    const ac = new AbortController();
    const r = await fetch(`${gw.url}/o/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ model: 'x', stream: true, messages: [{ role: 'user', content: 'chunked' }] }),
    });
    let text = '';
    const dec = new TextDecoder();
    try {
      for await (const c of r.body!) {
        text += dec.decode(c as Uint8Array, { stream: true });
        if (text.includes('data: [DONE]')) { ac.abort(); break; }
      }
    } catch (err) {
      assert.equal((err as Error).name, 'AbortError');
    }
    assert.match(text, /data: \[DONE\]/);
    await eventually('settled', async () => (await charged(gw, 'o')) !== before);
    assert.equal(await charged(gw, 'o') - before, 14);
    await eventually('recorded', async () => (await metric(gw, /^sluice_http_requests_total\{route="o".*status="200"/)) === ok + 1);
    assert.equal(await metric(gw, /^sluice_http_requests_total\{route="o".*status="499"/), aborted);
  });

  const cases: [string, string, string, Record<string, unknown>, RegExp, number][] = [
    ['chat, chunked', 'o', '/o/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'chunked' }] }, /data: \[DONE\]/, 14],
    ['chat, close-delimited', 'o', '/o/v1/chat/completions', { model: 'x', messages: [{ role: 'user', content: 'close-delimited' }] }, /data: \[DONE\]/, 14],
    ['Anthropic', 'a', '/a/v1/messages', { model: 'x', max_tokens: 50, messages: [{ role: 'user', content: 'chunked' }] }, /event: message_stop/, 22],
    ['Responses', 'o', '/o/v1/responses', { model: 'x', input: 'chunked' }, /response\.completed/, 11],
  ];
  for (const [name, route, path, body, last, tokens] of cases) {
    it(`${name}: the answer ends soon after its last event, 200, charged the report`, { timeout: 60_000 }, async () => {
      const before = await charged(gw, route);
      const errors = await metric(gw, new RegExp(`^sluice_http_requests_total\\{route="${route}".*status="502"`));
      const r = await stream(path, body);
      assert.equal(r.status, 200);
      assert.match(r.text, last);
      assert.ok(r.ms < 30_000, `ended after ${r.ms} ms`);
      await eventually('settled', async () => (await charged(gw, route)) !== before);
      assert.equal(await charged(gw, route) - before, tokens);
      assert.equal(await metric(gw, new RegExp(`^sluice_http_requests_total\\{route="${route}".*status="502"`)), errors, 'not recorded as a 502');
    });
  }
});
