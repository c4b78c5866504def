// CPU per frame of the Anthropic stream codecs, against the OpenAI pass-through meter, in one run: the part of
// a streamed frame's cost that the provider code adds (the relay's socket writes are the same for all). Frames
// are pushed one per chunk, as they arrive from a real upstream. Each cell is the best of --reps rounds of
// process CPU time over --frames frames (other processes may share the cores).
// Usage: node --import tsx native-bench/anthropic-codec.bench.ts [--frames 200000] [--reps 5]
import { NativeStreamCodec } from '../src/providers/anthropic/native.ts';
import { TranslatedStreamCodec } from '../src/providers/anthropic/translate-response.ts';
import { StreamMeter } from '../src/streaming/usage-meter.ts';
import { numArg } from './lib/args.ts';

function flag(name: string, fallback: number, min: number, max: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? numArg(name, process.argv[i + 1], min, max) : fallback;
}

const FRAMES = flag('--frames', 200_000, 1000, 10_000_000);
const REPS = flag('--reps', 5, 1, 20);
const WORDS = ['The', ' tide', ' rises', ' twice', ' a', ' day,', ' "pulled"', ' by', ' the', ' Moon.\n'];

function anthropicFrames(n: number): Buffer[] {
  const ev = (type: string, data: Record<string, unknown>) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  const out = [ev('message_start', { message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [], usage: { input_tokens: 20, output_tokens: 1 } } }),
    ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } })];
  for (let i = 0; i < n; i++) out.push(ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: WORDS[i % WORDS.length]! + WORDS[(i + 3) % WORDS.length]! } }));
  out.push(ev('content_block_stop', { index: 0 }), ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 * n } }), ev('message_stop', {}));
  return out;
}

function openAiFrames(n: number): Buffer[] {
  const head = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };
  const f = (o: unknown) => Buffer.from(`data: ${JSON.stringify(o)}\n\n`);
  const out = [f({ ...head, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], usage: null })];
  for (let i = 0; i < n; i++) out.push(f({ ...head, choices: [{ index: 0, delta: { content: WORDS[i % WORDS.length]! + WORDS[(i + 3) % WORDS.length]! }, finish_reason: null }], usage: null }));
  out.push(f({ ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }], usage: null }), f({ ...head, choices: [], usage: { prompt_tokens: 20, completion_tokens: 2 * n, total_tokens: 20 + 2 * n } }), Buffer.from('data: [DONE]\n\n'));
  return out;
}

interface Sink { push(c: Buffer): Buffer | undefined; end(): Buffer | undefined; takeCountable(): string | undefined }

function run(frames: Buffer[], make: () => Sink): number {
  let best = Infinity;
  for (let r = 0; r < REPS; r++) {
    // One codec per 1000 frames: streams are short-lived, and the text tally's cuts stay in the measurement.
    const t0 = process.cpuUsage();
    let sink = make();
    let bytes = 0;
    for (let i = 0; i < frames.length; i++) {
      if (i % 1000 === 0) { sink.end(); sink = make(); }
      const o = sink.push(frames[i]!);
      if (o !== undefined) bytes += o.length;
      sink.takeCountable();
    }
    sink.end();
    const d = process.cpuUsage(t0);
    if (bytes === 0) throw new Error('nothing came out');
    best = Math.min(best, (d.user + d.system) / FRAMES);
  }
  return best;
}

const anth = anthropicFrames(FRAMES);
const oa = openAiFrames(FRAMES);
const rows: [string, number][] = [
  ['openai StreamMeter, pass-through', run(oa, () => new StreamMeter({ stripUsage: false }))],
  ['openai StreamMeter, usage chunk stripped', run(oa, () => new StreamMeter({ stripUsage: true }))],
  ['anthropic native (pass-through)', run(anth, () => new NativeStreamCodec({ maxUsage: 10_000_000 }))],
  ['anthropic → openai chunks (translated)', run(anth, () => new TranslatedStreamCodec({ maxUsage: 10_000_000 }, true, 'm'))],
];
const native = rows[2]![1];
console.log(`frames ${FRAMES}, best of ${REPS}; µs of CPU per frame`);
for (const [name, us] of rows) console.log(`${name.padEnd(44)} ${us.toFixed(3).padStart(7)} µs   ×${(us / native).toFixed(2)} of anthropic native`);
