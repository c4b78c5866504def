// Hostile input: an upstream that reports its usage and then streams more text (OpenAI chat, Anthropic Messages,
// Responses). The report does not cover that text: the stream is charged its reported prompt plus the larger of
// the reported completion and all the text counted, as a stream cut after its usage is, and counted in
// sluice_usage_estimated_total{reason="text_after_usage"}. A usage repeated in every chunk (vLLM's continuous
// usage stats) whose last report comes with the last text is believed as it is.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { charged, expectCharged, metric } from '../helpers/metrics.ts';
import { countText } from '../../src/tokens/count.ts';
import { ANTHROPIC_PROMPT_SCALE } from '../../src/providers/anthropic/estimate.ts';

const BEFORE = 'The tide rises twice a day.';
const AFTER = ' And then, long after the usage chunk, this upstream kept talking about the moon, the sun, the shelf seas '
  + 'and the amphidromic points where the tide does not rise at all, which nobody was charged for.';
const PROMPT = 500;
const REPORTED_COMPLETION = 7;

function words(text: string): string[] {
  return text.split(/(?= )/);
}

function chat(mode: string): string {
  let s = '';
  const frame = (w: string, usage: string) => `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":${JSON.stringify(w)}},"finish_reason":null}],"usage":${usage}}\n\n`;
  const usage = (c: number) => `{"prompt_tokens":${PROMPT},"completion_tokens":${c},"total_tokens":${PROMPT + c}}`;
  if (mode === 'continuous' || mode === 'stale') {
    // A usage in every chunk: growing with each (it covers its chunk), or stuck at the first count (it does not).
    let c = 0;
    for (const w of words(BEFORE + AFTER)) s += frame(w, usage(mode === 'stale' ? REPORTED_COMPLETION : ++c));
    return s + 'data: [DONE]\n\n';
  }
  for (const w of words(BEFORE)) s += frame(w, 'null');
  s += `data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":${usage(REPORTED_COMPLETION)}}\n\n`;
  if (mode === 'after') for (const w of words(AFTER)) s += frame(w, 'null');
  // Enough text after the report that the report also looks low for the whole stream's text (completionBelowText).
  if (mode === 'after-long') for (const w of words(AFTER.repeat(5))) s += frame(w, 'null');
  return s + 'data: [DONE]\n\n';
}

function anthropic(mode: string): string {
  const ev = (type: string, o: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...o })}\n\n`;
  const delta = (t: string) => ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: t } });
  let s = ev('message_start', { message: { id: 'm', type: 'message', role: 'assistant', model: 'claude-x', content: [], usage: { input_tokens: PROMPT, output_tokens: 1 } } });
  s += ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
  for (const w of words(BEFORE)) s += delta(w);
  s += ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: REPORTED_COMPLETION } });
  if (mode === 'after' || mode === 'twice') for (const w of words(AFTER)) s += delta(w);
  // The same report again after the text: it did not grow, so it does not cover that text.
  if (mode === 'twice') s += ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: REPORTED_COMPLETION } });
  return s + ev('message_stop', {});
}

function responses(mode: string): string {
  const ev = (type: string, o: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...o })}\n\n`;
  const delta = (t: string) => ev('response.output_text.delta', { item_id: 'i', output_index: 0, content_index: 0, delta: t });
  let s = ev('response.created', { response: { id: 'r', object: 'response', status: 'in_progress', output: [] } });
  const completed = (c: number) => ev('response.completed', { response: { id: 'r', object: 'response', status: 'completed', output: [],
    usage: { input_tokens: PROMPT, output_tokens: c, total_tokens: PROMPT + c } } });
  if (mode === 'lower') {
    // Two reports, the later one lower: the larger stands, as for chat.
    for (const w of words(BEFORE + AFTER)) s += delta(w);
    return s + completed(100) + completed(REPORTED_COMPLETION);
  }
  for (const w of words(BEFORE)) s += delta(w);
  s += ev('response.completed', { response: { id: 'r', object: 'response', status: 'completed', output: [],
    usage: { input_tokens: PROMPT, output_tokens: REPORTED_COMPLETION, total_tokens: PROMPT + REPORTED_COMPLETION } } });
  if (mode === 'after') for (const w of words(AFTER)) s += delta(w);
  return s;
}

async function scriptedUpstream(): Promise<Server> {
  const s = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const mode = String(req.headers['x-mode']);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const body = req.url!.endsWith('/messages') ? anthropic(mode) : req.url!.endsWith('/responses') ? responses(mode) : chat(mode);
      // Event by event in separate writes, so frames reach the gateway in several chunks.
      const events = body.split(/(?<=\n\n)/);
      let i = 0;
      const next = (): void => {
        if (i >= events.length) { res.end(); return; }
        res.write(events[i++]!);
        setImmediate(next);
      };
      next();
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

function config(url: string): Record<string, unknown> {
  const quota = { limit: 100_000_000, time_window: 3600 };
  return {
    routes: [
      { id: 'chat', uri: '/v1/chat/completions', plugins: {
        'ai-proxy-multi': { instances: [{ name: 'oai', provider: 'openai-compatible', override: { endpoint: `${url}/v1/chat/completions` }, forward_headers: ['x-mode'] }] },
        'ai-rate-limiting': quota } },
      { id: 'resp', uri: '/v1/responses', plugins: {
        'ai-proxy-multi': { instances: [{ name: 'oai', provider: 'openai-compatible', override: { endpoint: `${url}/v1/responses` }, forward_headers: ['x-mode'] }] },
        'ai-rate-limiting': quota } },
      { id: 'anth', uri: '/v1/messages', plugins: {
        'ai-proxy-multi': { instances: [{ name: 'claude', provider: 'anthropic', auth: { header: { 'x-api-key': 'sk-ant' } }, override: { endpoint: url }, forward_headers: ['x-mode'] }] },
        'ai-rate-limiting': quota } },
    ],
  };
}

async function stream(gw: TestGateway, path: string, body: Record<string, unknown>, mode: string): Promise<string> {
  const r = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mode': mode }, body: JSON.stringify({ ...body, stream: true }) });
  assert.equal(r.status, 200);
  return r.text();
}

const afterEstimates = (gw: TestGateway, route: string) => metric(gw, new RegExp(`^sluice_usage_estimated_total\\{route="${route}",reason="text_after_usage"\\}`));

describe('text streamed after the usage report is charged', () => {
  let upstream: Server;
  let gw: TestGateway;
  before(async () => {
    upstream = await scriptedUpstream();
    const addr = upstream.address() as { port: number };
    gw = await startGateway(config(`http://127.0.0.1:${addr.port}`));
  });
  after(async () => {
    await gw?.close();
    await new Promise((r) => upstream?.close(r));
  });

  const CHAT = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Tides?' }], max_tokens: 1000 };
  const all = countText(BEFORE + AFTER, 'o200k_base');

  it('OpenAI chat: the report alone when nothing follows it; the report plus all the text counted when text does', async () => {
    let c0 = await charged(gw, 'chat');
    const plain = await stream(gw, '/v1/chat/completions', CHAT, 'plain');
    assert.match(plain, /\[DONE\]/);
    await expectCharged(gw, 'chat', c0, PROMPT + REPORTED_COMPLETION);
    assert.equal(await afterEstimates(gw, 'chat'), 0);

    c0 = await charged(gw, 'chat');
    const text = await stream(gw, '/v1/chat/completions', CHAT, 'after');
    assert.ok(text.includes('amphidromic'), 'the text after the usage still reaches the client');
    await expectCharged(gw, 'chat', c0, PROMPT + all);
    assert.equal(await afterEstimates(gw, 'chat'), 1);
  });

  it('OpenAI chat: a report that also looks low for the text after it is estimated as text after usage', async () => {
    const c0 = await charged(gw, 'chat');
    const rejected = await metric(gw, /^sluice_usage_estimated_total\{route="chat",reason="usage_rejected"\}/);
    const before = await afterEstimates(gw, 'chat');
    await stream(gw, '/v1/chat/completions', CHAT, 'after-long');
    await expectCharged(gw, 'chat', c0, PROMPT + countText(BEFORE + AFTER.repeat(5), 'o200k_base'));
    assert.equal(await afterEstimates(gw, 'chat'), before + 1);
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="chat",reason="usage_rejected"\}/), rejected);
  });

  it('OpenAI chat with a usage in every chunk: the last report stands', async () => {
    const c0 = await charged(gw, 'chat');
    const before = await afterEstimates(gw, 'chat');
    await stream(gw, '/v1/chat/completions', CHAT, 'continuous');
    await expectCharged(gw, 'chat', c0, PROMPT + words(BEFORE + AFTER).length);
    assert.equal(await afterEstimates(gw, 'chat'), before);
  });

  it('OpenAI chat with a usage in every chunk that stopped growing: the text it does not cover is counted', async () => {
    const c0 = await charged(gw, 'chat');
    await stream(gw, '/v1/chat/completions', CHAT, 'stale');
    await expectCharged(gw, 'chat', c0, PROMPT + all);
  });

  it('Anthropic Messages: text after message_delta\'s usage is counted', async () => {
    const body = { model: 'claude-x', max_tokens: 1000, messages: [{ role: 'user', content: 'Tides?' }] };
    let c0 = await charged(gw, 'anth');
    await stream(gw, '/v1/messages', body, 'plain');
    await expectCharged(gw, 'anth', c0, PROMPT + REPORTED_COMPLETION);
    c0 = await charged(gw, 'anth');
    await stream(gw, '/v1/messages', body, 'after');
    await expectCharged(gw, 'anth', c0, PROMPT + Math.ceil(all * ANTHROPIC_PROMPT_SCALE));
    assert.equal(await afterEstimates(gw, 'anth'), 1);
    // The same report again after the text does not cover it.
    c0 = await charged(gw, 'anth');
    await stream(gw, '/v1/messages', body, 'twice');
    await expectCharged(gw, 'anth', c0, PROMPT + Math.ceil(all * ANTHROPIC_PROMPT_SCALE));
  });

  it('Responses: text after response.completed is counted', async () => {
    const body = { model: 'gpt-4o-mini', input: 'Tides?', max_output_tokens: 1000 };
    let c0 = await charged(gw, 'resp');
    await stream(gw, '/v1/responses', body, 'plain');
    await expectCharged(gw, 'resp', c0, PROMPT + REPORTED_COMPLETION);
    c0 = await charged(gw, 'resp');
    await stream(gw, '/v1/responses', body, 'after');
    await expectCharged(gw, 'resp', c0, PROMPT + all);
    assert.equal(await afterEstimates(gw, 'resp'), 1);
    c0 = await charged(gw, 'resp');
    await stream(gw, '/v1/responses', body, 'lower');
    await expectCharged(gw, 'resp', c0, PROMPT + 100);
  });
});
