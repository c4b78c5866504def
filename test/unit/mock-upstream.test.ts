import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { once } from 'node:events';
import OpenAI from 'openai';
import { countTokens } from 'gpt-tokenizer/encoding/o200k_base';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { parseMockUpstreamArgs, MockArgsError } from '../../src/mock/command.ts';
import { chatPromptTokens, completionPromptTokens } from '../../src/mock/tokens.ts';

const root = new URL('../../', import.meta.url).pathname;

function client(mock: MockUpstream, opts: { timeout?: number } = {}): OpenAI {
  return new OpenAI({ baseURL: mock.url + '/v1', apiKey: 'sk-test', maxRetries: 0, timeout: opts.timeout ?? 10_000 });
}

async function waitFor(cond: () => boolean, what: string, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// The rule written out independently of src/mock/tokens.ts: 3 + Σ(3 + content tokens).
function expectedChatPrompt(contents: string[]): number {
  return 3 + contents.reduce((n, c) => n + 3 + countTokens(c), 0);
}

describe('mock upstream: non-streaming', () => {
  let mock: MockUpstream;
  let ai: OpenAI;
  before(async () => { mock = await startMockUpstream({ name: 'alpha' }); ai = client(mock); });
  after(() => mock.close());

  it('answers a chat completion with deterministic usage and echoes the model', async () => {
    const contents = ['You are terse.', 'Count the tokens of this sentence, please: déjà vu 東京 🚀'];
    const { data, response } = await ai.chat.completions.create({
      model: 'gpt-test',
      messages: [{ role: 'system', content: contents[0]! }, { role: 'user', content: contents[1]! }],
    }).withResponse();
    assert.equal(response.headers.get('x-mock-name'), 'alpha');
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.model, 'gpt-test');
    assert.equal(data.choices[0]!.finish_reason, 'stop');
    assert.deepEqual(data.usage, {
      prompt_tokens: expectedChatPrompt(contents),
      completion_tokens: 16,
      total_tokens: expectedChatPrompt(contents) + 16,
    });
    assert.equal(countTokens(data.choices[0]!.message.content!), 16);
  });

  it('takes completion tokens from max_tokens or max_completion_tokens and counts content parts', async () => {
    const a = await ai.chat.completions.create({ model: 'm', max_tokens: 37, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(a.usage!.completion_tokens, 37);
    assert.equal(countTokens(a.choices[0]!.message.content!), 37);
    assert.equal(a.choices[0]!.finish_reason, 'length');

    const b = await ai.chat.completions.create({
      model: 'm',
      max_completion_tokens: 3,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'first part' }, { type: 'text', text: 'second part' }] }],
    });
    assert.equal(b.usage!.completion_tokens, 3);
    assert.equal(b.usage!.prompt_tokens, 3 + 3 + countTokens('first part') + countTokens('second part'));

    const zero = await ai.chat.completions.create({ model: 'm', max_tokens: 0, messages: [] });
    assert.deepEqual(zero.usage, { prompt_tokens: 3, completion_tokens: 0, total_tokens: 3 });
    assert.equal(zero.choices[0]!.message.content, '');
  });

  it('counts special-token text as plain text instead of failing', async () => {
    const r = await ai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'a <|endoftext|> b' }] });
    assert.equal(r.usage!.prompt_tokens, chatPromptTokens([{ content: 'a <|endoftext|> b' }]));
    assert.ok(r.usage!.prompt_tokens > 6);
  });

  it('answers /v1/completions for string and array prompts', async () => {
    const s = await ai.completions.create({ model: 'davinci-test', prompt: 'Once upon a time', max_tokens: 5 });
    assert.equal(s.object, 'text_completion');
    assert.equal(s.model, 'davinci-test');
    assert.deepEqual(s.usage, { prompt_tokens: countTokens('Once upon a time'), completion_tokens: 5, total_tokens: countTokens('Once upon a time') + 5 });
    assert.equal(countTokens(s.choices[0]!.text), 5);

    const arr = await ai.completions.create({ model: 'm', prompt: ['one two', 'three'] });
    assert.equal(arr.usage!.prompt_tokens, countTokens('one two') + countTokens('three'));
    assert.equal(arr.usage!.completion_tokens, 16);
    const ids = await ai.completions.create({ model: 'm', prompt: [1, 2, 3, 4] });
    assert.equal(ids.usage!.prompt_tokens, 4);
    assert.equal(completionPromptTokens([[1, 2], [3]]), 3);
  });

  it('echoes the received headers when asked', async () => {
    const r = await ai.chat.completions.create(
      { model: 'm', messages: [{ role: 'user', content: 'x' }] },
      { headers: { 'x-mock-echo-headers': '1', 'x-custom': 'yes' } },
    );
    const echoed = (r as unknown as { mock_request_headers: Record<string, string> }).mock_request_headers;
    assert.equal(echoed['x-custom'], 'yes');
    assert.equal(echoed.authorization, 'Bearer sk-test');
  });
});

describe('mock upstream: streaming', () => {
  let mock: MockUpstream;
  let ai: OpenAI;
  before(async () => { mock = await startMockUpstream({ chunks: 4 }); ai = client(mock); });
  after(() => mock.close());

  it('streams role, content frames and finish without usage by default', async () => {
    const stream = await ai.chat.completions.create({ model: 'm', stream: true, max_tokens: 10, messages: [{ role: 'user', content: 'hello' }] });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks.length, 1 + 4 + 1);
    assert.equal(chunks[0]!.choices[0]!.delta.role, 'assistant');
    const deltas = chunks.slice(1, 5).map((c) => c.choices[0]!.delta.content!);
    assert.deepEqual(deltas.map((d) => countTokens(d)), [3, 3, 2, 2]);
    assert.equal(countTokens(deltas.join('')), 10);
    assert.equal(chunks[5]!.choices[0]!.finish_reason, 'length');
    for (const c of chunks) {
      assert.equal(c.model, 'm');
      assert.equal(c.usage, undefined);
    }
  });

  it('adds a usage frame with empty choices when stream_options.include_usage is true', async () => {
    const stream = await ai.chat.completions.create({
      model: 'm', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'hello' }],
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const c of stream) chunks.push(c);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: expectedChatPrompt(['hello']), completion_tokens: 16, total_tokens: expectedChatPrompt(['hello']) + 16 });
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    assert.equal(countTokens(text), 16);
    assert.equal(chunks.slice(0, -1).every((c) => c.usage === null), true);
  });

  it('forces usage on or off with x-mock-usage', async () => {
    const on = await ai.chat.completions.create({ model: 'm', stream: true, messages: [] }, { headers: { 'x-mock-usage': 'on' } });
    let usage: unknown;
    for await (const c of on) if (c.usage) usage = c.usage;
    assert.deepEqual(usage, { prompt_tokens: 3, completion_tokens: 16, total_tokens: 19 });

    const off = await ai.chat.completions.create(
      { model: 'm', stream: true, stream_options: { include_usage: true }, messages: [] },
      { headers: { 'x-mock-usage': 'off' } },
    );
    let frames = 0;
    for await (const c of off) { frames++; assert.ok(!c.usage); }
    assert.equal(frames, 6);
  });

  it('streams /v1/completions and honours x-mock-chunks and x-mock-completion-tokens', async () => {
    const stream = await ai.completions.create(
      { model: 'm', prompt: 'abc', stream: true, stream_options: { include_usage: true } },
      { headers: { 'x-mock-chunks': '2', 'x-mock-completion-tokens': '5' } },
    );
    const chunks: OpenAI.Completion[] = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(chunks.length, 2 + 1 + 1);
    assert.equal(countTokens(chunks.map((c) => c.choices[0]?.text ?? '').join('')), 5);
    assert.equal(chunks[2]!.choices[0]!.finish_reason, 'stop');
    assert.deepEqual(chunks[3]!.usage, { prompt_tokens: countTokens('abc'), completion_tokens: 5, total_tokens: countTokens('abc') + 5 });
  });

  it('spaces frames by ttft and chunk delay', async () => {
    const t0 = performance.now();
    const stream = await ai.chat.completions.create(
      { model: 'm', stream: true, messages: [] },
      { headers: { 'x-mock-ttft-ms': '80', 'x-mock-chunk-delay-ms': '40', 'x-mock-chunks': '3' } },
    );
    const at: number[] = [];
    for await (const c of stream) if (c.choices[0]?.delta.content) at.push(performance.now() - t0);
    assert.equal(at.length, 3);
    assert.ok(at[0]! >= 75, `first content at ${at[0]} ms`);
    assert.ok(at[1]! - at[0]! >= 30 && at[2]! - at[1]! >= 30, `gaps ${at.join(',')}`);
  });

  it('delivers a large stream intact to a reader that pauses (backpressure)', async () => {
    const body = JSON.stringify({ model: 'm', stream: true, max_tokens: 200_000, messages: [] });
    const text = await new Promise<string>((resolve, reject) => {
      const req = request(`${mock.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-mock-chunks': '2000' } }, (res) => {
        let buf = '';
        res.setEncoding('utf8');
        res.pause();
        setTimeout(() => res.resume(), 200);
        res.on('data', (d: string) => { buf += d; });
        res.on('end', () => resolve(buf));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(body);
    });
    const frames = text.split('\n\n').filter((f) => f.startsWith('data: '));
    assert.equal(frames.at(-1), 'data: [DONE]');
    let content = '';
    for (const f of frames.slice(0, -1)) content += (JSON.parse(f.slice(6)) as OpenAI.ChatCompletionChunk).choices[0]!.delta.content ?? '';
    assert.equal(countTokens(content), 200_000);
  });
});

describe('mock upstream: faults and errors', () => {
  let mock: MockUpstream;
  let ai: OpenAI;
  const chat = { model: 'm', messages: [{ role: 'user' as const, content: 'x' }] };
  before(async () => { mock = await startMockUpstream({ name: 'faulty' }); ai = client(mock); });
  after(() => mock.close());

  it('answers the status asked by x-mock-status with an OpenAI error body', async () => {
    await assert.rejects(ai.chat.completions.create(chat, { headers: { 'x-mock-status': '429' } }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.RateLimitError);
      assert.equal(err.status, 429);
      assert.equal((err.error as { type: string }).type, 'rate_limit_error');
      assert.equal(err.headers.get('x-mock-name'), 'faulty');
      return true;
    });
    await assert.rejects(ai.chat.completions.create({ ...chat, stream: true }, { headers: { 'x-mock-status': '503' } }), (err: unknown) => {
      assert.ok(err instanceof OpenAI.InternalServerError);
      assert.equal(err.status, 503);
      return true;
    });
  });

  it('delays the response headers by x-mock-delay-ms', async () => {
    const t0 = performance.now();
    await ai.chat.completions.create(chat, { headers: { 'x-mock-delay-ms': '120' } });
    assert.ok(performance.now() - t0 >= 110);
    await assert.rejects(
      client(mock, { timeout: 40 }).chat.completions.create(chat, { headers: { 'x-mock-delay-ms': '400' } }),
      OpenAI.APIConnectionTimeoutError,
    );
    await waitFor(() => mock.stats().inFlight === 0, 'the timed-out request to end');
  });

  it('drops a stream after n content frames with x-mock-disconnect-after', async () => {
    const stream = await ai.chat.completions.create({ ...chat, stream: true }, { headers: { 'x-mock-disconnect-after': '2' } });
    const contents: string[] = [];
    await assert.rejects(async () => {
      for await (const c of stream) if (c.choices[0]?.delta.content) contents.push(c.choices[0].delta.content);
    });
    assert.equal(contents.length, 2);
  });

  it('drops a non-streaming request without an answer (0) or with a truncated body (n)', async () => {
    await assert.rejects(ai.chat.completions.create(chat, { headers: { 'x-mock-disconnect-after': '0' } }), OpenAI.APIConnectionError);
    await assert.rejects(ai.chat.completions.create(chat, { headers: { 'x-mock-disconnect-after': '20' } }));
    await waitFor(() => mock.stats().inFlight === 0, 'dropped requests to end');
    assert.ok((mock.stats().byStatus.disconnected ?? 0) >= 2);
  });

  it('answers 404, 405, 400 and rejects bad fault headers', async () => {
    const post = (path: string, body: string, headers: Record<string, string> = {}) =>
      fetch(mock.url + path, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
    const notFound = await post('/v1/nothing-here', '{}');
    assert.equal(notFound.status, 404);
    assert.deepEqual(Object.keys(((await notFound.json()) as { error: object }).error).sort(), ['code', 'message', 'param', 'type']);
    const wrongMethod = await fetch(mock.url + '/v1/chat/completions');
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers.get('allow'), 'POST');
    assert.equal(((await wrongMethod.json()) as { error: { code: string } }).error.code, 'method_not_allowed');
    const badJson = await post('/v1/chat/completions', '{"model":');
    assert.equal(badJson.status, 400);
    assert.equal(((await badJson.json()) as { error: { code: string } }).error.code, 'invalid_json');
    const badShape = await post('/v1/chat/completions', '{"model":"m","messages":"nope"}');
    assert.equal(badShape.status, 400);
    await badShape.arrayBuffer();
    const badHeader = await post('/v1/chat/completions', '{"messages":[]}', { 'x-mock-status': 'soon' });
    assert.equal(badHeader.status, 400);
    assert.equal(((await badHeader.json()) as { error: { code: string } }).error.code, 'mock_bad_header');
  });
});

describe('mock upstream: stats and cleanup', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream(); });
  after(() => mock.close());

  it('counts requests by status, keeps the last request and resets', async () => {
    const ai = client(mock);
    await ai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'one' }] });
    await assert.rejects(ai.chat.completions.create({ model: 'm', messages: [] }, { headers: { 'x-mock-status': '500' } }));
    await (await fetch(mock.url + '/nope')).arrayBuffer();
    const s = mock.stats();
    assert.equal(s.requests, 3);
    assert.deepEqual(s.byStatus, { '200': 1, '404': 1, '500': 1 });
    assert.equal(s.lastRequest!.path, '/nope');

    await ai.chat.completions.create({ model: 'last', messages: [{ role: 'user', content: 'two' }] }, { headers: { 'x-trace': 't1' } });
    const over = (await (await fetch(mock.url + '/mock/stats')).json()) as ReturnType<MockUpstream['stats']>;
    assert.equal(over.requests, 4);
    assert.equal(over.lastRequest!.headers['x-trace'], 't1');
    assert.equal((over.lastRequest!.body as { model: string }).model, 'last');

    const reset = await fetch(mock.url + '/mock/reset', { method: 'POST' });
    assert.equal(reset.status, 200);
    await reset.arrayBuffer();
    const cleared = mock.stats();
    assert.deepEqual({ requests: cleared.requests, byStatus: cleared.byStatus, inFlight: cleared.inFlight, aborted: cleared.aborted },
      { requests: 0, byStatus: {}, inFlight: 0, aborted: 0 });
    assert.equal(cleared.lastRequest, undefined);
    assert.deepEqual(cleared.bySurface, {});
    assert.equal(cleared.usage.total_tokens, 0);
  });

  it('stops a slow stream when the client aborts, leaving nothing in flight', async () => {
    const ai = client(mock);
    const ac = new AbortController();
    const stream = await ai.chat.completions.create(
      { model: 'm', stream: true, messages: [] },
      { headers: { 'x-mock-chunks': '50', 'x-mock-chunk-delay-ms': '200' }, signal: ac.signal },
    );
    // The SDK ends the iteration quietly on abort; without the abort this stream would run for 10 s.
    let contents = 0;
    for await (const c of stream) if (c.choices[0]?.delta.content) { contents++; ac.abort(); }
    assert.equal(contents, 1);
    await waitFor(() => mock.stats().inFlight === 0, 'the aborted stream to stop');
    assert.equal(mock.stats().aborted, 1);
    // close() must not wait for the abandoned stream's timers.
    const t0 = performance.now();
    await mock.close();
    assert.ok(performance.now() - t0 < 5000, "close() does not wait for the abandoned stream");
  });
});

describe('mock-upstream command', () => {
  it('parses flags in both forms and rejects bad ones', () => {
    assert.deepEqual(parseMockUpstreamArgs(['--port', '0', '--chunks=3', '--usage', 'on', '--name', 'a', '--ttft-ms', '5', '--chunk-delay-ms', '1', '--completion-tokens', '9', '--host', '127.0.0.1']), {
      port: 0, chunks: 3, usage: 'on', name: 'a', ttftMs: 5, chunkDelayMs: 1, completionTokens: 9, host: '127.0.0.1',
    });
    for (const bad of [['--port', 'x'], ['--port'], ['--usage', 'sometimes'], ['--chunks', '0'], ['--bogus'], ['--port', '70000']]) {
      assert.throws(() => parseMockUpstreamArgs(bad), MockArgsError, bad.join(' '));
    }
  });

  it('serves until SIGTERM and exits 0; exits 2 on a bad flag', async () => {
    const script = "import { runMockUpstreamCommand } from './src/mock/command.ts'; await runMockUpstreamCommand(process.argv.slice(1));";
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--port', '0', '--name', 'cli'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
      await waitFor(() => out.includes('\n'), 'the listening line', 15_000);
      const m = /^mock-upstream listening on (http:\/\/127\.0\.0\.1:(\d+))\n$/.exec(out);
      assert.ok(m, out);
      const r = await fetch(m[1] + '/v1/chat/completions', { method: 'POST', body: '{"messages":[]}' });
      assert.equal(r.headers.get('x-mock-name'), 'cli');
      assert.equal(((await r.json()) as { usage: { total_tokens: number } }).usage.total_tokens, 19);
      child.kill('SIGTERM');
      const [code] = await once(child, 'exit');
      assert.equal(code, 0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }

    const bad = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--usage', 'maybe'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    bad.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const [code] = await once(bad, 'exit');
    assert.equal(code, 2);
    assert.match(err, /--usage must be auto, on or off/);
  });
});
