// The one request-preparation function: parse, validate, count prompt tokens, and re-serialise the body for
// the upstream. It runs inline on the main thread for small bodies and on a worker thread for large ones
// (src/workers), so it is pure and thread-agnostic: bytes in, plain data out.
import { countChatPrompt, countCompletionPrompt } from './count.ts';
import { encodingForModel } from './encoding.ts';

export interface PrepareOptions {
  kind: 'chat' | 'completion';
  /** Completion tokens reserved when the request sets no max_tokens. */
  defaultMaxTokens: number;
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
  /** 0 when countPrompt was false (see promptCounted). */
  promptTokens: number;
  promptCounted: boolean;
  /** maxTokens ?? defaultMaxTokens. */
  reserveCompletion: number;
  /**
   * The request JSON re-serialised without `model` and without the leading '{' (may be '}' alone), with
   * stream_options.include_usage forced true when streaming. composeUpstreamBody() puts the model back.
   */
  tail: Buffer;
}

export interface PrepareFailure {
  ok: false;
  /** SLC_BAD_JSON when the body does not parse, SLC_BAD_REQUEST when it parses but is not a valid request. */
  code: 'SLC_BAD_JSON' | 'SLC_BAD_REQUEST';
  message: string;
}

function fail(code: PrepareFailure['code'], message: string): PrepareFailure {
  return { ok: false, code, message };
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

export function prepareRequest(body: Uint8Array, opts: PrepareOptions): PreparedRequest | PrepareFailure {
  let obj: unknown;
  try {
    obj = JSON.parse(asBuffer(body).toString('utf8'));
  } catch {
    return fail('SLC_BAD_JSON', 'request body is not valid JSON');
  }
  if (!isObject(obj)) return fail('SLC_BAD_REQUEST', 'request body must be a JSON object');

  const model = obj.model;
  if (model !== undefined && typeof model !== 'string') return fail('SLC_BAD_REQUEST', 'model must be a string');

  const streamField = obj.stream;
  if (streamField !== undefined && streamField !== null && typeof streamField !== 'boolean') {
    return fail('SLC_BAD_REQUEST', 'stream must be a boolean');
  }
  const stream = streamField === true;

  const streamOptions = obj.stream_options;
  if (streamOptions !== undefined && streamOptions !== null && !isObject(streamOptions)) {
    return fail('SLC_BAD_REQUEST', 'stream_options must be an object');
  }

  const maxCompletion = positiveInt(obj, 'max_completion_tokens');
  if (typeof maxCompletion === 'string') return fail('SLC_BAD_REQUEST', maxCompletion);
  const maxTokensField = positiveInt(obj, 'max_tokens');
  if (typeof maxTokensField === 'string') return fail('SLC_BAD_REQUEST', maxTokensField);
  const maxTokens = maxCompletion ?? maxTokensField;

  const enc = encodingForModel(model);
  const count = opts.countPrompt !== false;
  let promptTokens = 0;
  if (opts.kind === 'chat') {
    const messages = obj.messages;
    if (!Array.isArray(messages)) return fail('SLC_BAD_REQUEST', 'messages must be an array');
    if (messages.length === 0) return fail('SLC_BAD_REQUEST', 'messages must not be empty');
    for (let i = 0; i < messages.length; i++) {
      if (!isObject(messages[i])) return fail('SLC_BAD_REQUEST', `messages[${i}] must be an object`);
    }
    if (count) promptTokens = countChatPrompt(messages, enc, obj.tools, obj.functions);
  } else {
    const prompt = obj.prompt;
    if (prompt === undefined || prompt === null) return fail('SLC_BAD_REQUEST', 'prompt is required');
    if (!validPrompt(prompt)) return fail('SLC_BAD_REQUEST', 'prompt must be a string, an array of strings, or token ids');
    if (count) promptTokens = countCompletionPrompt(prompt, enc);
  }

  const clientWantsUsage = stream && isObject(streamOptions) && streamOptions.include_usage === true;
  if (stream) {
    // Sluice meters from the upstream's usage chunk; the client sees it only if it asked (StreamMeter strips it).
    if (isObject(streamOptions)) streamOptions.include_usage = true;
    else obj.stream_options = { include_usage: true };
  }
  // JSON.stringify drops undefined-valued keys, so this removes `model` without reshaping the object.
  if (model !== undefined) obj.model = undefined;
  const tail = Buffer.from(JSON.stringify(obj), 'utf8').subarray(1);

  return {
    ok: true,
    model,
    stream,
    clientWantsUsage,
    maxTokens,
    promptTokens,
    promptCounted: count,
    reserveCompletion: maxTokens ?? opts.defaultMaxTokens,
    tail,
  };
}

const CLOSE_BRACE = 0x7d;

/** The upstream body: '{"model":<model>,' + tail, or '{' + tail when there is no model to send. */
export function composeUpstreamBody(model: string | undefined, tail: Buffer): Buffer {
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
