// `sluice validate --config <file>`: prints `ok` and exits 0, or prints every issue as `path: message`
// (one per line, on stderr) and exits 2. Usage errors exit 2 as well. Warnings (config/warnings.ts) go to
// stderr as `warning: path: message` and do not change the exit code.

import { ConfigError, formatIssue } from './issues.ts';
import { loadConfigFile } from './load.ts';
import { configWarnings } from './warnings.ts';

export interface CommandOutput {
  out(line: string): void;
  err(line: string): void;
}

const stdio: CommandOutput = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
};

const USAGE = 'usage: sluice validate --config <file> | --embedded [--config <file>]';

/** The file to validate and whether it is read as `start --embedded` reads it, or what is wrong with the arguments. */
function configArg(argv: readonly string[]): { file: string | undefined; embedded: boolean } | string {
  let file: string | undefined;
  let embedded = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--embedded') {
      if (embedded) return '--embedded is given twice';
      embedded = true;
    } else if (a === '--config' || a === '-c' || a.startsWith('--config=')) {
      if (file !== undefined) return '--config is given twice';
      if (a.startsWith('--config=')) { file = a.slice('--config='.length); continue; }
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('-')) return `${a} needs a file`;
      file = next;
      i++;
    } else {
      return `unknown argument ${JSON.stringify(a.slice(0, 100))}`;
    }
  }
  if (file === '' || (file === undefined && !embedded)) return '--config <file> is required';
  return { file, embedded };
}

/** What `start --embedded` sets for the built-in mock, whose port is known only once it listens: any address validates. */
const EMBEDDED_MOCK = 'http://127.0.0.1:9';

/**
 * `argv` holds the arguments after `validate`. `--embedded` validates `embeddedConfig` (the file `start --embedded`
 * runs, or the `--config` given with it) with the mock's addresses set, as `start --embedded` sets them.
 */
export function runValidateCommand(argv: string[], io: CommandOutput = stdio, env: NodeJS.ProcessEnv = process.env, embeddedConfig?: string): number {
  const arg = configArg(argv);
  const file = typeof arg === 'string' ? undefined : arg.file ?? embeddedConfig;
  if (typeof arg === 'string' || file === undefined) {
    io.err(`sluice validate: ${typeof arg === 'string' ? arg : '--embedded has no built-in config here'}`);
    io.err(USAGE);
    return 2;
  }
  if (arg.embedded) env = { ...env, SLUICE_MOCK_ENDPOINT: `${EMBEDDED_MOCK}/v1/chat/completions`, SLUICE_MOCK_ORIGIN: EMBEDDED_MOCK };
  try {
    const config = loadConfigFile(file, env);
    for (const w of configWarnings(config)) io.err(`warning: ${formatIssue(w)}`);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const issue of err.issues) io.err(formatIssue(issue));
    return 2;
  }
  io.out('ok');
  return 0;
}
