// Token usage as upstreams report it: `usage` in a non-streaming body or in the final SSE chunk.

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

function count(v: unknown): number | undefined | null {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) return null;
  return Math.floor(v);
}

/**
 * A usage object → Usage, or undefined when it carries no usable counts. A missing prompt or completion
 * count is 0 and a missing total is their sum; a negative or non-numeric count makes the whole object unusable.
 */
export function parseUsage(u: unknown): Usage | undefined {
  if (typeof u !== 'object' || u === null) return undefined;
  const o = u as Record<string, unknown>;
  const prompt = count(o.prompt_tokens);
  const completion = count(o.completion_tokens);
  const total = count(o.total_tokens);
  if (prompt === null || completion === null || total === null) return undefined;
  if (prompt === undefined && completion === undefined) return undefined;
  const p = prompt ?? 0;
  const c = completion ?? 0;
  return { prompt_tokens: p, completion_tokens: c, total_tokens: total ?? p + c };
}

/** The usage of a parsed non-streaming response body (or of one parsed SSE chunk). */
export function extractUsage(json: unknown): Usage | undefined {
  if (typeof json !== 'object' || json === null) return undefined;
  return parseUsage((json as { usage?: unknown }).usage);
}
