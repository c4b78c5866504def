// Syntax checks for network values in the configuration: host names, host:port pairs, URLs and header
// names. IP addresses and CIDR ranges are checked by src/rules/ip.ts, the parser the request path uses.

import { isIP } from 'node:net';

const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$/;
/** RFC 9110 token characters. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** A DNS name (Higress service names such as redis.static count) or an IP address. */
export function isHost(s: string): boolean {
  return isIP(s) !== 0 || HOST_NAME.test(s);
}

export function isHeaderName(s: string): boolean {
  return TOKEN.test(s);
}

/** Header values may not carry line breaks or NUL: they would split or corrupt the upstream request. */
export function isHeaderValue(s: string): boolean {
  return !/[\r\n\0]/.test(s);
}

export function isHttpUrl(s: string): boolean {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return false;
  }
  return (u.protocol === 'http:' || u.protocol === 'https:') && u.hostname !== '';
}

/** A URL with user info (`user:password@host`): fetch-style clients drop it, so the upstream never sees it. */
export function hasUrlCredentials(s: string): boolean {
  try {
    const u = new URL(s);
    return u.username !== '' || u.password !== '';
  } catch {
    return false;
  }
}

/** 'host:port' or '[v6]:port'; undefined when malformed. */
export function parseHostPort(s: string): { host: string; port: number } | undefined {
  let host: string;
  let portText: string;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0 || s[close + 1] !== ':') return undefined;
    host = s.slice(1, close);
    if (isIP(host) !== 6) return undefined;
    portText = s.slice(close + 2);
  } else {
    const colon = s.lastIndexOf(':');
    if (colon <= 0) return undefined;
    host = s.slice(0, colon);
    if (host.includes(':') || !isHost(host)) return undefined;
    portText = s.slice(colon + 1);
  }
  if (!/^\d{1,5}$/.test(portText)) return undefined;
  const port = Number(portText);
  return port >= 1 && port <= 65535 ? { host, port } : undefined;
}
