// Azure OpenAI (`azure-openai`, as APISIX spells it): the OpenAI wire format and codecs (providers/openai/),
// with Azure's addressing. The instance's override.endpoint is the deployment URL, in one of Azure's shapes:
//   https://<resource>.openai.azure.com/openai/deployments/<deployment>/chat/completions?api-version=<v>
//     (…/completions, …/embeddings likewise; the deployment's Responses API is /openai/responses?api-version=<v>)
//   https://<resource>.openai.azure.com/openai/v1/chat/completions   (the v1 API: …/responses, …/embeddings)
//   https://<resource>.openai.azure.com/openai/deployments/<deployment>?api-version=<v>  or  …/openai/v1
// Every surface of the same deployment is derived from the one URL; api-version stays in the query. The key
// goes in the instance's auth.header (`api-key: …`, or `Authorization: Bearer <Entra ID token>`), as APISIX
// configs carry it. Azure takes the deployment from the URL: the body's model is passed along and harmless.
import type { InstanceConfig } from '../../config/types.ts';
import type { ProviderModule, ResolveIssue, ResolvedProvider, SurfaceId } from '../types.ts';
import { OpenAiWire, SURFACES, authQuery, bySuffixLength, type SurfaceRoute } from '../openai/index.ts';

const DEPLOYMENTS = '/openai/deployments/';
const V1 = '/openai/v1';

function issue(message: string): ResolveIssue[] {
  return [{ path: 'override.endpoint', message }];
}

/** The deployment URL's path without a surface suffix, and whether it is the v1 shape. */
function basePath(path: string): { base: string; v1: boolean } | string {
  let p = path.endsWith('/') && path.length > 1 ? path.slice(0, -1) : path;
  for (const s of bySuffixLength()) {
    if (p.endsWith(s.suffix)) { p = p.slice(0, -s.suffix.length); break; }
  }
  if (p === '' || p === '/' || p === V1 || p === '/openai') return { base: V1, v1: true };
  if (p.startsWith(DEPLOYMENTS)) {
    const deployment = p.slice(DEPLOYMENTS.length);
    if (deployment === '' || deployment.includes('/')) return `has no deployment name after ${DEPLOYMENTS}`;
    return { base: p, v1: false };
  }
  return `is not an Azure OpenAI URL: expected ${DEPLOYMENTS}<deployment>/… or ${V1}/…`;
}

function resolve(inst: InstanceConfig): ResolvedProvider | readonly ResolveIssue[] {
  if (inst.endpoint === undefined) {
    return issue('is required for provider azure-openai: https://<resource>.openai.azure.com/openai/deployments/<deployment>/chat/completions?api-version=<version>');
  }
  let url: URL;
  try {
    url = new URL(inst.endpoint);
  } catch {
    return issue('must be an absolute http(s) URL');
  }
  const shape = basePath(url.pathname);
  if (typeof shape === 'string') return issue(shape);
  const q = url.search;
  if (!shape.v1 && !url.searchParams.has('api-version')) {
    return issue('needs ?api-version=<version> (Azure deployment URLs are versioned; the /openai/v1 URLs are not)');
  }
  const tail = q + authQuery(inst, q !== '');
  const routes = new Map<SurfaceId, SurfaceRoute>();
  for (const entry of SURFACES) {
    // A deployment's Responses API is not under the deployment: /openai/responses?api-version=…
    const path = !shape.v1 && entry.spec.id === 'openai-responses' ? '/openai' + entry.suffix : shape.base + entry.suffix;
    routes.set(entry.spec.id, { entry, path: path + tail });
  }
  return new OpenAiWire('azure-openai', url.origin, routes);
}

const azureOpenai: ProviderModule = {
  id: 'azure-openai',
  names: ['azure-openai'],
  surfaces: SURFACES.map((s) => s.spec),
  promptScale: 1,
  resolve,
};

export default azureOpenai;
