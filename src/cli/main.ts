// `sluice start | validate | mock-upstream`. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.
// Each command imports only what it runs: `validate` never loads uWS, undici or a tokenizer, and the mock
// upstream (with its own node:http server) loads only for `mock-upstream` and `start --embedded`.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { SluiceHandle } from '../app.ts';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError, listenersClash } from '../config/validate.ts';
import { log } from '../core/log.ts';
import { ConfigReloader } from './config-reload.ts';
import { runtimeProblem } from './runtime.ts';

const USAGE = `usage:
  sluice start --config <file.yaml|file.json> [--port <n>] [--admin-port <n>]
  sluice start --embedded [--port <n>] [--admin-port <n>] [--mock-port <n>]
                                     local quotas and the built-in mock upstream (127.0.0.1:9080, metrics on :9091);
                                     with --config <file>, that file, which may name the mock as $ENV://SLUICE_MOCK_ENDPOINT;
                                     --mock-port pins the mock's port (default: a free one, logged)
  sluice validate --config <file>    prints ok, or every error with its path (exit 2)
  sluice validate --embedded [--config <file>]
                                     the same for what start --embedded runs (the mock's address set as it sets it)
  sluice mock-upstream --port <n>    OpenAI-compatible mock LLM (see --help)
  sluice --version`;

const EMBEDDED_CONFIG = fileURLToPath(new URL('../../examples/embedded.yaml', import.meta.url));

interface StartArgs {
  readonly config: string | undefined;
  readonly embedded: boolean;
  readonly port: number | undefined;
  readonly adminPort: number | undefined;
  readonly mockPort: number | undefined;
}

const START_VALUE_FLAGS = ['--config', '--port', '--admin-port', '--mock-port'] as const;

/** `start`'s arguments, or a message: a mistyped flag must not start the gateway on its default ports. */
export function parseStartArgs(argv: readonly string[]): StartArgs | string {
  const values = new Map<string, string>();
  let embedded = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--embedded') {
      if (embedded) return 'sluice start: --embedded is given twice';
      embedded = true;
      continue;
    }
    const eq = a.indexOf('=');
    // -c as validate takes it.
    const name = a === '-c' ? '--config' : a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    if (!(START_VALUE_FLAGS as readonly string[]).includes(name)) {
      return `sluice start: unknown argument ${JSON.stringify(a.slice(0, 100))} (known: --config <file>, --embedded, --port <n>, --admin-port <n>, --mock-port <n>)`;
    }
    const inline = a.startsWith('--') && eq > 0;
    let v: string | undefined;
    if (inline) v = a.slice(eq + 1);
    else { v = argv[i + 1]; i++; }
    if (v === undefined || v === '' || (!inline && v.startsWith('-'))) return `sluice start: ${name} needs a value`;
    if (values.has(name)) return `sluice start: ${name} is given twice`;
    values.set(name, v);
  }
  const port = (name: string): number | string | undefined => {
    const v = values.get(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    return /^[0-9]+$/.test(v) && n <= 65535 ? n : `sluice start: ${name}: must be a port number (0-65535), got ${JSON.stringify(v.slice(0, 40))}`;
  };
  const p = port('--port');
  const ap = port('--admin-port');
  if (typeof p === 'string') return p;
  if (typeof ap === 'string') return ap;
  const mp = port('--mock-port');
  if (typeof mp === 'string') return mp;
  if (mp !== undefined && !embedded) return 'sluice start: --mock-port needs --embedded (only start --embedded runs the mock)';
  return { config: values.get('--config'), embedded, port: p, adminPort: ap, mockPort: mp };
}

async function start(argv: string[]): Promise<void> {
  const problem = runtimeProblem();
  if (problem !== undefined) {
    console.error(problem);
    process.exit(1);
  }
  const args = parseStartArgs(argv);
  if (typeof args === 'string') { console.error(`${args}\n${USAGE}`); process.exit(2); }
  const embedded = args.embedded;
  let file = args.config;
  const env = { ...process.env };
  let mockClose: (() => Promise<void>) | undefined;
  if (embedded) {
    file ??= EMBEDDED_CONFIG;
    const { startMockUpstream } = await import('../mock/server.ts');
    const port = args.mockPort ?? 0;
    const mock = await startMockUpstream({ host: '127.0.0.1', port, chunks: 8, chunkDelayMs: 20, name: 'embedded-mock' }).catch((err: unknown) => {
      // A pinned port that is taken: said as the gateway's own ports say it, not as a crash.
      const code = (err as NodeJS.ErrnoException | null)?.code;
      console.error(`sluice: mock upstream 127.0.0.1:${port}: ${code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : 'cannot listen'} [${code ?? 'UNKNOWN'}]`);
      process.exit(1);
    });
    mockClose = () => mock.close();
    env.SLUICE_MOCK_ENDPOINT = `${mock.url}/v1/chat/completions`;
    env.SLUICE_MOCK_ORIGIN = mock.url;
    log.info('embedded mock upstream listening', { url: mock.url });
  }
  if (file === undefined) { console.error(USAGE); process.exit(2); }
  const configFile = file;
  // Handlers go in before start-up: a SIGHUP with no listener would kill the process (the default action), and
  // the gateway is listening before startSluice resolves. Signals that come early are applied once it has.
  let early: { reload: boolean; stop: NodeJS.Signals | undefined } | undefined = { reload: false, stop: undefined };
  let onHup = (): void => { early!.reload = true; };
  let onStop = (signal: NodeJS.Signals): void => { early!.stop ??= signal; };
  process.on('SIGHUP', () => onHup());
  process.on('SIGINT', (sig) => onStop(sig));
  process.on('SIGTERM', (sig) => onStop(sig));
  let handle: SluiceHandle;
  let listenHost: string;
  let adminHost: string;
  let served: number;
  try {
    // Provider modules register their names and instance checks with config validation.
    await import('../providers/registry.ts');
    const config = loadConfigFile(configFile, env);
    const ports = { port: args.port, adminPort: args.adminPort };
    const adminPort = ports.adminPort ?? config.admin.port;
    if (listenersClash({ host: config.listen.host, port: ports.port ?? config.listen.port }, { host: config.admin.host, port: adminPort })) {
      console.error(`sluice: the metrics port ${adminPort} is the listen port: give --admin-port (or admin.port) another one`);
      process.exit(2);
    }
    served = config.routes.length;
    listenHost = config.listen.host;
    adminHost = config.admin.host;
    const { startSluice } = await import('../app.ts');
    handle = await startSluice(config, ports);
  } catch (err) {
    if (err instanceof ConfigError) { console.error(err.message); process.exit(2); }
    // A taken or forbidden port (app.ts's ListenError, matched by name so this file need not import app.ts):
    // one plain line, whatever the log level.
    if (err instanceof Error && err.name === 'ListenError') { console.error(`sluice: ${err.message}`); process.exit(1); }
    throw err;
  }
  console.log(`sluice listening on http://${listenHost}:${handle.port} (metrics on http://${adminHost}:${handle.adminPort}/metrics)`);
  // A file that fails to load or validate is logged and counted (sluice_config_reloads_total{outcome="error"}).
  // So is one that would drop every route of a gateway serving some: more likely a file rewritten in the wrong
  // place than a wish to answer 404 to everything (a restart still starts a gateway with no routes).
  let stopping = false;
  // Loaded on a thread of its own (config-reload.ts): serving goes on while a large file is parsed.
  const reloader = new ConfigReloader(configFile, env, (result) => {
    if (stopping) return;
    const swapped = handle.reloadFrom(() => {
      if (result instanceof Error) throw result;
      if (result.routes.length === 0 && served > 0) {
        throw new ConfigError([{ path: 'routes', message: `the new config has no routes while ${served} are served; a reload never drops every route (restart the gateway to run without routes)` }]);
      }
      return result;
    });
    if (swapped && !(result instanceof Error)) served = result.routes.length;
  });
  onHup = () => {
    // A reload during shutdown would open stores and connections the drain then has to close again.
    if (stopping) { log.warn('reload ignored: shutting down'); return; }
    reloader.request();
  };
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    reloader.close();
    log.info('stopping: draining in-flight requests', { signal });
    handle.close().then(() => mockClose?.()).then(() => {
      log.info('stopped');
      process.exit(0);
    }, (err: unknown) => {
      log.error('shutdown failed', { err });
      process.exit(1);
    });
  };
  onStop = stop;
  const pending = early;
  early = undefined;
  if (pending.stop !== undefined) stop(pending.stop);
  else if (pending.reload) onHup();
}

async function main(argv: string[]): Promise<void> {
  const cmd = argv[0];
  const rest = argv.slice(1);
  if ((cmd === 'start' || cmd === 'validate') && (rest.includes('--help') || rest.includes('-h'))) {
    console.log(USAGE);
    return;
  }
  switch (cmd) {
    case 'start': await start(rest); return;
    case 'validate':
      await import('../providers/registry.ts');
      process.exitCode = (await import('../config/validate-command.ts')).runValidateCommand(rest, undefined, process.env, EMBEDDED_CONFIG);
      return;
    case 'mock-upstream': await (await import('../mock/command.ts')).runMockUpstreamCommand(rest); return;
    case undefined: case '--help': case '-h': case 'help':
      console.log(USAGE);
      return;
    case '--version': case '-v': case 'version':
      console.log(`sluice ${(JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version}`);
      return;
    default:
      console.error(`sluice: unknown command '${cmd.slice(0, 64)}'\n${USAGE}`);
      process.exitCode = 2;
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  log.error('fatal', { err });
  process.exit(1);
});
