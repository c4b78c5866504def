// Anthropic usage → the normalised Usage (streaming/usage.ts). Anthropic reports the uncached input apart from
// cache reads and cache writes, so prompt_tokens is their sum (apache/apisix#13662 charged only the first);
// output_tokens is every generated token, thinking included. In a stream, message_start carries the input
// fields (and an early output_tokens) and message_delta the cumulative output_tokens, sometimes input fields
// too: a later value replaces an earlier one, never adds to it, and never lowers it (counts are cumulative).
import { isRejection, promptOnly, usageFromCounts, type Usage, type UsageRejection } from '../../streaming/usage.ts';

const FIELDS = ['input_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens', 'output_tokens'] as const;

/** A count usageFromCounts would refuse is returned as is, so the sum cannot hide it (−5 + 10 looks fine). */
function bad(v: unknown, max: number): boolean {
  if (v === undefined || v === null) return false;
  return typeof v !== 'number' || Number.isNaN(v) || v < 0 || v > max || !Number.isInteger(v);
}

function sum(a: unknown, b: unknown, c: unknown, max: number): unknown {
  if (bad(a, max)) return a;
  if (bad(b, max)) return b;
  if (bad(c, max)) return c;
  if (a == null && b == null && c == null) return undefined;
  return ((a as number | null) ?? 0) + ((b as number | null) ?? 0) + ((c as number | null) ?? 0);
}

function thinking(o: Record<string, unknown>): unknown {
  const d = o.output_tokens_details;
  if (typeof d !== 'object' || d === null) return undefined;
  return (d as Record<string, unknown>).thinking_tokens;
}

/**
 * An Anthropic `usage` object → Usage; a rejection when present but implausible; undefined when absent or when
 * it reports no input count (the caller counts the answer). `output_tokens_details.thinking_tokens`, when
 * reported, is the reasoning part of the output.
 */
export function anthropicUsage(u: unknown, maxUsage: number): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (typeof u !== 'object' || Array.isArray(u)) return { rejected: 'malformed' };
  const o = u as Record<string, unknown>;
  const prompt = sum(o.input_tokens, o.cache_creation_input_tokens, o.cache_read_input_tokens, maxUsage);
  // Anthropic always reports its input; an output count alone would charge the prompt as 0: count it instead.
  if (prompt === undefined) return bad(o.output_tokens, maxUsage) ? usageFromCounts({ prompt: 0, completion: o.output_tokens }, o, maxUsage) : undefined;
  return usageFromCounts({
    prompt,
    completion: o.output_tokens,
    cachedPrompt: o.cache_read_input_tokens,
    cacheWrite: o.cache_creation_input_tokens,
    reasoning: thinking(o),
  }, o, maxUsage);
}

/**
 * The usage of a stream so far: message_start's, with each later message_delta's fields. Counts are cumulative, so
 * each field keeps the largest believable value reported (a later, smaller one cannot take back tokens already
 * reported); whether the stream's usage is believed at all is judged on the last value of each field.
 */
export class StreamUsage {
  /** The last value of each field (what the upstream says now): judged for plausibility. */
  private merged: Record<string, unknown> = {};
  /** The largest believable value of each field: what is charged. */
  private readonly best: Record<string, number> = {};
  /** A usage that was not an object: the stream's final usage is not believed, whatever follows. */
  private malformed = false;
  /** A message_delta reported usage: output_tokens is final (cumulative), not message_start's early count. */
  finalSeen = false;

  /** Folds one usage object in; `final` for message_delta. */
  add(u: unknown, final: boolean, maxUsage: number): void {
    if (u === undefined || u === null) return;
    if (typeof u !== 'object' || Array.isArray(u)) {
      if (final) this.finalSeen = true;
      this.malformed = true;
      return;
    }
    const o = u as Record<string, unknown>;
    // A message_delta whose usage omits output_tokens (`usage: {}`) reports no final count: believing it would
    // charge message_start's early output_tokens (often 1) for the whole answer, so the text is counted instead.
    if (final && o.output_tokens !== undefined && o.output_tokens !== null) this.finalSeen = true;
    const m = this.merged;
    const best = this.best;
    for (const k of FIELDS) {
      const v = o[k];
      if (v === undefined || v === null) continue;
      m[k] = v;
      if (!bad(v, maxUsage) && (best[k] === undefined || (v as number) > best[k]!)) best[k] = v as number;
    }
    if (o.output_tokens_details !== undefined && o.output_tokens_details !== null) m.output_tokens_details = o.output_tokens_details;
  }

  /** The prompt counts reported so far (message_start's input fields, or a later event's larger ones), each the
   *  largest believable value, when above 0: what a stream without a believable final count is charged for its
   *  prompt. A field reported only implausibly counts as not reported. */
  readPrompt(maxUsage: number): Usage | undefined {
    const b = this.best;
    const u = anthropicUsage({
      input_tokens: b.input_tokens, cache_creation_input_tokens: b.cache_creation_input_tokens,
      cache_read_input_tokens: b.cache_read_input_tokens,
    }, maxUsage);
    return u === undefined || isRejection(u) || u.prompt_tokens === 0 ? undefined : promptOnly(u);
  }

  /** The usage once a message_delta reported it (each field its largest value); undefined before (an aborted stream
   *  is counted instead); a rejection when the last values are not believable. */
  read(maxUsage: number): Usage | UsageRejection | undefined {
    if (!this.finalSeen) return undefined;
    if (this.malformed) return { rejected: 'malformed' };
    const last = anthropicUsage(this.merged, maxUsage);
    if (last === undefined || isRejection(last)) return last;
    const b = this.best;
    const most = anthropicUsage({ ...b, output_tokens_details: this.merged.output_tokens_details }, maxUsage);
    return most === undefined || isRejection(most) ? last : most;
  }
}

/** OpenAI's usage object for a normalised Usage (translated answers). */
export function openAiUsageJson(u: Usage): string {
  let s = '{"prompt_tokens":' + u.prompt_tokens + ',"completion_tokens":' + u.completion_tokens + ',"total_tokens":' + u.total_tokens
    + ',"prompt_tokens_details":{"cached_tokens":' + (u.cached_prompt_tokens ?? 0) + '}';
  if ((u.reasoning_tokens ?? 0) > 0) s += ',"completion_tokens_details":{"reasoning_tokens":' + u.reasoning_tokens + '}';
  return s + '}';
}
