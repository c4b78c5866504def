// Anthropic Messages wire format of the mock: the message object, the event stream (usage split across
// message_start and the cumulative message_delta, as the real API sends it) and count_tokens. Reasoning tokens
// are inside output_tokens and reported apart in output_tokens_details.thinking_tokens; a request with thinking
// enabled also gets them as a thinking block (streamed as one thinking_delta and a signature_delta) before the text.
import { anthropicErrorType } from '../providers/anthropic/surface.ts';
import { completionSlice } from './tokens.ts';
import { wire, type AnswerContext, type Renderer } from './surface.ts';

export function anthropicError(status: number, message: string): string {
  return JSON.stringify({ type: 'error', error: { type: anthropicErrorType(status), message } });
}

/** input_tokens is the uncached part: the three input fields add up to every prompt token. */
function usage(ctx: AnswerContext, outputTokens: unknown): Record<string, unknown> {
  const t = ctx.tokens;
  return {
    input_tokens: wire(ctx.lies, 'prompt', t.prompt - t.cached - t.cacheWrite),
    cache_creation_input_tokens: t.cacheWrite,
    cache_read_input_tokens: t.cached,
    output_tokens: outputTokens,
    ...(t.reasoning > 0 ? { output_tokens_details: { thinking_tokens: t.reasoning } } : {}),
    service_tier: 'standard',
  };
}

function thinkingEnabled(body: Record<string, unknown>): boolean {
  const t = body.thinking as { type?: unknown } | undefined | null;
  return t?.type === 'enabled' || t?.type === 'adaptive';
}

const SIGNATURE = 'bW9jay1zaWduYXR1cmU=';

export function messagesRenderer(ctx: AnswerContext): Renderer {
  const t = ctx.tokens;
  const withUsage = ctx.usage !== 'off';
  const stopReason = t.capped ? 'max_tokens' : 'end_turn';
  const message = (content: unknown[], stop: string | null, outputTokens: unknown) => {
    const m: Record<string, unknown> = {
      id: ctx.id, type: 'message', role: 'assistant', model: ctx.model, content, stop_reason: stop, stop_sequence: null,
    };
    if (withUsage) m.usage = usage(ctx, outputTokens);
    return m;
  };
  const event = (type: string, data: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  const thinking = t.reasoning > 0 && thinkingEnabled(ctx.body);
  const textIndex = thinking ? 1 : 0;
  const thinkingEvents = () => !thinking ? '' : event('content_block_start', { index: 0, content_block: { type: 'thinking', thinking: '', signature: '' } })
    + event('content_block_delta', { index: 0, delta: { type: 'thinking_delta', thinking: completionSlice(0, t.reasoning) } })
    + event('content_block_delta', { index: 0, delta: { type: 'signature_delta', signature: SIGNATURE } })
    + event('content_block_stop', { index: 0 });
  return {
    reportsUsage: withUsage,
    json() {
      const content: unknown[] = thinking ? [{ type: 'thinking', thinking: completionSlice(0, t.reasoning), signature: SIGNATURE }] : [];
      content.push({ type: 'text', text: completionSlice(0, t.text) });
      const m = message(content, stopReason, wire(ctx.lies, 'completion', t.completion));
      if (ctx.echoHeaders !== undefined) m.mock_request_headers = ctx.echoHeaders;
      return JSON.stringify(m);
    },
    streamContentType: 'text/event-stream; charset=utf-8',
    head() {
      const start = message([], null, 1);
      // message_start reports the prompt; output counts arrive in message_delta.
      if (withUsage) delete (start.usage as Record<string, unknown>).output_tokens_details;
      return event('message_start', { message: start }) + thinkingEvents()
        + event('content_block_start', { index: textIndex, content_block: { type: 'text', text: '' } })
        + event('ping', {});
    },
    frame: (text) => event('content_block_delta', { index: textIndex, delta: { type: 'text_delta', text } }),
    tail() {
      const delta: Record<string, unknown> = { delta: { stop_reason: stopReason, stop_sequence: null } };
      if (withUsage) {
        delta.usage = t.reasoning > 0
          ? { output_tokens: wire(ctx.lies, 'completion', t.completion), output_tokens_details: { thinking_tokens: t.reasoning } }
          : { output_tokens: wire(ctx.lies, 'completion', t.completion) };
      }
      return event('content_block_stop', { index: textIndex }) + event('message_delta', delta) + event('message_stop', {});
    },
    streamError: (status, message) => `event: error\ndata: ${anthropicError(status, message)}\n\n`,
  };
}
