// Preparing a call on any surface: the surface's parser (registry), the prompt counted, the body serialised
// into the tail every attempt composes its upstream body from. Pure: runs inline on the main thread for small
// bodies and on a worker thread for large ones (src/workers/entry.ts uses parseCall + finishCall).
import { countPromptParts } from '../tokens/count.ts';
import { serializeTail } from '../tokens/prepare.ts';
import { surfaceSpec } from './registry.ts';
import type { CallFailure, ParseOptions, ParsedCall, PreparedCall } from './types.ts';

/** The surface's parse; a clean 400 when no registered module defines the surface. */
export function parseCall(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const spec = surfaceSpec(opts.surface);
  if (spec === undefined) return { ok: false, code: 'SLC_BAD_REQUEST', message: `surface ${opts.surface} is not supported by this route's instances` };
  return spec.parse(body, opts);
}

/** The prepared call once the prompt is counted (`promptTokens` before the provider's scale). */
export function finishCall(p: ParsedCall, promptTokens: number, promptExact: boolean): PreparedCall {
  surfaceSpec(p.surface)?.finish?.(p.obj, p.stream);
  const tail = serializeTail(p.obj);
  const prompt = p.scale === 1 ? promptTokens : Math.ceil(promptTokens * p.scale);
  const call: { -readonly [K in keyof PreparedCall]: PreparedCall[K] } = {
    ok: true,
    surface: p.surface,
    model: p.model,
    stream: p.stream,
    clientWantsUsage: p.clientWantsUsage,
    maxTokens: p.maxTokens,
    n: p.n,
    promptTokens: prompt,
    promptCounted: p.parts !== undefined,
    promptExact,
    reserveCompletion: p.reserveCompletion,
    tail,
  };
  // Present only when set (the call crosses to worker threads and into tests as it is), without spread temporaries.
  if (p.query !== undefined) call.query = p.query;
  if (p.clientFields !== undefined) { call.fieldKeys = p.fieldKeys; call.clientFields = p.clientFields; }
  return call;
}

/** parseCall, the prompt counted now and exactly, finishCall: the inline path. */
export function prepareCall(body: Uint8Array, opts: ParseOptions): PreparedCall | CallFailure {
  const p = parseCall(body, opts);
  if (!p.ok) return p;
  return finishCall(p, p.parts === undefined ? 0 : countPromptParts(p.parts, p.enc), true);
}
