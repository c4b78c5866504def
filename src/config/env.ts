// `$ENV://NAME` substitution, done on a copy of the raw tree before any other check so that every field,
// including secrets in auth headers and Redis passwords, can come from the environment. A reference may
// be the whole string or part of it ('Bearer $ENV://OPENAI_API_KEY').

import { childPath, type Issues } from './issues.ts';
import { isPlainObject } from './section.ts';

const REF = /\$ENV:\/\/([A-Za-z0-9_]*)/g;
const WHOLE = /^\$ENV:\/\/[A-Za-z_][A-Za-z0-9_]*$/;
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function substituteString(s: string, path: string, env: NodeJS.ProcessEnv, is: Issues): string {
  if (!s.includes('$ENV://')) return s;
  let ok = true;
  const out = s.replace(REF, (ref, name: string) => {
    if (!NAME.test(name)) {
      is.add(path, '$ENV:// must be followed by a variable name');
      ok = false;
      return ref;
    }
    const v = env[name];
    if (v === undefined) {
      is.add(path, `environment variable ${name} is not set${name.startsWith('SLUICE_MOCK_') ? ' (start --embedded sets it for its built-in mock: check such a file with `sluice validate --embedded --config <file>`)' : ''}`);
      ok = false;
      return ref;
    }
    return v;
  });
  if (!ok) is.silence(path);
  else is.fromEnv.add(path);
  if (ok && WHOLE.test(s)) is.wholeEnv.add(path);
  return out;
}

// Far deeper than any real config. A deeper tree, or a cyclic one (a YAML alias inside its own anchor,
// `routes: &r [*r]`), is reported here instead of overflowing the stack in this and every later pass.
const MAX_DEPTH = 64;

/**
 * A substituted copy of `value`. Objects are copied onto null prototypes so a `__proto__` key stays a plain
 * key. The copy is a tree at most MAX_DEPTH deep: what lies deeper is reported and left out.
 */
export function substituteEnv(value: unknown, path: string, env: NodeJS.ProcessEnv, is: Issues, depth = 0): unknown {
  if (typeof value === 'string') return substituteString(value, path, env, is);
  if ((Array.isArray(value) || isPlainObject(value)) && depth >= MAX_DEPTH) {
    is.add(path, `is nested more than ${MAX_DEPTH} levels deep (or is a recursive alias)`);
    return undefined;
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, childPath(path, i), env, is, depth + 1));
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    for (const key of Object.keys(value)) out[key] = substituteEnv(value[key], childPath(path, key), env, is, depth + 1);
    return out;
  }
  return value;
}
