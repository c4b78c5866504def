// The OpenAI wire format, and the providers that speak it as is: openai, deepseek, aimlapi, openrouter and
// openai-compatible (any endpoint that takes OpenAI requests). Every surface here is native: the client's body
// goes upstream with only the model (and instance options) written in, and the answer comes back as it was.
//
// SURFACES is the per-surface table: one entry per OpenAI API this module serves, in the shape of
// OpenAiSurface below —
//   spec    the client-facing SurfaceSpec (request parser, error format), registered with providers/registry.ts
//   suffix  the path after the API base (`/v1` on api.openai.com), e.g. '/chat/completions'
//   decode  a buffered 2xx answer → its usage (or text to count)
//   stream  a 2xx SSE answer → a StreamCodec that meters it on its way to the client
// Adding an OpenAI surface is one entry here, written in its own file (responses.ts, embeddings.ts).
// azure-openai reuses this table with its own addressing (providers/azure-openai/).
import type { InstanceConfig } from '../../config/types.ts';
import { composeUpstreamBody } from '../../tokens/prepare.ts';
import { answersStream } from '../parse-common.ts';
import type {
  DecodedBody, FailureAnswer, PreparedCall, ProviderModule, ResolveIssue, ResolvedProvider, StreamCodec, StreamOptions,
  SurfaceId, SurfaceSpec, UpstreamCall,
} from '../types.ts';
import { chatSurface, completionsSurface, decodeChat, openAiFailure, streamChat } from './chat.ts';
import { decodeResponses, responsesSurface, streamResponses } from './responses.ts';
import { decodeEmbeddings, embeddingsSurface, streamEmbeddings } from './embeddings.ts';

export interface OpenAiSurface {
  readonly spec: SurfaceSpec;
  readonly suffix: string;
  decode(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody;
  stream(call: PreparedCall, opts: StreamOptions): StreamCodec;
}

export const SURFACES: readonly OpenAiSurface[] = [
  { spec: chatSurface, suffix: '/chat/completions', decode: decodeChat, stream: streamChat },
  { spec: completionsSurface, suffix: '/completions', decode: decodeChat, stream: streamChat },
  { spec: responsesSurface, suffix: '/responses', decode: decodeResponses, stream: streamResponses },
  { spec: embeddingsSurface, suffix: '/embeddings', decode: decodeEmbeddings, stream: streamEmbeddings },
];

/** Longest suffix first: '/chat/completions' must be tried before '/completions'. */
export function bySuffixLength(): OpenAiSurface[] {
  return [...SURFACES].sort((a, b) => b.suffix.length - a.suffix.length);
}

/** Public API bases, as APISIX `ai-proxy` uses them; openai-compatible has none (override.endpoint is required). */
export const PUBLIC_BASE: Readonly<Record<string, string>> = {
  openai: 'https://api.openai.com/v1',
  deepseek: 'https://api.deepseek.com',
  aimlapi: 'https://api.aimlapi.com/v1',
  openrouter: 'https://openrouter.ai/api/v1',
};

/** Where one surface goes for one instance: the upstream path (query included) and the table entry. */
export interface SurfaceRoute {
  readonly entry: OpenAiSurface;
  readonly path: string;
}

/** `auth.query` as a query string to append ('' when none). */
export function authQuery(inst: InstanceConfig, hasQuery: boolean): string {
  const keys = Object.keys(inst.auth_query);
  if (keys.length === 0) return '';
  const sp = new URLSearchParams();
  for (const k of keys) sp.set(k, inst.auth_query[k]!);
  return (hasQuery ? '&' : '?') + sp.toString();
}

/** An instance speaking the OpenAI wire format natively, on the surfaces `routes` maps. */
export class OpenAiWire implements ResolvedProvider {
  readonly id: string;
  readonly origin: string;
  private readonly routes: ReadonlyMap<SurfaceId, SurfaceRoute>;

  constructor(id: string, origin: string, routes: ReadonlyMap<SurfaceId, SurfaceRoute>) {
    this.id = id;
    this.origin = origin;
    this.routes = routes;
  }

  /** The upstream path of a surface (tests and docs read it). */
  pathOf(surface: SurfaceId): string | undefined {
    return this.routes.get(surface)?.path;
  }

  mode(surface: SurfaceId): 'native' | undefined {
    return this.routes.has(surface) ? 'native' : undefined;
  }

  request(call: PreparedCall, model: string | undefined, members: string | undefined): UpstreamCall {
    return { path: this.route(call).path, headers: undefined, body: composeUpstreamBody(model, call.tail, members) };
  }

  isStream(call: PreparedCall, contentType: string): boolean {
    return answersStream(call.stream, contentType);
  }

  decode(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody {
    return this.route(call).entry.decode(call, body, maxUsage);
  }

  stream(call: PreparedCall, opts: StreamOptions): StreamCodec {
    return this.route(call).entry.stream(call, opts);
  }

  failure(call: PreparedCall, status: number, body: Buffer): FailureAnswer {
    return openAiFailure(call, status, body);
  }

  private route(call: PreparedCall): SurfaceRoute {
    const r = this.routes.get(call.surface);
    // The gateway asks mode() first: a call reaching here on another surface is a pipeline bug.
    if (r === undefined) throw new Error(`${this.id} does not serve ${call.surface}`);
    return r;
  }
}

/**
 * The upstream path of every surface from an endpoint URL: scheme://host alone gets '/v1' + suffix; a path
 * ending in a known suffix is the API base plus that suffix, and the other surfaces swap it; any other path is
 * used as given for every surface (APISIX: the endpoint is the full URL).
 */
function routesFor(url: URL, inst: InstanceConfig): Map<SurfaceId, SurfaceRoute> {
  const p = url.pathname;
  const q = url.search;
  const extra = authQuery(inst, q !== '');
  let base: string | undefined;
  if (p === '/') base = '/v1';
  else for (const s of bySuffixLength()) if (p.endsWith(s.suffix)) { base = p.slice(0, -s.suffix.length); break; }
  const routes = new Map<SurfaceId, SurfaceRoute>();
  for (const entry of SURFACES) routes.set(entry.spec.id, { entry, path: (base === undefined ? p : base + entry.suffix) + q + extra });
  return routes;
}

function resolve(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[] {
  let raw = inst.endpoint;
  if (raw === undefined) {
    const base = PUBLIC_BASE[inst.provider];
    if (base === undefined) return [{ path: 'override.endpoint', message: `is required for provider ${inst.provider}` }];
    raw = base + '/chat/completions';
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return [{ path: 'override.endpoint', message: 'must be an absolute http(s) URL' }];
  }
  return new OpenAiWire('openai', url.origin, routesFor(url, inst));
}

const openai: ProviderModule = {
  id: 'openai',
  names: ['openai', 'deepseek', 'openai-compatible', 'aimlapi', 'openrouter'],
  surfaces: SURFACES.map((s) => s.spec),
  promptScale: 1,
  resolve,
};

export default openai;
