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

const USAGE = 'usage: sluice validate --config <file>';

/** The file to validate, or what is wrong with the arguments. */
function configArg(argv: readonly string[]): { file: string } | string {
  let file: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config' || a === '-c' || a.startsWith('--config=')) {
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
  return file === undefined || file === '' ? '--config <file> is required' : { file };
}

/** `argv` holds the arguments after `validate`. */
export function runValidateCommand(argv: string[], io: CommandOutput = stdio, env: NodeJS.ProcessEnv = process.env): number {
  const arg = configArg(argv);
  if (typeof arg === 'string') {
    io.err(`sluice validate: ${arg}`);
    io.err(USAGE);
    return 2;
  }
  const file = arg.file;
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
