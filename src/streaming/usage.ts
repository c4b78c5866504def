// Token usage as upstreams report it: `usage` in a non-streaming body or in the final SSE chunk. Upstream
// numbers are input like any other: a count that is not a non-negative safe integer at or below the
// per-request ceiling (`tokens.max_usage`), or a total below prompt + completion, makes the whole object
// implausible, and the caller charges its own count instead (a lying upstream must not poison a quota).

/**
 * Normalised across providers: prompt_tokens counts every input token (cache reads and cache writes included),
 * completion_tokens every output token (reasoning included); the three kinds below are parts of those, never
 * added on top. Providers that report them apart (Anthropic's cache fields, Gemini's thoughts) are summed in.
 */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Of prompt_tokens: read from a prompt cache. */
  cached_prompt_tokens?: number;
  /** Of prompt_tokens: written to a prompt cache. */
  cache_write_tokens?: number;
  /** Of completion_tokens: reasoning/thinking. */
  reasoning_tokens?: number;
  /** The usage object as the upstream sent it: cost expressions may name any of its numeric fields (rules/cost-expr.ts). */
  raw?: Readonly<Record<string, unknown>>;
}

/** Why an upstream usage object was not believed (the `reason` label of sluice_usage_rejected_total). `zero_prompt`
 *  and `zero_completion` are judged against the request (the pipeline): a 0 where the gateway counted more. */
export type UsageRejectReason = 'malformed' | 'not_a_number' | 'negative' | 'fractional' | 'too_large' | 'inconsistent' | 'zero_prompt' | 'zero_completion';

export interface UsageRejection {
  readonly rejected: UsageRejectReason;
}

/** Used when the config gives no `tokens.max_usage`: no single request today comes near ten million tokens. */
export const DEFAULT_MAX_USAGE = 10_000_000;

function count(v: unknown, max: number): number | undefined | UsageRejectReason {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number') return 'not_a_number';
  if (Number.isNaN(v)) return 'not_a_number';
  if (v < 0) return 'negative';
  if (v > max) return 'too_large';
  if (!Number.isInteger(v)) return 'fractional';
  return v;
}

/**
 * A usage object → Usage; a UsageRejection when it is present but implausible; undefined when absent (no
 * object, or no prompt count: a completion count alone would charge the prompt as 0, so the caller counts the
 * answer instead). A missing completion count is 0 and a missing total is their sum. A total above
 * prompt + completion is believed (some providers count extra tokens in it).
 */
export function readUsage(u: unknown, maxUsage: number = DEFAULT_MAX_USAGE): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (typeof u !== 'object' || Array.isArray(u)) return { rejected: 'malformed' };
  const o = u as Record<string, unknown>;
  const prompt = count(o.prompt_tokens, maxUsage);
  const completion = count(o.completion_tokens, maxUsage);
  const total = count(o.total_tokens, maxUsage);
  for (const c of [prompt, completion, total]) if (typeof c === 'string') return { rejected: c };
  if (prompt === undefined) return undefined;
  const p = (prompt as number | undefined) ?? 0;
  const c = (completion as number | undefined) ?? 0;
  if (p + c > maxUsage) return { rejected: 'too_large' };
  const t = total as number | undefined;
  if (t !== undefined && t < p + c) return { rejected: 'inconsistent' };
  const usage: Usage = { prompt_tokens: p, completion_tokens: c, total_tokens: t ?? p + c };
  // Non-enumerable: the counts stay the object's visible shape (logs, comparisons); only cost expressions read it.
  Object.defineProperty(usage, 'raw', { value: o, enumerable: false });
  return usage;
}

/** Counts a provider module read from its own usage object, before validation (undefined: not reported). */
export interface UsageCounts {
  readonly prompt: unknown;
  readonly completion: unknown;
  readonly total?: unknown;
  readonly cachedPrompt?: unknown;
  readonly cacheWrite?: unknown;
  readonly reasoning?: unknown;
}

/**
 * Validates counts already normalised by a provider module (see Usage) into a Usage; `raw` is the upstream's
 * object, kept for cost expressions. undefined when no prompt count is reported (every provider reports its
 * input: without it the prompt would be charged as 0, so the caller counts the answer); a rejection when any count
 * is implausible, or a part exceeds its whole and the total does not cover the two side by side.
 */
export function usageFromCounts(c: UsageCounts, raw: Readonly<Record<string, unknown>>, maxUsage: number = DEFAULT_MAX_USAGE): Usage | UsageRejection | undefined {
  const prompt = count(c.prompt, maxUsage);
  const completion = count(c.completion, maxUsage);
  const total = count(c.total, maxUsage);
  const cached = count(c.cachedPrompt, maxUsage);
  const write = count(c.cacheWrite, maxUsage);
  const reasoning = count(c.reasoning, maxUsage);
  // The first rejection in field order, without an array per usage.
  const bad = typeof prompt === 'string' ? prompt : typeof completion === 'string' ? completion : typeof total === 'string' ? total
    : typeof cached === 'string' ? cached : typeof write === 'string' ? write : typeof reasoning === 'string' ? reasoning : undefined;
  if (bad !== undefined) return { rejected: bad };
  if (prompt === undefined) return undefined;
  const p = (prompt as number | undefined) ?? 0;
  const o = (completion as number | undefined) ?? 0;
  if (p + o > maxUsage) return { rejected: 'too_large' };
  const t = total as number | undefined;
  if (t !== undefined && t < p + o) return { rejected: 'inconsistent' };
  const cp = (cached as number | undefined) ?? 0;
  const cw = (write as number | undefined) ?? 0;
  const r = (reasoning as number | undefined) ?? 0;
  let whole = p;
  let out = o;
  if (cp + cw > p || r > o) {
    // A part larger than its whole was counted beside it (xAI reports reasoning apart from completion_tokens),
    // when the total says so: the whole is the two together. Otherwise the usage contradicts itself.
    if (cp + cw > p) whole = p + cp + cw;
    if (r > o) out = o + r;
    if (t === undefined || t < whole + out || whole + out > maxUsage) return { rejected: 'inconsistent' };
  }
  const usage: Usage = {
    prompt_tokens: whole, completion_tokens: out, total_tokens: t ?? whole + out,
    cached_prompt_tokens: cp, cache_write_tokens: cw, reasoning_tokens: r,
  };
  Object.defineProperty(usage, 'raw', { value: raw, enumerable: false });
  return usage;
}

/**
 * The usage of a stream that reported one more than once. Servers that report usage on several chunks (vLLM's
 * continuous usage stats) report running totals, which never shrink: a later report below an earlier one is not
 * believed for the counts it lowers, so an upstream cannot take back tokens it already reported.
 */
export function laterUsage(prev: Usage, next: Usage): Usage {
  if (next.prompt_tokens >= prev.prompt_tokens && next.completion_tokens >= prev.completion_tokens && next.total_tokens >= prev.total_tokens
    && (next.cached_prompt_tokens ?? 0) >= (prev.cached_prompt_tokens ?? 0) && (next.cache_write_tokens ?? 0) >= (prev.cache_write_tokens ?? 0)
    && (next.reasoning_tokens ?? 0) >= (prev.reasoning_tokens ?? 0)) return next;
  const most = (a: number | undefined, b: number | undefined): number | undefined => (a === undefined ? b : b === undefined ? a : Math.max(a, b));
  const p = Math.max(prev.prompt_tokens, next.prompt_tokens);
  const c = Math.max(prev.completion_tokens, next.completion_tokens);
  const usage: Usage = { prompt_tokens: p, completion_tokens: c, total_tokens: Math.max(prev.total_tokens, next.total_tokens, p + c) };
  const cached = most(prev.cached_prompt_tokens, next.cached_prompt_tokens);
  const write = most(prev.cache_write_tokens, next.cache_write_tokens);
  const reasoning = most(prev.reasoning_tokens, next.reasoning_tokens);
  if (cached !== undefined) usage.cached_prompt_tokens = cached;
  if (write !== undefined) usage.cache_write_tokens = write;
  if (reasoning !== undefined) usage.reasoning_tokens = reasoning;
  // Cost expressions read the raw object for names Usage lacks: the report holding the larger counts.
  Object.defineProperty(usage, 'raw', { value: next.total_tokens >= prev.total_tokens ? next.raw : prev.raw, enumerable: false });
  return usage;
}

/**
 * The usage of a stream cut short (client abort, shutdown) after its upstream reported one. A report is a running
 * total with an exact prompt count; text that streamed after the last report is in the count of the text, not in
 * it. So the report as is when its completion is not below the count (an answer whose final usage arrived: hidden
 * reasoning and all), else its prompt with the counted completion, without the raw object (cost expressions then
 * take their upper bound, as for any counted usage).
 */
export function cutShortUsage(reported: Usage, counted: Usage): Usage {
  if (reported.completion_tokens >= counted.completion_tokens) return reported;
  const c = counted.completion_tokens;
  const usage: Usage = {
    prompt_tokens: reported.prompt_tokens, completion_tokens: c,
    total_tokens: reported.total_tokens - reported.completion_tokens + c,
  };
  if (reported.cached_prompt_tokens !== undefined) usage.cached_prompt_tokens = reported.cached_prompt_tokens;
  if (reported.cache_write_tokens !== undefined) usage.cache_write_tokens = reported.cache_write_tokens;
  if (reported.reasoning_tokens !== undefined) usage.reasoning_tokens = reported.reasoning_tokens;
  return usage;
}

/**
 * The prompt side of a report made before the final count (StreamCodec.promptReport): its prompt parts, no completion,
 * no raw object (a usage completed by a count is an estimate).
 */
export function promptOnly(u: Usage): Usage {
  const usage: Usage = { prompt_tokens: u.prompt_tokens, completion_tokens: 0, total_tokens: u.prompt_tokens };
  if (u.cached_prompt_tokens !== undefined) usage.cached_prompt_tokens = u.cached_prompt_tokens;
  if (u.cache_write_tokens !== undefined) usage.cache_write_tokens = u.cache_write_tokens;
  return usage;
}

/**
 * An earlier believed report and the count of a stream whose last report was not believed: each part the larger,
 * so a plausible report sent before a lie can only raise the charge, never lower it below the count.
 */
export function largerUsage(reported: Usage, counted: Usage): Usage {
  if (reported.prompt_tokens >= counted.prompt_tokens) return cutShortUsage(reported, counted);
  const completion = Math.max(reported.completion_tokens, counted.completion_tokens);
  const usage: Usage = { prompt_tokens: counted.prompt_tokens, completion_tokens: completion, total_tokens: counted.prompt_tokens + completion };
  if (reported.reasoning_tokens !== undefined) usage.reasoning_tokens = reported.reasoning_tokens;
  return usage;
}

/**
 * A buffered answer's believed usage whose completion is 0 while the answer holds generated text: not believed
 * (the answer would be free); the text is counted instead. Undefined when the usage stands.
 */
export function zeroCompletionText(u: Usage | undefined, textOf: () => string): string | undefined {
  if (u === undefined || u.completion_tokens !== 0) return undefined;
  const text = textOf();
  return text === '' ? undefined : text;
}

/** A report covers the text streamed before it only when it counted more completion than the last one (or is the
 *  first): a stale repeat after new text leaves that text uncovered. */
export function coversMore(prev: Usage | undefined, next: Usage): boolean {
  return prev === undefined || next.completion_tokens > prev.completion_tokens;
}

/**
 * The text of a buffered answer whose believed `completion` must be checked against it (completionBelowText): only
 * when the body itself is that large is the text extracted (`textOf`), and it is returned when it is too large too.
 * Undefined when the report stands unchecked.
 */
export function textToVerify(completion: number, bodyBytes: number, textOf: () => string): string | undefined {
  if (!completionBelowText(completion, bodyBytes)) return undefined;
  const t = textOf();
  return completionBelowText(completion, t.length) ? t : undefined;
}

/**
 * Whether `chars` characters of generated text are too many for a reported completion of `completion` tokens to be
 * taken on trust: more than 32 characters a token (beyond a small allowance) is more than tokenizers pack. The
 * caller then counts the text and charges the larger completion, so a report is only ever raised by this check.
 */
export function completionBelowText(completion: number, chars: number): boolean {
  return chars > (completion + 16) * 32;
}

/** A report completionBelowText flagged, against the count of its text: the report itself unless the count's
 *  completion is larger, then each part the larger. */
export function verifiedUsage(reported: Usage, counted: Usage): Usage {
  return counted.completion_tokens > reported.completion_tokens ? largerUsage(reported, counted) : reported;
}

export function isRejection(u: Usage | UsageRejection | undefined): u is UsageRejection {
  return u !== undefined && (u as UsageRejection).rejected !== undefined;
}

/** readUsage without the reason: undefined for absent and for implausible usage alike. */
export function parseUsage(u: unknown, maxUsage: number = DEFAULT_MAX_USAGE): Usage | undefined {
  const r = readUsage(u, maxUsage);
  return r === undefined || isRejection(r) ? undefined : r;
}

/** The usage of a parsed non-streaming response body (or of one parsed SSE chunk). */
export function extractUsage(json: unknown, maxUsage: number = DEFAULT_MAX_USAGE): Usage | undefined {
  if (typeof json !== 'object' || json === null) return undefined;
  return parseUsage((json as { usage?: unknown }).usage, maxUsage);
}
