// Validation issues and the error that carries them. Validation collects every issue instead of stopping at
// the first, so `sluice validate` can report a whole broken file in one run.

export interface ConfigIssue {
  /** Dotted path with [i] indexes, e.g. 'routes[0].plugins.ai-proxy-multi.instances[0].weight'; '' for the file itself. */
  readonly path: string;
  readonly message: string;
}

export function formatIssue(issue: ConfigIssue): string {
  return issue.path === '' ? issue.message : `${issue.path}: ${issue.message}`;
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = issues;
  }
}

export function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  // An empty key would vanish from the path (at the top level, leave none at all).
  if (key === '') return `${path}[""]`;
  return path === '' ? key : `${path}.${key}`;
}

export class Issues {
  readonly list: ConfigIssue[] = [];
  /** Paths whose string was exactly one `$ENV://NAME`: numeric and boolean readers accept their text form. */
  readonly wholeEnv = new Set<string>();
  /** Paths whose string took any `$ENV://` value: messages about them must not quote the value (it may be a secret). */
  readonly fromEnv = new Set<string>();
  private readonly silenced = new Set<string>();

  add(path: string, message: string): void {
    if (!this.silenced.has(path)) this.list.push({ path, message });
  }

  /** Drop later issues at `path`: an unset $ENV variable should not also be reported as a malformed value. */
  silence(path: string): void {
    this.silenced.add(path);
  }
}
