// The Anthropic client surfaces: POST …/messages (metered) and …/messages/count_tokens (passed through). Both
// parse and validate on the worker threads, so everything here is pure.
import { completionReservation, mergedReservation } from '../../tokens/limits.ts';
import { takeOverrideFields } from '../../tokens/prepare.ts';
import { fail, parseBodyObject } from '../parse-common.ts';
import type { CallFailure, ParseOptions, ParsedCall, SurfaceSpec } from '../types.ts';
import { ANTHROPIC_PROMPT_SCALE, anthropicPromptParts } from './estimate.ts';


function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function validContent(c: unknown): boolean {
  if (typeof c === 'string') return true;
  if (!Array.isArray(c)) return false;
  for (const b of c) if (!isObject(b) || typeof b.type !== 'string') return false;
  return true;
}

export function parseMessages(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const o = parsed.obj;
  const model = o.model;
  if (typeof model !== 'string' || model === '') return fail('SLC_BAD_REQUEST', 'model: field required (a non-empty string)', 'model');
  const mt = o.max_tokens;
  if (typeof mt !== 'number' || !Number.isSafeInteger(mt) || mt < 1) {
    return fail('SLC_BAD_REQUEST', 'max_tokens: field required (a positive integer)', 'max_tokens');
  }
  const messages = o.messages;
  if (!Array.isArray(messages) || messages.length === 0) return fail('SLC_BAD_REQUEST', 'messages: must be a non-empty array', 'messages');
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (!isObject(m) || typeof m.role !== 'string') return fail('SLC_BAD_REQUEST', `messages.${i}: must be an object with a role`, 'messages');
    if (!validContent(m.content)) return fail('SLC_BAD_REQUEST', `messages.${i}.content: must be a string or an array of content blocks`, 'messages');
  }
  const system = o.system;
  if (system !== undefined && system !== null && !validContent(system)) {
    return fail('SLC_BAD_REQUEST', 'system: must be a string or an array of text blocks', 'system');
  }
  const streamField = o.stream;
  if (streamField !== undefined && streamField !== null && typeof streamField !== 'boolean') return fail('SLC_BAD_REQUEST', 'stream: must be a boolean', 'stream');
  const tools = o.tools;
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools)) return fail('SLC_BAD_REQUEST', 'tools: must be an array', 'tools');
    for (let i = 0; i < tools.length; i++) if (!isObject(tools[i])) return fail('SLC_BAD_REQUEST', `tools.${i}: must be an object`, 'tools');
  }
  const stream = streamField === true;

  const reservation = completionReservation(opts, model, mt, 'max_tokens', 1);
  if (!reservation.ok) return fail('SLC_BAD_REQUEST', reservation.message, reservation.param);
  const reserveCompletion = opts.instanceAsks === undefined
    ? reservation.tokens
    : mergedReservation(opts, opts.instanceAsks, model, mt, undefined, 1);

  const parts = opts.countPrompt !== false ? anthropicPromptParts(o) : undefined;
  const fieldKeys = opts.overrideKeys;
  const clientFields = takeOverrideFields(o, fieldKeys);
  return {
    ok: true, surface: 'anthropic-messages', obj: o, model, stream,
    // Anthropic streams always carry their usage: nothing is added and nothing stripped.
    clientWantsUsage: true,
    maxTokens: mt, n: 1, reserveCompletion, enc: 'o200k_base', parts,
    scale: Math.max(opts.promptScale ?? 1, ANTHROPIC_PROMPT_SCALE),
    fieldKeys: clientFields === undefined ? undefined : fieldKeys, clientFields,
  };
}

/** count_tokens produces no tokens: only the JSON is checked, and the body goes upstream with the model rewritten. */
export function parseCountTokens(body: Uint8Array, _opts: ParseOptions): ParsedCall | CallFailure {
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const o = parsed.obj;
  return {
    ok: true, surface: 'anthropic-count-tokens', obj: o, model: typeof o.model === 'string' ? o.model : undefined, stream: false,
    clientWantsUsage: false, maxTokens: undefined, n: 1, reserveCompletion: 0, enc: 'o200k_base', parts: undefined, scale: 1,
    fieldKeys: undefined, clientFields: undefined,
  };
}

/** Anthropic's error type for an HTTP status (its errors page). */
export function anthropicErrorType(status: number): string {
  switch (status) {
    case 400: return 'invalid_request_error';
    case 401: return 'authentication_error';
    case 402: return 'billing_error';
    case 403: return 'permission_error';
    case 404: return 'not_found_error';
    case 409: return 'conflict_error';
    case 413: return 'request_too_large';
    case 429: return 'rate_limit_error';
    case 504: return 'timeout_error';
    case 529: return 'overloaded_error';
    default: return status >= 500 ? 'api_error' : 'invalid_request_error';
  }
}

/** `{"type":"error","error":{"type","message"}}`, plus Sluice's stable code so clients can match on it. */
export function anthropicErrorBody(status: number, code: string, _type: string, message: string, _param: string | undefined): string {
  return JSON.stringify({ type: 'error', error: { type: anthropicErrorType(status), message, code } });
}

export const messagesSurface: SurfaceSpec = {
  id: 'anthropic-messages',
  metered: true,
  parse: parseMessages,
  errorBody: anthropicErrorBody,
};

export const countTokensSurface: SurfaceSpec = {
  id: 'anthropic-count-tokens',
  metered: false,
  parse: parseCountTokens,
  errorBody: anthropicErrorBody,
};
