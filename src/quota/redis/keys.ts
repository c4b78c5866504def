// Redis key layout. Changing the layout means bumping KEY_VERSION, so replicas of two releases never read
// each other's counters with different meanings.
//
//   sluice:v2:{<counter id>}:<window start ms>:c   consumed tokens in the window (integer)
//   sluice:v2:{<counter id>}:<window start ms>:r   hash, one field per process: its consumed and reserved
//                                                  tokens in the window and its lease (scripts.ts)
//
// The braces are a Redis Cluster hash tag: every window of a counter lives in one slot, so a counter's
// commands can share a pipeline and one script can touch its keys (and the previous window's) on Cluster.

export const KEY_VERSION = 'v2';
export const KEY_PREFIX = `sluice:${KEY_VERSION}:`;
/** Marker written once per Redis dataset; a different value after a reconnect means the data was lost. */
export const EPOCH_KEY = `${KEY_PREFIX}epoch`;

/** Braces would end the hash tag early and '%' is the escape itself; ids are otherwise used as they are. */
export function escapeId(id: string): string {
  return /[{}%]/.test(id) ? id.replace(/[{}%]/g, (ch) => (ch === '{' ? '%7B' : ch === '}' ? '%7D' : '%25')) : id;
}

/** Common prefix of a counter's keys, hash tag included. */
export function counterTag(id: string): string {
  return `${KEY_PREFIX}{${escapeId(id)}}:`;
}

export function cellKeys(tag: string, windowStart: number): { c: string; r: string } {
  const base = tag + windowStart;
  return { c: `${base}:c`, r: `${base}:r` };
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let b = 0; b < 8; b++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    t[i] = crc;
  }
  return t;
})();

/** CRC16/XMODEM, the checksum Redis Cluster slots are computed with. */
function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ bytes[i]!) & 0xff]!;
  return crc;
}

/** The Redis Cluster slot of a key (honours a non-empty {hash tag}). */
export function hashSlot(key: string): number {
  let s = key;
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) s = key.slice(open + 1, close);
  }
  return crc16(Buffer.from(s, 'utf8')) & 16383;
}
