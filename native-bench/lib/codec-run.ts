// The stream-codec benches' common parts: the text of every frame, the OpenAI chat stream they are compared
// against, and the timing loop (frames pushed one per chunk, a new codec every 1000 frames, best of `reps`).

export const WORDS = ['The', ' tide', ' rises', ' twice', ' a', ' day,', ' "pulled"', ' by', ' the', ' Moon.\n'];

/** The text of frame `i`: two words, so that frames differ. */
export function word(i: number): string {
  return WORDS[i % WORDS.length]! + WORDS[(i + 3) % WORDS.length]!;
}

/** An OpenAI chat stream of `n` content chunks carrying word(i), then the finish chunk, the usage chunk and [DONE]. */
export function openAiFrames(n: number): Buffer[] {
  const head = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };
  const f = (o: unknown) => Buffer.from(`data: ${JSON.stringify(o)}\n\n`);
  const out = [f({ ...head, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], usage: null })];
  for (let i = 0; i < n; i++) out.push(f({ ...head, choices: [{ index: 0, delta: { content: word(i) }, finish_reason: null }], usage: null }));
  out.push(f({ ...head, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }], usage: null }), f({ ...head, choices: [], usage: { prompt_tokens: 20, completion_tokens: 2 * n, total_tokens: 20 + 2 * n } }), Buffer.from('data: [DONE]\n\n'));
  return out;
}

export interface Sink { push(c: Buffer): Buffer | undefined; end(): Buffer | undefined; takeCountable(): string | undefined }

/** Best of `reps` rounds, µs of process CPU per frame (divided by `perFrames`, the content frames pushed). */
export function runCodec(frames: Buffer[], make: () => Sink, reps: number, perFrames: number): number {
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
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
    best = Math.min(best, (d.user + d.system) / perFrames);
  }
  return best;
}
