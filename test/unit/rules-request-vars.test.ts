import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileVar, cookieValue, getVar, queryParam, type RequestVars } from '../../src/rules/request-vars.ts';

function vars(over: Partial<RequestVars> = {}): RequestVars {
  return {
    headers: {},
    query: '',
    remoteAddr: '10.0.0.7',
    consumer: undefined,
    routeId: 'route-1',
    uri: '/v1/chat/completions',
    ...over,
  };
}

test('http_ variables read lower-case headers with _ mapped to -', () => {
  const v = vars({ headers: { 'x-subscription-id': 'sub-123', host: 'gw.local', 'x-empty': '' } });
  assert.equal(getVar(v, 'http_x_subscription_id'), 'sub-123');
  assert.equal(getVar(v, 'http_X_Subscription_ID'), 'sub-123');
  assert.equal(getVar(v, 'host'), 'gw.local');
  assert.equal(getVar(v, 'http_x_empty'), undefined, 'empty counts as absent');
  assert.equal(getVar(v, 'http_x_missing'), undefined);
});

test('http_ lookups never reach Object.prototype', () => {
  const v = vars({ headers: {} });
  assert.equal(getVar(v, 'http_constructor'), undefined);
  assert.equal(getVar(v, 'http___proto__'), undefined);
});

test('arg_ variables are URL-decoded, first occurrence wins, empty is absent', () => {
  const v = vars({ query: 'a=1&apikey=k%20ey%2Bx&apikey=second&plus=a+b&flag&empty=&b%61d=%E0%A4%A' });
  assert.equal(getVar(v, 'arg_apikey'), 'k ey+x');
  assert.equal(getVar(v, 'arg_a'), '1');
  assert.equal(getVar(v, 'arg_plus'), 'a b');
  assert.equal(getVar(v, 'arg_flag'), undefined);
  assert.equal(getVar(v, 'arg_empty'), undefined);
  assert.equal(getVar(v, 'arg_bad'), '%E0%A4%A', 'encoded key matches; malformed value stays raw');
  assert.equal(getVar(v, 'arg_missing'), undefined);
  assert.equal(getVar(vars({ query: '' }), 'arg_a'), undefined);
  assert.equal(queryParam('x=1&&y=2', 'y'), '2');
  assert.equal(queryParam('ab=1', 'a'), undefined, 'prefix of a longer name does not match');
});

test('cookie_ variables parse the cookie header', () => {
  const v = vars({ headers: { cookie: 'session=abc; key1=value1;  quoted="q v" ; empty=; k=v=w' } });
  assert.equal(getVar(v, 'cookie_key1'), 'value1');
  assert.equal(getVar(v, 'cookie_session'), 'abc');
  assert.equal(getVar(v, 'cookie_quoted'), 'q v');
  assert.equal(getVar(v, 'cookie_empty'), undefined);
  assert.equal(getVar(v, 'cookie_k'), 'v=w');
  assert.equal(getVar(v, 'cookie_missing'), undefined);
  assert.equal(getVar(vars(), 'cookie_key1'), undefined, 'no cookie header');
  assert.equal(cookieValue('xkey1=a; key1=b', 'key1'), 'b');
});

test('fixed variables', () => {
  const v = vars({ consumer: 'johndoe' });
  assert.equal(getVar(v, 'remote_addr'), '10.0.0.7');
  assert.equal(getVar(v, 'consumer_name'), 'johndoe');
  assert.equal(getVar(vars(), 'consumer_name'), undefined);
  assert.equal(getVar(v, 'route_id'), 'route-1');
  assert.equal(getVar(v, 'uri'), '/v1/chat/completions');
});

test('unknown names: compileVar throws, getVar returns undefined', () => {
  assert.throws(() => compileVar('server_addr'), /unknown variable "server_addr"/);
  assert.throws(() => compileVar('http_'), /unknown variable/);
  assert.throws(() => compileVar('bad-name'), /invalid variable name/);
  assert.equal(getVar(vars(), 'server_addr'), undefined);
});
