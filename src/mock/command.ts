// `sluice mock-upstream`: runs the mock upstream in the foreground until SIGINT/SIGTERM.
import { startMockUpstream, validateMockOptions, type MockUpstreamOptions, type MockUsageMode } from './server.ts';

export const MOCK_UPSTREAM_USAGE = `usage: sluice mock-upstream [options]
  --port <n>               listen port (default 0: any free port, printed)
  --host <h>               listen address (default 127.0.0.1)
  --chunks <n>             streamed content frames (default 8)
  --chunk-delay-ms <n>     delay between content frames (default 0)
  --ttft-ms <n>            delay before the first frame / a non-stream answer (default 0)
  --completion-tokens <n>  completion tokens when the request has no max_tokens (default 16)
  --usage auto|on|off      usage in answers (default auto: always, OpenAI chat/completions streams only with
                           stream_options.include_usage); off: never
  --name <s>               value of the x-mock-name response header
  --require-auth <spec>    credential every request needs (name=value header, ?name=value query, | between
                           alternatives); missing → the provider's 401
Surfaces: OpenAI /v1/{chat/completions,completions,responses,embeddings}; Azure /openai/deployments/<d>/...
?api-version= and /openai/v1/...; Anthropic /v1/messages, /v1/messages/count_tokens; Gemini
/v1beta/models/<m>:{generateContent,streamGenerateContent,countTokens}. Control: /mock/stats, /mock/last-request,
/mock/requests, /mock/reset.
Per-request headers: x-mock-status, x-mock-retry-after, x-mock-delay-ms, x-mock-ttft-ms, x-mock-chunks,
x-mock-chunk-delay-ms, x-mock-disconnect-after, x-mock-stream-error-after, x-mock-stream-error-status,
x-mock-completion-tokens, x-mock-cached-tokens, x-mock-cache-write-tokens, x-mock-reasoning-tokens, x-mock-usage,
x-mock-lie-{prompt,completion,total}-tokens, x-mock-require-auth, x-mock-echo-headers.`;

export class MockArgsError extends Error {}

const INT_FLAGS = {
  '--port': 'port',
  '--chunks': 'chunks',
  '--chunk-delay-ms': 'chunkDelayMs',
  '--ttft-ms': 'ttftMs',
  '--completion-tokens': 'completionTokens',
} as const;

/** Parses `--flag value` or `--flag=value`; throws MockArgsError on anything unknown or invalid. */
export function parseMockUpstreamArgs(argv: readonly string[]): MockUpstreamOptions {
  const opts: MockUpstreamOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq !== -1 ? arg.slice(0, eq) : arg;
    let value: string | undefined;
    const take = (): string => {
      if (value !== undefined) return value;
      if (eq !== -1 && arg.startsWith('--')) value = arg.slice(eq + 1);
      else {
        const next = argv[i + 1];
        if (next === undefined || next.startsWith('--')) throw new MockArgsError(`${flag} needs a value`);
        i++;
        value = next;
      }
      return value;
    };
    if (flag in INT_FLAGS) {
      const raw = take();
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isInteger(n)) throw new MockArgsError(`${flag} must be an integer, got "${raw}"`);
      opts[INT_FLAGS[flag as keyof typeof INT_FLAGS]] = n;
    } else if (flag === '--host') {
      opts.host = take();
    } else if (flag === '--name') {
      opts.name = take();
    } else if (flag === '--require-auth') {
      opts.requireAuth = take();
    } else if (flag === '--usage') {
      const raw = take();
      if (raw !== 'auto' && raw !== 'on' && raw !== 'off') throw new MockArgsError(`--usage must be auto, on or off, got "${raw}"`);
      opts.usage = raw as MockUsageMode;
    } else {
      throw new MockArgsError(`unknown argument ${arg}`);
    }
  }
  try {
    validateMockOptions(opts);
  } catch (err) {
    throw new MockArgsError((err as Error).message);
  }
  return opts;
}

export async function runMockUpstreamCommand(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(MOCK_UPSTREAM_USAGE + '\n');
    return;
  }
  let opts: MockUpstreamOptions;
  try {
    opts = parseMockUpstreamArgs(argv);
  } catch (err) {
    if (!(err instanceof MockArgsError)) throw err;
    process.stderr.write(`mock-upstream: ${err.message}\n${MOCK_UPSTREAM_USAGE}\n`);
    process.exit(2);
  }
  const mock = await startMockUpstream(opts);
  process.stdout.write(`mock-upstream listening on ${mock.url}\n`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await mock.close();
  process.exit(0);
}
