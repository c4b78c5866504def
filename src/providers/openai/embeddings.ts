// The OpenAI embeddings surface (POST …/embeddings): every input is prompt, nothing is generated. The
// reservation is the prompt count alone (completion 0): each string counted with the real tokenizer, each
// token-id array by its length. The answer's usage is {prompt_tokens, total_tokens}; a body without usage is
// charged that same prompt count (there is no generated text to count). Answers can be tens of megabytes
// (2048 inputs × 3072 floats): a large body is scanned for its top-level `usage` (streaming/json-scan.ts)
// instead of being JSON.parsed whole.
import type { PromptParts } from '../../tokens/count.ts';
import { encodingForModel } from '../../tokens/encoding.ts';
import { isJsonObject, positiveInt, takeOverrideFields } from '../../tokens/prepare.ts';
import { JsonScanner, SCAN_RAW, SCAN_SKIP, SCAN_SKIP_TREE, type ScanPath } from '../../streaming/json-scan.ts';
import { isRejection, usageFromCounts, type Usage, type UsageRejection, type UsageRejectReason } from '../../streaming/usage.ts';
import type { CallFailure, DecodedBody, ParseOptions, ParsedCall, PreparedCall, StreamCodec, StreamOptions, SurfaceSpec } from '../types.ts';
import { fail, opensObject, parseBodyObject, promptScale, untranslatable, unusableNative } from '../parse-common.ts';
import { openAiErrorBody } from './chat.ts';

/** OpenAI's limit on the number of inputs in one request. */
export const MAX_EMBEDDING_INPUTS = 2048;
/** Answers up to this size are JSON.parsed; larger ones are scanned for their usage. */
const PARSE_BODY_BYTES = 64 * 1024;

function isTokenId(v: unknown): boolean {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** What to count: strings to tokenize, token-id arrays by length; or why the input is not valid. */
export function embeddingsPromptParts(input: unknown): PromptParts | string {
  const parts: PromptParts = { fixed: 0, texts: [] };
  if (typeof input === 'string') {
    if (input.length === 0) return 'input must not be an empty string';
    parts.texts.push(input);
    return parts;
  }
  if (!Array.isArray(input)) return 'input must be a string, an array of strings, an array of token ids, or an array of token-id arrays';
  if (input.length === 0) return 'input must not be an empty array';
  if (input.length > MAX_EMBEDDING_INPUTS) return `input must have at most ${MAX_EMBEDDING_INPUTS} items, whereas you provided ${input.length}`;
  const first: unknown = input[0];
  if (typeof first === 'number') {
    // One input given as token ids.
    for (const id of input) if (!isTokenId(id)) return 'input token ids must be non-negative integers';
    parts.fixed = input.length;
    return parts;
  }
  for (let i = 0; i < input.length; i++) {
    const v: unknown = input[i];
    if (typeof first === 'string') {
      if (typeof v !== 'string') return `input[${i}] must be a string like the other inputs`;
      if (v.length === 0) return `input[${i}] must not be an empty string`;
      parts.texts.push(v);
    } else {
      if (!Array.isArray(v)) return `input[${i}] must be an array of token ids like the other inputs`;
      if (v.length === 0) return `input[${i}] must not be empty`;
      for (const id of v) if (!isTokenId(id)) return `input[${i}] token ids must be non-negative integers`;
      parts.fixed += v.length;
    }
  }
  return parts;
}

function parseEmbeddings(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const obj = parsed.obj;
  const model = obj.model;
  if (model !== undefined && typeof model !== 'string') return fail('SLC_BAD_REQUEST', 'model must be a string', 'model');
  if (obj.input === undefined || obj.input === null) return fail('SLC_BAD_REQUEST', 'input is required', 'input');
  const parts = embeddingsPromptParts(obj.input);
  if (typeof parts === 'string') return fail('SLC_BAD_REQUEST', parts, 'input');
  const format = obj.encoding_format;
  if (format !== undefined && format !== null && format !== 'float' && format !== 'base64') {
    return fail('SLC_BAD_REQUEST', "encoding_format must be 'float' or 'base64'", 'encoding_format');
  }
  const dimensions = positiveInt(obj, 'dimensions');
  if (typeof dimensions === 'string') return fail('SLC_BAD_REQUEST', dimensions, 'dimensions');
  if (obj.user !== undefined && obj.user !== null && typeof obj.user !== 'string') return fail('SLC_BAD_REQUEST', 'user must be a string', 'user');

  const fieldKeys = opts.overrideKeys;
  const clientFields = takeOverrideFields(obj, fieldKeys);
  return {
    ok: true, surface: opts.surface, obj, model,
    stream: false, clientWantsUsage: false, maxTokens: undefined, n: 1,
    reserveCompletion: 0,
    enc: encodingForModel(model),
    parts: opts.countPrompt !== false ? parts : undefined,
    scale: promptScale(opts),
    fieldKeys: clientFields === undefined ? undefined : fieldKeys, clientFields,
  };
}

export const embeddingsSurface: SurfaceSpec = {
  id: 'openai-embeddings',
  metered: true,
  parse: parseEmbeddings,
  errorBody: openAiErrorBody,
};

/** An embeddings usage object → Usage: prompt only (completion 0; a chat-style completion count is believed). */
export function embeddingsUsage(u: unknown, maxUsage: number): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (!isJsonObject(u)) return { rejected: 'malformed' };
  if (u.prompt_tokens === undefined && u.total_tokens === undefined) return undefined;
  // Some servers report only total_tokens: for embeddings it is the prompt.
  const prompt = u.prompt_tokens ?? u.total_tokens;
  return usageFromCounts({ prompt, completion: u.completion_tokens ?? 0, total: u.total_tokens }, u, maxUsage);
}

/** The top-level `usage` of a large body, scanned without building the vectors; and whether it has `data` or an
 *  `error` object (the checks unusableNative makes on a parsed one). */
class UsageScan {
  json: string | undefined | null = null;
  sawData = false;
  error: string | undefined | null = null;
  value(path: ScanPath): number {
    if (path.length === 0) return SCAN_SKIP;
    if (path.length !== 1) return SCAN_SKIP_TREE;
    if (path[0] === 'data') this.sawData = true;
    return path[0] === 'usage' || path[0] === 'error' ? SCAN_RAW : SCAN_SKIP_TREE;
  }
  raw(path: ScanPath, json: string | undefined): void {
    if (path[0] === 'error') this.error = json;
    else this.json = json;
  }
  piece(): void { /* no text is asked for */ }
}

/** The body's `usage` member; or, for an answer no client could use, why (unusableNative). */
function bodyUsage(body: Buffer): { readonly raw: unknown } | DecodedBody {
  if (body.length <= PARSE_BODY_BYTES) {
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      json = undefined;
    }
    return unusableNative(json, 'data') ?? { raw: (json as { usage?: unknown }).usage };
  }
  // Too large to parse: an object at least starts with '{' (what a page or a bare vector list does not).
  if (!opensObject(body)) return untranslatable(false, undefined);
  const sink = new UsageScan();
  const scanner = new JsonScanner(sink, PARSE_BODY_BYTES);
  scanner.push(body);
  scanner.end();
  // Not JSON to its end, or padding around an error or around nothing: the same answers as for a parsed body.
  if (scanner.broken || !scanner.done) return untranslatable(false, undefined);
  if (!sink.sawData) {
    const e = parsed(sink.error);
    if (typeof e === 'object' && e !== null && !Array.isArray(e)) return untranslatable(true, (e as Record<string, unknown>).message);
    return { ...untranslatable(false, undefined), unusable: 'the upstream answer has no data array' };
  }
  if (sink.json === null) return { raw: undefined };
  if (sink.json === undefined) return { raw: 'too large' };
  return { raw: parsed(sink.json) };
}

function parsed(json: string | undefined | null): unknown {
  if (typeof json !== 'string') return undefined;
  try {
    return JSON.parse(json) as unknown;
  } catch {
    return undefined;
  }
}

/** A buffered 2xx embeddings answer: relayed as it came; its usage (no text: the prompt count is the charge). */
export function decodeEmbeddings(_call: PreparedCall | undefined, body: Buffer, maxUsage: number): DecodedBody {
  const read = bodyUsage(body);
  if (!('raw' in read)) return read;
  const u = embeddingsUsage(read.raw, maxUsage);
  let usage: Usage | undefined;
  let rejected: UsageRejectReason | undefined;
  if (isRejection(u)) rejected = u.rejected; else usage = u;
  return { body, contentType: undefined, usage, rejected, text: '' };
}

/**
 * Embeddings never stream; should an upstream answer with an event stream anyway, its bytes pass through
 * and the call is charged its prompt count (no usage, no text).
 */
class EmbeddingsPassThrough implements StreamCodec {
  readonly contentType = 'text/event-stream';
  readonly usage = undefined;
  readonly usageRejected = undefined;
  readonly text = '';
  readonly countMargin = 0;
  readonly textAfterUsage = false;
  push(chunk: Buffer): Buffer | undefined { return chunk.length > 0 ? chunk : undefined; }
  end(): Buffer | undefined { return undefined; }
  takeCountable(): string | undefined { return undefined; }
}

export function streamEmbeddings(_call: PreparedCall | undefined, _opts: StreamOptions): StreamCodec {
  return new EmbeddingsPassThrough();
}
