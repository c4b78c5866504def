// Which client surface a request path is, which surface parses it, and which provider module serves a config
// `provider` name. Modules are registered by the static list below: one import of each provider folder's
// index.ts default export and one entry in MODULES. A surface whose module is not registered has no spec: the
// gateway answers 400 for it (no instance of any route can serve it), never crashes.
import type { InstanceConfig } from '../config/types.ts';
import { registerProviderCatalogue } from '../config/provider-catalogue.ts';
import type { ProviderModule, ResolveIssue, ResolvedProvider, SurfaceId, SurfaceSpec } from './types.ts';
import openai from './openai/index.ts';
import azureOpenai from './azure-openai/index.ts';
import anthropic from './anthropic/index.ts';
import gemini from './gemini/index.ts';

// ─── Registered provider modules: add `import x from './x/index.ts';` above and `x,` here. ───
const MODULES: readonly ProviderModule[] = [
  openai,
  azureOpenai,
  anthropic,
  gemini,
];
// ─────────────────────────────────────────────────────────────────────────────────────────────

/** APISIX provider names no registered module serves yet, and why they are refused. */
const UNSUPPORTED: Readonly<Record<string, string>> = {
  'vertex-ai': 'provider vertex-ai is not supported yet (it needs Google service-account token signing); use gemini with an API key',
  bedrock: 'provider bedrock is not supported yet (it needs AWS SigV4 signing and event-stream framing)',
};

const byName = new Map<string, ProviderModule>();
const surfaces = new Map<SurfaceId, SurfaceSpec>();
for (const m of MODULES) {
  for (const n of m.names) {
    if (byName.has(n)) throw new Error(`provider name ${n} is registered twice (${byName.get(n)!.id}, ${m.id})`);
    byName.set(n, m);
  }
  for (const s of m.surfaces) {
    // azure-openai reuses openai's surface specs: the same object may be listed by two modules.
    const seen = surfaces.get(s.id);
    if (seen !== undefined && seen !== s) throw new Error(`surface ${s.id} is defined by two modules`);
    surfaces.set(s.id, s);
  }
}

/** Every config `provider` name a registered module serves. */
export const PROVIDER_NAMES: readonly string[] = Object.freeze([...byName.keys()]);

/** Every surface id, whether or not its module is registered. */
export const SURFACE_IDS: readonly SurfaceId[] = Object.freeze([
  'openai-chat', 'openai-completions', 'openai-responses', 'openai-embeddings',
  'anthropic-messages', 'anthropic-count-tokens', 'gemini-generate', 'gemini-count-tokens',
] as const);

function endsWith(path: string, suffix: string): boolean {
  return path.length >= suffix.length && path.endsWith(suffix);
}

/**
 * The client-facing surface of a request path, by its last segment: …/chat/completions, …/completions,
 * …/responses, …/embeddings, …/messages/count_tokens, …/messages, …:generateContent,
 * …:streamGenerateContent and …:countTokens; anything else is OpenAI chat (as routes with custom URIs have always been).
 */
export function surfaceForPath(path: string): SurfaceId {
  const slash = path.lastIndexOf('/');
  const last = path.slice(slash + 1);
  switch (last) {
    case 'completions': return endsWith(path, '/chat/completions') ? 'openai-chat' : 'openai-completions';
    case 'responses': return 'openai-responses';
    case 'embeddings': return 'openai-embeddings';
    case 'count_tokens': return endsWith(path, '/messages/count_tokens') ? 'anthropic-count-tokens' : 'openai-chat';
    case 'messages': return 'anthropic-messages';
    default: break;
  }
  const colon = last.lastIndexOf(':');
  return (colon !== -1 ? GEMINI_METHODS.get(last.slice(colon + 1)) : undefined) ?? 'openai-chat';
}

/** The Gemini model methods (`…/models/<model>:<method>`) Sluice serves, and their surfaces. */
const GEMINI_METHODS: ReadonlyMap<string, SurfaceId> = new Map([
  ['generateContent', 'gemini-generate'], ['streamGenerateContent', 'gemini-generate'], ['countTokens', 'gemini-count-tokens'],
]);

/**
 * A Gemini model method Sluice does not serve (`…/models/<m>:embedContent`, `:batchEmbedContents`, …): its name, so
 * the client gets Google's error shape naming it, not an OpenAI chat parse error. Undefined for any other path.
 */
export function unservedGeminiMethod(path: string): string | undefined {
  const slash = path.lastIndexOf('/');
  const last = path.slice(slash + 1);
  const colon = last.lastIndexOf(':');
  if (colon <= 0 || !path.slice(0, slash + 1).endsWith('/models/')) return undefined;
  const method = last.slice(colon + 1);
  return !GEMINI_METHODS.has(method) && /^[A-Za-z]{1,64}$/.test(method) ? method : undefined;
}

/** OpenAI API families Sluice does not meter: served by no LLM instance, so a request to one is not a chat completion. */
const UNSERVED_OPENAI: ReadonlySet<string> = new Set([
  'images', 'audio', 'moderations', 'files', 'uploads', 'batches', 'fine_tuning', 'fine-tunes', 'assistants', 'threads',
  'vector_stores', 'realtime', 'evals', 'containers', 'videos', 'conversations', 'organization',
]);

/**
 * An OpenAI API path under `/v1/` that Sluice does not serve (`/v1/images/generations`, `/v1/audio/speech`,
 * `/v1/files`, a stored response's `/v1/responses/<id>`, a misspelt `/v1/chat/completion`): what follows `/v1/`, so
 * the client gets a 404 naming it instead of having it proxied and billed as chat. Any other path stays chat, as
 * APISIX's ai-proxy sends every request of its route to the chat endpoint. Undefined for paths Sluice serves.
 */
export function unservedOpenAiPath(path: string): string | undefined {
  const i = path.lastIndexOf('/v1/');
  if (i < 0) return undefined;
  const rest = path.slice(i + 4);
  const slash = rest.indexOf('/');
  const family = slash < 0 ? rest : rest.slice(0, slash);
  if (UNSERVED_OPENAI.has(family)) return rest;
  if (family === 'chat' && rest !== 'chat/completions') return rest;
  if (family === 'responses' && rest !== 'responses') return rest;
  return undefined;
}

/**
 * An Anthropic API path under `…/v1/messages/` that Sluice does not serve (Message Batches: `/v1/messages/batches`, a
 * batch's id or results): what follows the last `/`-segment before `messages`, so the client gets a 404 in
 * Anthropic's shape naming it. Undefined for `…/messages` and `…/messages/count_tokens`, and for any other path.
 */
export function unservedAnthropicPath(path: string): string | undefined {
  const i = path.lastIndexOf('/v1/messages/') + 3;
  if (i < 3 || unservedOpenAiPath(path) !== undefined) return undefined;
  const rest = path.slice(i + 1);
  return rest === 'messages/count_tokens' ? undefined : rest;
}

/**
 * The surface whose format an error for `path` takes when no request body says more: the path's API, and for a path
 * Sluice serves as no API, the family it belongs to (an Anthropic `…/v1/messages/…` path, a Gemini `/v1beta/` one).
 */
export function errorSurfaceForPath(path: string): SurfaceId {
  if (unservedOpenAiPath(path) !== undefined) return 'openai-chat';
  const s = surfaceForPath(path);
  if (s !== 'openai-chat') return s;
  if (path.includes('/v1/messages/')) return 'anthropic-messages';
  if (path.includes('/v1beta/') || path.includes('/v1alpha/')) return 'gemini-generate';
  return s;
}

/** The spec of a surface; undefined when no registered module defines it. */
export function surfaceSpec(id: SurfaceId): SurfaceSpec | undefined {
  return surfaces.get(id);
}

/** The module serving a config `provider` name; undefined when none is registered. */
export function providerModule(configName: string): ProviderModule | undefined {
  return byName.get(configName);
}

/** Why a provider name is refused (unknown, or known to APISIX but not served here). */
export function unsupportedReason(configName: string): string {
  return UNSUPPORTED[configName] ?? `must be one of: ${PROVIDER_NAMES.join(', ')}`;
}

/** An instance's provider, resolved (addressing, auth, codecs), or the issues that prevent it. */
export function resolveInstance(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[] {
  const m = byName.get(inst.provider);
  if (m === undefined) return [{ path: 'provider', message: unsupportedReason(inst.provider) }];
  return m.resolve(inst);
}

export function isIssues(r: ResolvedProvider | readonly ResolveIssue[]): r is readonly ResolveIssue[] {
  return Array.isArray(r);
}

/** Prompt estimate multiplier of a provider name (1 when unknown: such an instance is refused at load anyway). */
export function promptScaleOf(configName: string): number {
  return byName.get(configName)?.promptScale ?? 1;
}

registerProviderCatalogue({
  names: PROVIDER_NAMES,
  unsupported: unsupportedReason,
  check(inst) {
    const r = resolveInstance(inst);
    return isIssues(r) ? r : [];
  },
});
