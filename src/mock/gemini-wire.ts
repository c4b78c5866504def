// Gemini generateContent wire format of the mock: GenerateContentResponse with usageMetadata, streamed as SSE
// (`?alt=sse`) or as one JSON array whose elements arrive as they are generated. Zero cached/thoughts counts are
// left out, as the real API does. With generationConfig.thinkingConfig.includeThoughts the reasoning tokens also come
// as a `thought: true` part (one chunk of its own when streaming) before the text.
import { rpcStatus } from '../providers/gemini/surface.ts';
import { completionSlice } from './tokens.ts';
import { wire, type AnswerContext, type Renderer } from './surface.ts';

export function geminiError(status: number, message: string): string {
  return JSON.stringify({ error: { code: status, message, status: rpcStatus(status) } });
}

export function generateRenderer(ctx: AnswerContext, sse: boolean): Renderer {
  const t = ctx.tokens;
  const withUsage = ctx.usage !== 'off';
  const promptMeta = (): Record<string, unknown> => {
    const u: Record<string, unknown> = { promptTokenCount: wire(ctx.lies, 'prompt', t.prompt) };
    if (t.cached > 0) u.cachedContentTokenCount = t.cached;
    return u;
  };
  const fullMeta = (): Record<string, unknown> => {
    const u = promptMeta();
    u.candidatesTokenCount = wire(ctx.lies, 'completion', t.text);
    if (t.reasoning > 0) u.thoughtsTokenCount = t.reasoning;
    u.totalTokenCount = wire(ctx.lies, 'total', t.prompt + t.completion);
    u.promptTokensDetails = [{ modality: 'TEXT', tokenCount: t.prompt }];
    return u;
  };
  const tc = (ctx.body.generationConfig as { thinkingConfig?: { includeThoughts?: unknown } } | undefined | null)?.thinkingConfig;
  const thoughts = t.reasoning > 0 && tc?.includeThoughts === true ? completionSlice(0, t.reasoning) : undefined;
  const chunk = (text: string, final: boolean, thought?: string) => {
    const parts: unknown[] = thought === undefined ? [] : [{ text: thought, thought: true }];
    if (text !== '' || thought === undefined) parts.push({ text });
    const candidate: Record<string, unknown> = { content: { parts, role: 'model' } };
    if (final) candidate.finishReason = t.capped ? 'MAX_TOKENS' : 'STOP';
    candidate.index = 0;
    const c: Record<string, unknown> = { candidates: [candidate] };
    if (withUsage) {
      if (final) c.usageMetadata = fullMeta();
      else {
        const u = promptMeta();
        u.totalTokenCount = wire(ctx.lies, 'prompt', t.prompt);
        c.usageMetadata = u;
      }
    }
    c.modelVersion = ctx.model;
    c.responseId = ctx.id;
    return c;
  };
  let first = true;
  // Array streaming: "[" before the first element, ",\r\n" between elements, "]" at the end.
  const element = (o: unknown) => {
    const s = sse ? `data: ${JSON.stringify(o)}\r\n\r\n` : (first ? '' : ',\r\n') + JSON.stringify(o);
    first = false;
    return s;
  };
  return {
    reportsUsage: withUsage,
    json() {
      const c = chunk(completionSlice(0, t.text), true, thoughts);
      if (ctx.echoHeaders !== undefined) c.mock_request_headers = ctx.echoHeaders;
      return JSON.stringify(c);
    },
    streamContentType: sse ? 'text/event-stream' : 'application/json; charset=UTF-8',
    head: () => (sse ? '' : '[') + (thoughts === undefined ? '' : element(chunk('', false, thoughts))),
    frame: (text) => element(chunk(text, false)),
    tail: () => element(chunk('', true)) + (sse ? '' : ']'),
    streamError: (status, message) => element(JSON.parse(geminiError(status, message))) + (sse ? '' : ']'),
  };
}
