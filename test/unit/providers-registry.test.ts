// The provider registry: which surface a path is, which module serves a config name, and how the OpenAI and
// Azure modules address every surface from one endpoint URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { InstanceConfig } from '../../src/config/types.ts';
import {
  PROVIDER_NAMES, SURFACE_IDS, isIssues, providerModule, resolveInstance, surfaceForPath, surfaceSpec, unsupportedReason,
} from '../../src/providers/registry.ts';
import { OpenAiWire } from '../../src/providers/openai/index.ts';
import { parseCall } from '../../src/providers/prepare.ts';
import type { SurfaceId } from '../../src/providers/types.ts';

test('surfaceForPath: by the last path segment, OpenAI chat for anything else', () => {
  const cases: [string, SurfaceId][] = [
    ['/v1/chat/completions', 'openai-chat'],
    ['/openai/deployments/d/chat/completions', 'openai-chat'],
    ['/v1/completions', 'openai-completions'],
    ['/openai/deployments/d/completions', 'openai-completions'],
    ['/v1/responses', 'openai-responses'],
    ['/openai/v1/responses', 'openai-responses'],
    ['/v1/embeddings', 'openai-embeddings'],
    ['/v1/messages', 'anthropic-messages'],
    ['/anthropic/v1/messages', 'anthropic-messages'],
    ['/v1/messages/count_tokens', 'anthropic-count-tokens'],
    ['/v1beta/models/gemini-2.0-flash:generateContent', 'gemini-generate'],
    ['/v1beta/models/gemini-2.0-flash:streamGenerateContent', 'gemini-generate'],
    ['/v1/ai', 'openai-chat'],
    ['/', 'openai-chat'],
    ['/v1/count_tokens', 'openai-chat'],
    ['/v1/models/x:countTokens', 'gemini-count-tokens'],
    ['/v1/models:countTokens', 'gemini-count-tokens'],
    ['/chat', 'openai-chat'],
  ];
  for (const [path, surface] of cases) assert.equal(surfaceForPath(path), surface, path);
});

test('every surface id is listed, and the OpenAI ones have specs with the OpenAI error shape', () => {
  assert.equal(new Set(SURFACE_IDS).size, 8);
  for (const id of ['openai-chat', 'openai-completions'] as const) {
    const spec = surfaceSpec(id)!;
    assert.equal(spec.id, id);
    assert.equal(spec.metered, true);
    assert.deepEqual(JSON.parse(spec.errorBody(400, 'SLC_BAD_REQUEST', 'invalid_request_error', 'bad', 'n')),
      { error: { message: 'bad', type: 'invalid_request_error', code: 'SLC_BAD_REQUEST', param: 'n' } });
  }
});

test('provider names: the APISIX spellings; unknown and unsupported names are refused with a reason', () => {
  for (const n of ['openai', 'deepseek', 'openai-compatible', 'aimlapi', 'openrouter', 'azure-openai']) {
    assert.ok(PROVIDER_NAMES.includes(n), n);
    assert.ok(providerModule(n) !== undefined, n);
  }
  assert.equal(providerModule('openai')!.id, 'openai');
  assert.equal(providerModule('azure-openai')!.id, 'azure-openai');
  assert.equal(providerModule('cohere'), undefined);
  assert.match(unsupportedReason('cohere'), /^must be one of: openai, /);
  if (providerModule('vertex-ai') === undefined) assert.match(unsupportedReason('vertex-ai'), /vertex-ai is not supported/);
  if (providerModule('bedrock') === undefined) assert.match(unsupportedReason('bedrock'), /bedrock is not supported/);
  const r = resolveInstance(instance({ provider: 'cohere' }));
  assert.ok(isIssues(r));
  assert.equal(r[0]!.path, 'provider');
});

test('a surface without a registered spec fails cleanly (400-style failure), never throws', () => {
  const body = Buffer.from('{"messages":[{"role":"user","content":"x"}]}');
  const r = parseCall(body, { surface: 'no-such-surface' as SurfaceId, path: '/x', query: '', defaultMaxTokens: 16 });
  assert.equal(r.ok, false);
  assert.ok(!r.ok && r.code === 'SLC_BAD_REQUEST' && /no-such-surface is not supported/.test(r.message));
});

function instance(over: Partial<InstanceConfig>): InstanceConfig {
  return { name: 'i', provider: 'openai', weight: 1, priority: 0, auth_header: {}, auth_query: {}, model: undefined, endpoint: undefined, ...over };
}

function wire(over: Partial<InstanceConfig>): OpenAiWire {
  const r = resolveInstance(instance(over));
  assert.ok(r instanceof OpenAiWire, JSON.stringify(r));
  return r;
}

test('openai addressing: public bases, scheme://host, a surface URL, a custom path, auth.query', () => {
  const o = wire({});
  assert.equal(o.origin, 'https://api.openai.com');
  assert.equal(o.pathOf('openai-chat'), '/v1/chat/completions');
  assert.equal(o.pathOf('openai-completions'), '/v1/completions');
  assert.equal(o.mode('openai-chat'), 'native');
  assert.equal(o.mode('anthropic-messages'), undefined);
  assert.equal(wire({ provider: 'deepseek' }).origin, 'https://api.deepseek.com');
  assert.equal(wire({ provider: 'deepseek' }).pathOf('openai-chat'), '/chat/completions');
  assert.equal(wire({ provider: 'openrouter' }).pathOf('openai-chat'), '/api/v1/chat/completions');
  assert.equal(wire({ provider: 'aimlapi' }).origin, 'https://api.aimlapi.com');
  const host = wire({ provider: 'openai-compatible', endpoint: 'http://127.0.0.1:9/' });
  assert.equal(host.pathOf('openai-chat'), '/v1/chat/completions');
  assert.equal(host.pathOf('openai-completions'), '/v1/completions');
  const full = wire({ provider: 'openai-compatible', endpoint: 'http://127.0.0.1:9/api/completions?x=1', auth_query: { key: 'k' } });
  assert.equal(full.pathOf('openai-chat'), '/api/chat/completions?x=1&key=k');
  assert.equal(full.pathOf('openai-completions'), '/api/completions?x=1&key=k');
  const custom = wire({ provider: 'openai-compatible', endpoint: 'http://127.0.0.1:9/llm/generate' });
  assert.equal(custom.pathOf('openai-chat'), '/llm/generate');
  assert.equal(custom.pathOf('openai-completions'), '/llm/generate');
  const missing = resolveInstance(instance({ provider: 'openai-compatible' }));
  assert.ok(isIssues(missing));
  assert.deepEqual(missing, [{ path: 'override.endpoint', message: 'is required for provider openai-compatible' }]);
});

test('azure addressing: deployment URLs keep api-version, v1 URLs need none', () => {
  const d = wire({ provider: 'azure-openai', endpoint: 'https://r.openai.azure.com/openai/deployments/gpt4/chat/completions?api-version=2024-10-21' });
  assert.equal(d.id, 'azure-openai');
  assert.equal(d.origin, 'https://r.openai.azure.com');
  assert.equal(d.pathOf('openai-chat'), '/openai/deployments/gpt4/chat/completions?api-version=2024-10-21');
  assert.equal(d.pathOf('openai-completions'), '/openai/deployments/gpt4/completions?api-version=2024-10-21');
  const bare = wire({ provider: 'azure-openai', endpoint: 'https://r.openai.azure.com/openai/deployments/gpt4?api-version=v' });
  assert.equal(bare.pathOf('openai-chat'), '/openai/deployments/gpt4/chat/completions?api-version=v');
  const v1 = wire({ provider: 'azure-openai', endpoint: 'https://r.openai.azure.com/openai/v1/chat/completions' });
  assert.equal(v1.pathOf('openai-chat'), '/openai/v1/chat/completions');
  assert.equal(v1.pathOf('openai-completions'), '/openai/v1/completions');
  const root = wire({ provider: 'azure-openai', endpoint: 'https://r.openai.azure.com' });
  assert.equal(root.pathOf('openai-chat'), '/openai/v1/chat/completions');
  if (d.mode('openai-responses') !== undefined) {
    assert.equal(d.pathOf('openai-responses'), '/openai/responses?api-version=2024-10-21');
    assert.equal(v1.pathOf('openai-responses'), '/openai/v1/responses');
  }
  if (d.mode('openai-embeddings') !== undefined) assert.equal(d.pathOf('openai-embeddings'), '/openai/deployments/gpt4/embeddings?api-version=2024-10-21');
  for (const [endpoint, re] of [
    [undefined, /is required for provider azure-openai/],
    ['https://r.openai.azure.com/openai/deployments/gpt4/chat/completions', /api-version/],
    ['https://r.openai.azure.com/openai/deployments//chat/completions?api-version=v', /no deployment name/],
    ['https://r.openai.azure.com/v1/chat/completions', /not an Azure OpenAI URL/],
  ] as const) {
    const r = resolveInstance(instance({ provider: 'azure-openai', endpoint }));
    assert.ok(isIssues(r), String(endpoint));
    assert.equal(r[0]!.path, 'override.endpoint');
    assert.match(r[0]!.message, re);
  }
});

test('config validation names the refused provider and an instance issue by their paths', async () => {
  const { ConfigError, validateConfig } = await import('../../src/config/validate.ts');
  const issuesOf = (raw: unknown): { path: string; message: string }[] => {
    try { validateConfig(raw, {}); } catch (err) { if (err instanceof ConfigError) return err.issues; throw err; }
    return [];
  };
  if (providerModule('bedrock') === undefined) {
    const is = issuesOf({ routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy': { provider: 'bedrock' } } }] });
    assert.deepEqual(is.map((i) => i.path), ['routes[0].plugins.ai-proxy.provider']);
    assert.match(is[0]!.message, /bedrock is not supported/);
  }
  const is = issuesOf({ routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [
    { name: 'ok', provider: 'openai' },
    { name: 'az', provider: 'azure-openai', override: { endpoint: 'https://r.openai.azure.com/openai/deployments/d/chat/completions' } },
  ] } } }] });
  assert.deepEqual(is.map((i) => i.path), ['routes[0].plugins.ai-proxy-multi.instances[1].override.endpoint']);
  assert.match(is[0]!.message, /api-version/);
});
