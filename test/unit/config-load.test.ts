import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { loadConfigFile, MAX_ALIAS_EXPANSION, MAX_CONFIG_BYTES, parseConfigText } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/validate.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

function parseError(text: string, file: string): ConfigError {
  try {
    parseConfigText(text, file);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  return assert.fail('expected a ConfigError');
}

describe('parseConfigText', () => {
  it('a .json file that is not JSON gets JSON\'s complaint at its line and column, never quoting the file; YAML in it is still read', () => {
    const issue = (text: string): string => {
      try { parseConfigText(text, 'c.json'); } catch (err) { return (err as ConfigError).issues.map((i) => i.message).join('; '); }
      return 'parsed';
    };
    assert.equal(issue('{\n  "routes": [\n    {"id": "r",\n'), 'c.json:4:1: not valid JSON: Expected double-quoted property name');
    assert.equal(issue('{"routes": [], "key": "sk-secret-123" }}'), 'c.json:1:40: not valid JSON: Unexpected non-whitespace character after JSON');
    const token = issue('{"routes": [}, "key": "sk-secret-123"}');
    assert.match(token, /^c\.json: not valid JSON: Unexpected token/);
    assert.doesNotMatch(token, /sk-secret/);
    assert.deepEqual(parseConfigText('routes: []\n', 'c.json'), { routes: [] });
  });
  it('reads YAML (.yaml and .yml) and JSON (.json, tabs included) into the same tree', () => {
    const yaml = 'routes:\n  - uri: /a\n    methods: [POST]\n';
    const json = '{\n\t"routes": [\n\t\t{ "uri": "/a", "methods": ["POST"] }\n\t]\n}\n';
    const expected = { routes: [{ uri: '/a', methods: ['POST'] }] };
    assert.deepEqual(parseConfigText(yaml, 'c.yaml'), expected);
    assert.deepEqual(parseConfigText(yaml, 'C.YML'), expected);
    assert.deepEqual(parseConfigText(json, 'c.json'), expected);
  });

  it('an empty file parses to nothing, and loading one is an error (a file caught half-written must not serve)', () => {
    assert.equal(parseConfigText('', 'c.yaml'), undefined);
    assert.equal(parseConfigText('# only a comment\n', 'c.yaml'), undefined);
    const dir = mkdtempSync(join(tmpdir(), 'sluice-empty-'));
    try {
      for (const [name, text] of [['a.yaml', ''], ['b.yml', '# only a comment\n'], ['c.json', ' \n'], ['d.json', 'null'], ['e.yaml', '~\n']] as const) {
        const file = join(dir, name);
        writeFileSync(file, text);
        assert.throws(() => loadConfigFile(file, {}), (err: unknown) => err instanceof ConfigError &&
          err.issues.length === 1 && err.issues[0]!.message === `${file}: the file holds no config (it is empty or only comments); expected a mapping with routes`, name);
      }
      for (const [name, bytes] of [['u16le.yaml', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('routes: []\n', 'utf16le')])],
        ['u16be.json', Buffer.from([0xfe, 0xff, 0x00, 0x7b, 0x00, 0x7d])], ['nul.yaml', Buffer.from('routes: []\n\0')]] as const) {
        const file = join(dir, name);
        writeFileSync(file, bytes);
        assert.throws(() => loadConfigFile(file, {}), (err: unknown) => err instanceof ConfigError &&
          err.issues[0]!.message === `${file}: is not UTF-8 text (UTF-16, or binary); save it as UTF-8`, name);
      }
      // A config that says it has no routes is one: a gateway may start with none.
      writeFileSync(join(dir, 'f.yaml'), 'routes: []\n');
      assert.deepEqual(loadConfigFile(join(dir, 'f.yaml'), {}).routes, []);
    } finally { rmSync(dir, { recursive: true, force: true }); }
  });

  it('rejects other extensions, several documents, and reports syntax errors with file:line:col', () => {
    assert.deepEqual(parseError('a: 1', 'c.toml').issues, [{ path: '', message: 'c.toml: unsupported file type; use .yaml, .yml or .json' }]);
    assert.deepEqual(parseError('a: 1\n---\nb: 2\n', 'c.yaml').issues, [{ path: '', message: 'c.yaml: holds 2 YAML documents; expected one' }]);
    const err = parseError('a: 1\nb: [1, 2\nc: 3\na: 4\n', 'c.yaml');
    assert.deepEqual(err.issues.map((i) => i.path), ['', '']);
    assert.match(err.issues[0]!.message, /^c\.yaml:3:1: Flow sequence/);
    assert.equal(err.issues[1]!.message, 'c.yaml:4:1: Map keys must be unique');
    assert.match(parseError('{"a": 1,, }', 'c.json').message, /^c\.json:1:9: /);
  });

  it('keeps the source text of numeric Higress limit keys, and only of those', () => {
    const text = [
      'rule_items:',
      '  - limit_by_header: x-ca-key',
      '    limit_keys:',
      '      - key: 0123',
      '        token_per_minute: 10',
      '      - key: 102234',
      '        token_per_minute: 10',
      'other:',
      '  - key: 0123',
    ].join('\n');
    assert.deepEqual(parseConfigText(text, 'c.yaml'), {
      rule_items: [{ 'limit_by_header': 'x-ca-key', limit_keys: [{ key: '0123', token_per_minute: 10 }, { key: '102234', token_per_minute: 10 }] }],
      other: [{ key: 123 }],
    });
  });

  it('reads .json files as the YAML parser would: duplicate keys refused, limit_keys text kept, YAML in .json accepted', () => {
    const json = JSON.stringify({ listen: { host: '127.0.0.1', port: 1 }, routes: [{ uri: '/a"b:\\', methods: ['POST'], plugins: {} }], k: [[{}], null, 1.5, 'x'] }, null, 2);
    assert.deepEqual(parseConfigText(json, 'c.json'), parseConfigText(json, 'c.yaml'));
    const dup = parseError('{\n  "a": 1,\n  "b": {"x": 1, "x" : 2}\n}', 'c.json');
    assert.deepEqual(dup.issues, [{ path: '', message: 'c.json:3:17: Map keys must be unique' }]);
    assert.equal(parseError('{"a": 1, "\\u0061": 2}', 'c.json').issues.length, 1);
    const higress = '{"rule_items": [{"limit_keys": [{"key": 0.50, "token_per_minute": 10}]}]}';
    assert.deepEqual(parseConfigText(higress, 'c.json'), { rule_items: [{ limit_keys: [{ key: '0.50', token_per_minute: 10 }] }] });
    assert.deepEqual(parseConfigText('routes:\n  - uri: /a\n', 'c.json'), { routes: [{ uri: '/a' }] });
    assert.equal(parseConfigText('', 'c.json'), undefined);
  });

  it('loads the YAML parser only for text JSON.parse cannot read alike (start-up cost)', () => {
    const code = [
      "const { createRequire } = await import('node:module');",
      "const { parseConfigText } = await import('./src/config/load.ts');",
      "const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((f) => f.includes('/node_modules/yaml/'));",
      "parseConfigText('{\"routes\": [{\"uri\": \"/a\"}]}', 'c.json');",
      "const afterJson = loaded();",
      "try { parseConfigText('{\"a\": 1, \"a\": 2}', 'c.json'); } catch { /* duplicate key: the YAML parser says where */ }",
      "const afterOtherJson = loaded();",
      "parseConfigText('a: 1', 'c.yaml');",
      "console.log(JSON.stringify([afterJson, afterOtherJson, loaded()]));",
    ].join('\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: root, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), [false, true, true]);
  });

  it('bounds what aliases add (an alias counts all its anchor holds), with one file-level message', () => {
    // Each level aliases the one before ten times: 10^6 items from a few hundred bytes.
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (const [name, prev] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e']] as const) {
      levels.push(`${name}: &${name} [${Array(10).fill(`*${prev}`).join(', ')}]`);
    }
    const bomb = parseError(levels.join('\n'), 'c.yaml');
    assert.deepEqual(bomb.issues, [{ path: '', message: `c.yaml: its aliases (*name) expand the config by more than ${MAX_ALIAS_EXPANSION} nodes (an alias repeats all its anchor holds); repeat less` }]);
    // The tester's file: one 30,000-item list aliased on 99 routes (44 s and 1.6 GB before).
    const routes = Array.from({ length: 99 }, (_, i) => `  - { uri: /r${i}, methods: *big }`).join('\n');
    const started = Date.now();
    assert.match(parseError(`x: &big [${Array(30_000).fill('a').join(',')}]\nroutes:\n${routes}\n`, 'c.yaml').message, /^c\.yaml: its aliases/);
    assert.ok(Date.now() - started < 10_000);
    // Below the bound, aliases read as before; an alias inside what it names, or naming no anchor, is an error.
    const { c } = parseConfigText(levels.slice(0, 3).join('\n'), 'c.yaml') as { c: string[][][] };
    assert.deepEqual(c.flat(2), Array(1000).fill('x'));
    assert.deepEqual(parseError('a: &a [1, *a]\nb: *nope\n', 'c.yaml').issues.map((i) => i.message), [
      'c.yaml:1:11: alias *a is inside the node it names', 'c.yaml:2:4: alias *nope names no anchor before it',
    ]);
  });

  it('reads merge keys (<<: *anchor), and counts what they add against the alias bound', () => {
    const text = 'base: &inst { provider: openai, weight: 2 }\ninstances:\n  - { <<: *inst, name: a }\n  - { <<: [*inst], name: b, weight: 3 }\n';
    assert.deepEqual((parseConfigText(text, 'c.yaml') as { instances: unknown }).instances, [
      { provider: 'openai', weight: 2, name: 'a' }, { provider: 'openai', weight: 3, name: 'b' },
    ]);
    const big = `big: &big { k: [${Array(1000).fill('x').join(',')}] }\nm:\n${Array(1000).fill('  - { <<: *big }').join('\n')}\n`;
    assert.match(parseError(big, 'c.yaml').message, /^c\.yaml: its aliases/);
  });

  it('checks duplicate keys in linear time, also keys the JS object would merge (1 and "1")', () => {
    const keys = Array.from({ length: 40_000 }, (_, i) => `k${i}: ${i}`).join(', ');
    const started = Date.now();
    assert.equal(Object.keys(parseConfigText(`{${keys}}`, 'c.yaml') as object).length, 40_000);
    const dup = parseError(`{${keys}, k7: 1}`, 'c.yaml');
    // yaml's own check took 13 s for these 40,000 keys.
    assert.ok(Date.now() - started < 10_000, `${Date.now() - started} ms`);
    assert.deepEqual(dup.issues, [{ path: '', message: `c.yaml:1:${keys.length + 4}: Map keys must be unique` }]);
    assert.deepEqual(parseError('a:\n  1: x\n  "1": y\n', 'c.yaml').issues, [{ path: '', message: 'c.yaml:3:3: Map keys must be unique' }]);
    assert.deepEqual(parseError('a: &k x\nb: { *k : 1, x: 2 }\n', 'c.yaml').issues, [{ path: '', message: 'c.yaml:2:14: Map keys must be unique' }]);
    assert.deepEqual(parseError('? [a]\n: 1\n', 'c.yaml').issues, [{ path: '', message: 'c.yaml:1:3: a key must be a plain value, not a mapping or list' }]);
  });

  it('refuses tags it cannot honour (yaml warnings) with file:line:col, never quoting the value', () => {
    const err = parseError('key_hash_secret: !vault secret/path\nb: !!int sk-secret\nc: !!str 1\n', 'c.yaml');
    assert.deepEqual(err.issues, [
      { path: '', message: 'c.yaml:1:18: tag !vault is unknown or does not fit its value; remove it (Sluice reads no custom tags: use $ENV://NAME for secrets)' },
      { path: '', message: 'c.yaml:2:4: tag !!int is unknown or does not fit its value; remove it (Sluice reads no custom tags: use $ENV://NAME for secrets)' },
    ]);
    assert.doesNotMatch(err.message, /secret\/path|sk-secret/);
  });
});

describe('loadConfigFile', () => {
  it('refuses what is not a regular file, or is past the size bound, before reading it; deep YAML is a config error', () => {
    for (const [path, why] of [['/dev/zero', /is not a regular file/], [tmpdir(), /is not a regular file/]] as const) {
      assert.throws(() => loadConfigFile(path, {}), (err: unknown) => err instanceof ConfigError && why.test(err.issues[0]!.message), path);
    }
    const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
    try {
      const big = join(dir, 'big.yaml');
      writeFileSync(big, Buffer.alloc(MAX_CONFIG_BYTES + 1, 0x20));
      assert.throws(() => loadConfigFile(big, {}), (err: unknown) => err instanceof ConfigError && /is \d+ bytes; a config file is at most/.test(err.issues[0]!.message));
      const deep = join(dir, 'deep.yaml');
      writeFileSync(deep, 'a: ' + '['.repeat(20_000) + ']'.repeat(20_000) + '\n');
      assert.throws(() => loadConfigFile(deep, {}), (err: unknown) => err instanceof ConfigError && /nested/.test(err.issues[0]!.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says when YAML read a number or boolean where a string goes, and names the file when the root is not a mapping', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
    try {
      const file = join(dir, 'c.yaml');
      writeFileSync(file, 'listen: { host: 127.1 }\nroutes:\n  - uri: /a\n    plugins:\n      ai-proxy-multi: { instances: [{ name: 1e3, provider: openai, auth: { header: { X-K: true } } }] }\n');
      assert.throws(() => loadConfigFile(file, {}), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.deepEqual(err.issues.map((i) => `${i.path}: ${i.message}`), [
          'listen.host: must be a string (YAML read a number here: quote it)',
          'routes[0].plugins.ai-proxy-multi.instances[0].name: must be a string (YAML read a number here: quote it)',
          'routes[0].plugins.ai-proxy-multi.instances[0].auth.header.X-K: must be a string (YAML read a boolean here: quote it)',
        ]);
        return true;
      });
      for (const [text, kind] of [['- routes\n', 'a list'], ['routes\n', 'a string'], ['12\n', 'a number'], ['[]', 'a list']] as const) {
        writeFileSync(file, text);
        assert.throws(() => loadConfigFile(file, {}), (err: unknown) => err instanceof ConfigError &&
          err.issues.length === 1 && err.issues[0]!.message === `${file}: the config must be a mapping (with routes), not ${kind}`, text);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports an unreadable file as a ConfigError naming the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-config-'));
    try {
      const missing = join(dir, 'missing.yaml');
      assert.throws(() => loadConfigFile(missing, {}), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.deepEqual(err.issues, [{ path: '', message: `${missing}: cannot read the file (ENOENT)` }]);
        return true;
      });
      const file = join(dir, 'ok.yml');
      writeFileSync(file, 'workers: 2\nlisten: { port: $ENV://P }\n');
      const c = loadConfigFile(file, { P: '0' });
      assert.equal(c.workers, 2);
      assert.equal(c.listen.port, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('a long run of YAML errors reports them, not "nested too deeply" (yaml\'s composer overflows its stack on it)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-many-errors-'));
  try {
    const file = join(dir, 'many.yaml');
    writeFileSync(file, Array.from({ length: 1500 }, (_, i) => `k${i}: a: b\n`).join(''));
    assert.throws(() => loadConfigFile(file), (err: unknown) => err instanceof ConfigError && /many\.yaml:1:5: Nested mappings are not allowed/.test(err.message) && !/nested too deeply/.test(err.message));
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('YAML 1.1 tags that make no plain value (!!binary, !!timestamp, !!set, !!omap) are refused with the path', () => {
  for (const [text, re] of [
    ['routes:\n  - id: r\n    plugins: { ai-proxy: { options: { seed: !!binary aGVsbG8= } } }\n', /routes\[0\]\.plugins\.ai-proxy\.options\.seed: is a YAML binary/],
    ['a: !!timestamp 2024-01-01\n', /a: is a YAML timestamp/],
    ['a: [1, !!set { x }]\n', /a\[1\]: is a YAML set/],
    ['a: !!omap [ { x: 1 } ]\n', /a: is a YAML ordered map/],
  ] as const) {
    assert.throws(() => parseConfigText(text, 'c.yaml'), (err: unknown) => err instanceof ConfigError && re.test(err.message), text);
  }
  // An unquoted date stays the string it looks like (YAML 1.2 core schema).
  assert.deepEqual(parseConfigText('a: 2024-01-01\n', 'c.yaml'), { a: '2024-01-01' });
});
