// Request-path normalisation (RFC 3986 §5.2.4 dot segments, §6.2.2 unreserved escapes, merged slashes).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { normalizePath } from '../../src/core/request-path.ts';

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
