// The one-route gateway the paired benches (hot-path, alloc, gc-promotion) run against src/mock: its mock
// upstream process and the gateway config for it.
import { startServer, type Server } from './proc.ts';

export const CHAT_PATH = '/v1/chat/completions';

/** src/mock in a process of its own, 32 frames 2 ms apart for streams. */
export function startChatMock(root: string): Promise<Server> {
  return startServer({ name: 'mock-upstream', cwd: root, ready: /mock-upstream listening on http:\/\/127\.0\.0\.1:(\d+)/,
    args: ['--import', 'tsx', 'native-bench/lib/mock-process.ts', '--port', '0', '--chunks', '32', '--chunk-delay-ms', '2'] });
}

/** A gateway config (JSON text): one chat route to the mock, the guard on or off, optionally a local quota. */
export function chatGatewayConfig(mockPort: number, o: { guard: boolean; quota: boolean; workers?: number }): string {
  return JSON.stringify({
    listen: { host: '127.0.0.1', port: 0, http1_guard: o.guard }, admin: { host: '127.0.0.1', port: 0 }, workers: o.workers ?? 1,
    routes: [{ id: 'chat', uri: CHAT_PATH, methods: ['POST'], plugins: { 'ai-proxy-multi': { instances: [{
      name: 'mock', provider: 'openai-compatible', auth: { header: { Authorization: 'Bearer sk-bench' } },
      options: { model: 'gpt-4o-mini' }, override: { endpoint: `http://127.0.0.1:${mockPort}${CHAT_PATH}` } }] },
    // Far from the limit, as in gateway.bench.ts: admission and settlement cost, never a rejection.
    ...(o.quota ? { 'ai-rate-limiting': { limit: 1_000_000_000_000, time_window: 3600 } } : {}) } }],
  });
}
