// The generated text of an OpenAI chat message or stream delta, for counting when usage is missing, not believed
// or too small for what came. Every field a client receives as generated output counts, not only `content`: an
// answer that is a tool call, a refusal or reasoning is billed as output, and a stream of them aborted before its
// usage must not be free. One reader for buffered messages and stream deltas, so the two cannot disagree.

/** Called with each piece of text, in order. */
export type TextSink = (text: string) => void;

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown, add: TextSink): void {
  if (typeof v === 'string' && v.length > 0) add(v);
}

/** A `function` object of a tool call (or the legacy `function_call`): its name and arguments are generated. */
function fn(v: unknown, add: TextSink): void {
  if (!isObj(v)) return;
  str(v.name, add);
  str(v.arguments, add);
}

/**
 * Text of a chat `message` (buffered) or `delta` (streamed): `content` (a string, or an array of parts with
 * `text` or `refusal`), `refusal`, `reasoning_content` (DeepSeek, vLLM) or else `reasoning` (OpenRouter, which
 * may send both with the same text), tool-call and legacy function-call names and arguments, custom tool inputs,
 * and an audio answer's transcript.
 */
export function chatMessageText(m: unknown, add: TextSink): void {
  if (!isObj(m)) return;
  const content = m.content;
  if (typeof content === 'string') str(content, add);
  else if (Array.isArray(content)) {
    for (const part of content) {
      if (!isObj(part)) continue;
      str(part.text, add);
      str(part.refusal, add);
    }
  }
  str(m.refusal, add);
  if (typeof m.reasoning_content === 'string' && m.reasoning_content !== '') add(m.reasoning_content);
  else str(m.reasoning, add);
  const calls = m.tool_calls;
  if (Array.isArray(calls)) {
    for (const call of calls) {
      if (!isObj(call)) continue;
      fn(call.function, add);
      if (isObj(call.custom)) { str(call.custom.name, add); str(call.custom.input, add); }
    }
  }
  fn(m.function_call, add);
  if (isObj(m.audio)) str(m.audio.transcript, add);
}
