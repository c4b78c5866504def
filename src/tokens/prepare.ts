// The one request-preparation function: parse, validate, count prompt tokens, and re-serialise the body for
// the upstream. It runs inline on the main thread for small bodies and on a worker thread for large ones
// (src/workers), so it is pure and thread-agnostic: bytes in, plain data out.
import { chatPromptParts, completionPromptParts, countPromptParts, type PromptParts } from './count.ts';
import { encodingForModel, type TokenEncoding } from './encoding.ts';
import { completionReservation, mergedReservation, MAX_N, type ReservationPolicy } from './limits.ts';

export interface PrepareOptions extends ReservationPolicy {
  kind: 'chat' | 'completion';
  /** Count prompt tokens (default true). Routes without quotas skip the tokenizer: it is the costliest step. */
  countPrompt?: boolean;
}

export interface PreparedRequest {
  ok: true;
  model: string | undefined;
  stream: boolean;
  /** stream_options.include_usage === true in the client's own request. */
  clientWantsUsage: boolean;
  /** max_completion_tokens ?? max_tokens. */
  maxTokens: number | undefined;
  /** Choices asked for (`n`, default 1). */
  n: number;
  /** 0 when countPrompt was false (see promptCounted). */
  promptTokens: number;
  promptCounted: boolean;
  /** false when a worker's time budget ran out and part of the prompt was bounded by its UTF-8 bytes (an over-count). */
  promptExact: boolean;
  /** Completion tokens to reserve: min(n · min(maxTokens ?? defaultMaxTokens, model cap), maxReservation) (src/tokens/limits.ts). */
  reserveCompletion: number;
  /**
   * The request JSON re-serialised without `model` and without the leading '{' (may be '}' alone), with
   * stream_options.include_usage forced true when streaming. composeUpstreamBody() puts the model back.
   */
  tail: Buffer;
  /**
   * When some instance's options set body fields (ReservationPolicy.overrideKeys): those keys, taken out of
   * the tail, and the client's JSON of each (null: the client did not send it). bodyMembers() writes them back.
   */
  fieldKeys?: readonly string[];
  clientFields?: readonly (string | null)[];
}

export interface PrepareFailure {
  ok: false;
  /** SLC_BAD_JSON when the body does not parse, SLC_BAD_REQUEST when it parses but is not a valid request. */
  code: 'SLC_BAD_JSON' | 'SLC_BAD_REQUEST';
  message: string;
  /** The request field at fault, for the OpenAI-style error's `param` (absent: null). */
  param?: string;
}

function fail(code: PrepareFailure['code'], message: string, param?: string): PrepareFailure {
  return param === undefined ? { ok: false, code, message } : { ok: false, code, message, param };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function asBuffer(body: Uint8Array): Buffer {
  return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

/** undefined/null → absent; otherwise a positive safe integer or a failure message. */
function positiveInt(obj: Record<string, unknown>, field: string): number | undefined | string {
  const v = obj[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) return v;
  return `${field} must be a positive integer`;
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

/** A request parsed, validated and sized, its prompt not yet counted. */
export interface ParsedRequest {
  ok: true;
  obj: Record<string, unknown>;
  model: string | undefined;
  stream: boolean;
  clientWantsUsage: boolean;
  maxTokens: number | undefined;
  n: number;
  reserveCompletion: number;
  enc: TokenEncoding;
  /** What to count; undefined when countPrompt is false. */
  parts: PromptParts | undefined;
  fieldKeys: readonly string[] | undefined;
  clientFields: (string | null)[] | undefined;
}

/** Parse and validate the body and size its completion reservation; counting the prompt is left to the caller. */
export function parseRequest(body: Uint8Array, opts: PrepareOptions): ParsedRequest | PrepareFailure {
  let obj: unknown;
  try {
    obj = JSON.parse(asBuffer(body).toString('utf8'));
  } catch {
    return fail('SLC_BAD_JSON', 'request body is not valid JSON');
  }
  if (!isObject(obj)) return fail('SLC_BAD_REQUEST', 'request body must be a JSON object');

  const model = obj.model;
  if (model !== undefined && typeof model !== 'string') return fail('SLC_BAD_REQUEST', 'model must be a string', 'model');

  const streamField = obj.stream;
  if (streamField !== undefined && streamField !== null && typeof streamField !== 'boolean') {
    return fail('SLC_BAD_REQUEST', 'stream must be a boolean', 'stream');
  }
  const stream = streamField === true;

  const streamOptions = obj.stream_options;
  if (streamOptions !== undefined && streamOptions !== null && !isObject(streamOptions)) {
    return fail('SLC_BAD_REQUEST', 'stream_options must be an object', 'stream_options');
  }

  const maxCompletion = positiveInt(obj, 'max_completion_tokens');
  if (typeof maxCompletion === 'string') return fail('SLC_BAD_REQUEST', maxCompletion, 'max_completion_tokens');
  const maxTokensField = positiveInt(obj, 'max_tokens');
  if (typeof maxTokensField === 'string') return fail('SLC_BAD_REQUEST', maxTokensField, 'max_tokens');
  const maxTokens = maxCompletion ?? maxTokensField;

  const nField = obj.n;
  let n = 1;
  if (nField !== undefined && nField !== null) {
    if (typeof nField !== 'number' || !Number.isInteger(nField) || nField < 1 || nField > MAX_N) {
      return fail('SLC_BAD_REQUEST', `n must be an integer from 1 to ${MAX_N}`, 'n');
    }
    n = nField;
  }
  const reservation = completionReservation(opts, model, maxTokens, maxCompletion !== undefined ? 'max_completion_tokens' : 'max_tokens', n);
  if (!reservation.ok) return fail('SLC_BAD_REQUEST', reservation.message, reservation.param);
  const reserveCompletion = opts.instanceAsks === undefined
    ? reservation.tokens
    : mergedReservation(opts, opts.instanceAsks, model, maxTokensField, maxCompletion, n);

  const enc = encodingForModel(model);
  const count = opts.countPrompt !== false;
  let parts: PromptParts | undefined;
  if (opts.kind === 'chat') {
    const messages = obj.messages;
    if (!Array.isArray(messages)) return fail('SLC_BAD_REQUEST', 'messages must be an array', 'messages');
    if (messages.length === 0) return fail('SLC_BAD_REQUEST', 'messages must not be empty', 'messages');
    for (let i = 0; i < messages.length; i++) {
      if (!isObject(messages[i])) return fail('SLC_BAD_REQUEST', `messages[${i}] must be an object`, 'messages');
    }
    if (count) parts = chatPromptParts(messages, enc, obj.tools, obj.functions);
  } else {
    const prompt = obj.prompt;
    if (prompt === undefined || prompt === null) return fail('SLC_BAD_REQUEST', 'prompt is required', 'prompt');
    if (!validPrompt(prompt)) return fail('SLC_BAD_REQUEST', 'prompt must be a string, an array of strings, or token ids', 'prompt');
    if (count) parts = completionPromptParts(prompt);
  }

  const clientWantsUsage = stream && isObject(streamOptions) && streamOptions.include_usage === true;
  // Fields an instance's options may replace leave the tail; each attempt writes the instance's or the client's.
  const fieldKeys = opts.overrideKeys;
  let clientFields: (string | null)[] | undefined;
  if (fieldKeys !== undefined && fieldKeys.length > 0) {
    clientFields = fieldKeys.map((k) => {
      if (!Object.hasOwn(obj, k) || obj[k] === undefined) return null;
      const json = JSON.stringify(obj[k]);
      obj[k] = undefined;
      return json;
    });
  }
  return { ok: true, obj, model, stream, clientWantsUsage, maxTokens, n, reserveCompletion, enc, parts, fieldKeys, clientFields };
}

/** The prepared request once the prompt is counted: re-serialises the body for the upstream. */
export function finishRequest(p: ParsedRequest, promptTokens: number, promptExact: boolean): PreparedRequest {
  const obj = p.obj;
  if (p.stream) {
    // Sluice meters from the upstream's usage chunk; the client sees it only if it asked (StreamMeter strips it).
    if (isObject(obj.stream_options)) obj.stream_options.include_usage = true;
    else obj.stream_options = { include_usage: true };
  }
  // JSON.stringify drops undefined-valued keys, so this removes `model` without reshaping the object.
  if (p.model !== undefined) obj.model = undefined;
  const tail = Buffer.from(JSON.stringify(obj), 'utf8').subarray(1);
  return {
    ok: true,
    model: p.model,
    stream: p.stream,
    clientWantsUsage: p.clientWantsUsage,
    maxTokens: p.maxTokens,
    n: p.n,
    promptTokens,
    promptCounted: p.parts !== undefined,
    promptExact,
    reserveCompletion: p.reserveCompletion,
    tail,
    ...(p.clientFields === undefined ? {} : { fieldKeys: p.fieldKeys, clientFields: p.clientFields }),
  };
}

/** parseRequest, the prompt counted now and exactly, finishRequest: the inline path. */
export function prepareRequest(body: Uint8Array, opts: PrepareOptions): PreparedRequest | PrepareFailure {
  const p = parseRequest(body, opts);
  if (!p.ok) return p;
  return finishRequest(p, p.parts === undefined ? 0 : countPromptParts(p.parts, p.enc), true);
}

const CLOSE_BRACE = 0x7d;

/**
 * The members an instance adds to its upstream body ('"k":v,"k2":v2'), from the prepared request's field keys:
 * the instance's option when it sets the key (APISIX: options override the client), else the client's value.
 * `optionJson` holds the instance's option values, JSON-encoded once at config load.
 */
export function bodyMembers(keys: readonly string[], client: readonly (string | null)[], optionJson: ReadonlyMap<string, string> | undefined): string | undefined {
  let out = '';
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    const v = optionJson?.get(k) ?? client[i] ?? null;
    if (v === null) continue;
    out += (out === '' ? '' : ',') + JSON.stringify(k) + ':' + v;
  }
  return out === '' ? undefined : out;
}

/**
 * The upstream body: '{"model":<model>,' + tail, or '{' + tail when there is no model to send; `members`
 * (bodyMembers) go after the model.
 */
export function composeUpstreamBody(model: string | undefined, tail: Buffer, members?: string): Buffer {
  if (members !== undefined) {
    const empty = tail.length === 1 && tail[0] === CLOSE_BRACE;
    const head = '{' + (model === undefined ? '' : '"model":' + JSON.stringify(model) + ',') + members + (empty ? '' : ',');
    const headLen = Buffer.byteLength(head, 'utf8');
    const out = Buffer.allocUnsafe(headLen + tail.length);
    out.write(head, 0, 'utf8');
    tail.copy(out, headLen);
    return out;
  }
  if (model === undefined) {
    const out = Buffer.allocUnsafe(tail.length + 1);
    out[0] = 0x7b;
    tail.copy(out, 1);
    return out;
  }
  const empty = tail.length === 1 && tail[0] === CLOSE_BRACE;
  const head = '{"model":' + JSON.stringify(model) + (empty ? '' : ',');
  const headLen = Buffer.byteLength(head, 'utf8');
  const out = Buffer.allocUnsafe(headLen + tail.length);
  out.write(head, 0, 'utf8');
  tail.copy(out, headLen);
  return out;
}
