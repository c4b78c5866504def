// IPv4/IPv6 addresses and CIDR ranges without regular expressions. Every address is held as four 32-bit
// words in the IPv6 space, IPv4 as ::ffff:a.b.c.d, so `::ffff:1.2.3.4` and `1.2.3.4` are the same address;
// a family tag keeps `0.0.0.0/0` from matching IPv6 clients and `::/0` from matching IPv4 ones.

/** 0: not parsed, 4: IPv4 (incl. IPv4-mapped IPv6), 6: IPv6. */
export type IpFamily = 0 | 4 | 6;

/** A parsed address. Reused as scratch space on the request path. */
export interface IpAddr {
  family: IpFamily;
  readonly w: Uint32Array;
}

export interface IpRange {
  readonly family: 4 | 6;
  readonly base: Uint32Array;
  readonly mask: Uint32Array;
  /** Prefix length in the 128-bit space (IPv4 ranges are offset by 96). */
  readonly bits: number;
  /** The entry as configured, for messages. */
  readonly source: string;
}

/** A compiled address list: call it with text, or test parsed addresses against `ranges`. */
export interface IpMatcher {
  (ip: string): boolean;
  readonly ranges: readonly IpRange[];
}

export function newIpAddr(): IpAddr {
  return { family: 0, w: new Uint32Array(4) };
}

function isWs(c: number): boolean {
  return c === 32 || c === 9;
}

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * Dotted quad in s[start, end) → out[at]; false when it is not one. Leading zeros are refused (octal
 * ambiguity). Writing into the array instead of returning the value keeps a >2^31 number from being boxed.
 */
function parseV4(s: string, start: number, end: number, out: Uint32Array, at: number): boolean {
  let value = 0;
  let parts = 0;
  let i = start;
  while (parts < 4) {
    const partStart = i;
    let octet = 0;
    while (i < end) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) break;
      octet = octet * 10 + (c - 48);
      i++;
      if (i - partStart > 3) return false;
    }
    const len = i - partStart;
    if (len === 0 || octet > 255 || (len > 1 && s.charCodeAt(partStart) === 48)) return false;
    value = value * 256 + octet;
    parts++;
    if (parts < 4) {
      if (i >= end || s.charCodeAt(i) !== 46) return false;
      i++;
    }
  }
  if (i !== end) return false;
  out[at] = value;
  return true;
}

/** Scratch for parseV6 (synchronous use only). */
const v6Groups = new Uint32Array(8);
const v4Word = new Uint32Array(1);

/** IPv6 text in s[start, end) → 8 groups written to `groups`, or false. Allows one '::' and a trailing dotted quad. */
function parseV6(s: string, start: number, end: number, out: Uint32Array): boolean {
  const groups = v6Groups;
  groups.fill(0);
  let n = 0;
  let gap = -1;
  let i = start;
  if (s.charCodeAt(i) === 58 /* : */) {
    if (s.charCodeAt(i + 1) !== 58) return false;
    gap = 0;
    i += 2;
    if (i === end) {
      out.fill(0);
      return true;
    }
  }
  while (i < end) {
    if (n >= 8) return false;
    const gs = i;
    let v = 0;
    while (i < end) {
      const h = hexVal(s.charCodeAt(i));
      if (h < 0) break;
      v = v * 16 + h;
      i++;
    }
    const len = i - gs;
    if (i < end && s.charCodeAt(i) === 46 /* . */) {
      if (n > 6) return false;
      if (!parseV4(s, gs, end, v4Word, 0)) return false;
      const v4 = v4Word[0]!;
      groups[n++] = v4 >>> 16;
      groups[n++] = v4 & 0xffff;
      i = end;
      break;
    }
    if (len === 0 || len > 4) return false;
    groups[n++] = v;
    if (i === end) break;
    if (s.charCodeAt(i) !== 58) return false;
    i++;
    if (s.charCodeAt(i) === 58) {
      if (gap >= 0) return false;
      gap = n;
      i++;
      if (i === end) break;
    } else if (i === end) {
      return false;
    }
  }
  if (gap < 0) {
    if (n !== 8) return false;
  } else {
    if (n > 7) return false;
    const tail = n - gap;
    for (let k = 0; k < tail; k++) groups[7 - k] = groups[n - 1 - k]!;
    for (let k = gap; k < 8 - tail; k++) groups[k] = 0;
  }
  for (let k = 0; k < 4; k++) out[k] = ((groups[2 * k]! << 16) | groups[2 * k + 1]!) >>> 0;
  return true;
}

/** Parse s[start, end) into `out`; see parseIpInto. */
function parseSpan(text: string, start: number, end: number, out: IpAddr): boolean {
  while (start < end && isWs(text.charCodeAt(start))) start++;
  while (end > start && isWs(text.charCodeAt(end - 1))) end--;
  out.family = 0;
  if (start >= end) return false;
  if (text.charCodeAt(start) === 91 /* [ */) {
    const close = text.indexOf(']', start);
    if (close < 0 || close >= end) return false;
    start++;
    end = close;
  }
  // Fast path: a bare dotted quad, the common case for socket and forwarded addresses.
  const first = text.charCodeAt(start);
  if (first >= 48 && first <= 57) {
    if (parseV4(text, start, end, out.w, 3)) {
      out.w[0] = 0;
      out.w[1] = 0;
      out.w[2] = 0xffff;
      out.family = 4;
      return true;
    }
  }
  // One scan classifies the rest: a zone id ends the address; colons and dots tell the families apart.
  let firstColon = -1;
  let colons = 0;
  let firstDot = -1;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c === 58) {
      if (firstColon < 0) firstColon = i;
      colons++;
    } else if (c === 46) {
      if (firstDot < 0) firstDot = i;
    } else if (c === 37 /* % */) {
      end = i;
      break;
    }
  }
  // No colon, or a single colon after a dotted quad (a port): IPv4.
  if (colons === 0 || (colons === 1 && firstDot >= 0 && firstDot < firstColon)) {
    if (!parseV4(text, start, colons === 0 ? end : firstColon, out.w, 3)) return false;
    out.w[0] = 0;
    out.w[1] = 0;
    out.w[2] = 0xffff;
    out.family = 4;
    return true;
  }
  if (!parseV6(text, start, end, out.w)) return false;
  out.family = out.w[0] === 0 && out.w[1] === 0 && out.w[2] === 0xffff ? 4 : 6;
  return true;
}

/**
 * Parse an address into `out` (no allocation). Accepts brackets (`[::1]`), a port after an IPv4 or
 * bracketed address (`1.2.3.4:80`, `[::1]:443`), a zone id (`fe80::1%eth0`) and surrounding spaces.
 * Returns false for anything else.
 */
export function parseIpInto(text: string, out: IpAddr): boolean {
  return parseSpan(text, 0, text.length, out);
}

function hex(v: number): string {
  return v.toString(16);
}

/** Canonical text of a parsed address: dotted quad for IPv4 (mapped or not), RFC 5952 for IPv6. */
export function formatIp(a: IpAddr): string {
  const w = a.w;
  if (a.family === 4) {
    const v = w[3]!;
    return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  const g = [w[0]! >>> 16, w[0]! & 0xffff, w[1]! >>> 16, w[1]! & 0xffff, w[2]! >>> 16, w[2]! & 0xffff, w[3]! >>> 16, w[3]! & 0xffff];
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  if (bestStart < 0) return g.map(hex).join(':');
  const head = g.slice(0, bestStart).map(hex).join(':');
  const tail = g.slice(bestStart + bestLen).map(hex).join(':');
  return `${head}::${tail}`;
}

/**
 * Canonical text of the address parsed from text[start, end). A bare dotted quad is already canonical
 * (parseV4 refuses leading zeros), so it is returned as is, without formatting.
 */
function spanText(text: string, start: number, end: number, a: IpAddr): string {
  while (start < end && isWs(text.charCodeAt(start))) start++;
  while (end > start && isWs(text.charCodeAt(end - 1))) end--;
  if (a.family === 4) {
    let bare = true;
    for (let i = start; i < end && bare; i++) {
      const c = text.charCodeAt(i);
      bare = (c >= 48 && c <= 57) || c === 46;
    }
    if (bare) return start === 0 && end === text.length ? text : text.slice(start, end);
  }
  return formatIp(a);
}

const scratch = newIpAddr();

/** Canonical text of an address, or undefined when it is not one. */
export function canonicalIp(text: string): string | undefined {
  return parseIpInto(text, scratch) ? spanText(text, 0, text.length, scratch) : undefined;
}

/** Parse an address or CIDR range ('10.0.0.0/8', '2001:db8::/32', '1.2.3.4'); throws on bad input. */
export function parseIpRange(entry: string): IpRange {
  const slash = entry.indexOf('/');
  const addrText = slash < 0 ? entry : entry.slice(0, slash);
  const a = newIpAddr();
  const dot = addrText.indexOf('.');
  const withPort = dot >= 0 && addrText.indexOf(':') > dot;
  if (!parseIpInto(addrText, a) || addrText.trim() !== addrText || addrText.includes('[') || addrText.includes('%') || withPort) {
    throw new Error(`"${entry}" is not an IP address or CIDR range`);
  }
  const family = a.family as 4 | 6;
  // '::ffff:10.0.0.0/104' is written in IPv6 prefix bits even though it names IPv4 addresses.
  const v6Text = addrText.includes(':');
  const max = v6Text ? 128 : 32;
  let prefix = max;
  if (slash >= 0) {
    const p = entry.slice(slash + 1);
    let ok = p.length > 0 && p.length <= 3;
    for (let i = 0; ok && i < p.length; i++) ok = p.charCodeAt(i) >= 48 && p.charCodeAt(i) <= 57;
    prefix = ok ? Number(p) : -1;
    const min = v6Text && family === 4 ? 96 : 0;
    if (prefix < min || prefix > max) throw new Error(`"${entry}": prefix length must be ${min}..${max}`);
  }
  const bits = v6Text ? prefix : prefix + 96;
  const mask = new Uint32Array(4);
  const base = new Uint32Array(4);
  for (let k = 0; k < 4; k++) {
    const b = Math.min(32, Math.max(0, bits - 32 * k));
    mask[k] = b === 0 ? 0 : (0xffffffff << (32 - b)) >>> 0;
    base[k] = (a.w[k]! & mask[k]!) >>> 0;
  }
  return { family, base, mask, bits, source: entry };
}

export function rangeContains(r: IpRange, a: IpAddr): boolean {
  if (a.family !== r.family) return false;
  const w = a.w;
  return ((w[0]! & r.mask[0]!) >>> 0) === r.base[0]
    && ((w[1]! & r.mask[1]!) >>> 0) === r.base[1]
    && ((w[2]! & r.mask[2]!) >>> 0) === r.base[2]
    && ((w[3]! & r.mask[3]!) >>> 0) === r.base[3];
}

export function matchesAny(ranges: readonly IpRange[], a: IpAddr): boolean {
  for (let i = 0; i < ranges.length; i++) if (rangeContains(ranges[i]!, a)) return true;
  return false;
}

/** Compile a list of addresses and CIDR ranges into a predicate; throws on an invalid entry. */
export function compileIpMatcher(entries: readonly string[]): IpMatcher {
  const ranges = entries.map(parseIpRange);
  const addr = newIpAddr();
  const match = (ip: string): boolean => ranges.length > 0 && parseIpInto(ip, addr) && matchesAny(ranges, addr);
  return Object.assign(match, { ranges });
}

const peerAddr = newIpAddr();
const hopAddr = newIpAddr();

function copyAddr(from: IpAddr, to: IpAddr | undefined): void {
  if (to === undefined) return;
  to.family = from.family;
  to.w.set(from.w);
}

/**
 * The client address. When the socket peer is a trusted proxy, X-Forwarded-For is walked from the right,
 * skipping trusted hops, and the first untrusted address is the client; when every hop is trusted the
 * leftmost counts. A malformed hop stops the walk at the last good (trusted) address, so a forged entry
 * can never be attributed to someone else. An untrusted peer's X-Forwarded-For is ignored.
 * Returns canonical text (IPv4-mapped addresses as dotted quads); each address is parsed once, and the
 * parsed client address is left in `out` when given (family 0 when the peer address is not an address).
 */
export function clientIp(remoteAddr: string, xff: string | undefined, trusted: IpMatcher, out?: IpAddr): string {
  if (!parseIpInto(remoteAddr, peerAddr)) {
    copyAddr(peerAddr, out);
    return remoteAddr;
  }
  if (xff === undefined || xff === '' || !matchesAny(trusted.ranges, peerAddr)) {
    copyAddr(peerAddr, out);
    return spanText(remoteAddr, 0, remoteAddr.length, peerAddr);
  }
  let lastStart = -1;
  let lastEnd = -1;
  let end = xff.length;
  // Each pass consumes one comma-separated hop, so the loop is bounded by the header length.
  while (end > 0) {
    const comma = xff.lastIndexOf(',', end - 1);
    const start = comma + 1;
    const hopEnd = end;
    end = comma < 0 ? 0 : comma;
    let blank = true;
    for (let i = start; i < hopEnd && blank; i++) blank = isWs(xff.charCodeAt(i));
    if (blank) continue;
    if (!parseSpan(xff, start, hopEnd, hopAddr)) break;
    if (!matchesAny(trusted.ranges, hopAddr)) {
      copyAddr(hopAddr, out);
      return spanText(xff, start, hopEnd, hopAddr);
    }
    lastStart = start;
    lastEnd = hopEnd;
  }
  if (lastStart < 0) {
    copyAddr(peerAddr, out);
    return spanText(remoteAddr, 0, remoteAddr.length, peerAddr);
  }
  parseSpan(xff, lastStart, lastEnd, hopAddr);
  copyAddr(hopAddr, out);
  return spanText(xff, lastStart, lastEnd, hopAddr);
}
