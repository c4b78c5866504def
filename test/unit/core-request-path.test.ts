// Request-path normalisation (RFC 3986 §5.2.4 dot segments, §6.2.2 unreserved escapes, merged slashes).
import { describe, it, test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeUnreserved, normalizePath } from '../../src/core/request-path.ts';
import { uriProblem } from '../../src/config/route-uri.ts';

describe('normalizePath', () => {
  it('leaves ordinary paths untouched', () => {
    for (const p of ['/', '/v1/chat/completions', '/v1/', '/a.b/c_d~e-f']) assert.equal(normalizePath(p), p);
  });

  it('removes dot segments, plain or percent-encoded', () => {
    assert.equal(normalizePath('/a/../v1/chat/completions'), '/v1/chat/completions');
    assert.equal(normalizePath('/v1/%2e%2e/v1/chat/completions'), '/v1/chat/completions');
    assert.equal(normalizePath('/v1/%2E%2e/v1/x'), '/v1/x');
    assert.equal(normalizePath('/v1/./chat/./completions'), '/v1/chat/completions');
    assert.equal(normalizePath('/a/b/..'), '/a/');
    assert.equal(normalizePath('/a/.'), '/a/');
    assert.equal(normalizePath('/a/.b/..c'), '/a/.b/..c');
  });

  it('merges repeated slashes', () => {
    assert.equal(normalizePath('//v1//chat///completions'), '/v1/chat/completions');
    assert.equal(normalizePath('/v1//'), '/v1/');
  });

  it('decodes unreserved escapes only; other escapes stay encoded, upper-cased', () => {
    assert.equal(normalizePath('/v1/%63hat'), '/v1/chat');
    assert.equal(normalizePath('/v1%2fchat'), '/v1%2Fchat');
    assert.equal(normalizePath('/a%00b'), '/a%00b');
    assert.equal(normalizePath('/%7euser'), '/~user');
  });

  it('rejects a climb above the root and malformed escapes', () => {
    for (const p of ['/..', '/../x', '/a/../../x', '/%2e%2e/x', '/a%', '/a%2', '/a%zz', '/a%g1']) assert.equal(normalizePath(p), undefined, p);
  });
});

test('route uris: only the normalised form can match a request; others are refused with that form', () => {
  assert.equal(uriProblem('/v1/chat/completions'), undefined);
  assert.equal(uriProblem('/v1/*'), undefined);
  assert.equal(uriProblem('/x/.*'), undefined, 'a prefix may end in a partial segment that starts with a dot');
  assert.equal(uriProblem('/x/%2F*'), undefined, 'a reserved escape stays encoded in requests too');
  assert.match(uriProblem('/x//chat')!, /write "\/x\/chat"/);
  assert.match(uriProblem('/y/./chat')!, /write "\/y\/chat"/);
  assert.match(uriProblem('/z/%7Euser')!, /write "\/z\/~user"/);
  assert.match(uriProblem('/z/%2f*')!, /write "\/z\/%2F\*"/);
  assert.match(uriProblem('/w/../chat')!, /write "\/chat"/);
  assert.match(uriProblem('/café')!, /write "\/caf%C3%A9"/);
  assert.match(uriProblem('/../x')!, /not a valid path/);
  // Escapes already there stay as written; a lone surrogate is no crash; one suggestion fixes every problem at once.
  assert.match(uriProblem('/v1/é%20x')!, /write "\/v1\/%C3%A9%20x"/);
  assert.match(uriProblem('/v1/é//x')!, /write "\/v1\/%C3%A9\/x"/);
  assert.match(uriProblem('/v1/\uD800')!, /write "\/v1\/%EF%BF%BD"/);
  // What is suggested is accepted, and matches the requests it names.
  for (const uri of ['/x//chat', '/y/./chat', '/z/%7Euser', '/café', '/v1/é%20x', '/v1/é//x']) {
    const form = /write "([^"]+)"/.exec(uriProblem(uri)!)![1]!;
    assert.equal(uriProblem(form), undefined, form);
    assert.equal(normalizePath(form), form);
  }
  assert.equal(decodeUnreserved('/a%7e%2f'), '/a~%2F');
});
