import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { compileRuleRegex } from '../../src/rules/regex.ts';
import { validateConfig, ConfigError } from '../../src/config/validate.ts';

// Issue 7 item 10: a catastrophic pattern must not block the event loop on a crafted value.
test('regexp:^(a+)+$ matches in linear time: a 30-char and a 100 KB hostile value answer at once', () => {
  const re = compileRuleRegex('^(a+)+$');
  const started = performance.now();
  assert.equal(re.test('a'.repeat(29) + 'b'), false);
  assert.equal(re.test('a'.repeat(100 * 1024) + 'b'), false);
  assert.equal(re.test('a'.repeat(100 * 1024)), true);
  // A backtracking engine needs ~4 s for the 30-char value and would never finish the 100 KB one; RE2 needs
  // tens of ms. The bound is 100x that, so only a super-linear engine can fail it.
  assert.ok(performance.now() - started < 10_000, `took ${performance.now() - started} ms`);
});

test('unanchored search like Go regexp (Higress), and RE2-only syntax', () => {
  assert.equal(compileRuleRegex('^a.*').test('abc'), true);
  assert.equal(compileRuleRegex('b').test('abc'), true);
  assert.equal(compileRuleRegex('^b').test('abc'), false);
  assert.throws(() => compileRuleRegex('(a)\\1'), /RE2 syntax/);
  assert.throws(() => compileRuleRegex('a(?=b)'), /RE2 syntax/);
  assert.throws(() => compileRuleRegex('x'.repeat(2000)), /longer than/);
});

test('a config with an unsupported pattern fails validation with the path of the rule', () => {
  const cfg = {
    routes: [{
      uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy': { provider: 'openai' },
        'ai-token-ratelimit': { rule_name: 'r', rule_items: [{ limit_by_per_header: 'x-k', limit_keys: [{ key: 'regexp:(a)\\1', token_per_minute: 5 }] }] },
      },
    }],
  };
  try {
    validateConfig(cfg, {});
    assert.fail('validated');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.issues[0]!.path, 'routes[0].plugins.ai-token-ratelimit.rule_items[0].limit_keys[0].key');
    assert.match(err.issues[0]!.message, /not a valid regular expression/);
  }
  // The catastrophic pattern itself is valid RE2: accepted, and harmless.
  const ok = structuredClone(cfg);
  ok.routes[0]!.plugins['ai-token-ratelimit'].rule_items[0]!.limit_keys[0]!.key = 'regexp:^(a+)+$';
  assert.doesNotThrow(() => validateConfig(ok, {}));
});

test('re2js loads with the first pattern, not with the config validator (start-up cost)', () => {
  const code = [
    "const { createRequire } = await import('node:module');",
    "const { validateConfig } = await import('./src/config/validate.ts');",
    "const { compileRuleRegex } = await import('./src/rules/regex.ts');",
    "const loaded = () => Object.keys(createRequire(import.meta.url).cache).some((f) => f.includes('/node_modules/re2js/'));",
    'validateConfig({}, {});',
    'const before = loaded();',
    "compileRuleRegex('^a+$');",
    'console.log(JSON.stringify([before, loaded()]));',
  ].join('\n');
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), [false, true]);
});
