import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileCountTemplate, compileTemplate, parsePositiveInt } from '../../src/rules/template.ts';
import type { RequestVars } from '../../src/rules/request-vars.ts';

function vars(headers: Record<string, string>, over: Partial<RequestVars> = {}): RequestVars {
  return { headers, query: '', remoteAddr: '192.0.2.1', consumer: undefined, routeId: 'r', uri: '/', ...over };
}

test('single-variable key template', () => {
  const t = compileTemplate('${http_x_subscription_id}');
  assert.equal(t(vars({ 'x-subscription-id': 'sub-123456789' })), 'sub-123456789');
  assert.equal(t(vars({})), undefined);
});

test('combined key template is undefined when any variable is absent', () => {
  const t = compileTemplate('${consumer_name}-${remote_addr}');
  assert.equal(t(vars({}, { consumer: 'jack' })), 'jack-192.0.2.1');
  assert.equal(t(vars({})), undefined);
});

test('bare $name, literal text and defaults in key templates', () => {
  assert.equal(compileTemplate('ip:$remote_addr')(vars({})), 'ip:192.0.2.1');
  assert.equal(compileTemplate('fixed-key')(vars({})), 'fixed-key');
  assert.equal(compileTemplate('price$ 5')(vars({})), 'price$ 5');
  const t = compileTemplate('${http_x_tier ?? free}/${arg_org}');
  assert.equal(t(vars({}, { query: 'org=acme' })), 'free/acme');
  assert.equal(t(vars({ 'x-tier': 'gold' }, { query: 'org=acme' })), 'gold/acme');
});

test('key template syntax errors are thrown at compile time', () => {
  assert.throws(() => compileTemplate('${http_x'), /unclosed/);
  assert.throws(() => compileTemplate('${}'), /empty variable name/);
  assert.throws(() => compileTemplate('${bogus_var}'), /unknown variable "bogus_var".*position 0/);
  assert.throws(() => compileTemplate('${http_x ?? }'), /empty default/);
  assert.throws(() => compileTemplate(''), /empty/);
});

test('count templates: literals', () => {
  assert.equal(compileCountTemplate(50)(vars({})), 50);
  assert.equal(compileCountTemplate('500')(vars({})), 500);
  assert.throws(() => compileCountTemplate(0), /positive integer/);
  assert.throws(() => compileCountTemplate(1.5), /positive integer/);
  assert.throws(() => compileCountTemplate('-3'), /must be a positive integer/);
  assert.throws(() => compileCountTemplate('abc'), /must be a positive integer/);
});

test('count templates: ${var ?? default} (the seed X-Custom-Count example)', () => {
  const c = compileCountTemplate('${http_x_custom_count ?? 500}');
  assert.equal(c(vars({})), 500);
  assert.equal(c(vars({ 'x-custom-count': '10' })), 10);
  assert.equal(c(vars({ 'x-custom-count': '' })), 500, 'empty is absent');
  // A value sent that is not a count is refused (undefined), as without a default, not quietly replaced.
  assert.equal(c(vars({ 'x-custom-count': '0' })), undefined, 'non-positive');
  assert.equal(c(vars({ 'x-custom-count': '-5' })), undefined);
  assert.equal(c(vars({ 'x-custom-count': '2.5' })), undefined, 'non-integer');
  assert.equal(c(vars({ 'x-custom-count': '1e3' })), undefined);
  assert.equal(c(vars({ 'x-custom-count': 'abc' })), undefined);
  assert.equal(c(vars({ 'x-custom-count': '99999999999999999999' })), undefined, 'beyond safe integers');
});

test('time_window templates are bounded (366 days), and named so in their errors', () => {
  const w = compileCountTemplate('${http_x_w ?? 60}', 'time_window', 31_622_400);
  assert.equal(w(vars({})), 60);
  assert.equal(w(vars({ 'x-w': '31622400' })), 31_622_400);
  assert.equal(w(vars({ 'x-w': '31622401' })), undefined);
  assert.equal(w(vars({ 'x-w': '99999999999' })), undefined);
  assert.throws(() => compileCountTemplate('${http_x_w ?? 99999999999}', 'time_window', 31_622_400), /^Error: time_window "\$\{http_x_w \?\? 99999999999\}": default "99999999999" is not an integer from 1 to 31622400$/);
  assert.throws(() => compileCountTemplate('sixty', 'time_window', 31_622_400), /^Error: time_window "sixty" must be an integer from 1 to 31622400/);
  assert.throws(() => compileCountTemplate(31_622_401, 'time_window', 31_622_400), /time_window 31622401 is not an integer from 1 to 31622400/);
});

test('count templates without default are undefined on a bad value', () => {
  const c = compileCountTemplate('${http_x_window}');
  assert.equal(c(vars({ 'x-window': '60' })), 60);
  assert.equal(c(vars({ 'x-window': 'soon' })), undefined);
  assert.equal(c(vars({})), undefined);
});

test('count template syntax errors', () => {
  assert.throws(() => compileCountTemplate('${http_x ?? abc}'), /default "abc" is not a positive integer/);
  assert.throws(() => compileCountTemplate('${http_x ?? 0}'), /not a positive integer/);
  assert.throws(() => compileCountTemplate('${a}${b}'), /must be a positive integer/);
  assert.throws(() => compileCountTemplate('x${http_a}'), /must be a positive integer/);
  assert.throws(() => compileCountTemplate('${nope}'), /unknown variable/);
});

test('parsePositiveInt', () => {
  assert.equal(parsePositiveInt('007'), 7);
  assert.equal(parsePositiveInt(''), undefined);
  assert.equal(parsePositiveInt(' 5'), undefined);
  assert.equal(parsePositiveInt('9007199254740991'), 9007199254740991);
  assert.equal(parsePositiveInt('9007199254740992'), undefined);
});
