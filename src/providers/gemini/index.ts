// The Gemini provider (APISIX `ai-proxy` name `gemini`): Google's Generative Language API. It serves its own
// surface natively (generateContent / streamGenerateContent, SSE or JSON array) and OpenAI chat/completions
// clients through translation. Addressing: an endpoint given as scheme://host[:port] gets
// `/v1beta/models/<model>:<method>`; a path with `{model}` has it substituted (and its method swapped per call);
// a path ending in `:generateContent` / `:streamGenerateContent` keeps its model and swaps its method; any other
// path is an API base (`…/v1beta`) that `/models/<model>:<method>` is appended to. The endpoint's query is kept,
// `auth.query` (`key`) is added to it; `auth.header` (`x-goog-api-key`) is added by the pipeline, as for every
// provider. Neither is ever logged.
import type { InstanceConfig } from '../../config/types.ts';
import { composeUpstreamBody } from '../../tokens/prepare.ts';
import { isRejection, textToVerify, zeroCompletionText, type Usage, type UsageRejectReason } from '../../streaming/usage.ts';
import { answerTailUsage, parseAnswer, untranslatable } from '../parse-common.ts';
import type {
  DecodedBody, FailureAnswer, PreparedCall, ProviderModule, ResolveIssue, ResolvedProvider, StreamCodec, StreamOptions,
  SurfaceId, UpstreamCall,
} from '../types.ts';
import { PROMPT_SCALE } from './estimate.ts';
import { GeminiStream } from './stream.ts';
import { countTokensSurface, generateSurface, wantsSse } from './surface.ts';
import { translateRequest } from './translate-request.ts';
import { decodeTranslated, translateError, TranslatedStream } from './translate-response.ts';
import { geminiUsage, responseText } from './usage.ts';

const USAGE_METADATA_KEY = Buffer.from('"usageMetadata"');

export const PUBLIC_ENDPOINT = 'https://generativelanguage.googleapis.com';
/** Sent when neither the instance nor an OpenAI client names a model (the path must hold one). */
export const DEFAULT_MODEL = 'gemini-2.5-flash';

const GENERATE = ':generateContent';
const STREAM = ':streamGenerateContent';
const COUNT = ':countTokens';
const MODEL_MARK = /\{model\}|%7Bmodel%7D/i;

/** Builds the upstream path of a call from the endpoint's path and the call's method (`:generateContent`…). */
export interface PathTemplate {
  (model: string, method: string): string;
}

function method(stream: boolean): string {
  return stream ? STREAM : GENERATE;
}

/** `models/gemini-x` and `gemini-x` name the same model; the name goes in a path segment. */
function modelSegment(model: string): string {
  const m = model.startsWith('models/') ? model.slice(7) : model;
  const seg = encodeURIComponent(m).replace(/%40/g, '@');
  // '.' and '..' stay dots under encodeURIComponent: in a `{model}` template they would be dot-segments that a
  // normalising upstream or proxy resolves to another path.
  return seg === '.' || seg === '..' ? seg.replace(/\./g, '%2E') : seg;
}

export function pathTemplate(pathname: string): PathTemplate {
  if (pathname === '/' || pathname === '') return (model, m) => '/v1beta/models/' + modelSegment(model) + m;
  let p = pathname;
  let withMethod = false;
  if (p.endsWith(STREAM)) { p = p.slice(0, -STREAM.length); withMethod = true; }
  else if (p.endsWith(GENERATE)) { p = p.slice(0, -GENERATE.length); withMethod = true; }
  const mark = MODEL_MARK.exec(p);
  if (mark !== null) {
    const before = p.slice(0, mark.index);
    const after = p.slice(mark.index + mark[0].length);
    return (model, m) => before + modelSegment(model) + after + m;
  }
  // The model is fixed in the endpoint itself.
  if (withMethod) return (_model, m) => p + m;
  const base = p.endsWith('/') ? p.slice(0, -1) : p;
  const models = base.endsWith('/models') ? base + '/' : base + '/models/';
  return (model, m) => models + modelSegment(model) + m;
}

/** The model an endpoint ending in `…/models/<model>:generateContent` names (every call goes there); else undefined
 *  (a `{model}` template, or an endpoint whose last segment is no model: a tuned model's `…/endpoints/<id>`). */
function fixedModelOf(pathname: string): string | undefined {
  let p = pathname;
  if (p.endsWith(STREAM)) p = p.slice(0, -STREAM.length);
  else if (p.endsWith(GENERATE)) p = p.slice(0, -GENERATE.length);
  else return undefined;
  const slash = p.lastIndexOf('/');
  if (MODEL_MARK.test(p) || !p.slice(0, slash + 1).endsWith('/models/')) return undefined;
  const seg = p.slice(slash + 1);
  let model = seg;
  try { model = decodeURIComponent(seg); } catch { /* kept as written */ }
  return model === '' ? undefined : model;
}

/** The endpoint's own query plus auth.query, as '?a=b&key=…' ('' when none); alt=sse is added per call. */
function baseQuery(url: URL, inst: InstanceConfig): string {
  const sp = new URLSearchParams(url.search);
  for (const k of Object.keys(inst.auth_query)) sp.set(k, inst.auth_query[k]!);
  const q = sp.toString();
  return q === '' ? '' : '?' + q;
}

function withAltSse(query: string): string {
  if (/(?:^|[?&])alt=sse(?:&|$)/.test(query)) return query;
  return query === '' ? '?alt=sse' : query + '&alt=sse';
}

/** Whether the client of a native call reads SSE (absent query: the SDKs' default, SSE). */
function clientSse(call: PreparedCall): boolean {
  return call.query === undefined ? true : wantsSse(call.query);
}

export class GeminiProvider implements ResolvedProvider {
  readonly id = 'gemini';
  readonly origin: string;
  private readonly template: PathTemplate;
  private readonly query: string;

  constructor(origin: string, template: PathTemplate, query: string, private readonly fixedModel?: string) {
    this.origin = origin;
    this.template = template;
    this.query = query;
  }

  quotaModel(_surface: SurfaceId, requested: string | undefined): string | undefined {
    return this.fixedModel ?? (requested?.startsWith('models/') === true ? requested.slice(7) : requested);
  }

  mode(surface: SurfaceId): 'native' | 'translated' | undefined {
    if (surface === 'gemini-generate' || surface === 'gemini-count-tokens') return 'native';
    if (surface === 'openai-chat') return 'translated';
    return undefined;
  }

  /** The upstream path (query included) of a call to `model`. */
  pathFor(model: string, stream: boolean, sse: boolean): string {
    const path = this.template(model, method(stream));
    return path + (stream && sse ? withAltSse(this.query) : this.query);
  }

  request(call: PreparedCall, model: string | undefined, members: string | undefined): UpstreamCall {
    const m = model ?? call.model ?? DEFAULT_MODEL;
    // countTokens refuses fields it does not take (generationConfig…): instance options stay out of it.
    if (call.surface === 'gemini-count-tokens') {
      return { path: this.template(m, COUNT) + this.query, headers: undefined, body: composeUpstreamBody(undefined, call.tail, undefined) };
    }
    if (call.surface === 'gemini-generate') {
      // The model is in the path: the client's body goes as it came (plus the instance's options).
      return { path: this.pathFor(m, call.stream, clientSse(call)), headers: undefined, body: composeUpstreamBody(undefined, call.tail, members) };
    }
    const req = JSON.parse(composeUpstreamBody(undefined, call.tail, members).toString('utf8')) as Record<string, unknown>;
    const body = Buffer.from(JSON.stringify(translateRequest(req)), 'utf8');
    return { path: this.pathFor(m, call.stream, true), headers: undefined, body };
  }

  isStream(call: PreparedCall, _contentType: string): boolean {
    // A Gemini stream without alt=sse is application/json: the call, not the content type, says it streams.
    return call.stream;
  }

  decode(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody {
    if (call.surface === 'gemini-count-tokens') return { body, contentType: undefined, usage: undefined, rejected: undefined, text: '' };
    if (call.surface !== 'gemini-generate') return decodeTranslated(call, body, maxUsage);
    return decodeGenerate(body, maxUsage);
  }

  stream(call: PreparedCall, opts: StreamOptions): StreamCodec {
    if (call.surface === 'gemini-generate') return new GeminiStream(clientSse(call), opts);
    return new TranslatedStream(call, opts);
  }

  failure(call: PreparedCall, status: number, body: Buffer): FailureAnswer {
    const retry = status === 429 ? 'http_429' : status >= 500 ? 'http_5xx' : undefined;
    if (call.surface !== 'openai-chat') return { retry, status, body, contentType: undefined };
    return { retry, status, body: translateError(status, body), contentType: 'application/json' };
  }
}

const QUOTED_CANDIDATES = Buffer.from('"candidates"');

/** A buffered generateContent answer, passed through: its usageMetadata, or its text to count; a 2xx no client
 *  could use (not a JSON object, an error object, neither candidates nor a prompt block) is refused (502). */
function decodeGenerate(body: Buffer, maxUsage: number): DecodedBody {
  const fromTail = answerTailUsage(body, QUOTED_CANDIDATES, USAGE_METADATA_KEY, geminiUsage, maxUsage);
  if (fromTail !== undefined) return { body, contentType: undefined, usage: fromTail, rejected: undefined, text: '' };
  const json = parseAnswer(body);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return untranslatable(false, undefined);
  const o = json as Record<string, unknown>;
  const err = o.error;
  if (typeof err === 'object' && err !== null) return untranslatable(true, (err as Record<string, unknown>).message);
  // A prompt the safety filters blocked has no candidates, only promptFeedback: an answer all the same.
  if (!Array.isArray(o.candidates) && (typeof o.promptFeedback !== 'object' || o.promptFeedback === null)) {
    return { ...untranslatable(false, undefined), unusable: 'the upstream answer has no candidates array' };
  }
  let usage: Usage | undefined;
  let rejected: UsageRejectReason | undefined;
  const u = geminiUsage(o.usageMetadata, maxUsage);
  if (isRejection(u)) rejected = u.rejected; else usage = u;
  const all = (): string => { let t = ''; responseText(json, (x) => { t += x; }); return t; };
  const zero = zeroCompletionText(usage, all);
  if (zero !== undefined) return { body, contentType: undefined, usage, rejected: 'zero_completion', text: zero };
  if (usage === undefined) return { body, contentType: undefined, usage, rejected, text: all() };
  const verifyText = textToVerify(usage.completion_tokens, body.length, all);
  if (verifyText !== undefined) return { body, contentType: undefined, usage, rejected, text: '', verifyText };
  return { body, contentType: undefined, usage, rejected, text: '' };
}

function resolve(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[] {
  let url: URL;
  try {
    url = new URL(inst.endpoint ?? PUBLIC_ENDPOINT);
  } catch {
    return [{ path: 'override.endpoint', message: 'must be an absolute http(s) URL' }];
  }
  return new GeminiProvider(url.origin, pathTemplate(url.pathname), baseQuery(url, inst), fixedModelOf(url.pathname));
}

const gemini: ProviderModule = {
  id: 'gemini',
  names: ['gemini'],
  surfaces: [generateSurface, countTokensSurface],
  promptScale: PROMPT_SCALE,
  resolve,
};

export default gemini;
