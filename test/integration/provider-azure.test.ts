// Azure OpenAI through Sluice with the real `openai` SDK (AzureOpenAI and the plain client on the v1 URLs):
// the deployment URL, api-version and the instance's api-key reach the upstream (the mock's
// /mock/last-request), the client's own key does not, and the quota is charged exactly the usage.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { AzureOpenAI } from 'openai';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';
import { configWarnings } from '../../src/config/warnings.ts';
import { isIssues, resolveInstance } from '../../src/providers/registry.ts';
import { startGateway, avoidWindowEdge, type TestGateway } from '../helpers/gateway.ts';
import { charged } from '../helpers/metrics.ts';
import { readChatStream } from '../helpers/sse.ts';

const API_VERSION = '2024-10-21';
const KEY = 'azure-secret';

interface Seen { path: string; query: Record<string, string>; headers: Record<string, string>; body: any }

async function lastRequest(mock: MockUpstream): Promise<Seen> {
  return (await (await fetch(`${mock.url}/mock/last-request`)).json()) as Seen;
}

function azureRoute(endpoint: string, uri = '/openai/*'): Record<string, unknown> {
  return {
    id: 'az',
    uri,
    plugins: {
      'ai-proxy-multi': { instances: [{ name: 'azure', provider: 'azure-openai', auth: { header: { 'api-key': KEY } }, override: { endpoint } }] },
      'ai-rate-limiting': { limit: 1_000_000, time_window: 60 },
    },
  };
}

describe('azure-openai provider', () => {
  let mock: MockUpstream;
  before(async () => { mock = await startMockUpstream({ completionTokens: 12, chunks: 4, requireAuth: `api-key=${KEY}` }); });
  after(async () => { await mock?.close(); });

  describe('deployment URLs', () => {
    let gw: TestGateway;
    let client: AzureOpenAI;
    before(async () => {
      gw = await startGateway({ routes: [azureRoute(`${mock.url}/openai/deployments/gpt-4o-prod/chat/completions?api-version=${API_VERSION}`)] });
      client = new AzureOpenAI({ endpoint: gw.url, apiKey: 'client-key', apiVersion: API_VERSION, deployment: 'gpt-4o-prod', maxRetries: 0 });
    });
    after(async () => { await gw?.close(); });

    it('chat: deployment path, api-version and api-key reach the upstream; the quota is charged the usage', async () => {
      await avoidWindowEdge(60);
      const before = await charged(gw, 'az');
      const r = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hello Azure' }] });
      assert.ok(r.usage !== undefined && r.usage.total_tokens > 0);
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/deployments/gpt-4o-prod/chat/completions');
      assert.equal(seen.query['api-version'], API_VERSION);
      assert.equal(seen.headers['api-key'], KEY, 'the instance key, not the client key');
      assert.equal(await charged(gw, 'az') - before, r.usage.total_tokens);
    });

    it('chat stream: usage from the stream is charged; the client that asked for it gets it', async () => {
      await avoidWindowEdge(60);
      const before = await charged(gw, 'az');
      const stream = await client.chat.completions.create({
        model: 'gpt-4o', messages: [{ role: 'user', content: 'Stream please' }], stream: true, stream_options: { include_usage: true },
      });
      const { text, usage } = await readChatStream(stream);
      assert.ok(text.length > 0);
      assert.ok(usage !== undefined, 'usage chunk relayed');
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/deployments/gpt-4o-prod/chat/completions');
      assert.equal(seen.body.stream_options.include_usage, true);
      assert.equal(await charged(gw, 'az') - before, usage.total_tokens);
    });

    it('completions: the deployment path with the completions suffix', async () => {
      await avoidWindowEdge(60);
      const before = await charged(gw, 'az');
      const r = await client.completions.create({ model: 'gpt-35-turbo-instruct', prompt: 'Once upon a time' });
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/deployments/gpt-4o-prod/completions');
      assert.equal(seen.query['api-version'], API_VERSION);
      assert.equal(await charged(gw, 'az') - before, r.usage!.total_tokens);
    });

    it('embeddings: the deployment path with the embeddings suffix, prompt tokens charged', async () => {
      await avoidWindowEdge(60);
      const before = await charged(gw, 'az');
      const r = await client.embeddings.create({ model: 'text-embedding-3-small', input: ['one input', 'and another'] });
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/deployments/gpt-4o-prod/embeddings');
      assert.equal(seen.query['api-version'], API_VERSION);
      assert.equal(seen.headers['api-key'], KEY);
      assert.equal(await charged(gw, 'az') - before, r.usage.total_tokens);
    });
  });

  it('v1 URLs: the plain OpenAI client on /openai/v1, no api-version needed', async () => {
    await avoidWindowEdge(60);
    const gw = await startGateway({ routes: [azureRoute(`${mock.url}/openai/v1`)] });
    try {
      const client = new OpenAI({ baseURL: `${gw.url}/openai/v1`, apiKey: 'client-key', maxRetries: 0 });
      const r = await client.chat.completions.create({ model: 'gpt-4o-prod', messages: [{ role: 'user', content: 'v1 please' }] });
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/v1/chat/completions');
      assert.equal(seen.headers['api-key'], KEY);
      assert.equal(seen.body.model, 'gpt-4o-prod');
      assert.equal(await charged(gw, 'az'), r.usage!.total_tokens);
    } finally { await gw.close(); }
  });

  it('auth.query and the api-version share one query string', async () => {
    const gw = await startGateway({
      routes: [{
        id: 'az', uri: '/v1/chat/completions',
        plugins: { 'ai-proxy': { provider: 'azure-openai', auth: { header: { 'api-key': KEY }, query: { extra: 'x y' } },
          override: { endpoint: `${mock.url}/openai/deployments/d1/chat/completions?api-version=${API_VERSION}` } } },
      }],
    });
    try {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'q' }] }) });
      assert.equal(r.status, 200);
      const seen = await lastRequest(mock);
      assert.equal(seen.path, '/openai/deployments/d1/chat/completions');
      assert.deepEqual(seen.query, { 'api-version': API_VERSION, extra: 'x y' });
    } finally { await gw.close(); }
  });

  it('a surface no instance serves is a 400 naming it; an instance that cannot serve a surface is skipped', async () => {
    const anthropic = { name: 'claude', provider: 'anthropic', priority: 10, auth: { header: { 'x-api-key': 'k' } }, override: { endpoint: `${mock.url}/v1/messages` } };
    const azure = { name: 'azure', provider: 'azure-openai', auth: { header: { 'api-key': KEY } }, override: { endpoint: `${mock.url}/openai/v1` } };
    const gw = await startGateway({
      routes: [
        { id: 'only-azure', uri: '/a/*', plugins: { 'ai-proxy-multi': { instances: [azure] } } },
        { id: 'mixed', uri: '/m/*', plugins: { 'ai-proxy-multi': { instances: [anthropic, azure] } } },
      ],
    });
    try {
      const r = await fetch(`${gw.url}/a/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'c', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }) });
      assert.equal(r.status, 400);
      assert.match(await r.text(), /anthropic-messages is not supported by this route's instances/);
      const resolved = resolveInstance({ name: 'claude', provider: 'anthropic', weight: 1, priority: 10, auth_header: {}, auth_query: {}, model: undefined, endpoint: `${mock.url}/v1/messages` });
      if (!isIssues(resolved) && resolved.mode('openai-embeddings') === undefined) {
        const client = new OpenAI({ baseURL: `${gw.url}/m/v1`, apiKey: 'client-key', maxRetries: 0 });
        const e = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'skip the anthropic instance' });
        assert.ok(e.usage.prompt_tokens > 0);
        assert.equal((await lastRequest(mock)).path, '/openai/v1/embeddings');
      }
    } finally { await gw.close(); }
  });

  it('config: a missing endpoint, a deployment URL without api-version, a foreign URL are refused with their paths', () => {
    let n = 0;
    const inst = (endpoint: string | undefined) => ({
      name: `a${n++}`, provider: 'azure-openai', auth: { header: { 'api-key': KEY } }, ...(endpoint === undefined ? {} : { override: { endpoint } }),
    });
    let issues: { path: string; message: string }[] = [];
    try {
      validateConfig({
        routes: [{ uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [
          inst(undefined),
          inst('https://r.openai.azure.com/openai/deployments/d/chat/completions'),
          inst('https://r.openai.azure.com/v2/chat'),
          inst('https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21'),
        ] } } }],
      }, {});
      assert.fail('expected a ConfigError');
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      issues = err.issues;
    }
    const P = 'routes[0].plugins.ai-proxy-multi.instances';
    assert.deepEqual(issues.map((i) => i.path), [`${P}[0].override.endpoint`, `${P}[1].override.endpoint`, `${P}[2].override.endpoint`]);
    assert.match(issues[0]!.message, /is required for provider azure-openai/);
    assert.match(issues[1]!.message, /api-version/);
    assert.match(issues[2]!.message, /not an Azure OpenAI URL/);
  });
});

describe('azure-openai: model quotas on a deployment', () => {
  it('a deployment instance without options.model under model_limits warns: the body model Azure ignores is what the quota sees', () => {
    const route = (options: Record<string, unknown> | undefined) => ({ routes: [{ uri: '/v1/*', plugins: {
      'ai-proxy-multi': { instances: [{ name: 'az', provider: 'azure-openai', auth: { header: { 'api-key': 'k' } }, ...(options === undefined ? {} : { options }),
        override: { endpoint: 'https://r.openai.azure.com/openai/deployments/prod-east/chat/completions?api-version=2024-10-21' } }] },
      'ai-rate-limiting': { model_limits: [{ model: 'gpt-4o*', limit: 10, time_window: 60 }] },
    } }] });
    const warned = configWarnings(validateConfig(route(undefined), {}));
    assert.deepEqual(warned.map((w) => w.path), ['routes[0].plugins.ai-proxy-multi.instances[0].options.model']);
    assert.deepEqual(configWarnings(validateConfig(route({ model: 'gpt-4o' }), {})), []);
  });
});
