// Typed, issue-collecting readers over one object of the raw configuration. Every reader reports a problem at
// the field's path and returns undefined, so validation carries on and the caller falls back to a default.
// Messages never quote the offending value: it may be a secret substituted from $ENV.

import { childPath, type Issues } from './issues.ts';

export interface IntRule {
  readonly min?: number;
  readonly max?: number;
  /** Said of a value above `max` (other values get the messages of a rule without `max`). */
  readonly above?: string;
}

export const POSITIVE: IntRule = { min: 1 };
export const NON_NEGATIVE: IntRule = { min: 0 };
export const PORT: IntRule = { min: 0, max: 65535 };
export const SERVER_PORT: IntRule = { min: 1, max: 65535 };

/** Longest timer Node runs: setTimeout fires a longer one after 1 ms (so a "24-day" timeout would be 1 ms). */
export const MAX_TIMER_MS = 2_147_483_647;

/** A duration in ms used as a timer: at least `min`, at most MAX_TIMER_MS. */
export function durationMs(min: number): IntRule {
  return { min, max: MAX_TIMER_MS, above: `must be at most ${MAX_TIMER_MS} (ms, about 24.8 days: the longest timer Node runs)` };
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * `base` ('must be a string'), saying why when YAML read the value as a number or boolean (`host: 127.1`,
 * `name: 1e3`, `key: true`): the fix is quoting it. The value is not repeated: it may be a key.
 */
export function stringMessage(v: unknown, base: string): string {
  return typeof v === 'number' || typeof v === 'boolean' ? `must be a string (YAML read a ${typeof v} here: quote it)` : base;
}

function typeMessage(rule: IntRule): string {
  if (rule.min === 1 && rule.max === undefined) return 'must be a positive integer';
  if (rule.min !== undefined && rule.max !== undefined) return `must be an integer between ${rule.min} and ${rule.max}`;
  return 'must be an integer';
}

function rangeMessage(rule: IntRule): string {
  if (rule.min === 1 && rule.max === undefined) return 'must be a positive integer';
  if (rule.min !== undefined && rule.max !== undefined) return `must be an integer between ${rule.min} and ${rule.max}`;
  if (rule.min === 0) return 'must not be negative';
  if (rule.min !== undefined) return `must be at least ${rule.min}`;
  return `must be at most ${rule.max}`;
}

/** Statuses that carry no body (RFC 9110): a rejection answers with one, so they cannot be a `rejected_code`. */
const BODILESS = new Set([204, 205, 304]);

/** A `rejected_code` (200–599 as APISIX and Higress take it, except a status that carries no body); 429 when unset. */
export function rejectedCode(sec: Section): number {
  const code = sec.int('rejected_code', { min: 200, max: 599 });
  if (code !== undefined && BODILESS.has(code)) {
    sec.is.add(sec.p('rejected_code'), `must not be ${code}: a rejection carries an error body, which a ${code} answer cannot`);
  }
  return code ?? 429;
}

/** Check an integer value already taken out of its object (array items, map values). */
export function checkInt(is: Issues, path: string, v: unknown, rule: IntRule): number | undefined {
  let n = v;
  if (typeof v === 'string' && is.wholeEnv.has(path) && /^-?\d{1,16}$/.test(v)) n = Number(v);
  if (typeof n !== 'number' || !Number.isSafeInteger(n)) {
    // A number past 2^53 − 1 is an integer the counters cannot hold exactly: say where the bound is.
    const tooBig = typeof n === 'number' && Number.isInteger(n) && n > 0 && rule.max === undefined;
    is.add(path, tooBig ? `must be at most ${Number.MAX_SAFE_INTEGER}` : typeMessage(rule.above === undefined ? rule : { min: rule.min }));
    return undefined;
  }
  if (rule.above !== undefined && rule.max !== undefined && n > rule.max) {
    is.add(path, rule.above);
    return undefined;
  }
  if ((rule.min !== undefined && n < rule.min) || (rule.max !== undefined && n > rule.max)) {
    is.add(path, rangeMessage(rule.above === undefined ? rule : { min: rule.min }));
    return undefined;
  }
  return n;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(cur + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** The closest allowed name within two edits, for "did you mean" hints on typos. */
export function suggest(name: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const a of allowed) {
    const d = editDistance(name.toLowerCase(), a.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = a;
    }
  }
  return best;
}

export function unknownMessage(what: string, name: string, allowed: readonly string[]): string {
  const hint = suggest(name, allowed);
  return hint === undefined ? `unknown ${what}` : `unknown ${what} (did you mean ${hint}?)`;
}

export class Section {
  private constructor(
    readonly is: Issues,
    readonly path: string,
    private readonly obj: Readonly<Record<string, unknown>>,
  ) {}

  /**
   * Open `value` as an object at `path` and report keys outside `allowed`. YAML's empty value (null) and an
   * absent section both read as {}, so `key-auth:` with nothing after it means the plugin with defaults.
   */
  static open(is: Issues, path: string, value: unknown, allowed: readonly string[]): Section | undefined {
    if (value === undefined || value === null) return new Section(is, path, {});
    if (!isPlainObject(value)) {
      is.add(path, 'must be an object');
      return undefined;
    }
    for (const key of Object.keys(value)) {
      if (!allowed.includes(key)) is.add(childPath(path, key), unknownMessage('key', key, allowed));
    }
    return new Section(is, path, value);
  }

  p(key: string | number): string {
    return childPath(this.path, key);
  }

  /** The key is written, even with an empty value (Higress's `limit_by_consumer: ''`). */
  written(key: string): boolean {
    return Object.hasOwn(this.obj, key);
  }

  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  get(key: string): unknown {
    if (!Object.hasOwn(this.obj, key)) return undefined;
    const v = this.obj[key];
    return v === null ? undefined : v;
  }

  required(key: string): boolean {
    if (this.has(key)) return true;
    this.is.add(this.p(key), 'is required');
    return false;
  }

  str(key: string, opts: { required?: boolean; empty?: boolean } = {}): string | undefined {
    const v = this.get(key);
    if (v === undefined) {
      if (opts.required === true) this.is.add(this.p(key), 'is required');
      return undefined;
    }
    if (typeof v !== 'string' || (opts.empty !== true && v === '')) {
      this.is.add(this.p(key), stringMessage(v, opts.empty === true ? 'must be a string' : 'must be a non-empty string'));
      return undefined;
    }
    return v;
  }

  int(key: string, rule: IntRule, required = false): number | undefined {
    const v = this.get(key);
    if (v === undefined) {
      if (required) this.is.add(this.p(key), 'is required');
      return undefined;
    }
    return checkInt(this.is, this.p(key), v, rule);
  }

  bool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v === 'boolean') return v;
    if (this.is.wholeEnv.has(this.p(key)) && (v === 'true' || v === 'false')) return v === 'true';
    // YAML 1.2 reads yes/no/on/off (YAML 1.1 booleans) and quoted "true" as strings: say what to write.
    this.is.add(this.p(key), typeof v === 'string' && /^(?:yes|no|on|off|y|n|true|false)$/i.test(v) ? 'must be a boolean: write true or false, unquoted' : 'must be a boolean');
    return undefined;
  }

  oneOf<T extends string>(key: string, values: readonly T[]): T | undefined {
    const v = this.get(key);
    if (v === undefined) return undefined;
    if (typeof v === 'string' && (values as readonly string[]).includes(v)) return v as T;
    this.is.add(this.p(key), `must be one of: ${values.join(', ')}`);
    return undefined;
  }

  /** An array, or undefined with an issue. `nonEmpty` also rejects []. */
  array(key: string, opts: { required?: boolean; nonEmpty?: boolean } = {}): readonly unknown[] | undefined {
    const v = this.get(key);
    if (v === undefined) {
      if (opts.required === true) this.is.add(this.p(key), 'is required');
      return undefined;
    }
    if (!Array.isArray(v)) {
      this.is.add(this.p(key), opts.nonEmpty === true ? 'must be a non-empty array' : 'must be an array');
      return undefined;
    }
    if (opts.nonEmpty === true && v.length === 0) {
      this.is.add(this.p(key), 'must be a non-empty array');
      return undefined;
    }
    return v;
  }

  /** A nested object section. */
  section(key: string, allowed: readonly string[]): Section | undefined {
    return Section.open(this.is, this.p(key), this.get(key), allowed);
  }
}
