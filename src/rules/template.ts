// Templates over request variables, compiled once at config load.
//   keys:   '${http_x_subscription_id}', '${consumer_name}-${remote_addr}', '$remote_addr', plain text,
//           '${http_x_tier ?? free}' (a default makes the variable optional)
//   counts: 500, '500', '${http_x_custom_count}', '${http_x_custom_count ?? 500}'

import { compileVar, type RequestVars, type VarGetter } from './request-vars.ts';

export type KeyTemplate = (vars: RequestVars) => string | undefined;
export type CountTemplate = (vars: RequestVars) => number | undefined;

interface VarPart {
  readonly name: string;
  readonly get: VarGetter;
  readonly fallback: string | undefined;
}

/** A variable a template cannot do without (no `?? default`), with its getter: names the culprit of a miss. */
export interface RequiredVar {
  readonly name: string;
  readonly get: VarGetter;
}

function isNameChar(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
}

function isNameStart(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95;
}

/** Parse the inside of `${...}`: a name, optionally `?? default`. */
function parseBraced(src: string, inner: string, at: number): { name: string; fallback: string | undefined } {
  const q = inner.indexOf('??');
  const name = (q < 0 ? inner : inner.slice(0, q)).trim();
  if (name === '') throw new Error(`template "${src}": empty variable name at position ${at}`);
  for (let i = 0; i < name.length; i++) {
    if (!isNameChar(name.charCodeAt(i))) throw new Error(`template "${src}": invalid variable name "${name}" at position ${at}`);
  }
  if (q < 0) return { name, fallback: undefined };
  const fallback = inner.slice(q + 2).trim();
  if (fallback === '') throw new Error(`template "${src}": empty default after "??" at position ${at}`);
  return { name, fallback };
}

function withPosition(src: string, at: number, name: string): VarGetter {
  try {
    return compileVar(name);
  } catch (err) {
    throw new Error(`template "${src}": ${(err as Error).message} at position ${at}`);
  }
}

/** Split a template into literal strings and variables. */
function parseTemplate(src: string): (string | VarPart)[] {
  const parts: (string | VarPart)[] = [];
  let lit = '';
  let i = 0;
  while (i < src.length) {
    const c = src.charCodeAt(i);
    if (c !== 36 /* $ */) {
      lit += src[i];
      i++;
      continue;
    }
    if (src.charCodeAt(i + 1) === 123 /* { */) {
      const close = src.indexOf('}', i + 2);
      if (close < 0) throw new Error(`template "${src}": unclosed "\${" at position ${i}`);
      const { name, fallback } = parseBraced(src, src.slice(i + 2, close), i);
      if (lit !== '') parts.push(lit);
      lit = '';
      parts.push({ name, get: withPosition(src, i, name), fallback });
      i = close + 1;
      continue;
    }
    if (isNameStart(src.charCodeAt(i + 1))) {
      let j = i + 1;
      while (j < src.length && isNameChar(src.charCodeAt(j))) j++;
      if (lit !== '') parts.push(lit);
      lit = '';
      const name = src.slice(i + 1, j);
      parts.push({ name, get: withPosition(src, i, name), fallback: undefined });
      i = j;
      continue;
    }
    lit += '$';
    i++;
  }
  if (lit !== '') parts.push(lit);
  return parts;
}

/**
 * Compile a key template. The result is undefined when any variable without a default is absent,
 * so a rule keyed on a missing header is skipped rather than lumping every such request together.
 */
export function compileTemplate(src: string): KeyTemplate {
  const parts = parseTemplate(src);
  if (parts.length === 0) throw new Error('template is empty');
  if (parts.length === 1) {
    const only = parts[0]!;
    if (typeof only === 'string') return () => only;
    const { get, fallback } = only;
    return fallback === undefined ? get : (v) => get(v) ?? fallback;
  }
  return (vars) => {
    let out = '';
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (typeof p === 'string') {
        out += p;
        continue;
      }
      const val = p.get(vars) ?? p.fallback;
      if (val === undefined) return undefined;
      out += val;
    }
    return out;
  };
}

/** The variables of a template with their getters, in order (numbers have none); `defaulted`: those with a default too. */
function varGetters(src: string | number, defaulted: boolean): RequiredVar[] {
  if (typeof src === 'number') return [];
  const out: RequiredVar[] = [];
  for (const p of parseTemplate(src)) {
    if (typeof p !== 'string' && (defaulted || p.fallback === undefined)) out.push({ name: p.name, get: p.get });
  }
  return out;
}

/** The variables of a key or count template that have no default, in order (numbers have none). */
export function requiredVars(src: string | number): RequiredVar[] {
  return varGetters(src, false);
}

/** The variable of a count or time_window template, with its getter (numbers and literals name none): a count
 *  that does not resolve is the fault of this one, absent or not a positive integer, default or not. */
export function countVars(src: string | number): RequiredVar[] {
  return varGetters(src, true);
}

/** Every variable a key or count template names, defaults or not (numbers name none). */
export function templateVars(src: string | number): string[] {
  if (typeof src === 'number') return [];
  const out: string[] = [];
  for (const p of parseTemplate(src)) if (typeof p !== 'string' && !out.includes(p.name)) out.push(p.name);
  return out;
}

/** A positive safe integer written in plain decimal digits, else undefined. No regex: this runs per request. */
export function parsePositiveInt(s: string): number | undefined {
  const n = s.length;
  if (n === 0 || n > 16) return undefined;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return undefined;
  }
  const v = Number(s);
  return v > 0 && Number.isSafeInteger(v) ? v : undefined;
}

/**
 * Compile a count or time window: a positive integer up to `max`, or `${var}` / `${var ?? default}` resolved per
 * request. The default stands in for an absent or empty value; a value that is not such an integer yields undefined.
 */
export function compileCountTemplate(src: string | number, what = 'count', max = Number.MAX_SAFE_INTEGER): CountTemplate {
  const bounded = (n: number | undefined): number | undefined => (n !== undefined && n <= max ? n : undefined);
  const range = max === Number.MAX_SAFE_INTEGER ? 'a positive integer' : `an integer from 1 to ${max}`;
  if (typeof src === 'number') {
    if (!Number.isSafeInteger(src) || src <= 0 || src > max) throw new Error(`${what} ${src} is not ${range}`);
    return () => src;
  }
  const s = src.trim();
  const literal = parsePositiveInt(s);
  if (literal !== undefined) {
    if (literal > max) throw new Error(`${what} ${literal} is not ${range}`);
    return () => literal;
  }
  if (!s.startsWith('${') || s.indexOf('}') !== s.length - 1) {
    throw new Error(`${what} "${src}" must be ${range}, "\${var}" or "\${var ?? default}"`);
  }
  const { name, fallback } = parseBraced(src, s.slice(2, -1), 0);
  const get = withPosition(src, 0, name);
  if (fallback === undefined) {
    return (v) => {
      const raw = get(v);
      return raw === undefined ? undefined : bounded(parsePositiveInt(raw));
    };
  }
  const def = bounded(parsePositiveInt(fallback));
  if (def === undefined) throw new Error(`${what} "${src}": default "${fallback}" is not ${range}`);
  return (v) => {
    const raw = get(v);
    return raw === undefined || raw === '' ? def : bounded(parsePositiveInt(raw));
  };
}
