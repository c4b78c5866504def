// CPU per frame of the Gemini stream codecs, against the OpenAI pass-through meter, in one run: the part of a
// streamed frame's cost that the provider code adds (the relay's socket writes are the same for all). Frames are
// pushed one per chunk, as they arrive from a real upstream. Each cell is the best of --reps rounds of process
// CPU time over --frames frames (other processes may share the cores).
// Usage: node --import tsx native-bench/gemini-codec.bench.ts [--frames 200000] [--reps 5]
import { GeminiStream } from '../src/providers/gemini/stream.ts';
import { TranslatedStream } from '../src/providers/gemini/translate-response.ts';
import type { PreparedCall } from '../src/providers/types.ts';
import { StreamMeter } from '../src/streaming/usage-meter.ts';
import { flag } from './lib/args.ts';
import { openAiFrames, runCodec, word, type Sink } from './lib/codec-run.ts';

const FRAMES = flag('--frames', 200_000, 1000, 10_000_000);
const REPS = flag('--reps', 5, 1, 20);
const MAX = 10_000_000;

/** Gemini frames as the API streams them: every frame carries usageMetadata, the last one the final counts. */
function geminiFrames(n: number, sse: boolean): Buffer[] {
  const frame = (text: string, last: boolean) => ({
    candidates: [{ content: { parts: [{ text }], role: 'model' }, ...(last ? { finishReason: 'STOP' } : {}), index: 0 }],
    usageMetadata: last ? { promptTokenCount: 20, candidatesTokenCount: 2 * n, totalTokenCount: 20 + 2 * n } : { promptTokenCount: 20, totalTokenCount: 20 },
    modelVersion: 'gemini-2.0-flash', responseId: 'mock-1',
  });
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const json = JSON.stringify(frame(word(i), i === n - 1));
    // run() starts a new codec every 1000 frames: each group is a whole array.
    out.push(Buffer.from(sse ? `data: ${json}\r\n\r\n` : (i % 1000 === 0 ? '[' : ',\r\n') + json + (i % 1000 === 999 || i === n - 1 ? ']' : '')));
  }
  return out;
}

const call: PreparedCall = {
  ok: true, surface: 'openai-chat', model: 'gemini-2.0-flash', stream: true, clientWantsUsage: true, maxTokens: undefined, n: 1,
  promptTokens: 20, promptCounted: true, promptExact: true, reserveCompletion: 256, tail: Buffer.from('}'),
};
const sse = geminiFrames(FRAMES, true);
const arr = geminiFrames(FRAMES, false);
const oa = openAiFrames(FRAMES);
const run = (frames: Buffer[], make: () => Sink): number => runCodec(frames, make, REPS, FRAMES);
const rows: [string, number][] = [
  ['openai StreamMeter, pass-through', run(oa, () => new StreamMeter({ stripUsage: false }))],
  ['gemini native SSE (pass-through)', run(sse, () => new GeminiStream(true, { maxUsage: MAX }))],
  ['gemini native JSON array (pass-through)', run(arr, () => new GeminiStream(false, { maxUsage: MAX }))],
  ['gemini SSE → openai chunks (translated)', run(sse, () => new TranslatedStream(call, { maxUsage: MAX }))],
];
const native = rows[1]![1];
console.log(`frames ${FRAMES}, best of ${REPS}; µs of CPU per frame`);
for (const [name, us] of rows) console.log(`${name.padEnd(44)} ${us.toFixed(3).padStart(7)} µs   ×${(us / native).toFixed(2)} of gemini native SSE`);
