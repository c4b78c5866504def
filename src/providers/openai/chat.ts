// The OpenAI chat/completions and completions surfaces: request parsing and validation (what the client may
// send, how much completion to reserve, what prompt to count), and the codecs of their answers: a buffered
// body's usage and text, and the SSE stream metered by StreamMeter (usage from the last chunk; Sluice forces
// stream_options.include_usage upstream and strips the usage-only chunk when the client did not ask for it).
import { errorBody as openAiError } from '../../core/errors.ts';
import { chatPromptParts, completionPromptParts, type PromptParts } from '../../tokens/count.ts';
import { encodingForModel } from '../../tokens/encoding.ts';
import { completionReservation, mergedReservation, MAX_N } from '../../tokens/limits.ts';
import { isJsonObject, markRewritten, positiveInt, takeOverrideFields } from '../../tokens/prepare.ts';
import { QUOTED_USAGE } from '../../streaming/json-tail.ts';
import { StreamMeter } from '../../streaming/usage-meter.ts';
import { chatMessageText } from '../../streaming/chat-text.ts';
import { isRejection, textToVerify, zeroCompletionText, usageFromCounts, type Usage, type UsageRejection, type UsageRejectReason } from '../../streaming/usage.ts';
import { answerTailUsage, fail, modelAndStream, parseAnswer, parseBodyObject, promptScale, unusableNative } from '../parse-common.ts';
import type { CallFailure, DecodedBody, FailureAnswer, ParseOptions, ParsedCall, PreparedCall, StreamCodec, StreamOptions, SurfaceSpec } from '../types.ts';


/**
 * An OpenAI usage object → Usage (cached and reasoning tokens are parts of prompt and completion). A null prompt
 * or completion count is no count: the usage is not believed (read as 0 it would make the answer free). A total
 * above prompt + completion counts its excess as completion: OpenAI's own total is their sum, and the servers
 * that send more (Gemini's OpenAI-compatible endpoint leaves thinking out of completion_tokens) bill it as output.
 */
export function openAiUsage(u: unknown, maxUsage: number): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (typeof u !== 'object' || Array.isArray(u)) return { rejected: 'malformed' };
  const o = u as Record<string, unknown>;
  if (o.prompt_tokens === null || o.completion_tokens === null) return { rejected: 'not_a_number' };
  const pd = o.prompt_tokens_details;
  const cd = o.completion_tokens_details;
  const usage = usageFromCounts({
    prompt: o.prompt_tokens,
    completion: o.completion_tokens,
    total: o.total_tokens,
    cachedPrompt: typeof pd === 'object' && pd !== null ? (pd as Record<string, unknown>).cached_tokens : undefined,
    reasoning: typeof cd === 'object' && cd !== null ? (cd as Record<string, unknown>).reasoning_tokens : undefined,
  }, o, maxUsage);
  if (usage !== undefined && !isRejection(usage) && usage.total_tokens > usage.prompt_tokens + usage.completion_tokens) {
    usage.completion_tokens = usage.total_tokens - usage.prompt_tokens;
  }
  return usage;
}

function validPrompt(prompt: unknown): boolean {
  if (typeof prompt === 'string') return true;
  if (!Array.isArray(prompt)) return false;
  for (const p of prompt) {
    if (typeof p === 'string' || typeof p === 'number') continue;
    if (!Array.isArray(p)) return false;
    for (const id of p) if (typeof id !== 'number') return false;
  }
  return true;
}

/** Parse and validate a chat or completions body and size its completion reservation. */
function parseOpenAi(body: Uint8Array, opts: ParseOptions, chat: boolean): ParsedCall | CallFailure {
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const obj = parsed.obj;
  const head = modelAndStream(obj);
  if (!head.ok) return head;
  const { model, stream } = head;

  const streamOptions = obj.stream_options;
  if (streamOptions !== undefined && streamOptions !== null && !isJsonObject(streamOptions)) {
    return fail('SLC_BAD_REQUEST', 'stream_options must be an object', 'stream_options');
  }

  const maxCompletion = positiveInt(obj, 'max_completion_tokens');
  if (typeof maxCompletion === 'string') return fail('SLC_BAD_REQUEST', maxCompletion, 'max_completion_tokens');
  const maxTokensField = positiveInt(obj, 'max_tokens');
  if (typeof maxTokensField === 'string') return fail('SLC_BAD_REQUEST', maxTokensField, 'max_tokens');
  // Both sent: max_completion_tokens is the client's limit (checked against the model; what a translated instance is
  // sent), but both reach an OpenAI-compatible upstream, some of which read max_tokens only (DeepSeek, older
  // servers): the larger bounds what it may produce, so it is reserved and caps a count (never less).
  const bothLarger = maxCompletion !== undefined && maxTokensField !== undefined && maxTokensField > maxCompletion;
  const maxTokens = bothLarger ? maxTokensField : maxCompletion ?? maxTokensField;

  const nField = obj.n;
  let n = 1;
  if (nField !== undefined && nField !== null) {
    if (typeof nField !== 'number' || !Number.isInteger(nField) || nField < 1 || nField > MAX_N) {
      return fail('SLC_BAD_REQUEST', `n must be an integer from 1 to ${MAX_N}`, 'n');
    }
    n = nField;
  }
  const checked = completionReservation(opts, model, maxCompletion ?? maxTokensField, maxCompletion !== undefined ? 'max_completion_tokens' : 'max_tokens', n);
  if (!checked.ok) return fail('SLC_BAD_REQUEST', checked.message, checked.param);
  const reservation = bothLarger ? completionReservation(opts, model, maxTokens, 'max_tokens', n, false) : checked;
  const reserveCompletion = opts.instanceAsks === undefined
    ? (reservation.ok ? reservation.tokens : checked.tokens)
    : mergedReservation(opts, opts.instanceAsks, model, maxTokensField, maxCompletion, n);

  const enc = encodingForModel(model);
  const count = opts.countPrompt !== false;
  let parts: PromptParts | undefined;
  if (chat) {
    const messages = obj.messages;
    if (!Array.isArray(messages)) return fail('SLC_BAD_REQUEST', 'messages must be an array', 'messages');
    if (messages.length === 0) return fail('SLC_BAD_REQUEST', 'messages must not be empty', 'messages');
    for (let i = 0; i < messages.length; i++) {
      if (!isJsonObject(messages[i])) return fail('SLC_BAD_REQUEST', `messages[${i}] must be an object`, 'messages');
    }
    if (count) parts = chatPromptParts(messages, enc, obj.tools, obj.functions, obj.response_format, obj.prediction);
  } else {
    const prompt = obj.prompt;
    if (prompt === undefined || prompt === null) return fail('SLC_BAD_REQUEST', 'prompt is required', 'prompt');
    if (!validPrompt(prompt)) return fail('SLC_BAD_REQUEST', 'prompt must be a string, an array of strings, or token ids', 'prompt');
    if (count) parts = completionPromptParts(prompt);
  }

  const clientWantsUsage = stream && isJsonObject(streamOptions) && streamOptions.include_usage === true;
  const fieldKeys = opts.overrideKeys;
  const clientFields = takeOverrideFields(obj, fieldKeys);
  return {
    ok: true, surface: opts.surface, obj, model, stream, clientWantsUsage, maxTokens, n, reserveCompletion, enc, parts,
    scale: promptScale(opts),
    fieldKeys: clientFields === undefined ? undefined : fieldKeys, clientFields,
  };
}

/** Sluice meters from the upstream's usage chunk; the client sees it only if it asked (the codec strips it). */
function forceStreamUsage(obj: Record<string, unknown>, stream: boolean): void {
  if (!stream) return;
  if (isJsonObject(obj.stream_options)) obj.stream_options.include_usage = true;
  else obj.stream_options = { include_usage: true };
  markRewritten(obj, 'stream_options');
}

/** The OpenAI error shape: {"error":{"message","type","code","param"}}. */
export function openAiErrorBody(_status: number, code: string, type: string, message: string, param: string | undefined): string {
  return openAiError(message, type, code, param ?? null);
}

export const chatSurface: SurfaceSpec = {
  id: 'openai-chat',
  metered: true,
  parse: (body, opts) => parseOpenAi(body, opts, true),
  finish: forceStreamUsage,
  errorBody: openAiErrorBody,
};

export const completionsSurface: SurfaceSpec = {
  id: 'openai-completions',
  metered: true,
  parse: (body, opts) => parseOpenAi(body, opts, false),
  finish: forceStreamUsage,
  errorBody: openAiErrorBody,
};

/** Generated text of a chat or completions body (every message's content, refusal, reasoning, tool calls and
 *  transcript; a completion's text), for counting. */
function completionText(json: unknown): string {
  const choices = (json as { choices?: unknown } | null)?.choices;
  if (!Array.isArray(choices)) return '';
  const parts: string[] = [];
  const add = (t: string): void => { parts.push(t); };
  for (const c of choices) {
    if (typeof c !== 'object' || c === null) continue;
    const text = (c as { text?: unknown }).text;
    if (typeof text === 'string') parts.push(text);
    chatMessageText((c as { message?: unknown }).message, add);
  }
  return parts.join('');
}

const QUOTED_CHOICES = Buffer.from('"choices"');

/** A buffered 2xx chat/completions answer: relayed as it came; its usage, or its text to count. */
export function decodeChat(_call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody {
  const fromTail = answerTailUsage(body, QUOTED_CHOICES, QUOTED_USAGE, openAiUsage, maxUsage);
  if (fromTail !== undefined) return { body, contentType: undefined, usage: fromTail, rejected: undefined, text: '' };
  const json = parseAnswer(body);
  // A 200 carrying an HTML page or nothing would reach the SDK as a completion (or crash it): a 502 instead.
  const unusable = unusableNative(json, 'choices');
  if (unusable !== undefined) return unusable;
  let usage: Usage | undefined;
  let rejected: UsageRejectReason | undefined;
  let text = '';
  const u = openAiUsage((json as { usage?: unknown }).usage, maxUsage);
  if (isRejection(u)) rejected = u.rejected; else usage = u;
  const zero = zeroCompletionText(usage, () => completionText(json));
  if (zero !== undefined) return { body, contentType: undefined, usage, rejected: 'zero_completion', text: zero };
  if (usage === undefined) text = completionText(json);
  else {
    const verifyText = textToVerify(usage.completion_tokens, body.length, () => completionText(json));
    if (verifyText !== undefined) return { body, contentType: undefined, usage, rejected, text, verifyText };
  }
  return { body, contentType: undefined, usage, rejected, text };
}

const SSE = 'text/event-stream';

/** The chat/completions stream as it came (minus the forced usage chunk), metered by StreamMeter. */
class ChatStream extends StreamMeter implements StreamCodec {
  readonly contentType = SSE;

  get complete(): boolean {
    return this.sawDone;
  }
}

export function streamChat(call: PreparedCall, opts: StreamOptions): StreamCodec {
  return new ChatStream({ stripUsage: !call.clientWantsUsage, maxUsage: opts.maxUsage, textBound: opts.textBound, readUsage: openAiUsage });
}

/** OpenAI-shaped errors pass through unchanged; 429 and 5xx may fall back to the next instance. */
export function openAiFailure(_call: PreparedCall, status: number, body: Buffer): FailureAnswer {
  return { retry: status === 429 ? 'http_429' : status >= 500 ? 'http_5xx' : undefined, status, body, contentType: undefined };
}
