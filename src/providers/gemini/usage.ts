// Gemini's usageMetadata, normalised (docs/architecture.md, token kinds): prompt = promptTokenCount (cached
// content included) + toolUsePromptTokenCount; completion = candidatesTokenCount + thoughtsTokenCount (Gemini
// reports thoughts apart and adds them in its total); cached = cachedContentTokenCount; reasoning = thoughts.
import { usageFromCounts, type Usage, type UsageRejection, type UsageRejectReason } from '../../streaming/usage.ts';

/** Two checked counts added; undefined when neither is reported. */
function sum(a: unknown, b: unknown): number | undefined {
  if ((a === undefined || a === null) && (b === undefined || b === null)) return undefined;
  return ((a as number | null | undefined) ?? 0) + ((b as number | null | undefined) ?? 0);
}

const FIELDS = ['promptTokenCount', 'toolUsePromptTokenCount', 'candidatesTokenCount', 'thoughtsTokenCount', 'totalTokenCount', 'cachedContentTokenCount'] as const;

/** Why one count is not believable (the checks of streaming/usage.ts, in its order); undefined when fine or absent. */
function implausible(v: unknown, max: number): UsageRejectReason | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || Number.isNaN(v)) return 'not_a_number';
  if (v < 0) return 'negative';
  if (v > max) return 'too_large';
  if (!Number.isInteger(v)) return 'fractional';
  return undefined;
}

/** A usageMetadata object → Usage; a rejection when implausible; undefined when absent. */
export function geminiUsage(u: unknown, maxUsage: number): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (typeof u !== 'object' || Array.isArray(u)) return { rejected: 'malformed' };
  const o = u as Record<string, unknown>;
  // Each count is checked before the sums, which could hide a bad one (−5 + 10, 0.5 + 0.5).
  for (const k of FIELDS) {
    const bad = implausible(o[k], maxUsage);
    if (bad !== undefined) return { rejected: bad };
  }
  return usageFromCounts({
    prompt: sum(o.promptTokenCount, o.toolUsePromptTokenCount),
    completion: sum(o.candidatesTokenCount, o.thoughtsTokenCount),
    total: o.totalTokenCount,
    cachedPrompt: o.cachedContentTokenCount,
    reasoning: o.thoughtsTokenCount,
  }, o, maxUsage);
}

/** Generated text of one GenerateContentResponse (every candidate's text parts, function calls as JSON). */
export function responseText(json: unknown, into: (text: string) => void): void {
  const candidates = (json as { candidates?: unknown } | null)?.candidates;
  if (!Array.isArray(candidates)) return;
  for (const c of candidates) {
    const parts = (c as { content?: { parts?: unknown } } | null)?.content?.parts;
    if (!Array.isArray(parts)) continue;
    for (const p of parts) {
      if (typeof p !== 'object' || p === null) continue;
      const part = p as { text?: unknown; functionCall?: unknown; executableCode?: unknown };
      if (typeof part.text === 'string') into(part.text);
      if (part.functionCall !== undefined && part.functionCall !== null) into(JSON.stringify(part.functionCall));
      if (part.executableCode !== undefined && part.executableCode !== null) into(JSON.stringify(part.executableCode));
    }
  }
}
