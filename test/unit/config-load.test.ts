import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { loadConfigFile, MAX_CONFIG_BYTES, parseConfigText } from '../../src/config/load.ts';
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

  it('bounds alias expansion', () => {
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]',
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]'].join('\n');
    const err = parseError(bomb, 'c.yaml');
    assert.equal(err.issues.length, 1);
    assert.match(err.issues[0]!.message, /^c\.yaml: .*alias/i);
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
