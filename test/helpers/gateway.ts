// Starts the real gateway (uWS front end, worker pool, undici, quota stores) on ephemeral loopback ports
// from a raw config object in the file's shape, validated exactly as `sluice start` does.
import { startSluice, type SluiceHandle } from '../../src/app.ts';
import { validateConfig } from '../../src/config/validate.ts';
import type { SluiceConfig } from '../../src/config/types.ts';

export interface TestGateway {
  readonly handle: SluiceHandle;
  readonly url: string;
  readonly adminUrl: string;
  close(): Promise<void>;
}

/** A raw config validated as `sluice start` does, listening (and its admin port) on ephemeral loopback ports. */
export function testConfig(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): SluiceConfig {
  return validateConfig({ listen: { host: '127.0.0.1', port: 0 }, admin: { host: '127.0.0.1', port: 0 }, ...raw }, env);
}

export async function startGateway(raw: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): Promise<TestGateway> {
  const handle = await startSluice(testConfig(raw, env), { port: 0, adminPort: 0, defaultMetrics: false });
  return {
    handle,
    url: `http://127.0.0.1:${handle.port}`,
    adminUrl: `http://127.0.0.1:${handle.adminPort}`,
    close: () => handle.close({ drainMs: 2000 }),
  };
}

export interface JsonResponse {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<JsonResponse> {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch { parsed = undefined; }
  return { status: r.status, headers: r.headers, body: parsed, text };
}

/** A route `chat` serving /v1/chat/completions from one mock instance. */
export function chatRoute(instance: string, upstreamUrl: string): Record<string, unknown> {
  return { id: 'chat', uri: '/v1/chat/completions', plugins: { 'ai-proxy-multi': { instances: [mockInstance(instance, upstreamUrl)] } } };
}

/**
 * An instance block for ai-proxy-multi pointing at a mock upstream. Its `forward_headers` lets the mock's
 * per-request fault headers (x-mock-*) through the gateway's client-header allowlist.
 */
export function mockInstance(name: string, mockUrl: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    name,
    provider: 'openai-compatible',
    auth: { header: { Authorization: `Bearer sk-${name}` } },
    options: { model: `${name}-model` },
    override: { endpoint: `${mockUrl}/v1/chat/completions` },
    forward_headers: ['x-mock-*'],
    ...extra,
  };
}

/**
 * Windows are aligned to the clock, so a test that expects one window must not straddle a boundary:
 * when fewer than `needMs` remain in the current window of `windowSeconds`, wait for the next one.
 */
export async function avoidWindowEdge(windowSeconds: number, needMs = 8000): Promise<void> {
  const w = windowSeconds * 1000;
  const left = w - (Date.now() % w);
  if (left < needMs) await new Promise((r) => setTimeout(r, left + 50));
}

/**
 * Routes `/o/*` (OpenAI-compatible), `/a/*` (Anthropic) and `/g/*` (Gemini), route ids o, a and g, each with one
 * instance `u` at `upstreamUrl` (a scripted upstream) and a local quota far from its limit.
 */
export function surfaceRoutes(upstreamUrl: string, extra: Record<string, unknown> = {}): Record<string, unknown>[] {
  const quota = { limit: 10_000_000, time_window: 3600 };
  const inst = (provider: string, auth: Record<string, string>, endpoint = upstreamUrl) => ({
    name: 'u', provider, auth: { header: auth }, options: { model: 'x' }, override: { endpoint }, ...extra,
  });
  const route = (id: string, instance: Record<string, unknown>) => ({ id, uri: `/${id}/*`, plugins: { 'ai-proxy-multi': { instances: [instance] }, 'ai-rate-limiting': quota } });
  return [
    route('o', inst('openai-compatible', { authorization: 'Bearer k' }, `${upstreamUrl}/v1/chat/completions`)),
    route('a', inst('anthropic', { 'x-api-key': 'k' })),
    route('g', inst('gemini', { 'x-goog-api-key': 'k' })),
  ];
}
