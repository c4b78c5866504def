// Token counting in time near-linear in the input, for every input, with gpt-tokenizer's count exactly. The text
// is split into pre-token pieces with the library's regex (linear); a piece that is a token counts 1, and the
// others are merged byte pair by byte pair: short ones with the library's own quadratic loop (fast when short),
// long ones with PieceMerge, which applies the same merges in O(n log n) (the library's loop is pathological
// for long pieces: a run of one letter, emoji or spaces is one piece). Ranks come from the compact table
// (rank-table.ts), whose lookups answer exactly as the library's do.
//
// CountJob is the resumable form the worker threads use: it counts a list of texts in time slices, and when a
// time budget runs out it finishes with an upper bound (tokens so far + the UTF-8 bytes not yet counted: a
// byte-level BPE token is at least one byte), so a runaway input costs a bounded over-count, never a stall.
import { MAX_EXACT_PIECE_BYTES, PairMemo, PieceMerge } from './bpe.ts';
import { getRankTable, getSplitRegex, type TokenEncoding } from './encoding.ts';
import type { RankTable } from './rank-table.ts';

/** Pieces up to this many UTF-16 units use the quadratic merge (at most 3 UTF-8 bytes per unit). */
const SHORT_PIECE = 48;
const SHORT_BYTES = SHORT_PIECE * 3;
/** Pieces between deadline checks. */
const CHECK_EVERY = 64;
const NONE = 0x7fffffff;

const utf8 = new TextEncoder();
// Scratch space of the short-piece path (synchronous, never re-entered).
const pieceBytes = new Uint8Array(SHORT_BYTES);
const starts = new Int32Array(SHORT_BYTES + 1);
const pairRanks = new Int32Array(SHORT_BYTES + 1);

/** Bytes of the UTF-8 encoding of s[from..to) (lone surrogates become U+FFFD, 3 bytes, as TextEncoder does). */
export function utf8Length(s: string, from = 0, to = s.length): number {
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < to && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * Writes the UTF-8 of a short piece into pieceBytes as TextEncoder would (a lone surrogate becomes U+FFFD).
 * Returns its length, negated when the piece has a lone surrogate (the library's string lookup never finds it).
 */
function encodeShort(piece: string): number {
  const out = pieceBytes;
  let n = 0;
  let wellFormed = true;
  for (let i = 0; i < piece.length; i++) {
    let c = piece.charCodeAt(i);
    if (c < 0x80) { out[n++] = c; continue; }
    if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 0x3f);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < piece.length ? piece.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && (d & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
        out[n++] = 0xf0 | (c >> 18);
        out[n++] = 0x80 | ((c >> 12) & 0x3f);
        out[n++] = 0x80 | ((c >> 6) & 0x3f);
        out[n++] = 0x80 | (c & 0x3f);
        continue;
      }
      wellFormed = false;
      c = 0xfffd;
    }
    out[n++] = 0xe0 | (c >> 12);
    out[n++] = 0x80 | ((c >> 6) & 0x3f);
    out[n++] = 0x80 | (c & 0x3f);
  }
  return wellFormed ? n : -n;
}

/** gpt-tokenizer's bytePairMerge over pieceBytes[0..len), as a count: lowest rank first, the leftmost on ties. */
function mergeShort(table: RankTable, len: number): number {
  const b = pieceBytes;
  // starts[0..k) are the part boundaries (the last one is len); pairRanks[i] ranks parts i and i+1 together.
  let k = len + 1;
  for (let i = 0; i <= len; i++) {
    starts[i] = i;
    const r = i + 2 <= len ? table.rankOfBytes(b, i, i + 2) : -1;
    pairRanks[i] = r < 0 ? NONE : r;
  }
  while (k > 1) {
    let lowest = NONE;
    let at = -1;
    for (let i = 0; i < k - 1; i++) {
      if (pairRanks[i]! < lowest) {
        lowest = pairRanks[i]!;
        at = i;
      }
    }
    if (at === -1) break;
    starts.copyWithin(at + 1, at + 2, k);
    pairRanks.copyWithin(at, at + 1, k);
    k--;
    let r = at + 2 < k ? table.rankOfBytes(b, starts[at]!, starts[at + 2]!) : -1;
    pairRanks[at] = r < 0 ? NONE : r;
    if (at > 0) {
      r = table.rankOfBytes(b, starts[at - 1]!, starts[at + 1]!);
      pairRanks[at - 1] = r < 0 ? NONE : r;
    }
  }
  return k - 1;
}

// Counts of short pieces that are not one token, per table: ordinary text repeats its words, and a Map hit
// costs less than a merge. Bounded; emptied whole when full (the library keeps a 100k-entry LRU instead).
const PIECE_CACHE_MAX = 16_384;
const pieceCaches: Partial<Record<TokenEncoding, Map<string, number>>> = {};

/** Empties the piece caches (benchmarks measure cold counts). */
export function clearPieceCache(): void {
  for (const cache of Object.values(pieceCaches)) cache.clear();
}

function pieceCacheFor(enc: TokenEncoding): Map<string, number> {
  return (pieceCaches[enc] ??= new Map());
}

const pairMemos: Partial<Record<TokenEncoding, PairMemo>> = {};

function pairMemoFor(enc: TokenEncoding): PairMemo {
  return (pairMemos[enc] ??= new PairMemo(getRankTable(enc)));
}

function shortPiece(table: RankTable, cache: Map<string, number>, piece: string): number {
  const n = encodeShort(piece);
  const len = n < 0 ? -n : n;
  if (table.rankOfPiece(pieceBytes, len, n >= 0) >= 0) return 1;
  let count = cache.get(piece);
  if (count === undefined) {
    count = mergeShort(table, len);
    if (cache.size >= PIECE_CACHE_MAX) cache.clear();
    cache.set(piece, count);
  }
  return count;
}

/** A piece too long for shortPiece is still one token when it is in the table (runs of spaces or '=' are). */
function wholeToken(table: RankTable, piece: string): boolean {
  return piece.length <= table.maxTokenBytes && table.rankOfString(piece) >= 0;
}

// One regex per encoding for synchronous counting (a /g regex carries lastIndex state; sync calls never overlap).
const syncRegex: Partial<Record<TokenEncoding, RegExp>> = {};

function regexFor(enc: TokenEncoding): RegExp {
  const re = getSplitRegex(enc);
  return (syncRegex[enc] ??= new RegExp(re.source, re.flags));
}

/** Exact token count of `text` as ordinary text (special-token markers are plain text), synchronously. */
export function countTextExact(text: string, enc: TokenEncoding): number {
  if (text.length === 0) return 0;
  const table = getRankTable(enc);
  const cache = pieceCacheFor(enc);
  const re = regexFor(enc);
  re.lastIndex = 0;
  let n = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    const piece = m[0];
    if (piece.length <= SHORT_PIECE) { n += shortPiece(table, cache, piece); continue; }
    if (wholeToken(table, piece)) { n++; continue; }
    const bytes = utf8.encode(piece);
    if (bytes.length > MAX_EXACT_PIECE_BYTES) { n += bytes.length; continue; }
    const merge = new PieceMerge(bytes, table, pairMemoFor(enc));
    merge.run();
    n += merge.tokens;
  }
  return n;
}

export interface CountJobOptions {
  /** Look texts up in, and store exact counts into, this cache (prompt texts). */
  readonly cache?: { get(text: string): number | undefined; set(text: string, n: number): void };
  /** Only texts with a length in this range go through the cache. */
  readonly cacheRange?: readonly [number, number];
}

/** Counts a list of texts, resumably. `total` is exact when `exact` is true, an upper bound otherwise. */
export class CountJob {
  total = 0;
  exact = true;
  private readonly texts: readonly string[];
  private readonly table: RankTable;
  private readonly pieces: Map<string, number>;
  private readonly memo: PairMemo;
  private readonly re: RegExp;
  private readonly opts: CountJobOptions;
  private t = 0;
  /** Tokens of the current text so far; the regex's lastIndex is the resume point within it. */
  private inText = 0;
  private started = false;
  private merge: PieceMerge | undefined;

  constructor(texts: readonly string[], enc: TokenEncoding, opts: CountJobOptions = {}) {
    this.texts = texts;
    this.table = getRankTable(enc);
    this.pieces = pieceCacheFor(enc);
    this.memo = pairMemoFor(enc);
    const re = getSplitRegex(enc);
    this.re = new RegExp(re.source, re.flags);
    this.opts = opts;
  }

  get done(): boolean {
    return this.t >= this.texts.length;
  }

  private cacheable(text: string): boolean {
    const r = this.opts.cacheRange;
    return this.opts.cache !== undefined && (r === undefined || (text.length >= r[0] && text.length <= r[1]));
  }

  /** Counts until done or performance.now() ≥ until. Returns true when every text is counted. */
  run(until = Infinity): boolean {
    const table = this.table;
    const re = this.re;
    let steps = 0;
    while (this.t < this.texts.length) {
      const text = this.texts[this.t]!;
      if (!this.started) {
        const hit = this.cacheable(text) ? this.opts.cache!.get(text) : undefined;
        if (hit !== undefined || text.length === 0) {
          this.total += hit ?? 0;
          this.t++;
          continue;
        }
        this.started = true;
        this.inText = 0;
        re.lastIndex = 0;
      }
      if (this.merge !== undefined) {
        if (!this.merge.run(until)) return false;
        this.inText += this.merge.tokens;
        this.merge = undefined;
      }
      let m: RegExpExecArray | null;
      while ((m = re.exec(text)) !== null) {
        const piece = m[0];
        if (piece.length <= SHORT_PIECE) this.inText += shortPiece(table, this.pieces, piece);
        else if (wholeToken(table, piece)) this.inText++;
        else {
          const bytes = utf8.encode(piece);
          if (bytes.length > MAX_EXACT_PIECE_BYTES) {
            this.inText += bytes.length;
            this.exact = false;
          } else {
            const merge = new PieceMerge(bytes, table, this.memo);
            if (!merge.run(until)) {
              this.merge = merge;
              return false;
            }
            this.inText += merge.tokens;
          }
        }
        if (++steps === CHECK_EVERY) {
          steps = 0;
          if (until !== Infinity && performance.now() >= until) return false;
        }
      }
      if (this.exact && this.cacheable(text)) this.opts.cache!.set(text, this.inText);
      this.total += this.inText;
      this.started = false;
      this.t++;
    }
    return true;
  }

  /**
   * Stops counting and makes `total` an upper bound: the tokens counted so far, the current piece's unmerged
   * tokens (merging only lowers them), and the UTF-8 bytes of everything not yet looked at.
   */
  finishWithBound(): void {
    if (this.done) return;
    this.exact = false;
    let n = 0;
    if (this.started) {
      const text = this.texts[this.t]!;
      n += this.inText + (this.merge !== undefined ? this.merge.tokens : 0) + utf8Length(text, this.re.lastIndex);
      this.merge = undefined;
      this.started = false;
      this.t++;
    }
    for (; this.t < this.texts.length; this.t++) n += utf8Length(this.texts[this.t]!);
    this.total += n;
  }
}
