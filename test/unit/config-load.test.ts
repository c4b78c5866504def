import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigFile, parseConfigText } from '../../src/config/load.ts';
import { ConfigError, validateConfig } from '../../src/config/validate.ts';

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

  it('an empty file is an empty config', () => {
    assert.equal(parseConfigText('', 'c.yaml'), undefined);
    assert.equal(parseConfigText('# only a comment\n', 'c.yaml'), undefined);
    assert.deepEqual(validateConfig(parseConfigText('', 'c.yaml'), {}).routes, []);
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

  it('bounds alias expansion', () => {
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]', 'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]',
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]', 'd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]'].join('\n');
    const err = parseError(bomb, 'c.yaml');
    assert.equal(err.issues.length, 1);
    assert.match(err.issues[0]!.message, /^c\.yaml: .*alias/i);
  });
});

describe('loadConfigFile', () => {
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
