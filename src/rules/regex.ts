// Regular expressions from config (`regexp:` keys of ai-token-ratelimit), matched against client-supplied
// values on every request. They run on re2js, a pure-JS port of RE2: matching is linear in the input, so a
// pattern like `^(a+)+$` cannot block the event loop on a crafted header. RE2 syntax is Go's `regexp`, the
// engine Higress itself uses for these keys, so configs keep their meaning; backreferences and lookarounds,
// which Go rejects too, are config errors. re2js is imported here only, and loaded on the first pattern: most
// configs have none, and loading it builds its Unicode tables (~20 ms of start-up).

import { createRequire } from 'node:module';
import type { RE2JS } from 're2js';

const require = createRequire(import.meta.url);
let engine: typeof RE2JS | undefined;

export interface RuleRegex {
  /** Whether the pattern matches anywhere in `value` (unanchored, like Go's MatchString). */
  test(value: string): boolean;
}

/** Longest accepted pattern: a compiled RE2 program grows with the pattern, and config is not a place for novels. */
const MAX_PATTERN_CHARS = 1024;

/** Compile a config pattern. Throws Error with a short reason on bad syntax or unsupported constructs. */
export function compileRuleRegex(pattern: string): RuleRegex {
  if (pattern.length > MAX_PATTERN_CHARS) throw new Error(`pattern longer than ${MAX_PATTERN_CHARS} characters`);
  engine ??= (require('re2js') as typeof import('re2js')).RE2JS;
  let re: RE2JS;
  try {
    re = engine.compile(pattern);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(`${msg} (RE2 syntax: no backreferences or lookarounds)`);
  }
  return { test: (value) => re.test(value) };
}
