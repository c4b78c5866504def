// Anthropic: the Messages API (…/v1/messages, streaming and not) and count_tokens, served natively to Anthropic
// clients, and to OpenAI chat clients through translation (translate-request.ts, translate-response.ts).
//
// Addressing: the endpoint defaults to https://api.anthropic.com. An endpoint that is scheme://host[:port]
// alone gets /v1/messages; one with a path is used as is for messages, and count_tokens is that path plus
// '/count_tokens'. Credentials come from the instance's auth.header, as APISIX's anthropic examples set them
// (`auth: {header: {x-api-key: …}}`); `anthropic-version: 2023-06-01` is sent unless auth.header sets its own.
import type { InstanceConfig } from '../../config/types.ts';
import { composeUpstreamBody } from '../../tokens/prepare.ts';
import { answersStream } from '../parse-common.ts';
import type {
  DecodedBody, FailureAnswer, PreparedCall, ProviderModule, ResolveIssue, ResolvedProvider, StreamCodec, StreamOptions,
  SurfaceId, UpstreamCall,
} from '../types.ts';
import { ANTHROPIC_PROMPT_SCALE } from './estimate.ts';
import { decodeNative, JSON_TYPE, NativeStreamCodec } from './native.ts';
import { countTokensSurface, messagesSurface } from './surface.ts';
import { translateRequest } from './translate-request.ts';
import { decodeTranslated, openAiErrorFrom, TranslatedStreamCodec } from './translate-response.ts';

export const PUBLIC_ENDPOINT = 'https://api.anthropic.com';
export const MESSAGES_PATH = '/v1/messages';
export const ANTHROPIC_VERSION = '2023-06-01';

const VERSION_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'anthropic-version': ANTHROPIC_VERSION });

/** `auth.query` as a query string to append ('' when none). */
function authQuery(inst: InstanceConfig, hasQuery: boolean): string {
  const keys = Object.keys(inst.auth_query);
  if (keys.length === 0) return '';
  const sp = new URLSearchParams();
  for (const k of keys) sp.set(k, inst.auth_query[k]!);
  return (hasQuery ? '&' : '?') + sp.toString();
}

/** Whether a 2xx status retries: 429 and every 5xx, Anthropic's 529 (overloaded) included. */
export function retryReason(status: number): 'http_429' | 'http_5xx' | undefined {
  return status === 429 ? 'http_429' : status >= 500 ? 'http_5xx' : undefined;
}

export class AnthropicDialect implements ResolvedProvider {
  readonly id = 'anthropic';
  readonly origin: string;
  /** Upstream paths, query (and auth.query) included. */
  readonly messagesPath: string;
  readonly countPath: string;
  readonly headers: Readonly<Record<string, string>> | undefined;

  constructor(origin: string, messagesPath: string, countPath: string, headers: Readonly<Record<string, string>> | undefined) {
    this.origin = origin;
    this.messagesPath = messagesPath;
    this.countPath = countPath;
    this.headers = headers;
  }

  mode(surface: SurfaceId): 'native' | 'translated' | undefined {
    switch (surface) {
      case 'anthropic-messages':
      case 'anthropic-count-tokens':
        return 'native';
      case 'openai-chat':
        return 'translated';
      default:
        return undefined;
    }
  }

  request(call: PreparedCall, model: string | undefined, members: string | undefined): UpstreamCall {
    switch (call.surface) {
      case 'anthropic-messages':
        return { path: this.messagesPath, headers: this.headers, body: composeUpstreamBody(model, call.tail, members) };
      case 'anthropic-count-tokens':
        // count_tokens refuses fields it does not take (max_tokens…): instance options stay out of it.
        return { path: this.countPath, headers: this.headers, body: composeUpstreamBody(model, call.tail) };
      case 'openai-chat': {
        // The tail is the client's JSON without its model; instance options are merged over it (they win).
        const obj = JSON.parse('{' + call.tail.toString('utf8')) as Record<string, unknown>;
        if (members !== undefined) Object.assign(obj, JSON.parse('{' + members + '}') as Record<string, unknown>);
        const body = translateRequest(obj, model ?? call.model, call.reserveCompletion);
        return { path: this.messagesPath, headers: this.headers, body: Buffer.from(body, 'utf8') };
      }
      default:
        throw new Error(`anthropic does not serve ${call.surface}`);
    }
  }

  isStream(call: PreparedCall, contentType: string): boolean {
    return answersStream(call.stream, contentType);
  }

  decode(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody {
    if (call.surface === 'openai-chat') return decodeTranslated(body, maxUsage, call.model);
    if (call.surface === 'anthropic-count-tokens') {
      return { body, contentType: JSON_TYPE, usage: undefined, rejected: undefined, text: '' };
    }
    return decodeNative(body, maxUsage);
  }

  stream(call: PreparedCall, opts: StreamOptions): StreamCodec {
    if (call.surface === 'openai-chat') return new TranslatedStreamCodec(opts, call.clientWantsUsage, call.model);
    return new NativeStreamCodec(opts);
  }

  failure(call: PreparedCall, status: number, body: Buffer): FailureAnswer {
    const retry = retryReason(status);
    if (call.surface !== 'openai-chat') return { retry, status, body, contentType: undefined };
    return { retry, status, body: Buffer.from(openAiErrorFrom(status, body), 'utf8'), contentType: JSON_TYPE };
  }
}

/** Messages and count_tokens paths from an endpoint URL (see the header comment). */
export function endpointPaths(url: URL): { messages: string; count: string } {
  const p = url.pathname;
  if (p === '' || p === '/') return { messages: MESSAGES_PATH, count: MESSAGES_PATH + '/count_tokens' };
  const base = p.endsWith('/') ? p.slice(0, -1) : p;
  return { messages: p, count: base + '/count_tokens' };
}

export function resolveAnthropic(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[] {
  let url: URL;
  try {
    url = new URL(inst.endpoint ?? PUBLIC_ENDPOINT);
  } catch {
    return [{ path: 'override.endpoint', message: 'must be an absolute http(s) URL' }];
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return [{ path: 'override.endpoint', message: 'must be an http or https URL' }];
  const q = url.search;
  const extra = authQuery(inst, q !== '');
  const { messages, count } = endpointPaths(url);
  const ownVersion = Object.keys(inst.auth_header).some((k) => k.toLowerCase() === 'anthropic-version');
  return new AnthropicDialect(url.origin, messages + q + extra, count + q + extra, ownVersion ? undefined : VERSION_HEADERS);
}

const anthropic: ProviderModule = {
  id: 'anthropic',
  names: ['anthropic'],
  surfaces: [messagesSurface, countTokensSurface],
  promptScale: ANTHROPIC_PROMPT_SCALE,
  resolve: resolveAnthropic,
};

export default anthropic;
