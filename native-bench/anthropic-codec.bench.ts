// CPU per frame of the Anthropic stream codecs, against the OpenAI pass-through meter, in one run: the part of
// a streamed frame's cost that the provider code adds (the relay's socket writes are the same for all). Frames
// are pushed one per chunk, as they arrive from a real upstream. Each cell is the best of --reps rounds of
// process CPU time over --frames frames (other processes may share the cores).
// Usage: node --import tsx native-bench/anthropic-codec.bench.ts [--frames 200000] [--reps 5]
import { NativeStreamCodec } from '../src/providers/anthropic/native.ts';
import { TranslatedStreamCodec } from '../src/providers/anthropic/translate-response.ts';
import { StreamMeter } from '../src/streaming/usage-meter.ts';
import { flag } from './lib/args.ts';
import { openAiFrames, runCodec, word, type Sink } from './lib/codec-run.ts';

const FRAMES = flag('--frames', 200_000, 1000, 10_000_000);
const REPS = flag('--reps', 5, 1, 20);

function anthropicFrames(n: number): Buffer[] {
  const ev = (type: string, data: Record<string, unknown>) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  const out = [ev('message_start', { message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [], usage: { input_tokens: 20, output_tokens: 1 } } }),
    ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } })];
  for (let i = 0; i < n; i++) out.push(ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: word(i) } }));
  out.push(ev('content_block_stop', { index: 0 }), ev('message_delta', { delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 2 * n } }), ev('message_stop', {}));
  return out;
}

const anth = anthropicFrames(FRAMES);
const oa = openAiFrames(FRAMES);
const run = (frames: Buffer[], make: () => Sink): number => runCodec(frames, make, REPS, FRAMES);
const rows: [string, number][] = [
  ['openai StreamMeter, pass-through', run(oa, () => new StreamMeter({ stripUsage: false }))],
  ['openai StreamMeter, usage chunk stripped', run(oa, () => new StreamMeter({ stripUsage: true }))],
  ['anthropic native (pass-through)', run(anth, () => new NativeStreamCodec({ maxUsage: 10_000_000 }))],
  ['anthropic → openai chunks (translated)', run(anth, () => new TranslatedStreamCodec({ maxUsage: 10_000_000 }, true, 'm'))],
];
const native = rows[2]![1];
console.log(`frames ${FRAMES}, best of ${REPS}; µs of CPU per frame`);
for (const [name, us] of rows) console.log(`${name.padEnd(44)} ${us.toFixed(3).padStart(7)} µs   ×${(us / native).toFixed(2)} of anthropic native`);
