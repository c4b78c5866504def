// Reading a configuration file: YAML or JSON chosen by extension. A .json file is read with JSON.parse when
// that gives what the YAML parser would (see parseJson); anything else goes through the YAML parser (JSON is
// YAML 1.2), which gives both formats line and column numbers; resolveAliases then rejects duplicate keys and
// bounds aliases. yaml is loaded on the first YAML read: its first parse is ~12 ms of start-up CPU, JSON.parse well
// under 1 ms.

import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname } from 'node:path';
import type { Node as YamlNode, YAMLError } from 'yaml';
import type { SluiceConfig } from './types.ts';
import { ConfigError, formatIssue } from './issues.ts';
import { rootShapeMessage, validateConfig } from './validate.ts';

const EXTENSIONS = ['.yaml', '.yml', '.json'];
// A require() of a literal specifier: scripts/bundle.mjs bundles it (and keeps it lazy).
const require = createRequire(import.meta.url);
let yamlModule: typeof import('yaml') | undefined;
function yaml(): typeof import('yaml') {
  return (yamlModule ??= require('yaml') as typeof import('yaml'));
}

/** Why yaml gave up on a tag, without the value (it may be a secret): the value would be read as plain text. */
function tagReason(err: YAMLError): string | undefined {
  if (err.code !== 'TAG_RESOLVE_FAILED') return undefined;
  const m = /^Unresolved tag: (\S+)/.exec(err.message);
  if (m === null) return undefined;
  const tag = m[1]!.replace(/^tag:yaml\.org,2002:/, '!!');
  return `tag ${tag} is unknown or does not fit its value; remove it (Sluice reads no custom tags: use $ENV://NAME for secrets)`;
}

function parseIssue(fileName: string, err: YAMLError): { path: string; message: string } {
  const pos = err.linePos?.[0];
  // yaml's message repeats the position and quotes the source; keep its first sentence only.
  const reason = tagReason(err) ?? (err.message.split('\n')[0] ?? err.message).replace(/ at line \d+, column \d+:?$/, '');
  return { path: '', message: pos === undefined ? `${fileName}: ${reason}` : `${fileName}:${pos.line}:${pos.col}: ${reason}` };
}

function isKeyNamed(node: unknown, name: string): boolean {
  const { isPair, isScalar } = yaml();
  return isPair(node) && isScalar(node.key) && node.key.value === name;
}

/**
 * Higress limit keys are strings, but YAML reads `key: 102234` as a number and would turn `key: 0123` into
 * 123. Keep the source text of numeric `key` scalars under a `limit_keys` list.
 */
function keepLimitKeyText(doc: Parameters<typeof import('yaml').visit>[0]): void {
  const { isMap, isScalar, visit } = yaml();
  visit(doc, {
    Pair(_, pair, path) {
      if (!isKeyNamed(pair, 'key') || !isScalar(pair.value) || typeof pair.value.value !== 'number') return;
      // path ends [..., Pair(limit_keys), Seq, Map]: the map holding this pair is an item of limit_keys.
      const owner = path[path.length - 3];
      if (isMap(path[path.length - 1]) && isKeyNamed(owner, 'limit_keys')) {
        pair.value.value = pair.value.source ?? String(pair.value.value);
      }
    },
  });
}

/** Keys written in JSON text (a string followed by ':'); `text` is valid JSON. */
function jsonKeyTokens(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    if (text.charCodeAt(i) !== 0x22) continue;
    for (i++; text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++;
    let j = i + 1;
    while (j < text.length && (text[j] === ' ' || text[j] === '\t' || text[j] === '\n' || text[j] === '\r')) j++;
    if (text.charCodeAt(j) === 0x3a) n++;
  }
  return n;
}

/**
 * JSON.parse's reading of a .json file, or undefined where the YAML parser must read it: text that is not
 * JSON (YAML in a .json file, syntax errors, which get line and column there), duplicate keys (JSON.parse keeps
 * the last, YAML refuses: every key written must be a key read), and Higress `limit_keys` (the YAML path keeps
 * the source text of their numeric keys).
 */
function parseJson(text: string): { value: unknown } | { syntax: string } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { syntax: err instanceof Error ? err.message : String(err) };
  }
  let keys = 0;
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (Array.isArray(v)) for (const item of v) stack.push(item);
    else if (typeof v === 'object' && v !== null) {
      if (Object.hasOwn(v, 'limit_keys')) return undefined;
      const own = Object.keys(v);
      keys += own.length;
      for (const k of own) stack.push((v as Record<string, unknown>)[k]);
    }
  }
  return keys === jsonKeyTokens(text) ? { value } : undefined;
}

const TOO_DEEP = 'is nested too deeply to read (a config nested more than 64 levels deep is an error)';

/** Most nodes aliases may add to a file: a config reuses a few blocks; past this an alias bomb is at work (a
 *  64 KB file aliasing a 30,000-item list 99 times took 44 s and 1.6 GB to validate). */
export const MAX_ALIAS_EXPANSION = 1_000_000;
const ALIAS_BOMB = `its aliases (*name) expand the config by more than ${MAX_ALIAS_EXPANSION} nodes (an alias repeats all its anchor holds); repeat less`;

class AliasBomb extends Error {}

interface SourceIssue {
  readonly offset: number;
  readonly message: string;
}

/**
 * One pass over the document, linear in its size: replaces each alias by the node it names and bounds what
 * that adds (an alias counts the size of its anchor's node, memoized, so nested aliases multiply as they would
 * in toJS), and reports duplicate keys with a Set per map (yaml's own check scans every earlier key: 13 s for a
 * 40,000-key map). With no alias left, toJS never runs yaml's alias lookup, which scans every anchor per alias.
 */
function resolveAliases(doc: { contents: unknown }): SourceIssue[] {
  const { isAlias, isMap, isNode, isScalar, isSeq } = yaml();
  const issues: SourceIssue[] = [];
  const anchors = new Map<string, YamlNode>();
  const sizes = new Map<YamlNode, number>();
  const open = new Set<YamlNode>();
  let added = 0;
  const offset = (n: unknown): number => (isNode(n) ? n.range?.[0] ?? 0 : 0);

  const child = (v: unknown): [unknown, number] => {
    if (!isAlias(v)) return [v, walk(v)];
    const target = anchors.get(v.source);
    if (target === undefined) {
      issues.push({ offset: offset(v), message: `alias *${v.source} names no anchor before it` });
      return [v, 1];
    }
    if (open.has(target)) {
      issues.push({ offset: offset(v), message: `alias *${v.source} is inside the node it names` });
      return [v, 1];
    }
    const n = sizes.get(target)!;
    added += n;
    if (added > MAX_ALIAS_EXPANSION) throw new AliasBomb();
    return [target, n];
  };

  const walk = (node: unknown): number => {
    if (!isNode(node)) return 1;
    if (node.anchor !== undefined) {
      anchors.set(node.anchor, node);
      open.add(node);
    }
    let n = 1;
    if (isMap(node)) {
      const keys = new Set<string>();
      for (const pair of node.items) {
        const at = offset(pair.key);
        const [key, ks] = child(pair.key);
        const [value, vs] = child(pair.value);
        pair.key = key;
        pair.value = value;
        n += ks + vs;
        if (isAlias(key)) continue;
        if (!isScalar(key)) {
          if (key !== null) issues.push({ offset: at, message: 'a key must be a plain value, not a mapping or list' });
          continue;
        }
        // A merge key (<<) is a Symbol and may repeat. 1 and '1' are one key of the JS object: a duplicate.
        if (typeof key.value === 'symbol') continue;
        const id = key.value === null ? '' : String(key.value);
        if (keys.has(id)) issues.push({ offset: at, message: 'Map keys must be unique' });
        else keys.add(id);
      }
    } else if (isSeq(node)) {
      for (let i = 0; i < node.items.length; i++) {
        const [item, size] = child(node.items[i]);
        node.items[i] = item;
        n += size;
      }
    }
    if (node.anchor !== undefined) {
      open.delete(node);
      sizes.set(node, n);
    }
    return n;
  };

  doc.contents = child(doc.contents)[0];
  return issues;
}

/** The first value YAML 1.1's tags made that JSON has no form for (!!binary, !!timestamp, !!set, !!omap), with its
 *  path: passed on, a Buffer or a Date would reach an upstream body (instance options) as something else. */
function notPlainData(v: unknown, path: string): { path: string; kind: string; tag: string } | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  if (v instanceof Uint8Array) return { path, kind: 'binary', tag: 'binary' };
  if (v instanceof Date) return { path, kind: 'timestamp', tag: 'timestamp' };
  if (v instanceof Set) return { path, kind: 'set', tag: 'set' };
  if (v instanceof Map) return { path, kind: 'ordered map', tag: 'omap or !!pairs' };
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const r = notPlainData(v[i], `${path}[${i}]`);
      if (r !== undefined) return r;
    }
    return undefined;
  }
  for (const [k, x] of Object.entries(v)) {
    const r = notPlainData(x, path === '' ? k : `${path}.${k}`);
    if (r !== undefined) return r;
  }
  return undefined;
}

/** JSON.parse's complaint about a .json file, at the line and column of the position it names. */
function jsonSyntax(fileName: string, text: string, message: string): string {
  const m = / at position (\d+)/.exec(message);
  const at = m !== null ? Number(m[1]) : message.includes('end of JSON input') ? text.length : -1;
  // V8 quotes the text around an unexpected token: left out, as the file may hold secrets.
  const reason = message.replace(/ at position \d+.*$/s, '').replace(/ in JSON$/, '').replace(/, (?:\.\.\.)?".*$/s, '').replace(/^Unexpected end of JSON input$/, 'unexpected end of the file');
  if (at < 0) return `${fileName}: not valid JSON: ${reason}`;
  let line = 1;
  let start = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < at; i = text.indexOf('\n', i + 1)) { line++; start = i + 1; }
  return `${fileName}:${line}:${at - start + 1}: not valid JSON: ${reason}`;
}

/** Parse configuration text; throws ConfigError (path '') with file:line:col on syntax errors. */
export function parseConfigText(text: string, fileName: string): unknown {
  const ext = extname(fileName).toLowerCase();
  if (!EXTENSIONS.includes(ext)) {
    throw new ConfigError([{ path: '', message: `${fileName}: unsupported file type; use .yaml, .yml or .json` }]);
  }
  if (ext === '.json') {
    const json = parseJson(text);
    if (json !== undefined && 'value' in json) return json.value;
    // YAML in a .json file is still read; a file that is neither gets JSON's complaint, not YAML's.
    if (json !== undefined) {
      try {
        return parseYamlText(text, fileName);
      } catch (err) {
        if (err instanceof ConfigError && err.issues.every((i) => i.path === '')) throw new ConfigError([{ path: '', message: jsonSyntax(fileName, text, json.syntax) }]);
        throw err;
      }
    }
  }
  return parseYamlText(text, fileName);
}

function parseYamlText(text: string, fileName: string): unknown {
  const lines = new (yaml().LineCounter)();
  let docs: ReturnType<ReturnType<typeof yaml>['parseAllDocuments']>;
  try {
    // Duplicate keys are checked in resolveAliases: yaml's check is quadratic. `merge`: `<<: *defaults` works.
    docs = yaml().parseAllDocuments(text, { prettyErrors: true, lineCounter: lines, uniqueKeys: false, merge: true });
  } catch (err) {
    // yaml's parser recurses per level: a file nested about a thousand deep overflows the stack.
    if (err instanceof RangeError) throw new ConfigError([{ path: '', message: `${fileName}: ${TOO_DEEP}` }]);
    throw err;
  }
  if (!Array.isArray(docs) || docs.length === 0) return undefined;
  if (docs.length > 1) {
    throw new ConfigError([{ path: '', message: `${fileName}: holds ${docs.length} YAML documents; expected one` }]);
  }
  const doc = docs[0]!;
  // yaml's composer recurses per level and reports the stack it overflowed as one error per level.
  // It overflows on a long run of errors too (a thousand `k: a: b` lines): then those errors are the news.
  if (doc.errors.some((e) => e.message.includes('call stack'))) {
    const others = doc.errors.filter((e) => !e.message.includes('call stack'));
    if (others.length === 0) throw new ConfigError([{ path: '', message: `${fileName}: ${TOO_DEEP}` }]);
    throw new ConfigError(others.map((e) => parseIssue(fileName, e)));
  }
  let found: SourceIssue[];
  try {
    found = resolveAliases(doc);
  } catch (err) {
    if (err instanceof AliasBomb) throw new ConfigError([{ path: '', message: `${fileName}: ${ALIAS_BOMB}` }]);
    if (err instanceof RangeError) throw new ConfigError([{ path: '', message: `${fileName}: ${TOO_DEEP}` }]);
    throw err;
  }
  // Warnings are errors too: an unknown tag (`!vault path`) would otherwise be read as the plain text after it.
  const issues = [
    ...[...doc.errors, ...doc.warnings].map((e) => ({ offset: e.pos[0], issue: parseIssue(fileName, e) })),
    ...found.map((f) => {
      const pos = lines.linePos(f.offset);
      return { offset: f.offset, issue: { path: '', message: `${fileName}:${pos.line}:${pos.col}: ${f.message}` } };
    }),
  ];
  if (issues.length > 0) throw new ConfigError(issues.sort((a, b) => a.offset - b.offset).map((i) => i.issue));
  keepLimitKeyText(doc);
  let value: unknown;
  try {
    // No alias is left (resolveAliases bounded what they add): yaml's own alias count has nothing to count.
    value = doc.toJS({ maxAliasCount: -1 });
  } catch (err) {
    const why = err instanceof RangeError ? TOO_DEEP : err instanceof Error ? err.message : String(err);
    throw new ConfigError([{ path: '', message: `${fileName}: ${why}` }]);
  }
  const odd = notPlainData(value, '');
  if (odd !== undefined) {
    const what = formatIssue({ path: odd.path, message: `is a YAML ${odd.kind} (a !!${odd.tag} tag): config values are plain strings, numbers, lists and mappings` });
    throw new ConfigError([{ path: '', message: `${fileName}: ${what}` }]);
  }
  return value;
}

/** Largest config file read: a 20,000-route file is ~2 MB; a bound keeps /dev/zero or a runaway generator out. */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export function loadConfigFile(path: string, env: NodeJS.ProcessEnv = process.env): SluiceConfig {
  let bytes: Buffer;
  try {
    // A regular file only: a FIFO would block the read (a reload with it), a device such as /dev/zero never ends.
    const st = statSync(path);
    if (!st.isFile()) throw new ConfigError([{ path: '', message: `${path}: is not a regular file` }]);
    if (st.size > MAX_CONFIG_BYTES) throw new ConfigError([{ path: '', message: `${path}: is ${st.size} bytes; a config file is at most ${MAX_CONFIG_BYTES}` }]);
    bytes = readFileSync(path);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'read error';
    throw new ConfigError([{ path: '', message: `${path}: cannot read the file (${code})` }]);
  }
  // A file saved as UTF-16 (some Windows editors) reads as text full of NULs: say so, not "must be an object".
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff) || bytes.subarray(0, 4096).includes(0)) {
    throw new ConfigError([{ path: '', message: `${path}: is not UTF-8 text (UTF-16, or binary); save it as UTF-8` }]);
  }
  const text = bytes.toString('utf8');
  const raw = parseConfigText(text, path);
  // A file with no document (empty, blank or comments only) is most often one caught half-written by an editor or
  // config management: served, it would drop every route (and, on a reload, the local quota counters with them).
  if (raw === undefined || raw === null) {
    throw new ConfigError([{ path: '', message: `${path}: the file holds no config (it is empty or only comments); expected a mapping with routes` }]);
  }
  const shape = rootShapeMessage(raw);
  if (shape !== undefined) throw new ConfigError([{ path: '', message: `${path}: ${shape}` }]);
  return validateConfig(raw, env);
}
