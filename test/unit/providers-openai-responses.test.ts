// The OpenAI Responses surface: request validation (with the `param` at fault), prompt parts counted with the
// real tokenizer, usage with cached and reasoning kinds, and the stream codec: bytes pass through, usage only
// from the terminal event, text from deltas, any split of the bytes, bounded memory on huge events.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeResponses, responsesOutputText, responsesPromptParts, responsesSurface, responsesUsage, ResponsesStream, SMALL_EVENT_BYTES,
} from '../../src/providers/openai/responses.ts';
import { prepareCall } from '../../src/providers/prepare.ts';
import { surfaceParser } from '../helpers/surface-parse.ts';
import type { ParseOptions, PreparedCall } from '../../src/providers/types.ts';
import { countPromptParts, countText } from '../../src/tokens/count.ts';
import { isRejection, type Usage } from '../../src/streaming/usage.ts';

const OPTS: ParseOptions = { surface: 'openai-responses', path: '/v1/responses', query: '', defaultMaxTokens: 256 };
const MAX_USAGE = 10_000_000;
const { ok, bad } = surfaceParser(responsesSurface, OPTS);

describe('responses: validation', () => {
  it('rejects bodies that are not a JSON object', () => {
    bad('{"model":', undefined, 'SLC_BAD_JSON');
    bad('[1,2]', undefined);
    bad('"text"', undefined);
  });

  it('names the field at fault', () => {
    bad({ model: 5, input: 'hi' }, 'model');
    bad({ input: 'hi', stream: 'yes' }, 'stream');
    for (const v of [0, -1, 1.5, '10', true]) bad({ input: 'hi', max_output_tokens: v }, 'max_output_tokens');
    bad({ input: 'hi', instructions: 7 }, 'instructions');
    bad({ input: 'hi', previous_response_id: 7 }, 'previous_response_id');
    bad({ input: 5 }, 'input');
    bad({ input: [1] }, 'input');
    bad({ input: [{ role: 'user', content: 5 }] }, 'input');
    bad({ input: [{ role: 'user', content: ['text'] }] }, 'input');
    bad({ input: [{ role: 7, content: 'x' }] }, 'input');
    bad({ input: [{ type: 9 }] }, 'input');
    bad({ model: 'gpt-4o' }, 'input');
    bad({ input: 'hi', tools: {} }, 'tools');
    bad({ input: 'hi', tools: [1] }, 'tools');
    bad({ input: 'hi', background: true }, 'background');
  });

  it('refuses max_output_tokens above every candidate model cap, like OpenAI', () => {
    bad({ model: 'gpt-4o', input: 'hi', max_output_tokens: 16385 }, 'max_output_tokens');
    assert.equal(ok({ model: 'gpt-4o', input: 'hi', max_output_tokens: 16384 }).reserveCompletion, 16384);
    // An unknown model: the upstream decides; the reservation is capped by max_reservation.
    assert.equal(ok({ model: 'my-model', input: 'hi', max_output_tokens: 100_000 }).reserveCompletion, 32768);
  });

  it('accepts the documented shapes, with context held upstream', () => {
    ok({ model: 'gpt-4o', input: 'hi' });
    ok({ model: 'gpt-4o', previous_response_id: 'resp_1' });
    ok({ model: 'gpt-4o', conversation: 'conv_1', input: [] });
    ok({ model: 'gpt-4o', prompt: { id: 'pmpt_1', variables: { city: 'Paris' } } });
    ok({ model: 'gpt-4o', input: 'hi', instructions: null, max_output_tokens: null, stream: null, tools: null, background: false });
    ok({ model: 'gpt-4o', input: [{ type: 'item_reference', id: 'msg_1' }, { type: 'function_call_output', call_id: 'c', output: '42' }] });
  });

  it('sizes the call: reservation, stream, usage always in the stream, one choice', () => {
    const p = ok({ model: 'gpt-4o', input: 'hi', max_output_tokens: 77, stream: true });
    assert.equal(p.surface, 'openai-responses');
    assert.equal(p.model, 'gpt-4o');
    assert.equal(p.stream, true);
    assert.equal(p.clientWantsUsage, true);
    assert.equal(p.maxTokens, 77);
    assert.equal(p.n, 1);
    assert.equal(p.reserveCompletion, 77);
    assert.equal(ok({ model: 'gpt-4o', input: 'hi' }).reserveCompletion, 256, 'tokens.default_max_tokens without max_output_tokens');
    assert.equal(ok({ model: 'gpt-4o', input: 'hi' }, { instanceModels: ['gpt-4'] }).reserveCompletion, 256);
  });

  it('picks the encoding by model and skips parts when the route counts nothing', () => {
    assert.equal(ok({ model: 'gpt-4o-mini', input: 'hi' }).enc, 'o200k_base');
    assert.equal(ok({ model: 'gpt-4-turbo', input: 'hi' }).enc, 'cl100k_base');
    assert.equal(ok({ model: 'gpt-4o', input: 'hi' }, { countPrompt: false }).parts, undefined);
  });

  it('takes instance-overridable fields out of the body', () => {
    const p = ok({ model: 'gpt-4o', input: 'hi', temperature: 0.5 }, { overrideKeys: ['temperature', 'top_p'] });
    assert.deepEqual(p.fieldKeys, ['temperature', 'top_p']);
    assert.deepEqual(p.clientFields, ['0.5', null]);
    assert.equal(p.obj.temperature, undefined);
  });

  it('prepares through the registry: tail without model, prompt counted', () => {
    const r = prepareCall(Buffer.from(JSON.stringify({ model: 'gpt-4o', input: 'Tell me a story', stream: true })), OPTS);
    assert.ok(r.ok);
    const prepared = r as PreparedCall;
    assert.equal(prepared.surface, 'openai-responses');
    assert.equal(JSON.parse('{' + prepared.tail.toString()).model, undefined);
    assert.equal(JSON.parse('{' + prepared.tail.toString()).stream, true);
    assert.ok(prepared.promptTokens >= countText('Tell me a story', 'o200k_base'));
  });
});

describe('responses: prompt counting', () => {
  it('counts instructions, a string input and the overheads with the real tokenizer', () => {
    const instructions = 'You are a terse assistant that answers in one line.';
    const input = 'What is the capital of France, and why is it famous?';
    const p = ok({ model: 'gpt-4o', instructions, input });
    const n = countPromptParts(p.parts!, p.enc);
    const texts = countText(instructions, 'o200k_base') + countText(input, 'o200k_base');
    assert.equal(n, texts + 3 + 2 * (3 + 1));
  });

  it('counts message items, content parts, tool calls and outputs, reasoning summaries and tools', () => {
    const body = {
      model: 'gpt-4o',
      input: [
        { role: 'user', content: [{ type: 'input_text', text: 'Look at this picture' }, { type: 'input_image', image_url: 'https://x/y.png' }] },
        { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'A cat on a mat.' }] },
        { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: 'Thinking about weather' }], encrypted_content: 'opaque' },
        { type: 'function_call', call_id: 'c1', name: 'get_weather', arguments: '{"city":"Paris"}' },
        { type: 'function_call_output', call_id: 'c1', output: '{"temp":21}' },
        { type: 'item_reference', id: 'msg_9' },
      ],
      tools: [{ type: 'function', name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } }],
    };
    const parts = responsesPromptParts(body);
    for (const t of ['Look at this picture', 'A cat on a mat.', 'Thinking about weather', 'get_weather', '{"city":"Paris"}', '{"temp":21}', 'user', 'assistant']) {
      assert.ok(parts.texts.includes(t), `counts ${t}`);
    }
    assert.ok(!parts.texts.some((t) => t.includes('opaque')), 'encrypted reasoning is not text');
    assert.ok(parts.texts.includes(JSON.stringify(body.tools)));
    // 3 reply priming + 5 items × 3 (the reference adds nothing) + 85 for the image.
    assert.equal(parts.fixed, 3 + 5 * 3 + 85);
  });

  it('counts a structured-output schema, stored prompt variables and inline file data as a bound', () => {
    const schema = { type: 'object', properties: { answer: { type: 'string' } } };
    const parts = responsesPromptParts({
      input: [{ role: 'user', content: [{ type: 'input_file', filename: 'a.pdf', file_data: 'A'.repeat(4000) }] }],
      text: { format: { type: 'json_schema', name: 'x', schema } },
      prompt: { id: 'pmpt_1', variables: { city: 'Paris' } },
    });
    assert.ok(parts.texts.includes(JSON.stringify(schema)));
    assert.ok(parts.texts.includes('{"city":"Paris"}'));
    assert.ok(parts.texts.includes('a.pdf'));
    assert.equal(parts.fixed, 3 + 3 + 1000);
  });
});

function usageOf(u: ReturnType<typeof responsesUsage>): Usage {
  assert.ok(u !== undefined && !isRejection(u), `expected usage, got ${JSON.stringify(u)}`);
  return u;
}

describe('responses: usage', () => {
  const full = {
    input_tokens: 120, input_tokens_details: { cached_tokens: 100 },
    output_tokens: 50, output_tokens_details: { reasoning_tokens: 30 }, total_tokens: 170,
  };

  it('normalises input/output tokens with cached and reasoning parts', () => {
    const u = usageOf(responsesUsage(full, MAX_USAGE));
    assert.deepEqual({ ...u }, {
      prompt_tokens: 120, completion_tokens: 50, total_tokens: 170, cached_prompt_tokens: 100, cache_write_tokens: 0, reasoning_tokens: 30,
    });
    assert.equal((u.raw as Record<string, unknown>).input_tokens, 120, 'the raw object stays for cost expressions');
  });

  it('reads cache writes as a part of the input, and ignores an inconsistent one rather than the whole usage', () => {
    const w = usageOf(responsesUsage({ ...full, input_tokens_details: { cached_tokens: 50, cache_write_tokens: 20 } }, MAX_USAGE));
    assert.equal(w.cache_write_tokens, 20);
    const x = usageOf(responsesUsage({ ...full, input_tokens_details: { cached_tokens: 100, cache_write_tokens: 90 } }, MAX_USAGE));
    assert.equal(x.cache_write_tokens, 0);
    assert.equal(x.prompt_tokens, 120);
  });

  it('does not believe a usage without an input count (the prompt would be charged as 0)', () => {
    assert.equal(responsesUsage({ output_tokens: 20 }, MAX_USAGE), undefined);
  });

  it('rejects implausible numbers and parts larger than their whole', () => {
    assert.deepEqual(responsesUsage({ ...full, input_tokens: -1 }, MAX_USAGE), { rejected: 'negative' });
    assert.deepEqual(responsesUsage({ ...full, output_tokens: '5' }, MAX_USAGE), { rejected: 'not_a_number' });
    assert.deepEqual(responsesUsage({ ...full, input_tokens: null }, MAX_USAGE), { rejected: 'not_a_number' }, 'a null count would make the answer free');
    assert.deepEqual(responsesUsage({ ...full, output_tokens: null }, MAX_USAGE), { rejected: 'not_a_number' });
    assert.deepEqual(responsesUsage({ prompt_tokens: 5, completion_tokens: null }, MAX_USAGE), { rejected: 'not_a_number' });
    assert.deepEqual(responsesUsage({ ...full, total_tokens: 10 }, MAX_USAGE), { rejected: 'inconsistent' });
    assert.deepEqual(responsesUsage({ ...full, output_tokens_details: { reasoning_tokens: 51 } }, MAX_USAGE), { rejected: 'inconsistent' });
    assert.deepEqual(responsesUsage({ ...full, input_tokens_details: { cached_tokens: 121 } }, MAX_USAGE), { rejected: 'inconsistent' });
    assert.deepEqual(responsesUsage({ ...full, input_tokens: 1e12 }, MAX_USAGE), { rejected: 'too_large' });
    assert.deepEqual(responsesUsage([1], MAX_USAGE), { rejected: 'malformed' });
    assert.equal(responsesUsage(null, MAX_USAGE), undefined);
    assert.equal(responsesUsage({}, MAX_USAGE), undefined);
  });

  it('reads chat-style counts from servers that send them', () => {
    const u = usageOf(responsesUsage({ prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 }, MAX_USAGE));
    assert.equal(u.prompt_tokens, 7);
    assert.equal(u.completion_tokens, 3);
  });
});

const OUTPUT = [
  { type: 'reasoning', id: 'rs_1', summary: [{ type: 'summary_text', text: 'Considering the question.' }] },
  { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Paris is the capital.', annotations: [] }, { type: 'refusal', refusal: 'No more.' }] },
  { type: 'function_call', call_id: 'c1', name: 'lookup', arguments: '{"q":"paris"}' },
];

describe('responses: buffered answers', () => {
  it('takes usage from the response object and relays the bytes unchanged', () => {
    const body = Buffer.from(JSON.stringify({ id: 'resp_1', object: 'response', status: 'completed', output: OUTPUT, usage: { input_tokens: 10, output_tokens: 5, total_tokens: 15 } }));
    const d = decodeResponses(undefined, body, MAX_USAGE);
    assert.equal(d.body, body);
    assert.equal(d.usage?.prompt_tokens, 10);
    assert.equal(d.usage?.completion_tokens, 5);
    assert.equal(d.text, '', 'no text to count when usage is there');
  });

  it('without usage, gives the output text, refusal, reasoning summary and tool call to count', () => {
    const d = decodeResponses(undefined, Buffer.from(JSON.stringify({ status: 'completed', output: OUTPUT, usage: null })), MAX_USAGE);
    assert.equal(d.usage, undefined);
    for (const t of ['Considering the question.', 'Paris is the capital.', 'No more.', 'lookup', '{"q":"paris"}']) assert.ok(d.text.includes(t), t);
    assert.equal(responsesOutputText({ output: 'x' }), '');
  });

  it('a 2xx that is not a response object (a page, nothing, an error object) is unusable: the pipeline answers 502', () => {
    for (const junk of ['<html></html>', '', '[]']) assert.equal(decodeResponses(undefined, Buffer.from(junk), MAX_USAGE).unusable, 'the upstream answer is not a JSON object', junk);
    assert.match(decodeResponses(undefined, Buffer.from('{"error":{"message":"no"}}'), MAX_USAGE).unusable ?? '', /2xx with an error: no/);
    // A failed response carries `error` beside its output: it is a response, relayed.
    assert.equal(decodeResponses(undefined, Buffer.from(JSON.stringify({ object: 'response', status: 'failed', output: [], error: { code: 'server_error', message: 'x' } })), MAX_USAGE).unusable, undefined);
    assert.equal(decodeResponses(undefined, Buffer.from('{"detail":"Not Found"}'), MAX_USAGE).unusable, 'the upstream answer has no output array');
  });

  it('reports rejected usage with its reason, and the text to count instead', () => {
    const d = decodeResponses(undefined, Buffer.from(JSON.stringify({ output: OUTPUT, usage: { input_tokens: -3, output_tokens: 1 } })), MAX_USAGE);
    assert.equal(d.rejected, 'negative');
    assert.ok(d.text.includes('Paris is the capital.'));
    assert.equal(decodeResponses(undefined, Buffer.from('not json'), MAX_USAGE).usage, undefined);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Streams

function ev(type: string, data: Record<string, unknown>, seq: number): string {
  return `event: ${type}\ndata: ${JSON.stringify({ type, ...data, sequence_number: seq })}\n\n`;
}

interface StreamOpts { terminal?: string; usage?: unknown; deltas?: string[]; eol?: string }

const DELTAS = ['Hello', ', wor', 'ld — ', 'héllo 😀', ' again.'];
const USAGE = { input_tokens: 12, input_tokens_details: { cached_tokens: 4 }, output_tokens: 9, output_tokens_details: { reasoning_tokens: 2 }, total_tokens: 21 };

function streamText(o: StreamOpts = {}): string {
  const deltas = o.deltas ?? DELTAS;
  const terminal = o.terminal ?? 'response.completed';
  const full = deltas.join('');
  let seq = 0;
  let s = ev('response.created', { response: { id: 'resp_1', status: 'in_progress', output: [], usage: null } }, seq++);
  s += ev('response.output_item.added', { output_index: 0, item: { id: 'msg_1', type: 'message', role: 'assistant', content: [] } }, seq++);
  for (const d of deltas) s += ev('response.output_text.delta', { item_id: 'msg_1', output_index: 0, content_index: 0, delta: d }, seq++);
  s += ev('response.output_text.done', { item_id: 'msg_1', output_index: 0, content_index: 0, text: full }, seq++);
  const response: Record<string, unknown> = {
    id: 'resp_1', status: terminal.slice('response.'.length),
    output: [{ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'output_text', text: full }] }],
  };
  if (o.usage !== undefined) response.usage = o.usage;
  else response.usage = USAGE;
  s += ev(terminal, { response }, seq++);
  return o.eol === undefined ? s : s.replace(/\n/g, o.eol);
}

function run(bytes: Buffer, cuts: number[], textBound?: number): { codec: ResponsesStream; out: Buffer } {
  const codec = new ResponsesStream({ maxUsage: MAX_USAGE, textBound });
  const out: Buffer[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    const piece = codec.push(bytes.subarray(at, c));
    if (piece !== undefined) out.push(piece);
    at = c;
  }
  const last = codec.end();
  if (last !== undefined) out.push(last);
  return { codec, out: Buffer.concat(out) };
}

describe('responses: stream codec', () => {
  it('passes every byte through and reads usage at response.completed', () => {
    const bytes = Buffer.from(streamText());
    const { codec, out } = run(bytes, []);
    assert.ok(out.equals(bytes));
    assert.equal(codec.contentType, 'text/event-stream');
    assert.deepEqual({ ...codec.usage }, { prompt_tokens: 12, completion_tokens: 9, total_tokens: 21, cached_prompt_tokens: 4, cache_write_tokens: 0, reasoning_tokens: 2 });
    assert.equal(codec.text, DELTAS.join(''), 'deltas only: the done event and the completed output are not counted twice');
    assert.equal(codec.frames, 9);
  });

  it('gives the same usage and text for a split at every byte boundary, and byte by byte', () => {
    const bytes = Buffer.from(streamText());
    const whole = run(bytes, []).codec;
    for (let i = 1; i < bytes.length; i++) {
      const { codec, out } = run(bytes, [i]);
      assert.deepEqual(codec.usage, whole.usage, `split at ${i}`);
      assert.equal(codec.text, whole.text, `split at ${i}`);
      assert.equal(out.length, bytes.length);
    }
    const every = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
    const { codec } = run(bytes, every);
    assert.deepEqual(codec.usage, whole.usage);
    assert.equal(codec.text, whole.text);
  });

  it('reads CRLF and CR line endings split anywhere', () => {
    for (const eol of ['\r\n', '\r']) {
      const bytes = Buffer.from(streamText({ eol }));
      for (let i = 1; i < bytes.length; i += 7) {
        const { codec } = run(bytes, [i, Math.min(bytes.length, i + 3)]);
        assert.equal(codec.usage?.total_tokens, 21, `${JSON.stringify(eol)} split at ${i}`);
        assert.equal(codec.text, DELTAS.join(''));
      }
    }
  });

  it('reads usage at response.incomplete and response.failed too', () => {
    for (const terminal of ['response.incomplete', 'response.failed']) {
      const { codec } = run(Buffer.from(streamText({ terminal })), []);
      assert.equal(codec.usage?.completion_tokens, 9, terminal);
    }
  });

  it('without usage: no usage, the deltas to count', () => {
    const { codec } = run(Buffer.from(streamText({ usage: null })), []);
    assert.equal(codec.usage, undefined);
    assert.equal(codec.usageRejected, undefined);
    assert.equal(codec.text, DELTAS.join(''));
  });

  it('text that comes only in done events (no deltas) is counted once per item, and the terminal output adds only what none brought', () => {
    const text = 'hello '.repeat(50);
    const item = { id: 'msg_9', type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] };
    const call = { id: 'fc_1', type: 'function_call', name: 'f', arguments: '{"a":1}' };
    let s = ev('response.output_item.added', { output_index: 0, item: { ...item, content: [] } }, 0);
    s += ev('response.output_text.done', { item_id: 'msg_9', output_index: 0, content_index: 0, text }, 1);
    s += ev('response.content_part.done', { item_id: 'msg_9', output_index: 0, content_index: 0, part: item.content[0] }, 2);
    s += ev('response.output_item.done', { output_index: 0, item }, 3);
    s += ev('response.output_item.done', { output_index: 1, item: call }, 4);
    const extra = { id: 'msg_10', type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'late' }] };
    s += ev('response.completed', { response: { id: 'r', status: 'completed', output: [item, call, extra], usage: null } }, 5);
    const { codec } = run(Buffer.from(s), []);
    assert.equal(codec.usage, undefined);
    assert.equal(codec.text, text + 'f\n{"a":1}' + 'late');
    // Each done event alone, cut before the terminal event: its text is still counted.
    for (const only of [
      ev('response.output_text.done', { item_id: 'm', content_index: 0, text }, 0),
      ev('response.content_part.done', { item_id: 'm', content_index: 0, part: { type: 'output_text', text } }, 0),
      ev('response.output_item.done', { output_index: 0, item }, 0),
    ]) assert.equal(run(Buffer.from(only), []).codec.text, text);
  });

  it('a done event too large to hold (scanned as it arrives) still counts its text once per item', () => {
    const big = 'word '.repeat(80_000);
    const done = (id: string, seq: number) => ev('response.output_text.done', { item_id: id, output_index: 0, content_index: 0, text: big }, seq);
    const s = done('msg_big', 0) + done('msg_big', 1) + done('msg_other', 2);
    assert.ok(Buffer.byteLength(done('msg_big', 0)) > SMALL_EVENT_BYTES);
    const cuts = (n: number) => Array.from({ length: Math.floor(n / 50_000) }, (_, i) => (i + 1) * 50_000);
    const { codec } = run(Buffer.from(s), cuts(s.length));
    assert.equal(codec.usage, undefined);
    assert.equal(codec.text, big + big, 'the repeated item once, the other item once');
    // A large delta marks its item: that item's done event is not counted again.
    const delta = ev('response.output_text.delta', { item_id: 'm', output_index: 0, content_index: 0, delta: big }, 0);
    assert.equal(run(Buffer.from(delta + done('m', 1)), cuts(2 * big.length)).codec.text, big);
    // A large terminal event repeating the item: skipped there, as the parsed path skips it; another item still counts.
    const item = (id: string, text: string) => ({ id, type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] });
    const completed = ev('response.completed', { response: { id: 'r', status: 'completed', output: [item('msg_big', big), item('late', 'late words')], usage: null } }, 3);
    const withTerminal = done('msg_big', 0) + completed;
    assert.equal(run(Buffer.from(withTerminal), cuts(withTerminal.length)).codec.text, big + 'late words');
    // The text before its item_id (another item's delta came first): counted, and its item marked for what follows.
    const early = `event: response.output_text.done\ndata: ${JSON.stringify({ type: 'response.output_text.done', text: big, item_id: 'x', sequence_number: 1 })}\n\n`;
    const part = ev('response.content_part.done', { item_id: 'x', output_index: 0, content_index: 0, part: { type: 'output_text', text: 'again' } }, 2);
    const other = ev('response.reasoning_summary_text.delta', { item_id: 'rs', output_index: 0, delta: 'hmm' }, 0);
    const seq = other + early + part;
    assert.equal(run(Buffer.from(seq), cuts(seq.length)).codec.text, 'hmm' + big);
  });

  it('a body that is not SSE is cut at 64 KiB of a line that is not data; data that is not JSON is counted as text', () => {
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE });
    const junk = Buffer.from('hello '.repeat(4096));
    let relayed = 0;
    assert.throws(() => { for (let i = 0; i < 100; i++) relayed += codec.push(junk)?.length ?? 0; }, /not SSE/);
    assert.ok(relayed <= 64 * 1024, `relayed ${relayed} bytes before the cut`);
    for (const line of [': ' + 'c'.repeat(70_000) + '\n', 'event: ' + 'e'.repeat(70_000) + '\n']) {
      assert.throws(() => new ResponsesStream({ maxUsage: MAX_USAGE }).push(Buffer.from(line)), /not SSE/);
    }
    // Short comments and ids are SSE: relayed and ignored.
    assert.equal(run(Buffer.from(': keep-alive\nid: 7\n\n'), []).codec.text, '');
    // A data event that is not JSON reached the client: its text counts; a last one the stream ended inside does not.
    assert.equal(run(Buffer.from('data: hello there\n\ndata: {"type":"response.output_text.delta","delta":"x"}\n\ndata: {"cut'), []).codec.text, 'hello therex');
    // Too large to hold and not JSON: cut.
    const big = new ResponsesStream({ maxUsage: MAX_USAGE });
    assert.throws(() => { big.push(Buffer.from('data: ')); for (let i = 0; i < 20; i++) big.push(Buffer.from('z'.repeat(64 * 1024))); }, /not JSON/);
  });

  it('an implausible usage is rejected with its reason', () => {
    const { codec } = run(Buffer.from(streamText({ usage: { input_tokens: 5, output_tokens: 3, total_tokens: 2 } })), []);
    assert.equal(codec.usage, undefined);
    assert.equal(codec.usageRejected, 'inconsistent');
  });

  it('an aborted stream (cut before the terminal event) holds the text produced so far', () => {
    const bytes = Buffer.from(streamText());
    const cut = bytes.indexOf('response.output_text.done');
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE });
    codec.push(bytes.subarray(0, cut));
    assert.equal(codec.usage, undefined);
    assert.equal(codec.text, DELTAS.join(''));
  });

  it('counts reasoning summary, refusal and function-call argument deltas, and tool names', () => {
    let s = ev('response.output_item.added', { output_index: 0, item: { type: 'function_call', name: 'get_weather', arguments: '' } }, 0);
    s += ev('response.function_call_arguments.delta', { delta: '{"city":' }, 1);
    s += ev('response.function_call_arguments.delta', { delta: '"Paris"}' }, 2);
    s += ev('response.reasoning_summary_text.delta', { delta: 'Weighing options.' }, 3);
    s += ev('response.refusal.delta', { delta: 'I cannot.' }, 4);
    s += ev('response.audio.delta', { delta: 'AAAAbase64' }, 5);
    const { codec } = run(Buffer.from(s), []);
    assert.equal(codec.text, 'get_weather{"city":"Paris"}Weighing options.I cannot.');
  });

  it('a stream with no deltas and no usage counts the terminal output instead', () => {
    const s = ev('response.completed', { response: { status: 'completed', output: OUTPUT, usage: null } }, 0);
    const { codec } = run(Buffer.from(s), []);
    for (const t of ['Paris is the capital.', 'lookup', 'Considering the question.']) assert.ok(codec.text.includes(t));
  });

  it('reads events without an event: line, data split over several lines, comments, and a last event without its blank line', () => {
    const s = ': keep-alive\n\n'
      + `data: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'one ' })}\n\n`
      + 'id: 7\nretry: 100\n'
      + `data: {"type":"response.output_text.delta",\ndata: "delta":"two"}\n\n`
      + `event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: { usage: { input_tokens: 1, output_tokens: 2 } } })}`;
    const { codec } = run(Buffer.from(s), []);
    assert.equal(codec.text, 'one two');
    assert.equal(codec.usage?.total_tokens, 3);
  });

  it('a report not believed after a believed one keeps the believed one (the floor) and says why', () => {
    const bad = ev('response.completed', { response: { status: 'completed', output: [], usage: { input_tokens: 12, output_tokens: -3, total_tokens: 9 } } }, 99);
    const { codec } = run(Buffer.from(streamText() + bad), []);
    assert.equal(codec.usage?.completion_tokens, 9);
    assert.equal(codec.usageRejected, 'negative');
  });

  it('garbage and non-JSON data neither throw nor yield usage', () => {
    const { codec, out } = run(Buffer.from('data: {oops\n\ndata: [DONE]\n\nevent: x\n\n\n\n'), [3, 9]);
    assert.equal(codec.usage, undefined);
    assert.equal(out.toString(), 'data: {oops\n\ndata: [DONE]\n\nevent: x\n\n\n\n');
  });
});

describe('responses: bounded memory', () => {
  /** A response.completed event repeating `text` in its output, usage after the output (as OpenAI orders it). */
  function hugeCompleted(text: string, usage: unknown): Buffer {
    const response = { id: 'resp_1', status: 'completed', output: [{ type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] }], usage };
    return Buffer.from(`event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response })}\n\n`);
  }

  it('parses a 24 MB response.completed for its usage without holding it', () => {
    const text = 'All work and no play makes Jack a dull boy. "Quoted" \\ and 😀.\n'.repeat(400_000);
    const deltas = ev('response.output_text.delta', { delta: 'x' }, 0);
    const bytes = Buffer.concat([Buffer.from(deltas), hugeCompleted(text, USAGE)]);
    assert.ok(bytes.length > 24_000_000);
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE });
    let maxHeld = 0;
    for (let at = 0; at < bytes.length; at += 65536) {
      codec.push(bytes.subarray(at, at + 65536));
      maxHeld = Math.max(maxHeld, codec.heldBytes);
    }
    codec.end();
    assert.ok(maxHeld <= SMALL_EVENT_BYTES, `held ${maxHeld} bytes of event data`);
    assert.equal(codec.usage?.total_tokens, 21);
    assert.equal(codec.text, 'x', 'the output repeated by the terminal event is not collected once deltas were seen');
  });

  it('a large terminal or done event whose `type` comes last still has its text counted (member order means nothing)', () => {
    const text = 'word '.repeat(80_000);
    const response = { id: 'resp_1', status: 'completed', output: [{ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] }] };
    const cases: Array<[string, string]> = [
      ['completed, no event name', `data: ${JSON.stringify({ response, type: 'response.completed' })}\n\n`],
      ['completed, named message', `event: message\ndata: ${JSON.stringify({ response, type: 'response.completed' })}\n\n`],
      ['output_text.done, no event name', `data: ${JSON.stringify({ item_id: 'msg_1', text, type: 'response.output_text.done' })}\n\n`],
    ];
    for (const [name, event] of cases) {
      const bytes = Buffer.from(event);
      assert.ok(bytes.length > SMALL_EVENT_BYTES);
      const codec = new ResponsesStream({ maxUsage: MAX_USAGE, textBound: 64 * 1024 });
      let taken = 0;
      for (let at = 0; at < bytes.length; at += 8192) {
        codec.push(bytes.subarray(at, at + 8192));
        for (let piece = codec.takeCountable(); piece !== undefined; piece = codec.takeCountable()) taken += piece.length;
      }
      codec.end();
      assert.equal(taken + codec.text.length, text.length, `${name}: every character counted once`);
    }
  });

  it('text counted once when types come last: an in-progress event repeating the output, a done event after deltas', () => {
    const text = 'word '.repeat(80_000);
    const out = [{ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'output_text', text }] }];
    const count = (wire: string): number => {
      const bytes = Buffer.from(wire);
      const codec = new ResponsesStream({ maxUsage: MAX_USAGE, textBound: 64 * 1024 });
      let taken = 0;
      for (let at = 0; at < bytes.length; at += 8192) {
        codec.push(bytes.subarray(at, at + 8192));
        for (let piece = codec.takeCountable(); piece !== undefined; piece = codec.takeCountable()) taken += piece.length;
      }
      codec.end();
      return taken + codec.text.length;
    };
    const progress = `data: ${JSON.stringify({ response: { id: 'r', status: 'in_progress', output: out }, type: 'response.in_progress' })}\n\n`;
    const completed = `data: ${JSON.stringify({ type: 'response.completed', response: { id: 'r', status: 'completed', output: out } })}\n\n`;
    assert.equal(count(progress + completed), text.length);
    const deltas = [0, 1, 2, 3].map((i) => `data: ${JSON.stringify({ type: 'response.output_text.delta', item_id: 'msg_1', delta: text.slice(i * 100_000, (i + 1) * 100_000) })}\n\n`).join('');
    const done = `data: ${JSON.stringify({ text, item_id: 'msg_1', type: 'response.output_text.done' })}\n\n`;
    assert.equal(count(deltas + done), text.length);
    // Its id never comes: the text is counted.
    assert.equal(count(`data: ${JSON.stringify({ text, type: 'response.output_text.done' })}\n\n`), text.length);
  });

  it('a data event too large to hold that is not JSON: what came of it is counted as text, then the stream is cut', () => {
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE, textBound: 64 * 1024 });
    const bytes = Buffer.from('data: ' + 'plain words '.repeat(50_000));
    let taken = 0;
    assert.throws(() => {
      for (let at = 0; at < bytes.length; at += 65536) {
        codec.push(bytes.subarray(at, at + 65536));
        for (let piece = codec.takeCountable(); piece !== undefined; piece = codec.takeCountable()) taken += piece.length;
      }
    }, /not JSON/);
    assert.ok(taken + codec.text.length > SMALL_EVENT_BYTES, `counted ${taken + codec.text.length}`);
  });

  it('a large response.completed whose output nests past the scan depth still gives its usage', () => {
    // A function call's arguments may be any JSON an upstream writes: here 1,000 levels deep, inside a 300 KB event.
    const depth = 1000;
    const deltas = ev('response.output_text.delta', { delta: 'x' }, 0);
    const args = JSON.parse('{"a":'.repeat(depth) + '"' + 'y'.repeat(300_000) + '"' + '}'.repeat(depth)) as unknown;
    const response = { id: 'resp_1', status: 'completed', output: [{ type: 'function_call', name: 'f', arguments: args }], usage: USAGE };
    const completed = Buffer.from(`event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response })}\n\n`);
    assert.ok(completed.length > SMALL_EVENT_BYTES);
    const bytes = Buffer.concat([Buffer.from(deltas), completed]);
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE });
    for (let at = 0; at < bytes.length; at += 4096) codec.push(bytes.subarray(at, at + 4096));
    codec.end();
    assert.equal(codec.usage?.total_tokens, 21);
    assert.equal(codec.complete, true);
  });

  it('without usage and deltas, counts the huge output in bounded pieces', () => {
    const text = 'word '.repeat(1_000_000);
    const bytes = hugeCompleted(text, null);
    const codec = new ResponsesStream({ maxUsage: MAX_USAGE, textBound: 64 * 1024 });
    let taken = 0;
    let maxHeld = 0;
    for (let at = 0; at < bytes.length; at += 50_000) {
      codec.push(bytes.subarray(at, at + 50_000));
      for (let piece = codec.takeCountable(); piece !== undefined; piece = codec.takeCountable()) taken += piece.length;
      maxHeld = Math.max(maxHeld, codec.text.length, codec.heldBytes);
    }
    codec.end();
    assert.equal(codec.usage, undefined);
    assert.equal(taken + codec.text.length, text.length, 'every character is counted once');
    assert.ok(maxHeld <= SMALL_EVENT_BYTES, `held ${maxHeld}`);
    assert.ok(codec.countMargin > 0);
  });

  it('a delta event larger than the parse bound is still counted, and a usage object over its bound is rejected', () => {
    const big = 'ab '.repeat(200_000);
    const s = ev('response.output_text.delta', { delta: big }, 0);
    const { codec } = run(Buffer.from(s), [1000, 300_000]);
    let total = '';
    for (let p = codec.takeCountable(); p !== undefined; p = codec.takeCountable()) total += p;
    assert.equal(total + codec.text, big);

    const filler = { input_tokens: 1, output_tokens: 1, pad: 'p'.repeat(100_000) };
    const r = run(hugeCompleted('t'.repeat(300_000), filler), []).codec;
    assert.equal(r.usageRejected, 'malformed');
  });
});
