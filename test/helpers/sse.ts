// Reading a streamed answer in pieces: the gateway destroys a stream the upstream broke, and what arrived
// before the cut must be kept.
import type OpenAI from 'openai';

/** Everything the body delivered, up to its end or its cut. */
export async function readAll(r: Response): Promise<string> {
  let raw = '';
  const reader = (r.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      raw += dec.decode(value, { stream: true });
    }
  } catch {
    // the upstream's cut, relayed
  }
  return raw;
}

export interface ChatStreamRead {
  /** The first choice's content, concatenated. */
  readonly text: string;
  readonly finish: string | null;
  /** The last usage chunk's usage (undefined: none came). */
  readonly usage: OpenAI.CompletionUsage | undefined;
}

/** Reads an `openai` SDK chat stream to its end. */
export async function readChatStream(stream: AsyncIterable<OpenAI.ChatCompletionChunk>): Promise<ChatStreamRead> {
  let text = '';
  let usage: OpenAI.CompletionUsage | undefined;
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finish, usage };
}
