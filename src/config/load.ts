// Reading a configuration file: YAML or JSON chosen by extension. JSON goes through the YAML parser too
// (JSON is YAML 1.2), which gives both formats line and column numbers and rejects duplicate keys.

import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { isMap, isPair, isScalar, parseAllDocuments, visit, type YAMLError } from 'yaml';
import type { SluiceConfig } from './types.ts';
import { ConfigError } from './issues.ts';
import { validateConfig } from './validate.ts';

const EXTENSIONS = ['.yaml', '.yml', '.json'];

function parseIssue(fileName: string, err: YAMLError): { path: string; message: string } {
  const pos = err.linePos?.[0];
  // yaml's message repeats the position and quotes the source; keep its first sentence only.
  const reason = (err.message.split('\n')[0] ?? err.message).replace(/ at line \d+, column \d+:?$/, '');
  return { path: '', message: pos === undefined ? `${fileName}: ${reason}` : `${fileName}:${pos.line}:${pos.col}: ${reason}` };
}

function isKeyNamed(node: unknown, name: string): boolean {
  return isPair(node) && isScalar(node.key) && node.key.value === name;
}

/**
 * Higress limit keys are strings, but YAML reads `key: 102234` as a number and would turn `key: 0123` into
 * 123. Keep the source text of numeric `key` scalars under a `limit_keys` list.
 */
function keepLimitKeyText(doc: Parameters<typeof visit>[0]): void {
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

/** Parse configuration text; throws ConfigError (path '') with file:line:col on syntax errors. */
export function parseConfigText(text: string, fileName: string): unknown {
  const ext = extname(fileName).toLowerCase();
  if (!EXTENSIONS.includes(ext)) {
    throw new ConfigError([{ path: '', message: `${fileName}: unsupported file type; use .yaml, .yml or .json` }]);
  }
  const docs = parseAllDocuments(text, { prettyErrors: true });
  if (!Array.isArray(docs) || docs.length === 0) return undefined;
  if (docs.length > 1) {
    throw new ConfigError([{ path: '', message: `${fileName}: holds ${docs.length} YAML documents; expected one` }]);
  }
  const doc = docs[0]!;
  if (doc.errors.length > 0) throw new ConfigError(doc.errors.map((e) => parseIssue(fileName, e)));
  keepLimitKeyText(doc);
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // yaml throws here on alias bombs (more alias expansions than maxAliasCount allows).
    throw new ConfigError([{ path: '', message: `${fileName}: ${err instanceof Error ? err.message : String(err)}` }]);
  }
}

export function loadConfigFile(path: string, env: NodeJS.ProcessEnv = process.env): SluiceConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'read error';
    throw new ConfigError([{ path: '', message: `${path}: cannot read the file (${code})` }]);
  }
  return validateConfig(parseConfigText(text, path), env);
}
