// Properties of config validation (src/config/validate.ts) and loading (src/config/load.ts), over mutations of
// the seed configurations in test/fixtures/config/ and examples/: validation never throws anything but a
// ConfigError whose issues each carry a non-empty path (but the count past the first 100) and never quote a
// secret; a config that validates is deep-frozen, validates to the same result again and leaves its input
// untouched; parsing any text gives a value or a ConfigError.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';
import { parseConfigText } from '../../src/config/load.ts';
import { check, describeThrown, within } from './fc-setup.ts';

const root = new URL('../..', import.meta.url).pathname;
const SECRET_MARK = '5ecr3t';
const ENV: NodeJS.ProcessEnv = {
  OPENAI_API_KEY: `sk-${SECRET_MARK}-openai`,
  DEEPSEEK_API_KEY: `sk-${SECRET_MARK}-deepseek`,
  SLUICE_MOCK_ENDPOINT: 'http://127.0.0.1:9/v1/chat/completions',
  SLUICE_MOCK_ORIGIN: 'http://127.0.0.1:9',
  SECRET_VALUE: `${SECRET_MARK}-value`,
  NUMERIC: '42',
  FLAG: 'true',
};

function seedFiles(): string[] {
  const dirs = [join(root, 'test/fixtures/config/seeds'), join(root, 'test/fixtures/config/command'), join(root, 'examples')];
  const out: string[] = [];
  for (const d of dirs) for (const f of readdirSync(d)) if (/\.(json|ya?ml)$/.test(f)) out.push(join(d, f));
  return out.sort();
}

/** Seeds as parsed trees, with whether each validates as it is. */
const SEEDS = seedFiles().map((file) => {
  let tree: unknown;
  try {
    tree = parseConfigText(readFileSync(file, 'utf8'), file);
  } catch {
    tree = undefined;
  }
  return { file, tree };
}).filter((s) => s.tree !== undefined);

type Key = string | number;

function pathsOf(v: unknown, prefix: Key[] = [], out: Key[][] = []): Key[][] {
  out.push(prefix);
  if (Array.isArray(v)) v.forEach((x, i) => pathsOf(x, [...prefix, i], out));
  else if (typeof v === 'object' && v !== null) for (const k of Object.keys(v)) pathsOf((v as Record<string, unknown>)[k], [...prefix, k], out);
  return out;
}

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

function parentOf(tree: unknown, path: readonly Key[]): Record<Key, unknown> | undefined {
  let cur = tree;
  for (const k of path.slice(0, -1)) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<Key, unknown>)[k];
  }
  return typeof cur === 'object' && cur !== null ? (cur as Record<Key, unknown>) : undefined;
}

/** Values that probe every reader: wrong types, limits, templates, env references, regexps, addresses. */
const hostileValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 0, 1, 1.5, 65536, 1e300, -0, Number.MAX_SAFE_INTEGER + 2, '', ' ', '0', '42', 'true', true, false, null, [], {},
    '$ENV://SECRET_VALUE', 'Bearer $ENV://SECRET_VALUE', '$ENV://NUMERIC', '$ENV://FLAG', '$ENV://UNSET_VAR', '$ENV://', '$ENV://1x',
    'regexp:(a+)+$', 'regexp:[', '*', '${http_x_user}', '${http_x ?? 5}', '${', '$remote_addr', '/v1/*', '/a b', 'http://127.0.0.1:1/x', 'ftp://x',
    '127.0.0.1', '::1', '10.0.0.0/8', '999.1.1.1/99', 'expression', 'prompt_tokens * 2 +', 'redis', 'redis-cluster', 'local', 'sliding', 'ietf',
    '__proto__', 'constructor', 'openai', 'openai-compatible', 'deepseek', 'POST', 'get', ['POST', 'POST'], [{}], [null], { '': 1 }),
);

const keyName = fc.oneof(
  fc.string({ maxLength: 8 }),
  fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'limit', 'time_window', 'cost_expr', 'limit_strategy', 'rules', 'instances',
    'policy', 'redis_host', 'redis_cluster_nodes', 'key', 'count', 'header_prefix', 'fallback_strategy', 'priority', 'weight', 'auth', 'override',
    'options', 'key-auth', 'ai-proxy', 'ai-proxy-multi', 'ai-rate-limiting', 'ai-token-ratelimit', 'rule_items', 'global_threshold', 'max_usage'),
);

type Mutation =
  | { kind: 'replace'; at: number; value: unknown }
  | { kind: 'delete'; at: number }
  | { kind: 'add'; at: number; key: string; value: unknown }
  | { kind: 'copy'; at: number; from: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), value: hostileValue }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('add' as const), at: fc.nat(), key: keyName, value: hostileValue }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('copy' as const), at: fc.nat(), from: fc.nat() }) },
);

function mutate(seed: unknown, ms: readonly Mutation[]): unknown {
  let tree = clone(seed);
  for (const m of ms) {
    const paths = pathsOf(tree);
    const path = paths[m.at % paths.length]!;
    if (m.kind === 'add') {
      const target = path.length === 0 ? tree : parentOf(tree, [...path, 'x'])!;
      if (typeof target === 'object' && target !== null && !Array.isArray(target)) {
        // defineProperty: a '__proto__' key stays an own key, as JSON.parse and the YAML loader make it.
        Object.defineProperty(target, m.key, { value: clone(m.value ?? null), enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    if (path.length === 0) {
      if (m.kind === 'replace') tree = clone(m.value ?? null);
      continue;
    }
    const parent = parentOf(tree, path);
    if (parent === undefined) continue;
    const key = path[path.length - 1]!;
    if (m.kind === 'delete') {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key];
    } else {
      const value = m.kind === 'replace' ? m.value : pathsOf(tree).map((p) => p.reduce<unknown>((o, k) => (o as Record<Key, unknown>)[k], tree))[m.from % paths.length];
      Object.defineProperty(parent, key, { value: clone(value ?? null), enumerable: true, writable: true, configurable: true });
    }
  }
  return tree;
}

function assertDeepFrozen(v: unknown, path = 'config'): void {
  if (typeof v !== 'object' || v === null) return;
  assert.ok(Object.isFrozen(v), `${path} is not frozen`);
  assert.ok(!(v instanceof Map) && !(v instanceof Set), `${path} is a Map or Set: its entries cannot be frozen`);
  for (const [k, x] of Object.entries(v)) assertDeepFrozen(x, `${path}.${k}`);
}

const TOP_LEVEL = ['listen', 'admin', 'workers', 'limits', 'tokens', 'trusted_proxies', 'redis_batching', 'shutdown', 'key_hash_secret', 'routes', 'consumers'];

/** JSON text of a tree, or a marker for a cyclic one (a recursive YAML alias). */
function snapshotOf(tree: unknown): string {
  try {
    return JSON.stringify(tree) ?? 'undefined';
  } catch {
    return 'cyclic';
  }
}

/**
 * Validates, checking the contract on both outcomes; returns the config or undefined. `secrets`: also check
 * that no issue quotes an $ENV value (kept apart so the other checks still run while that one fails).
 */
function validate(tree: unknown, secrets = false): unknown {
  const snapshot = snapshotOf(tree);
  let config: unknown;
  try {
    config = validateConfig(tree, ENV);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `validateConfig threw ${describeThrown(err)}`);
    assert.ok(err.issues.length > 0, 'a ConfigError without issues');
    const rootIsObject = typeof tree === 'object' && tree !== null && !Array.isArray(tree);
    for (const issue of err.issues) {
      assert.ok(typeof issue.message === 'string' && issue.message.length > 0, `empty message at ${issue.path}`);
      if (secrets) assert.ok(!issue.message.includes(SECRET_MARK) && !issue.path.includes(SECRET_MARK), `an issue quotes a secret: ${issue.path}: ${issue.message}`);
      if (rootIsObject) {
        // The one issue without a path: the count of those past the first 100 (ConfigError lists no more).
        assert.ok(issue.path.length > 0 || /^… and \d+ more issues?$/.test(issue.message), `an issue without a path: ${issue.message}`);
        const under = (k: string): boolean => issue.path === k || issue.path.startsWith(k + '.') || issue.path.startsWith(k + '[');
        assert.ok([...TOP_LEVEL, ...Object.keys(tree), '[""]'].some(under), `issue path ${issue.path} is outside the config`);
      }
    }
    config = undefined;
  }
  assert.equal(snapshotOf(tree), snapshot, 'validation modified its input');
  if (config !== undefined) assertDeepFrozen(config);
  return config;
}

test('config: every seed parses and validates (the property below mutates them)', () => {
  assert.ok(SEEDS.length >= 10, `only ${SEEDS.length} seed configs found`);
  for (const s of SEEDS) {
    if (s.file.includes('broken')) continue;
    assert.ok(validate(s.tree) !== undefined, `${s.file} does not validate`);
  }
});

test('config: mutated seeds give a deep-frozen config or a ConfigError with a path on every issue, never a throw', () => {
  check(fc.property(fc.nat(), fc.array(mutation, { minLength: 1, maxLength: 6 }), (si, ms) => {
    validate(mutate(SEEDS[si % SEEDS.length]!.tree, ms));
  }), 400);
});

test('config: no issue quotes a value substituted from $ENV (it may be a secret)', () => {
  // Every string leaf is a candidate for a whole or partial $ENV reference to the secret.
  const ref = fc.constantFrom('$ENV://SECRET_VALUE', 'Bearer $ENV://SECRET_VALUE', '${http_x_$ENV://SECRET_VALUE}', '$ENV://SECRET_VALUE ?? 5', '/$ENV://SECRET_VALUE',
    'regexp:($ENV://SECRET_VALUE', '$ENV://SECRET_VALUE * prompt_tokens');
  // Half the runs aim at fields compiled by validation (templates, counts, expressions, regexp keys).
  const compiled = (p: readonly Key[]): boolean => p.some((k) => k === 'rules' || k === 'rule_items' || k === 'cost_expr' || k === 'limit_keys');
  check(fc.property(fc.nat(), fc.array(fc.tuple(fc.nat(), ref), { minLength: 1, maxLength: 3 }), fc.array(mutation, { maxLength: 2 }), fc.boolean(), (si, refs, ms, aim) => {
    const tree = mutate(SEEDS[si % SEEDS.length]!.tree, ms);
    const strings = pathsOf(tree).filter((p) => p.length > 0 && typeof p.reduce<unknown>((o, k) => (o as Record<Key, unknown>)[k], tree) === 'string');
    const aimed = strings.filter(compiled);
    const leaves = aim && aimed.length > 0 ? aimed : strings;
    if (leaves.length === 0) return;
    for (const [at, value] of refs) {
      const path = leaves[at % leaves.length]!;
      parentOf(tree, path)![path[path.length - 1]!] = value;
    }
    validate(tree, true);
  }), 300);
});

test('config: a config that validates validates to the same result again, and through JSON text too', () => {
  check(fc.property(fc.nat(), fc.array(mutation, { maxLength: 2 }), (si, ms) => {
    const tree = mutate(SEEDS[si % SEEDS.length]!.tree, ms);
    const first = validate(tree);
    if (first === undefined) return;
    assert.deepStrictEqual(validate(tree), first);
    const text = JSON.stringify(tree);
    assert.deepStrictEqual(validate(parseConfigText(text, 'c.json')), first);
  }), 200);
});

test('config: any JSON value or object as the whole config never throws anything but a ConfigError', () => {
  const shaped = fc.dictionary(fc.constantFrom(...TOP_LEVEL, 'x'), hostileValue, { maxKeys: 5 });
  check(fc.property(fc.oneof(fc.jsonValue({ maxDepth: 3 }), shaped), (tree) => {
    validate(tree);
  }), 300);
});

test('config load: any text gives a value or a ConfigError (path "", file name in the message)', () => {
  const yamlish = fc.string({
    unit: fc.oneof(fc.string({ minLength: 1, maxLength: 1 }), fc.constantFrom('\n', '  ', '- ', ': ', '&a ', '*a', '!!str ', '!!binary ', '{', '}', '[', ']', ',', '"', "'", '#', '---\n', '...\n', '<<: ', '%YAML 1.2\n', 'routes', 'key: 0123', 'limit_keys:\n  - key: 1\n')),
    maxLength: 40,
  });
  check(fc.property(yamlish, fc.constantFrom('c.yaml', 'c.yml', 'c.json', 'c.txt'), (text, name) => {
    try {
      parseConfigText(text, name);
    } catch (err) {
      assert.ok(err instanceof ConfigError, `parseConfigText threw ${describeThrown(err)}`);
      for (const issue of err.issues) {
        assert.equal(issue.path, '');
        assert.ok(issue.message.includes(name), issue.message);
      }
    }
  }), 400);
});

test('config load: deep nesting, recursive aliases and alias bombs end in a ConfigError within seconds', () => {
  const sources: [string, string][] = [
    ['deep JSON arrays', 'c.json', '{"routes":' + '['.repeat(5000) + ']'.repeat(5000) + '}'],
    ['deep YAML maps', 'c.yaml', Array.from({ length: 3000 }, (_, i) => ' '.repeat(i) + 'a:').join('\n') + ' 1'],
    ['recursive alias (sequence)', 'c.yaml', 'routes: &r [*r]'],
    ['recursive alias (map)', 'c.yaml', 'routes:\n  - &r { uri: /a, plugins: { ai-proxy: { provider: openai, options: { x: *r } } } }'],
    ['recursive alias at the root', 'c.yaml', '&r { routes: [], x: *r }'],
    ['alias bomb', 'c.yaml', ['a: &a [x,x,x,x,x,x,x,x,x,x]', ...Array.from({ length: 8 }, (_, i) => `${'bcdefghi'[i]}: &${'bcdefghi'[i]} [${Array(10).fill('*' + 'abcdefghi'[i]).join(',')}]`)].join('\n')],
  ].map(([name, file, text]) => [name!, `${file}\n${text}`] as [string, string]);
  for (const [name, both] of sources) {
    const nl = both.indexOf('\n');
    const file = both.slice(0, nl);
    const text = both.slice(nl + 1);
    within(10, name, () => {
      let tree: unknown;
      try {
        tree = parseConfigText(text, file);
      } catch (err) {
        assert.ok(err instanceof ConfigError, `${name}: parseConfigText threw ${describeThrown(err)}`);
        return;
      }
      assert.equal(validate(tree), undefined, `${name} validated`);
    });
  }
  // A deep tree handed to validateConfig directly (the programmatic API).
  let deep: unknown = 1;
  for (let i = 0; i < 20_000; i++) deep = i % 2 === 0 ? [deep] : { a: deep };
  within(10, 'deep tree', () => validate({ routes: [{ uri: '/', plugins: { 'ai-proxy': { provider: 'openai', options: deep } } }] }));
});
