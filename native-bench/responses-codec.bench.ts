// CPU per frame of the OpenAI Responses stream codec against the chat StreamMeter on the same text, in one run,
// and the cost of a terminal event that repeats a large output (parsed whole below 256 KiB, scanned above).
// Frames are pushed one per chunk, as they arrive from a real upstream; each cell is the best of --reps rounds
// of process CPU time (other processes may share the cores).
// Usage: node --import tsx native-bench/responses-codec.bench.ts [--frames 200000] [--reps 5]
import { ResponsesStream } from '../src/providers/openai/responses.ts';
import { StreamMeter } from '../src/streaming/usage-meter.ts';
import { flag } from './lib/args.ts';

const FRAMES = flag('--frames', 200_000, 1000, 10_000_000);
const REPS = flag('--reps', 5, 1, 20);
const WORDS = ['The', ' sky', ' looks', ' blue', ' because', ' air', ' "scatters"', ' short', ' waves', ' more.\n'];
const PER_STREAM = 1000;

function word(i: number): string {
  return WORDS[i % WORDS.length]! + WORDS[(i + 3) % WORDS.length]!;
}

/** Streams of PER_STREAM deltas, framed as OpenAI sends them (event: line, then data with the type again). */
function responsesFrames(n: number): Buffer[] {
  let seq = 0;
  const ev = (type: string, data: Record<string, unknown>) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...data, sequence_number: seq++ })}\n\n`);
  const at = { item_id: 'msg_1', output_index: 0, content_index: 0 };
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    if (i % PER_STREAM === 0) {
      seq = 0;
      out.push(ev('response.created', { response: { id: 'resp_1', object: 'response', status: 'in_progress', model: 'gpt-4o', output: [], usage: null } }));
    }
    out.push(ev('response.output_text.delta', { ...at, delta: word(i), logprobs: [] }));
    if (i % PER_STREAM === PER_STREAM - 1) {
      let text = '';
      for (let k = i - PER_STREAM + 1; k <= i; k++) text += word(k);
      out.push(ev('response.output_text.done', { ...at, text, logprobs: [] }));
      out.push(ev('response.completed', {
        response: { id: 'resp_1', object: 'response', status: 'completed', model: 'gpt-4o', output: [{ id: 'msg_1', type: 'message', role: 'assistant', content: [{ type: 'output_text', text, annotations: [] }] }], usage: { input_tokens: 20, input_tokens_details: { cached_tokens: 0 }, output_tokens: 2 * PER_STREAM, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 20 + 2 * PER_STREAM } },
      }));
    }
  }
  return out;
}

function chatFrames(n: number): Buffer[] {
  const head = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };
  const f = (o: unknown) => Buffer.from(`data: ${JSON.stringify(o)}\n\n`);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    if (i % PER_STREAM === 0) out.push(f({ ...head, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], usage: null }));
    out.push(f({ ...head, choices: [{ index: 0, delta: { content: word(i) }, finish_reason: null }], usage: null }));
    if (i % PER_STREAM === PER_STREAM - 1) {
      out.push(f({ ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }], usage: null }));
      out.push(f({ ...head, choices: [], usage: { prompt_tokens: 20, completion_tokens: 2 * PER_STREAM, total_tokens: 20 + 2 * PER_STREAM } }), Buffer.from('data: [DONE]\n\n'));
    }
  }
  return out;
}

interface Sink { push(c: Buffer): Buffer | undefined; end(): Buffer | undefined; takeCountable(): string | undefined; readonly usage: unknown }

/** Best µs of CPU per content frame; one codec per stream (a new one at each stream's first frame). */
function run(frames: Buffer[], make: () => Sink, isStart: (b: Buffer) => boolean): number {
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t0 = process.cpuUsage();
    let sink = make();
    let usages = 0;
    for (const frame of frames) {
      if (isStart(frame)) {
        if (sink.end() !== undefined || sink.usage !== undefined) usages++;
        sink = make();
      }
      sink.push(frame);
      sink.takeCountable();
    }
    sink.end();
    if (sink.usage !== undefined) usages++;
    const d = process.cpuUsage(t0);
    if (usages < FRAMES / PER_STREAM - 1) throw new Error(`usage read in ${usages} streams only`);
    best = Math.min(best, (d.user + d.system) / FRAMES);
  }
  return best;
}

const responses = responsesFrames(FRAMES);
const chat = chatFrames(FRAMES);
const chatUs = run(chat, () => new StreamMeter({ stripUsage: false }), (b) => b.includes('"role":"assistant"'));
const respUs = run(responses, () => new ResponsesStream({ maxUsage: 10_000_000 }), (b) => b.includes('response.created'));
console.log(`content frames ${FRAMES} (${PER_STREAM} per stream), best of ${REPS}; µs of CPU per content frame (stream overhead included)`);
console.log(`${'openai chat StreamMeter, pass-through'.padEnd(44)} ${chatUs.toFixed(3).padStart(7)} µs`);
console.log(`${'openai responses codec, pass-through'.padEnd(44)} ${respUs.toFixed(3).padStart(7)} µs   ×${(respUs / chatUs).toFixed(2)} of chat`);

// A terminal event repeating an output of `mb` MiB, pushed in 64 KiB chunks: CPU and the event bytes held.
for (const kb of [64, 1024, 16 * 1024]) {
  const text = 'The sky looks blue because air scatters short waves more. '.repeat(Math.ceil((kb * 1024) / 58));
  const ev = Buffer.from(`event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: { status: 'completed', output: [{ type: 'message', content: [{ type: 'output_text', text }] }], usage: { input_tokens: 1, output_tokens: 2 } } })}\n\n`);
  let best = Infinity;
  let held = 0;
  for (let r = 0; r < REPS; r++) {
    const t0 = process.cpuUsage();
    const c = new ResponsesStream({ maxUsage: 10_000_000 });
    c.push(Buffer.from('event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x"}\n\n'));
    for (let at = 0; at < ev.length; at += 65536) {
      c.push(ev.subarray(at, at + 65536));
      held = Math.max(held, c.heldBytes);
    }
    c.end();
    const d = process.cpuUsage(t0);
    if (c.usage === undefined) throw new Error('no usage');
    best = Math.min(best, (d.user + d.system) / 1000);
  }
  console.log(`response.completed of ${(ev.length / 1048576).toFixed(2)} MiB: ${best.toFixed(2)} ms CPU, at most ${held} bytes of event data held`);
}
