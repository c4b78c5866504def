// Checks every surface parser starts with: one wording of each client error across surfaces (and of a translated
// answer that cannot be translated).
import { MAX_JSON_DEPTH, isSpace } from '../tokens/json-members.ts';
import { parseJsonObject } from '../tokens/prepare.ts';
import { errorBody as openAiError } from '../core/errors.ts';
import { usageFromTail } from '../streaming/json-tail.ts';
import { completionBelowText, type Usage, type UsageRejection } from '../streaming/usage.ts';
import type { CallFailure, DecodedBody, ParseOptions } from './types.ts';

const EMPTY = Buffer.alloc(0);
/** Characters of an upstream's own error message quoted in ours. */
export const MAX_ERROR_MESSAGE = 2048;

/**
 * A 2xx answer is relayed as a stream when the client asked for one and the upstream sends one: a media type is
 * case-insensitive (`Text/Event-Stream` is SSE), and an SSE answer to a request that asked for none is read as the
 * JSON it should be (a JSON body under an SSE type is decoded and charged; an event stream there is not the client's
 * answer: 502, charged for its bytes).
 */
export function answersStream(asked: boolean, contentType: string): boolean {
  return asked && (contentType.includes('text/event-stream') || contentType.toLowerCase().includes('text/event-stream'));
}

/** A 2xx answer a translating provider cannot turn into the client's format: `errorMessage` is the error object's
 *  `message` when the answer is one, undefined when it is not a JSON object at all (the pipeline answers 502). */
export function untranslatable(isError: boolean, errorMessage: unknown): DecodedBody {
  const why = !isError ? 'the upstream answer is not a JSON object'
    : `the upstream answered 2xx with an error${typeof errorMessage === 'string' ? `: ${errorMessage.slice(0, MAX_ERROR_MESSAGE)}` : ''}`;
  return { body: EMPTY, contentType: undefined, usage: undefined, rejected: undefined, text: '', unusable: why };
}

/**
 * A native 2xx answer no client could use: not a JSON object (an HTML page, an empty body), an object without the
 * surface's answer array (`choices`, `output`, `data`), or an `error` object with that array empty. A Responses
 * object (`"object":"response"`, a failed one included) is an answer. undefined when it is usable.
 */
export function unusableNative(json: unknown, answerKey: string): DecodedBody | undefined {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return untranslatable(false, undefined);
  const o = json as Record<string, unknown>;
  if (o.object === 'response') return undefined;
  const answer = o[answerKey];
  const e = o.error;
  const isError = typeof e === 'object' && e !== null;
  if (Array.isArray(answer) && (answer.length > 0 || !isError)) return undefined;
  if (isError) return untranslatable(true, (e as Record<string, unknown>).message);
  return { ...untranslatable(false, undefined), unusable: `the upstream answer has no ${answerKey} array` };
}

const QUOTED_ERROR = Buffer.from('"error"');

/**
 * A buffered answer's usage read from its end without a parse (streaming/json-tail.ts), when the body looks like an
 * answer: it opens an object, has the surface's answer member (`quotedAnswer`, e.g. `"choices"`) with an array after its first occurrence and no `"error"`
 * member (those bytes occur in valid JSON only as a key or that exact string, which merely takes the slow path).
 * undefined sends the caller to the whole parse and its checks: no such usage, or a completion of 0 or one small for
 * the body's size, which the answer's text must confirm.
 */
export function answerTailUsage(body: Buffer, quotedAnswer: Buffer, quotedUsage: Buffer, read: (u: unknown, maxUsage: number) => Usage | UsageRejection | undefined, maxUsage: number): Usage | undefined {
  if (!opensObject(body) || !opensArrayAfter(body, body.indexOf(quotedAnswer), quotedAnswer.length) || body.indexOf(QUOTED_ERROR) >= 0) return undefined;
  const u = usageFromTail(body, quotedUsage, read, maxUsage);
  return u !== undefined && u.completion_tokens !== 0 && !completionBelowText(u.completion_tokens, body.length) ? u : undefined;
}

/** Whether the key at `at` (`len` bytes, -1: absent) has an array for its value: `null`, a number or an object is no answer. */
function opensArrayAfter(body: Buffer, at: number, len: number): boolean {
  if (at < 0) return false;
  let i = at + len;
  while (i < body.length && isSpace(body[i]!)) i++;
  if (body[i] !== 0x3a) return false;
  i++;
  while (i < body.length && isSpace(body[i]!)) i++;
  return body[i] === 0x5b;
}

/** A buffered answer parsed whole; undefined when it is not JSON. */
export function parseAnswer(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}

/** Whether the first non-whitespace byte opens a JSON object (what a page or a bare array does not). */
export function opensObject(body: Uint8Array): boolean {
  let i = 0;
  while (i < body.length && isSpace(body[i]!)) i++;
  return body[i] === 0x7b;
}

export function fail(code: CallFailure['code'], message: string, param?: string): CallFailure {
  return param === undefined ? { ok: false, code, message } : { ok: false, code, message, param };
}

/** The body as a JSON object, or the 400 a body that is not valid JSON or not an object gets. */
export function parseBodyObject(body: Uint8Array): { readonly ok: true; readonly obj: Record<string, unknown> } | CallFailure {
  // A GET (or a POST without a body) on an API path: say what is missing, not that nothing failed to parse.
  if (body.byteLength === 0) return fail('SLC_BAD_JSON', 'request body is empty: this API takes a JSON object, sent with POST');
  const obj = parseJsonObject(body);
  if (obj === 'json') return fail('SLC_BAD_JSON', 'request body is not valid JSON');
  if (obj === 'object') return fail('SLC_BAD_REQUEST', 'request body must be a JSON object');
  if (obj === 'depth') return fail('SLC_BAD_JSON', `request body nests deeper than ${MAX_JSON_DEPTH} levels`);
  return { ok: true, obj };
}

/** OpenAI-style `model` (optional string) and `stream` (optional boolean or null). */
export function modelAndStream(obj: Record<string, unknown>): { readonly ok: true; readonly model: string | undefined; readonly stream: boolean } | CallFailure {
  const model = obj.model;
  if (model !== undefined && typeof model !== 'string') return fail('SLC_BAD_REQUEST', 'model must be a string', 'model');
  const streamField = obj.stream;
  if (streamField !== undefined && streamField !== null && typeof streamField !== 'boolean') {
    return fail('SLC_BAD_REQUEST', 'stream must be a boolean', 'stream');
  }
  return { ok: true, model, stream: streamField === true };
}

/** The route's prompt scale (1 unless it scales up). */
export function promptScale(opts: ParseOptions): number {
  return opts.promptScale !== undefined && opts.promptScale > 1 ? opts.promptScale : 1;
}

/**
 * The error frame a translated stream ends with when its upstream closed cleanly before the stream's last event
 * (Anthropic's message_delta, Gemini's finishReason): an OpenAI client raises it instead of taking a cut-off answer
 * for a finished one (StreamCodec.truncated).
 */
export function truncatedFrame(lastEvent: string): string {
  return 'data: ' + openAiError(`the upstream stream ended before ${lastEvent}: the answer is incomplete`, 'upstream_error', 'SLC_UPSTREAM_ERROR') + '\n\n';
}
