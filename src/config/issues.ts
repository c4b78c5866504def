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

/** Most issues an error lists: a generated file repeating one mistake per route could report millions. */
export const MAX_ISSUES = 100;

/**
 * The first MAX_ISSUES of `issues`, then one `… and N more issues` issue counting the rest and `more` (issues
 * never collected). Idempotent: a list it returned (MAX_ISSUES + 1 long) passes unchanged, so the list can
 * cross a thread and be wrapped again.
 */
function capIssues(issues: ConfigIssue[], more: number): ConfigIssue[] {
  if (issues.length <= MAX_ISSUES + 1 && more === 0) return issues;
  const rest = issues.length - MAX_ISSUES + more;
  return [...issues.slice(0, MAX_ISSUES), { path: '', message: `… and ${rest} more issue${rest === 1 ? '' : 's'}` }];
}

export class ConfigError extends Error {
  readonly issues: ConfigIssue[];

  /** `more`: issues found past those in `issues` (Issues.more). */
  constructor(issues: ConfigIssue[], more = 0) {
    const capped = capIssues(issues, more);
    super(capped.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
    this.issues = capped;
  }
}

export function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  // An empty key would vanish from the path (at the top level, leave none at all).
  if (key === '') return `${path}[""]`;
  return path === '' ? key : `${path}.${key}`;
}

export class Issues {
  /** The first MAX_ISSUES + 1 issues (one more than an error lists, so it knows the list was cut). */
  readonly list: ConfigIssue[] = [];
  /** Issues past those in `list`, counted only. */
  more = 0;
  /** Paths whose string was exactly one `$ENV://NAME`: numeric and boolean readers accept their text form. */
  readonly wholeEnv = new Set<string>();
  /** Paths whose string took any `$ENV://` value: messages about them must not quote the value (it may be a secret). */
  readonly fromEnv = new Set<string>();
  private readonly silenced = new Set<string>();

  add(path: string, message: string): void {
    if (this.silenced.has(path)) return;
    if (this.list.length <= MAX_ISSUES) this.list.push({ path, message });
    else this.more++;
  }

  error(): ConfigError {
    return new ConfigError(this.list, this.more);
  }

  /** Drop later issues at `path`: an unset $ENV variable should not also be reported as a malformed value. */
  silence(path: string): void {
    this.silenced.add(path);
  }
}
