// The provider seam. The pipeline knows no wire format: it asks the client-facing *surface* (decided by the
// request path) to parse and size the request, and the instance's *provider* to address, build, decode and
// classify the upstream exchange. One folder per provider (`providers/<name>/`) holds both for its own wire
// format, plus the translation from the OpenAI chat surface when its instances serve OpenAI clients.
// Everything a worker thread runs (SurfaceSpec.parse) is pure: bytes in, plain data out.
import type { InstanceConfig } from '../config/types.ts';
import type { PromptParts } from '../tokens/count.ts';
import type { TokenEncoding } from '../tokens/encoding.ts';
import type { ReservationPolicy } from '../tokens/limits.ts';
import type { Usage, UsageRejectReason } from '../streaming/usage.ts';

/** The API a client speaks to Sluice. */
export type SurfaceId =
  | 'openai-chat'            // POST …/chat/completions (also Azure's /openai/deployments/<d>/chat/completions)
  | 'openai-completions'     // POST …/completions
  | 'openai-responses'       // POST …/responses
  | 'openai-embeddings'      // POST …/embeddings
  | 'anthropic-messages'     // POST …/messages
  | 'anthropic-count-tokens' // POST …/messages/count_tokens (passed through, not metered)
  | 'gemini-generate'        // POST …/models/<model>:generateContent | :streamGenerateContent[?alt=sse]
  | 'gemini-count-tokens';   // POST …/models/<model>:countTokens (passed through, not metered)

export interface ParseOptions extends ReservationPolicy {
  readonly surface: SurfaceId;
  /** Count prompt tokens (default true). Routes without quotas skip the tokenizer. */
  readonly countPrompt?: boolean;
  /** Normalised request path and raw query (Gemini carries the model and the streaming mode there). */
  readonly path: string;
  readonly query: string;
  /** Prompt estimate multiplier for providers without a public tokenizer (max over the route's instances; 1: exact). */
  readonly promptScale?: number;
}

export interface CallFailure {
  readonly ok: false;
  /** SLC_BAD_JSON when the body does not parse, SLC_BAD_REQUEST when it parses but is not a valid request. */
  readonly code: 'SLC_BAD_JSON' | 'SLC_BAD_REQUEST';
  readonly message: string;
  /** The request field at fault (OpenAI-style `param`). */
  readonly param?: string;
}

/** A request parsed, validated and sized; its prompt not yet counted (a worker thread may count it in slices). */
export interface ParsedCall {
  readonly ok: true;
  readonly surface: SurfaceId;
  /** The parsed body; finish() serialises it (mutations allowed until then). */
  readonly obj: Record<string, unknown>;
  /** The requested model (body or path). */
  readonly model: string | undefined;
  readonly stream: boolean;
  /** The client asked for usage in the stream itself (OpenAI stream_options.include_usage); others always get it. */
  readonly clientWantsUsage: boolean;
  readonly maxTokens: number | undefined;
  readonly n: number;
  /** Completion tokens to reserve (tokens/limits.ts rule); 0 for surfaces that produce no output tokens. */
  readonly reserveCompletion: number;
  readonly enc: TokenEncoding;
  /** What to count; undefined when countPrompt is false. */
  readonly parts: PromptParts | undefined;
  /** Multiplier applied to the counted prompt (ParseOptions.promptScale, ≥ 1). */
  readonly scale: number;
  readonly fieldKeys: readonly string[] | undefined;
  readonly clientFields: (string | null)[] | undefined;
  /** Copied to PreparedCall.query by finishCall (set by surfaces whose provider addresses the call with it). */
  readonly query?: string;
}

/**
 * The prepared request: plain data (it crosses the thread boundary). `tail` is the client's JSON without `model`
 * and without its leading '{' — the native fast path sends '{"model":<instance model>,' + tail with no second
 * parse; a translating provider parses the tail once more.
 */
export interface PreparedCall {
  readonly ok: true;
  readonly surface: SurfaceId;
  readonly model: string | undefined;
  readonly stream: boolean;
  readonly clientWantsUsage: boolean;
  readonly maxTokens: number | undefined;
  readonly n: number;
  readonly promptTokens: number;
  readonly promptCounted: boolean;
  readonly promptExact: boolean;
  readonly reserveCompletion: number;
  readonly tail: Buffer;
  /** The client's raw query (ParseOptions.query) when a provider needs it to address the call (Gemini: alt=sse). */
  readonly query?: string;
  readonly fieldKeys?: readonly string[];
  readonly clientFields?: readonly (string | null)[];
}

/** A client-facing API: its request parser and its error format. Registered in providers/registry.ts. */
export interface SurfaceSpec {
  readonly id: SurfaceId;
  /** false for calls that produce no tokens (count_tokens): no reservation, no settlement. */
  readonly metered: boolean;
  /** Parse and validate; pure (runs on worker threads). */
  parse(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure;
  /** Adjust the parsed body before it is serialised for every attempt (e.g. force stream usage on). */
  finish?(obj: Record<string, unknown>, stream: boolean): void;
  /** An error body in this surface's own format (Anthropic clients get Anthropic errors). */
  errorBody(status: number, code: string, type: string, message: string, param: string | undefined): string;
}

/** Provider-specific part of an upstream request; the pipeline adds forwarded and instance headers around it. */
export interface UpstreamCall {
  readonly path: string;
  /** Provider headers (version headers, signatures); they win over forwarded client headers. */
  readonly headers: Readonly<Record<string, string>> | undefined;
  readonly body: Buffer;
}

/** A buffered 2xx answer, in the client's surface. */
export interface DecodedBody {
  /** Bytes for the client (the upstream's own when native). */
  readonly body: Buffer;
  readonly contentType: string | undefined;
  /** Plausible usage; a rejection reason when the upstream's was not believable; undefined when absent. With
   *  `rejected: 'zero_completion'` both are set: the report stands but for its completion, which `text` replaces. */
  readonly usage: Usage | undefined;
  readonly rejected: UsageRejectReason | undefined;
  /** Generated text to count when usage is missing or rejected, or its completion is 0 ('' otherwise). */
  readonly text: string;
  /** A 2xx answer that cannot be translated for the client (not the provider's JSON, or an error object): why. The
   *  pipeline answers 502 rather than relay a 200 the client would take for a completion. */
  readonly unusable?: string;
  /** A believed usage whose completion looks small for this much generated text (completionBelowText): the text, to
   *  count; the larger completion is charged. */
  readonly verifyText?: string;
}

/** One streamed answer on its way to the client: decodes the provider's frames, meters them, emits client bytes. */
export interface StreamCodec {
  /** Content type for the client (text/event-stream for SSE surfaces). */
  readonly contentType: string;
  /** Client bytes for this upstream chunk (may be empty/undefined: held back or stripped). */
  push(chunk: Buffer): Buffer | undefined;
  /** The stream ended cleanly: what is left to send (a last event without its blank line, a closing frame). */
  end(): Buffer | undefined;
  readonly usage: Usage | undefined;
  /** The last usage report was not believed; `usage` may still hold an earlier one, which the count then tops up. */
  readonly usageRejected: UsageRejectReason | undefined;
  /** Generated text held and not yet handed out (count it when usage is missing). */
  readonly text: string;
  /** Tokens to add so that cutting the text into pieces never under-counts. */
  readonly countMargin: number;
  /** Generated text came after the stream's last usage report, which therefore does not cover all of it. */
  readonly textAfterUsage: boolean;
  /** The stream's last event came (chat's `[DONE]`, Anthropic's `message_stop`, a Responses terminal event): the
   *  answer is whole, and an upstream that keeps its connection open after it is not waited for. */
  readonly complete?: boolean;
  /** A piece of text to count now (the codec dropped it); undefined until its bound is passed. */
  takeCountable(): string | undefined;
  /**
   * The prompt side of a report that came before the final count (Anthropic's message_start, Gemini's usage of a frame
   * before its finish), believable, with no completion: a stream that ends without a final usage is charged these
   * prompt counts beside its counted text, instead of the gateway's own prompt count. Undefined when none came.
   */
  readonly promptReport?: Usage | undefined;
  /**
   * Completion tokens a report before the final count said were produced where no relayed text shows them (Gemini's
   * thoughts): a stream charged from its counted text is charged these beside it. Undefined or 0 when none.
   */
  readonly hiddenCompletion?: number;
  /**
   * Closing frames held back at end() because the client asked for a usage report that the upstream did not give
   * (a translated stream with `include_usage`): called once the stream is settled, with the usage charged (undefined
   * when nothing was metered), it returns them with that usage. Undefined when nothing was held.
   */
  closing?(charged: Usage | undefined): Buffer | undefined;
  /**
   * After end(): the upstream closed cleanly before its stream's last event, and what end() returned tells the client
   * so (a translated stream's error frame) instead of a made-up ending. The pipeline counts the stream as broken off
   * (502). Undefined or false for streams relayed as the upstream sent them.
   */
  readonly truncated?: boolean;
  /** Characters of generated text the stream carried (for completionBelowText); undefined when the codec keeps none. */
  readonly textChars?: number;
}

export interface StreamOptions {
  readonly maxUsage: number;
  readonly textBound?: number;
}

/** How a non-2xx answer counts for fallback, and what the client gets if it is the last one. */
export interface FailureAnswer {
  /** Fallback reason it matches (`fallback_strategy` entries), or undefined: relayed as is, no fallback. */
  readonly retry: 'http_429' | 'http_5xx' | undefined;
  readonly status: number;
  /** In the client's surface (translated when the provider's differs). */
  readonly body: Buffer;
  readonly contentType: string | undefined;
}

/** An instance's provider, resolved once at config load. */
export interface ResolvedProvider {
  /** Module id (`openai`, `azure-openai`, `anthropic`, `gemini`): the `provider` label of metrics. */
  readonly id: string;
  readonly origin: string;
  /** How this instance serves a client surface; undefined: it cannot (the instance is skipped for that call). */
  mode(surface: SurfaceId): 'native' | 'translated' | undefined;
  /** `model`: the instance's model, or the requested one when the instance sets none. */
  request(call: PreparedCall, model: string | undefined, members: string | undefined): UpstreamCall;
  /**
   * For an instance that sets no model: the model a call asking for `requested` is served by, for `${upstream_model}`
   * and `model_limits`. The model the URL names where it names one (a Gemini endpoint ending in
   * `…/models/<m>:generateContent`), so a client cannot name another to escape a spent model quota; otherwise
   * `requested` as the upstream reads it (Gemini's `models/` prefix dropped). Absent: `requested`.
   */
  quotaModel?(surface: SurfaceId, requested: string | undefined): string | undefined;
  /** Whether a 2xx answer is a stream (by its content type, and the call). */
  isStream(call: PreparedCall, contentType: string): boolean;
  decode(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody;
  stream(call: PreparedCall, opts: StreamOptions): StreamCodec;
  failure(call: PreparedCall, status: number, body: Buffer): FailureAnswer;
}

/** Issues found while resolving an instance: `path` is relative to the instance (e.g. `override.endpoint`). */
export interface ResolveIssue {
  readonly path: string;
  readonly message: string;
}

/** One provider module: registered once in providers/registry.ts. */
export interface ProviderModule {
  readonly id: string;
  /** Config `provider` names it serves, as APISIX `ai-proxy` spells them. */
  readonly names: readonly string[];
  /** Client surfaces whose wire format this module defines. */
  readonly surfaces: readonly SurfaceSpec[];
  /** Reservation multiplier for its models' prompts (1 where a real tokenizer is used). */
  readonly promptScale: number;
  resolve(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[];
}
