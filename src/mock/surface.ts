// What every mock surface shares: the route a request path maps to, the deterministic token plan of one answer,
// and the renderer contract each wire dialect (openai-wire.ts, anthropic-wire.ts, gemini-wire.ts) implements.
// The server (server.ts) owns HTTP, delays and faults; a renderer only turns a token plan into bytes.

export type Dialect = 'openai' | 'anthropic' | 'gemini';

export type SurfaceKind =
  | 'chat' | 'completion' | 'responses' | 'embeddings'
  | 'messages' | 'count_tokens'
  | 'generate' | 'gemini_count_tokens';

export interface Route {
  /** Stats key, e.g. `openai.chat`, `azure.embeddings`, `anthropic.messages`, `gemini.generate`. */
  surface: string;
  dialect: Dialect;
  kind: SurfaceKind;
  /** Model named by the path (Azure deployment, Gemini model): echoed instead of the body's. */
  model?: string;
  /** Streaming chosen by the path (Gemini streamGenerateContent); otherwise the body's `stream`. */
  stream?: boolean;
  /** Gemini streams: SSE with `?alt=sse`, else one streamed JSON array. */
  sse?: boolean;
}

/** Token counts of one answer; cached/cacheWrite are parts of prompt, reasoning part of completion. */
export interface TokenPlan {
  prompt: number;
  cached: number;
  cacheWrite: number;
  /** Visible generated text. */
  text: number;
  reasoning: number;
  /** text + reasoning. */
  completion: number;
  /** Stopped by the request's output limit. */
  capped: boolean;
}

/** Usage fields replaced verbatim on the wire (x-mock-lie-* headers); absent keys are reported truthfully. */
export interface Lies {
  prompt?: unknown;
  completion?: unknown;
  total?: unknown;
}

/** Sums of what the mock reported, in the gateway's normalised kinds. */
export interface UsageSums {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cached_prompt_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
}

export function emptyUsageSums(): UsageSums {
  return { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cached_prompt_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0 };
}

export function addUsage(sums: UsageSums, t: TokenPlan): void {
  sums.prompt_tokens += t.prompt;
  sums.completion_tokens += t.completion;
  sums.total_tokens += t.prompt + t.completion;
  sums.cached_prompt_tokens += t.cached;
  sums.cache_write_tokens += t.cacheWrite;
  sums.reasoning_tokens += t.reasoning;
}

/** What a surface reads from a request body before answering. */
export interface RequestFacts {
  prompt: number;
  /** The request's output limit (max_tokens, max_output_tokens, maxOutputTokens). */
  maxTokens: number | undefined;
  stream: boolean;
  model: string;
}

export interface AnswerContext {
  route: Route;
  body: Record<string, unknown>;
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
  tokens: TokenPlan;
  /** off: no usage in the answer; auto: usage, except OpenAI chat/completions streams without include_usage. */
  usage: 'auto' | 'on' | 'off';
  lies: Lies;
  /** Present: added to JSON bodies as `mock_request_headers`. */
  echoHeaders: Record<string, string> | undefined;
}

/** One answer's bytes. Streams are head, one frame per content slice, then tail; error() replaces the tail. */
export interface Renderer {
  /** Whether the complete answer reports usage (stream: in its tail; JSON: in the body). */
  readonly reportsUsage: boolean;
  json(): string;
  readonly streamContentType: string;
  head(): string;
  frame(text: string): string;
  tail(): string;
  /** A provider error sent inside an already-started stream. */
  streamError(status: number, message: string): string;
}

/** Lies win over the true count; a lie may be any JSON value (or a bare string). */
export function wire(lies: Lies, key: keyof Lies, truth: number): unknown {
  return Object.hasOwn(lies, key) ? lies[key] : truth;
}
