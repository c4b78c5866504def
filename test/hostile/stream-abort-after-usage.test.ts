// A client that leaves a stream after the upstream reported its usage, before the stream's end ([DONE],
// message_stop, the end of a Gemini body): the report is charged, not the estimate of the text seen. The estimate
// misses what the text does not show (hidden reasoning, tool prompts), so leaving at that moment was a way to pay
// less. One scripted upstream per surface holds its stream open after the usage; nothing asserts on timing.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually } from '../helpers/sluice-process.ts';

const PROMPT = 500;
const COMPLETION = 300;

function chunk(s: string): string {
  return `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
}

/** The upstream's frames, by the path it was asked on: everything up to and including the usage, then nothing. */
function frames(path: string): string[] {
  if (path.includes('/messages')) {
    const ev = (type: string, data: object) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
    return [
      ev('message_start', { message: { id: 'm', type: 'message', role: 'assistant', model: 'c', content: [], stop_reason: null, usage: { input_tokens: PROMPT, output_tokens: 1 } } }),
      ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
      ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'Two words' } }),
      ev('content_block_stop', { index: 0 }),
      ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: COMPLETION } }),
    ];
  }
  if (path.includes(':streamGenerateContent')) {
    const data = (o: object) => `data: ${JSON.stringify(o)}\r\n\r\n`;
    return [
      data({ candidates: [{ content: { role: 'model', parts: [{ text: 'Two' }] } }] }),
      data({ candidates: [{ content: { role: 'model', parts: [{ text: ' words' }] }, finishReason: 'STOP' }],
        usageMetadata: { promptTokenCount: PROMPT, candidatesTokenCount: COMPLETION, totalTokenCount: PROMPT + COMPLETION } }),
    ];
  }
  const data = (o: object) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', ...o })}\n\n`;
  return [
    data({ choices: [{ index: 0, delta: { role: 'assistant', content: 'Two words' }, finish_reason: null }] }),
    data({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }),
    data({ choices: [], usage: { prompt_tokens: PROMPT, completion_tokens: COMPLETION, total_tokens: PROMPT + COMPLETION } }),
  ];
}

const CASES = [
  { surface: 'OpenAI chat', route: 'o', path: '/o/v1/chat/completions', body: { model: 'm', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'Say two words' }] }, seen: '"prompt_tokens":500' },
  { surface: 'Anthropic Messages', route: 'a', path: '/a/v1/messages', body: { model: 'c', stream: true, max_tokens: 1000, messages: [{ role: 'user', content: 'Say two words' }] }, seen: 'message_delta' },
  { surface: 'Gemini streamGenerateContent', route: 'g', path: '/g/v1beta/models/gem:streamGenerateContent?alt=sse', body: { contents: [{ role: 'user', parts: [{ text: 'Say two words' }] }] }, seen: 'usageMetadata' },
];

describe('a stream left after its usage was reported is charged that usage', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const path = req.head.split(' ')[1] ?? '';
      s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
      for (const f of frames(path)) s.write(chunk(f));
      // The stream's end never comes: the client leaves first.
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  for (const c of CASES) {
    it(`${c.surface}: ${PROMPT + COMPLETION} tokens charged, no estimate, recorded 499`, { timeout: 60_000 }, async () => {
      const body = JSON.stringify(c.body);
      const s: Socket = connect(Number(new URL(gw.url).port), '127.0.0.1');
      s.on('error', () => undefined);
      let got = '';
      s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
      s.write(`POST ${c.path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      await eventually(`the client saw the usage (${c.seen})`, () => got.includes(c.seen), 30_000);
      assert.match(got, /^HTTP\/1\.1 200 /);
      s.destroy();
      const charged = new RegExp(`^sluice_quota_tokens_charged_total\\{route="${c.route}"`);
      await eventually('the stream is settled', async () => (await metric(gw, charged)) > 0, 30_000);
      assert.equal(await metric(gw, charged), PROMPT + COMPLETION);
      assert.equal(await metric(gw, new RegExp(`^sluice_usage_estimated_total\\{route="${c.route}"`)), 0);
      assert.equal(await metric(gw, new RegExp(`^sluice_http_requests_total\\{route="${c.route}",instance="u",status="499"\\}`)), 1);
    });
  }
});
