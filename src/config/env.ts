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
      is.add(path, `environment variable ${name} is not set`);
      ok = false;
      return ref;
    }
    return v;
  });
  if (!ok) is.silence(path);
  else if (WHOLE.test(s)) is.wholeEnv.add(path);
  return out;
}

/** A substituted copy of `value`. Objects are copied onto null prototypes so a `__proto__` key stays a plain key. */
export function substituteEnv(value: unknown, path: string, env: NodeJS.ProcessEnv, is: Issues): unknown {
  if (typeof value === 'string') return substituteString(value, path, env, is);
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, childPath(path, i), env, is));
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    for (const key of Object.keys(value)) out[key] = substituteEnv(value[key], childPath(path, key), env, is);
    return out;
  }
  return value;
}
