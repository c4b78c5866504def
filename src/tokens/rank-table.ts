// A BPE rank table as one byte buffer: every token's bytes back to back in rank order, their offsets, and an
// open-addressing hash table over the bytes. The build (scripts/build-ranks.mjs) writes it to
// dist/tokens/ranks/<encoding>.bin and a thread loads it with one readFileSync and three typed-array views: no
// per-token JS string or Map entry. gpt-tokenizer's own Map of ~200k strings took ~300 ms of start-up (half of
// it garbage collection) and ~60 MB per thread; this table is 4.3 MB (o200k) and loads in ~15 ms of CPU, most
// of it the page faults of reading the file.
//
// Lookups answer exactly what gpt-tokenizer 4.0's BytePairEncodingCore answers, quirks included:
// - rankOfString(piece) is its getBpeRankFromString (a Map of the table's string entries): a piece with a lone
//   surrogate is never found.
// - rankOfBytes(b, s, e) is its getBpeRankFromBytes: bytes that are valid UTF-8 are decoded with a TextDecoder
//   (which drops a leading BOM, EF BB BF) and looked up as a string; other bytes are searched among the
//   table's byte-array entries. So the 9 o200k (8 cl100k) entries whose bytes are a BOM plus valid UTF-8 are
//   never found, and BOM + "x" has the rank of "x".
// The hash holds every string entry (as UTF-8) and every byte-array entry that is not valid UTF-8; these byte
// strings are all distinct (checked when the table is built), so one lookup over the bytes gives both answers.
import { tryConvertToString } from 'gpt-tokenizer/utfUtil';

/** One entry of gpt-tokenizer's rank array: the token's text, or its bytes when they are not a string. */
export type RankEntry = string | readonly number[] | undefined;

const MAGIC = 0x54524c53; // 'SLRT' little-endian
const FORMAT = 1;
const HEADER_WORDS = 8;
const TAG_BYTES = 32;
const HEADER_BYTES = HEADER_WORDS * 4 + TAG_BYTES;

function hashBytes(b: Uint8Array, s: number, e: number): number {
  // FNV-1a, then a murmur3 finaliser so the low bits (the slot) depend on every byte.
  let h = 0x811c9dc5;
  for (let i = s; i < e; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

const utf8 = new TextEncoder();

function isWellFormed(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      if (i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { i++; continue; }
      return false;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return false;
  }
  return true;
}

export class RankTable {
  /** Longest token, in bytes: a longer byte string is never a token. */
  readonly maxTokenBytes: number;
  private readonly bytes: Uint8Array;
  private readonly offsets: Uint32Array;
  /** rank + 1 per slot, 0 for an empty slot. */
  private readonly slots: Uint32Array;
  private readonly mask: number;
  /** Longest probe sequence in the table: bounds every lookup, even in a damaged file. */
  private readonly maxProbe: number;
  private readonly scratch = new Uint8Array(512);

  private constructor(bytes: Uint8Array, offsets: Uint32Array, slots: Uint32Array, maxTokenBytes: number, maxProbe: number) {
    this.bytes = bytes;
    this.offsets = offsets;
    this.slots = slots;
    this.mask = slots.length - 1;
    this.maxTokenBytes = maxTokenBytes;
    this.maxProbe = maxProbe;
  }

  /** Rank of exactly these bytes among the hashed entries, or -1. */
  private find(b: Uint8Array, s: number, e: number): number {
    const n = e - s;
    if (n <= 0 || n > this.maxTokenBytes) return -1;
    const slots = this.slots;
    const offsets = this.offsets;
    const bytes = this.bytes;
    let slot = hashBytes(b, s, e) & this.mask;
    // A damaged file can make a lookup wrong (a test compares the file with the library), never endless or
    // out of bounds: probes are bounded, and typed arrays read undefined past their end.
    for (let probe = 0; probe < this.maxProbe; probe++) {
      const v = slots[slot]!;
      if (v === 0) return -1;
      const o = offsets[v - 1]!;
      if (offsets[v]! - o === n) {
        let i = 0;
        while (i < n && bytes[o + i] === b[s + i]) i++;
        if (i === n) return v - 1;
      }
      slot = (slot + 1) & this.mask;
    }
    return -1;
  }

  /** gpt-tokenizer's getBpeRankFromBytes(b[s..e)), -1 for undefined. */
  rankOfBytes(b: Uint8Array, s: number, e: number): number {
    if (e - s >= 3 && b[s] === 0xef && b[s + 1] === 0xbb && b[s + 2] === 0xbf) {
      // Rare: decode as the library does, so the BOM is dropped exactly when it drops it.
      const text = tryConvertToString(b.subarray(s, e));
      if (text !== undefined) {
        const enc = utf8.encode(text);
        return this.find(enc, 0, enc.length);
      }
    }
    return this.find(b, s, e);
  }

  /**
   * gpt-tokenizer's getBpeRankFromString(piece) for `bytes`, the UTF-8 of a piece: `wellFormed` false when the
   * piece had a lone surrogate (its bytes then hold U+FFFD, and the library's Map never has such a string).
   */
  rankOfPiece(bytes: Uint8Array, len: number, wellFormed: boolean): number {
    return wellFormed ? this.find(bytes, 0, len) : -1;
  }

  /** gpt-tokenizer's getBpeRankFromString(s), -1 for undefined. */
  rankOfString(s: string): number {
    if (!isWellFormed(s)) return -1;
    const { read, written } = utf8.encodeInto(s, this.scratch);
    if (read < s.length) return -1; // longer than any token
    return this.find(this.scratch, 0, written);
  }

  /** The table in its file form, from gpt-tokenizer's rank array. `tag` names the encoding and library version. */
  static serialize(entries: readonly RankEntry[], tag: string): Uint8Array {
    const n = entries.length;
    const parts: Uint8Array[] = new Array(n);
    const hashed: boolean[] = new Array(n).fill(false);
    let total = 0;
    let maxLen = 0;
    for (let r = 0; r < n; r++) {
      const v = entries[r];
      let b: Uint8Array;
      if (v === undefined) b = new Uint8Array(0);
      else if (typeof v === 'string') {
        if (!isWellFormed(v)) throw new Error(`rank table ${tag}: entry ${r} is not a well-formed string`);
        b = utf8.encode(v);
        hashed[r] = b.length > 0;
      } else {
        b = Uint8Array.from(v);
        // Valid UTF-8 in a byte-array entry is looked up as a string by the library, and never found.
        hashed[r] = b.length > 0 && tryConvertToString(b) === undefined;
      }
      parts[r] = b;
      total += b.length;
      if (hashed[r]) maxLen = Math.max(maxLen, b.length);
    }
    let slotCount = 1024;
    while (slotCount < n * 2) slotCount *= 2;
    const offsetsBytes = (n + 1) * 4;
    const buf = new Uint8Array(HEADER_BYTES + offsetsBytes + slotCount * 4 + total);
    const header = new Uint32Array(buf.buffer, 0, HEADER_WORDS);
    header.set([MAGIC, FORMAT, n, total, slotCount, maxLen, 0, 0]);
    let maxProbe = 1;
    const tagBytes = utf8.encode(tag);
    if (tagBytes.length > TAG_BYTES) throw new Error(`rank table tag too long: ${tag}`);
    buf.set(tagBytes, HEADER_WORDS * 4);
    const offsets = new Uint32Array(buf.buffer, HEADER_BYTES, n + 1);
    const slots = new Uint32Array(buf.buffer, HEADER_BYTES + offsetsBytes, slotCount);
    const bytes = buf.subarray(HEADER_BYTES + offsetsBytes + slotCount * 4);
    let o = 0;
    for (let r = 0; r < n; r++) {
      offsets[r] = o;
      bytes.set(parts[r]!, o);
      o += parts[r]!.length;
    }
    offsets[n] = o;
    const table = new RankTable(bytes, offsets, slots, maxLen, slotCount);
    for (let r = 0; r < n; r++) {
      if (!hashed[r]) continue;
      const b = parts[r]!;
      if (table.find(b, 0, b.length) !== -1) throw new Error(`rank table ${tag}: entry ${r} repeats an earlier token's bytes`);
      let slot = hashBytes(b, 0, b.length) & (slotCount - 1);
      let probes = 1;
      while (slots[slot] !== 0) {
        slot = (slot + 1) & (slotCount - 1);
        probes++;
      }
      slots[slot] = r + 1;
      maxProbe = Math.max(maxProbe, probes);
    }
    header[6] = maxProbe;
    // Byte-level BPE: every single byte is a token (the merge starts from them).
    for (let x = 0; x < 256; x++) {
      if (table.rankOfBytes(Uint8Array.of(x), 0, 1) === -1) throw new Error(`rank table ${tag}: byte ${x} has no token`);
    }
    return buf;
  }

  /** A table from its file form; throws when the buffer is not a complete table for `tag`. */
  static parse(file: Uint8Array, tag: string): RankTable {
    // Typed-array views need 4-byte alignment; readFileSync's buffer for a file this size is its own, at offset 0.
    const buf = file.byteOffset % 4 === 0 ? file : file.slice();
    const bad = (why: string): Error => new Error(`rank table ${tag}: ${why}; rebuild it with \`npm run build\``);
    if (buf.length < HEADER_BYTES) throw bad('file too short');
    const [magic, format, n, total, slotCount, maxLen, maxProbe] = new Uint32Array(buf.buffer, buf.byteOffset, HEADER_WORDS) as unknown as number[];
    if (magic !== MAGIC || format !== FORMAT) throw bad('not a rank table of this format');
    const fileTag = new TextDecoder().decode(buf.subarray(HEADER_WORDS * 4, HEADER_BYTES)).replace(/\0+$/, '');
    if (fileTag !== tag) throw bad(`built for ${fileTag}, expected ${tag}`);
    const offsetsBytes = (n! + 1) * 4;
    if ((slotCount! & (slotCount! - 1)) !== 0 || slotCount! < n! || maxProbe! < 1 || maxProbe! > slotCount! || buf.length !== HEADER_BYTES + offsetsBytes + slotCount! * 4 + total!) throw bad('sizes do not match');
    const offsets = new Uint32Array(buf.buffer, buf.byteOffset + HEADER_BYTES, n! + 1);
    const slots = new Uint32Array(buf.buffer, buf.byteOffset + HEADER_BYTES + offsetsBytes, slotCount!);
    const bytes = buf.subarray(HEADER_BYTES + offsetsBytes + slotCount! * 4);
    return new RankTable(bytes, offsets, slots, maxLen!, maxProbe!);
  }
}
