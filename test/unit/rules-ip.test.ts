import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalIp, clientIp, compileIpMatcher, parseIpRange } from '../../src/rules/ip.ts';

test('canonical text of IPv4, IPv6 and mapped addresses', () => {
  assert.equal(canonicalIp('1.2.3.4'), '1.2.3.4');
  assert.equal(canonicalIp(' 10.0.0.1 '), '10.0.0.1');
  assert.equal(canonicalIp('::ffff:1.2.3.4'), '1.2.3.4');
  assert.equal(canonicalIp('::FFFF:0102:0304'), '1.2.3.4');
  assert.equal(canonicalIp('0000:0000:0000:0000:0000:ffff:7f00:0001'), '127.0.0.1');
  assert.equal(canonicalIp('2001:0DB8:0000:0000:0000:0000:0000:0001'), '2001:db8::1');
  assert.equal(canonicalIp('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1', 'first longest zero run');
  assert.equal(canonicalIp('2001:db8:1:1:1:1:0:1'), '2001:db8:1:1:1:1:0:1', 'single zero group not compressed');
  assert.equal(canonicalIp('::'), '::');
  assert.equal(canonicalIp('::1'), '::1');
  assert.equal(canonicalIp('1::'), '1::');
  assert.equal(canonicalIp('fe80::1%eth0'), 'fe80::1');
  assert.equal(canonicalIp('[2001:db8::2]:8443'), '2001:db8::2');
  assert.equal(canonicalIp('203.0.113.9:51234'), '203.0.113.9');
  assert.equal(canonicalIp('64:ff9b::192.0.2.33'), '64:ff9b::c000:221');
});

test('invalid addresses', () => {
  for (const bad of ['', 'abc', '1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1.2.3.-4', '1:2:3:4:5:6:7:8:9', '1::2::3',
    ':1', '1:', '12345::', 'g::1', '::ffff:1.2.3', '1.2.3.4:5:6', '[::1', 'unknown']) {
    assert.equal(canonicalIp(bad), undefined, bad);
  }
});

test('CIDR matching, IPv4', () => {
  const m = compileIpMatcher(['10.0.0.0/8', '192.168.1.7', '172.16.0.0/12']);
  assert.equal(m('10.255.1.2'), true);
  assert.equal(m('11.0.0.1'), false);
  assert.equal(m('192.168.1.7'), true);
  assert.equal(m('192.168.1.8'), false);
  assert.equal(m('172.31.255.255'), true);
  assert.equal(m('172.32.0.0'), false);
  assert.equal(m('::ffff:10.1.2.3'), true, 'mapped address is the IPv4 address');
  assert.equal(m('not-an-ip'), false);
  assert.equal(compileIpMatcher(['0.0.0.0/0'])('8.8.8.8'), true);
  assert.equal(compileIpMatcher(['0.0.0.0/0'])('2001:db8::1'), false, 'IPv4 catch-all does not match IPv6');
  assert.equal(compileIpMatcher([])('1.2.3.4'), false);
});

test('CIDR matching, IPv6', () => {
  const m = compileIpMatcher(['2001:db8::/32', '::1', 'fd00::/8']);
  assert.equal(m('2001:db8:ffff::1'), true);
  assert.equal(m('2001:db9::1'), false);
  assert.equal(m('::1'), true);
  assert.equal(m('fdff:1::'), true);
  assert.equal(m('fe00::1'), false);
  assert.equal(m('127.0.0.1'), false);
  assert.equal(compileIpMatcher(['::/0'])('1.2.3.4'), false, 'IPv6 catch-all does not match IPv4');
  assert.equal(compileIpMatcher(['::/0'])('2001:db8::1'), true);
  const odd = compileIpMatcher(['2001:db8:8000::/33']);
  assert.equal(odd('2001:db8:8000::1'), true);
  assert.equal(odd('2001:db8:7fff::1'), false);
  const mapped = compileIpMatcher(['::ffff:10.0.0.0/104']);
  assert.equal(mapped('10.9.9.9'), true, 'mapped range written in IPv6 bits');
  assert.equal(mapped('11.0.0.1'), false);
});

test('invalid ranges throw', () => {
  assert.throws(() => parseIpRange('10.0.0.0/33'), /prefix length must be 0..32/);
  assert.throws(() => parseIpRange('2001:db8::/129'), /0..128/);
  assert.throws(() => parseIpRange('10.0.0.0/'), /prefix length/);
  assert.throws(() => parseIpRange('10.0.0.0/8x'), /prefix length/);
  assert.throws(() => parseIpRange('1.2.3.4:80'), /not an IP address/);
  assert.throws(() => parseIpRange('[::1]'), /not an IP address/);
  assert.throws(() => parseIpRange('::ffff:10.0.0.0/64'), /96..128/);
  assert.throws(() => compileIpMatcher(['10.0.0.1', 'bogus']), /"bogus" is not an IP address/);
  assert.equal(parseIpRange('10.1.2.3/8').source, '10.1.2.3/8', 'host bits are masked, not an error');
});

test('clientIp: untrusted peer ignores X-Forwarded-For', () => {
  const trusted = compileIpMatcher(['10.0.0.0/8']);
  assert.equal(clientIp('203.0.113.5', '1.1.1.1', trusted), '203.0.113.5');
  assert.equal(clientIp('::ffff:203.0.113.5', '1.1.1.1', trusted), '203.0.113.5');
  assert.equal(clientIp('203.0.113.5', undefined, compileIpMatcher([])), '203.0.113.5');
});

test('clientIp: trusted peer walks X-Forwarded-For from the right', () => {
  const trusted = compileIpMatcher(['10.0.0.0/8', '2001:db8::/32']);
  assert.equal(clientIp('10.0.0.1', '1.1.1.1', trusted), '1.1.1.1');
  assert.equal(clientIp('10.0.0.1', '9.9.9.9, 1.1.1.1, 10.0.0.2', trusted), '1.1.1.1', 'spoofed left entry ignored');
  assert.equal(clientIp('10.0.0.1', '1.1.1.1,10.0.0.3 , 10.0.0.2', trusted), '1.1.1.1');
  assert.equal(clientIp('10.0.0.1', '10.0.0.9, 10.0.0.2', trusted), '10.0.0.9', 'all trusted: leftmost');
  assert.equal(clientIp('::ffff:10.0.0.1', '::ffff:1.1.1.1', trusted), '1.1.1.1');
  assert.equal(clientIp('2001:db8::1', '2001:DB8:1::5, 2001:db8::2', trusted), '2001:db8:1::5', 'all trusted v6: leftmost canonical');
  assert.equal(clientIp('10.0.0.1', '[2606:4700::1]:443', trusted), '2606:4700::1');
  assert.equal(clientIp('10.0.0.1', 'garbage, 10.0.0.2', trusted), '10.0.0.2', 'malformed hop: last trusted address');
  assert.equal(clientIp('10.0.0.1', 'garbage', trusted), '10.0.0.1');
  assert.equal(clientIp('10.0.0.1', ', ,', trusted), '10.0.0.1');
  assert.equal(clientIp('10.0.0.1', '', trusted), '10.0.0.1');
});
