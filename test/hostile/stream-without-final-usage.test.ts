// Streams whose upstream never gives a final usage (the client leaves, the upstream ends without it) or gives a lie
// after a believed one. What the upstream did report on the way stands: Anthropic's message_start and Gemini's
// mid-stream usageMetadata give the prompt (with its cache parts) beside the counted text; a Gemini final report
// followed by a lie stays the floor. A translated OpenAI client that asked for `include_usage` still gets its
// usage chunk, with what was charged. One scripted upstream picks its frames by a case word in the prompt.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import OpenAI from 'openai';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually } from '../helpers/sluice-process.ts';

const PROMPT = 500;
const CACHED = 100;
const THOUGHTS = 700;

function chunk(s: string): string {
  return `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
}

const ev = (type: string, data: object): string => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
const gem = (o: object): string => `data: ${JSON.stringify(o)}\r\n\r\n`;
const text = (t: string, extra: object = {}): object => ({ candidates: [{ content: { role: 'model', parts: [{ text: t }] }, ...extra }] });

const START = ev('message_start', { message: { id: 'm', type: 'message', role: 'assistant', model: 'c', content: [], stop_reason: null,
  usage: { input_tokens: PROMPT, cache_read_input_tokens: CACHED, output_tokens: 1 } } });
const TEXT = [
  ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
  ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: 'Two words' } }),
];

/** Frames per case; `end`: the upstream ends the stream after them (else it holds it open for the client to leave). */
const SCRIPTS: Record<string, { frames: string[]; end: boolean }> = {
  anthropic_cut: { frames: [START, ...TEXT], end: false },
  // message_delta without usage, then message_stop: the stream ends cleanly with no final count.
  anthropic_no_final: { frames: [START, ...TEXT, ev('content_block_stop', { index: 0 }), ev('message_delta', { delta: { stop_reason: 'end_turn' } }), ev('message_stop', {})], end: true },
  // Thinking done before the cut (Gemini 2.5 reports it mid-stream): produced, though no text shows it.
  gemini_cut: { frames: [gem({ ...text('Two'), usageMetadata: { promptTokenCount: PROMPT, cachedContentTokenCount: CACHED, thoughtsTokenCount: THOUGHTS, totalTokenCount: PROMPT + THOUGHTS } })], end: false },
  // The finish brings no usage of its own: the mid-stream usage counted the prompt only.
  gemini_no_final: { frames: [gem({ ...text('Two'), usageMetadata: { promptTokenCount: PROMPT, totalTokenCount: PROMPT } }), gem(text(' words', { finishReason: 'STOP' }))], end: true },
  // A final count that is not believed: message_start's prompt still stands (each part the larger of it and the count).
  anthropic_lie_final: { frames: [START, ...TEXT, ev('content_block_stop', { index: 0 }), ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: -5 } }), ev('message_stop', {})], end: true },
  gemini_lie_final: { frames: [gem({ ...text('Two'), usageMetadata: { promptTokenCount: PROMPT, totalTokenCount: PROMPT } }),
    gem({ ...text(' words', { finishReason: 'STOP' }), usageMetadata: { promptTokenCount: PROMPT, candidatesTokenCount: 'x' } })], end: true },
  // Ends cleanly before message_delta: an answer cut short, not a finished one.
  anthropic_truncated: { frames: [START, ...TEXT], end: true },
  gemini_lie_after_final: { frames: [
    gem({ ...text('Two words', { finishReason: 'STOP' }), usageMetadata: { promptTokenCount: PROMPT, candidatesTokenCount: 300, totalTokenCount: PROMPT + 300 } }),
    gem({ usageMetadata: { promptTokenCount: PROMPT, candidatesTokenCount: -5, totalTokenCount: PROMPT - 5 } }),
  ], end: true },
};

describe('streams without a believable final usage: what the upstream reported on the way stands', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = req.body.toString('utf8');
      const name = Object.keys(SCRIPTS).find((k) => body.includes(`case ${k}`));
      const script = name === undefined ? undefined : SCRIPTS[name];
      if (script === undefined) { s.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n'); return; }
      s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
      for (const f of script.frames) s.write(chunk(f));
      if (script.end) s.write('0\r\n\r\n');
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  const charged = (route: string): Promise<number> => metric(gw, new RegExp(`^sluice_quota_tokens_charged_total\\{route="${route}"`));
  const tokens = (route: string, kind: string): Promise<number> => metric(gw, new RegExp(`^sluice_tokens_total\\{route="${route}".*kind="${kind}"`));

  /** Sends a native streaming request on a raw socket, waits for `seen`, leaves, and waits for the settlement. */
  async function leaveAfter(route: string, path: string, body: object, seen: string): Promise<number> {
    const before = await charged(route);
    const b = JSON.stringify(body);
    const s: Socket = connect(Number(new URL(gw.url).port), '127.0.0.1');
    s.on('error', () => undefined);
    let got = '';
    s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
    s.write(`POST ${path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(b)}\r\n\r\n${b}`);
    try {
      await eventually(`the client saw ${seen}`, () => got.includes(seen), 30_000);
      assert.match(got, /^HTTP\/1\.1 200 /);
    } finally {
      s.destroy();
    }
    await eventually('the stream is settled', async () => (await charged(route)) > before, 30_000);
    return (await charged(route)) - before;
  }

  it('Anthropic: a client that leaves before the final count is charged message_start\'s prompt and the counted text', { timeout: 60_000 }, async () => {
    const n = await leaveAfter('a', '/a/v1/messages', { model: 'c', stream: true, max_tokens: 1000, messages: [{ role: 'user', content: 'case anthropic_cut' }] }, 'Two words');
    // input_tokens + cache_read_input_tokens, not the gateway's count of a three-word prompt.
    assert.equal(await tokens('a', 'prompt'), PROMPT + CACHED);
    assert.equal(await tokens('a', 'cached_prompt'), CACHED);
    const completion = await tokens('a', 'completion');
    assert.ok(completion >= 1 && completion < 20, `counted completion ${completion}`);
    assert.equal(n, PROMPT + CACHED + completion);
    assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="a",reason="client_abort"\}/), 1);
  });

  it('Gemini: a client that leaves before the finish is charged the mid-stream prompt count, the thoughts reported and the counted text', { timeout: 60_000 }, async () => {
    const n = await leaveAfter('g', '/g/v1beta/models/gem:streamGenerateContent?alt=sse', { contents: [{ role: 'user', parts: [{ text: 'case gemini_cut' }] }] }, 'usageMetadata');
    assert.equal(await tokens('g', 'prompt'), PROMPT);
    assert.equal(await tokens('g', 'cached_prompt'), CACHED);
    const completion = await tokens('g', 'completion');
    assert.ok(completion >= THOUGHTS + 1 && completion < THOUGHTS + 20, `thoughts and counted completion ${completion}`);
    assert.equal(n, PROMPT + completion);
  });

  it('translated Anthropic stream with include_usage and no final count: the SDK gets a usage chunk with what was charged', { timeout: 60_000 }, async () => {
    const openai = new OpenAI({ apiKey: 'x', baseURL: `${gw.url}/a/v1`, maxRetries: 0 });
    const before = await charged('a');
    const stream = await openai.chat.completions.create({ model: 'c', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'case anthropic_no_final' }] });
    let content = '';
    let usage: OpenAI.CompletionUsage | undefined;
    let finish: string | null | undefined;
    for await (const c of stream) {
      content += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) usage = c.usage;
    }
    assert.equal(content, 'Two words');
    assert.equal(finish, 'stop');
    assert.ok(usage !== undefined, 'a usage chunk came');
    assert.equal(usage.prompt_tokens, PROMPT + CACHED);
    assert.equal(usage.prompt_tokens_details?.cached_tokens, CACHED);
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens < 20);
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    await eventually('the stream is settled', async () => (await charged('a')) > before, 30_000);
    assert.equal((await charged('a')) - before, usage.total_tokens);
  });

  it('translated Gemini stream with include_usage whose finish has no usage: the usage chunk carries the prompt reported mid-stream', { timeout: 60_000 }, async () => {
    const openai = new OpenAI({ apiKey: 'x', baseURL: `${gw.url}/g/v1`, maxRetries: 0 });
    const before = await charged('g');
    const stream = await openai.chat.completions.create({ model: 'gem', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'case gemini_no_final' }] });
    let content = '';
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const c of stream) {
      content += c.choices[0]?.delta.content ?? '';
      if (c.usage) usage = c.usage;
    }
    assert.equal(content, 'Two words');
    assert.ok(usage !== undefined, 'a usage chunk came');
    assert.equal(usage.prompt_tokens, PROMPT);
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens < 20);
    await eventually('the stream is settled', async () => (await charged('g')) > before, 30_000);
    assert.equal((await charged('g')) - before, usage.total_tokens);
  });

  it('a final count that is not believed keeps the prompt reported on the way (Anthropic, Gemini)', { timeout: 60_000 }, async () => {
    for (const [route, path, body, prompt] of [
      ['a', '/a/v1/messages', { model: 'c', stream: true, max_tokens: 1000, messages: [{ role: 'user', content: 'case anthropic_lie_final' }] }, PROMPT + CACHED],
      ['g', '/g/v1beta/models/gem:streamGenerateContent?alt=sse', { contents: [{ role: 'user', parts: [{ text: 'case gemini_lie_final' }] }] }, PROMPT],
    ] as const) {
      const before = await charged(route);
      const promptBefore = await tokens(route, 'prompt');
      const res = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.equal(res.status, 200);
      assert.match(await res.text(), /Two/);
      await eventually('the stream is settled', async () => (await charged(route)) > before, 30_000);
      assert.equal((await tokens(route, 'prompt')) - promptBefore, prompt, `${route}: the reported prompt, not the gateway's count of a few words`);
      const n = (await charged(route)) - before;
      assert.ok(n > prompt && n < prompt + 20, `${route}: charged ${n}: the prompt and the counted text`);
    }
  });

  it('translated Anthropic stream that ends before message_delta: the SDK raises an error, and what was produced is charged', { timeout: 60_000 }, async () => {
    const openai = new OpenAI({ apiKey: 'x', baseURL: `${gw.url}/a/v1`, maxRetries: 0 });
    const before = await charged('a');
    const stream = await openai.chat.completions.create({ model: 'c', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'case anthropic_truncated' }] });
    let content = '';
    let finish: string | null | undefined;
    await assert.rejects(async () => {
      for await (const c of stream) {
        content += c.choices[0]?.delta.content ?? '';
        finish = c.choices[0]?.finish_reason ?? finish;
      }
    }, /the upstream stream ended before message_delta: the answer is incomplete/);
    assert.equal(content, 'Two words');
    assert.equal(finish, undefined, 'no made-up finish_reason');
    await eventually('the stream is settled', async () => (await charged('a')) > before, 30_000);
    const n = (await charged('a')) - before;
    assert.ok(n > PROMPT + CACHED && n < PROMPT + CACHED + 20, `charged ${n}`);
    assert.ok((await metric(gw, /^sluice_usage_estimated_total\{route="a",reason="upstream_broken"\}/)) >= 1);
  });

  it('Gemini: a lie after a believed final report leaves that report as the floor', { timeout: 60_000 }, async () => {
    const before = await charged('g');
    const res = await fetch(`${gw.url}/g/v1beta/models/gem:streamGenerateContent?alt=sse`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'case gemini_lie_after_final' }] }] }),
    });
    assert.equal(res.status, 200);
    assert.match(await res.text(), /"candidatesTokenCount":-5/);
    await eventually('the stream is settled', async () => (await charged('g')) > before, 30_000);
    assert.equal((await charged('g')) - before, PROMPT + 300);
    assert.equal(await metric(gw, /^sluice_usage_rejected_total\{route="g",reason="negative"\}/), 1);
  });
});
