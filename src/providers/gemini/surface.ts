// The Gemini surfaces: POST …/models/<model>:generateContent and …:streamGenerateContent (SSE with `alt=sse` in
// the query, one JSON array without it), metered, and …:countTokens, passed through. The model and the streaming mode are in the path,
// not the body, so the body goes upstream as the client sent it (the tail has no model to take out).
// Errors are in Google's shape: {"error":{"code":400,"message":"…","status":"INVALID_ARGUMENT"}}.
import { completionReservation } from '../../tokens/limits.ts';
import { isJsonObject, takeOverrideFields } from '../../tokens/prepare.ts';
import { fail, parseBodyObject } from '../parse-common.ts';
import type { CallFailure, ParseOptions, ParsedCall, SurfaceSpec } from '../types.ts';
import { geminiPromptParts, PROMPT_SCALE } from './estimate.ts';

/** Gemini accepts 1..8 candidates. */
export const MAX_CANDIDATES = 8;


export interface GeminiPath {
  readonly model: string;
  readonly stream: boolean;
}

/** `…/models/<model>:generateContent` → the model and whether it streams; undefined for any other path.
 *  `countTokens`: `…/models/<model>:countTokens` instead (never a stream). */
export function parseGeminiPath(path: string, countTokens = false): GeminiPath | undefined {
  const colon = path.lastIndexOf(':');
  if (colon === -1) return undefined;
  const method = path.slice(colon + 1);
  const stream = method === 'streamGenerateContent';
  if (countTokens ? method !== 'countTokens' : !stream && method !== 'generateContent') return undefined;
  const slash = path.lastIndexOf('/', colon);
  const raw = path.slice(slash + 1, colon);
  if (raw === '' || path.slice(0, slash + 1).endsWith('/models/') === false) return undefined;
  // The segment is percent-encoded; the model is its text (encoded again, once, when it goes upstream).
  let model = raw;
  if (raw.includes('%')) {
    try { model = decodeURIComponent(raw); } catch { return undefined; }
  }
  // `models/gemini-x` (an encoded slash) and `gemini-x` are one model, as upstream: one name for quotas and keys.
  if (model.startsWith('models/')) model = model.slice(7);
  if (model === '') return undefined;
  return { model, stream };
}

/** Whether a raw query string asks for SSE framing (`alt=sse`). */
export function wantsSse(query: string | undefined): boolean {
  if (query === undefined || query === '') return false;
  for (const kv of (query.startsWith('?') ? query.slice(1) : query).split('&')) {
    if (kv === 'alt=sse') return true;
  }
  return false;
}

/** A member read under its proto-JSON name or its original snake_case one (Google's API accepts both). */
function member(obj: Record<string, unknown>, camel: string, snake: string): unknown {
  const v = obj[camel];
  return v === undefined ? obj[snake] : v;
}

function checkContent(c: unknown, param: string): string | undefined {
  if (!isJsonObject(c)) return `${param} must be an object`;
  if (c.role !== undefined && c.role !== null && typeof c.role !== 'string') return `${param}.role must be a string`;
  const parts = c.parts;
  if (!Array.isArray(parts)) return `${param}.parts must be an array`;
  if (parts.length === 0) return `${param}.parts must not be empty`;
  for (let j = 0; j < parts.length; j++) if (!isJsonObject(parts[j])) return `${param}.parts[${j}] must be an object`;
  return undefined;
}

export function parseGenerate(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const where = parseGeminiPath(opts.path);
  if (where === undefined) return fail('SLC_BAD_REQUEST', 'the path must end in /models/<model>:generateContent or :streamGenerateContent');
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const obj = parsed.obj;

  const contents = obj.contents;
  if (!Array.isArray(contents)) return fail('SLC_BAD_REQUEST', 'contents must be an array', 'contents');
  if (contents.length === 0) return fail('SLC_BAD_REQUEST', 'contents must not be empty', 'contents');
  for (let i = 0; i < contents.length; i++) {
    const bad = checkContent(contents[i], `contents[${i}]`);
    if (bad !== undefined) return fail('SLC_BAD_REQUEST', bad, 'contents');
  }
  const system = member(obj, 'systemInstruction', 'system_instruction');
  if (system !== undefined && system !== null) {
    const bad = checkContent(system, 'systemInstruction');
    if (bad !== undefined) return fail('SLC_BAD_REQUEST', bad, 'systemInstruction');
  }
  const tools = obj.tools;
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools)) return fail('SLC_BAD_REQUEST', 'tools must be an array', 'tools');
    for (let i = 0; i < tools.length; i++) if (!isJsonObject(tools[i])) return fail('SLC_BAD_REQUEST', `tools[${i}] must be an object`, 'tools');
  }

  let maxTokens: number | undefined;
  let n = 1;
  const config = member(obj, 'generationConfig', 'generation_config');
  if (config !== undefined && config !== null) {
    if (!isJsonObject(config)) return fail('SLC_BAD_REQUEST', 'generationConfig must be an object', 'generationConfig');
    const mot = member(config, 'maxOutputTokens', 'max_output_tokens');
    if (mot !== undefined && mot !== null) {
      if (typeof mot !== 'number' || !Number.isSafeInteger(mot) || mot < 1) {
        return fail('SLC_BAD_REQUEST', 'generationConfig.maxOutputTokens must be a positive integer', 'generationConfig.maxOutputTokens');
      }
      maxTokens = mot;
    }
    const cc = member(config, 'candidateCount', 'candidate_count');
    if (cc !== undefined && cc !== null) {
      if (typeof cc !== 'number' || !Number.isInteger(cc) || cc < 1 || cc > MAX_CANDIDATES) {
        return fail('SLC_BAD_REQUEST', `generationConfig.candidateCount must be an integer from 1 to ${MAX_CANDIDATES}`, 'generationConfig.candidateCount');
      }
      n = cc;
    }
  }
  const reservation = completionReservation(opts, where.model, maxTokens, 'max_tokens', n);
  if (!reservation.ok) {
    return fail('SLC_BAD_REQUEST', reservation.message.replaceAll('max_tokens', 'generationConfig.maxOutputTokens'), 'generationConfig.maxOutputTokens');
  }

  const parts = opts.countPrompt !== false ? geminiPromptParts(contents, system, tools) : undefined;
  const clientFields = takeOverrideFields(obj, opts.overrideKeys);
  // Only Gemini instances serve this surface: its scale always applies, whatever the route's maximum says.
  const scale = Math.max(PROMPT_SCALE, opts.promptScale ?? 1);
  return {
    ok: true, surface: opts.surface, obj, model: where.model, stream: where.stream,
    // Gemini streams always carry usageMetadata: there is nothing to strip.
    clientWantsUsage: true,
    maxTokens, n, reserveCompletion: reservation.tokens, enc: 'o200k_base', parts, scale,
    fieldKeys: clientFields === undefined ? undefined : opts.overrideKeys, clientFields,
    // A stream answers in the framing the query asked for (alt=sse or a JSON array): the upstream is asked the same.
    ...(where.stream ? { query: opts.query } : {}),
  };
}

/** google.rpc.Code names by HTTP status (https://cloud.google.com/apis/design/errors). */
export function rpcStatus(status: number): string {
  switch (status) {
    case 400: return 'INVALID_ARGUMENT';
    case 401: return 'UNAUTHENTICATED';
    case 403: return 'PERMISSION_DENIED';
    case 404: return 'NOT_FOUND';
    case 409: return 'ABORTED';
    case 413: return 'INVALID_ARGUMENT';
    case 429: return 'RESOURCE_EXHAUSTED';
    case 499: return 'CANCELLED';
    case 501: return 'UNIMPLEMENTED';
    case 503: return 'UNAVAILABLE';
    case 504: return 'DEADLINE_EXCEEDED';
    default: return status >= 500 ? 'INTERNAL' : status >= 400 ? 'FAILED_PRECONDITION' : 'UNKNOWN';
  }
}

/**
 * Google's error shape; Sluice's stable code travels as a google.rpc.ErrorInfo `reason` (domain sluice), the
 * field at fault as its metadata.
 */
export function geminiErrorBody(status: number, code: string, _type: string, message: string, param: string | undefined): string {
  const info: Record<string, unknown> = { '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: code, domain: 'sluice' };
  if (param !== undefined) info.metadata = { param };
  return JSON.stringify({ error: { code: status, message, status: rpcStatus(status), details: [info] } });
}

/** countTokens produces no tokens: only the path and the JSON are checked; the body goes upstream as it came. */
export function parseCountTokens(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const where = parseGeminiPath(opts.path, true);
  if (where === undefined) return fail('SLC_BAD_REQUEST', 'the path must end in /models/<model>:countTokens');
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  return {
    ok: true, surface: 'gemini-count-tokens', obj: parsed.obj, model: where.model, stream: false,
    clientWantsUsage: false, maxTokens: undefined, n: 1, reserveCompletion: 0, enc: 'o200k_base', parts: undefined, scale: 1,
    fieldKeys: undefined, clientFields: undefined,
  };
}

export const countTokensSurface: SurfaceSpec = {
  id: 'gemini-count-tokens',
  metered: false,
  parse: parseCountTokens,
  errorBody: geminiErrorBody,
};

export const generateSurface: SurfaceSpec = {
  id: 'gemini-generate',
  metered: true,
  parse: parseGenerate,
  errorBody: geminiErrorBody,
};
