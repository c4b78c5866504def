// Token counting in time near-linear in the input, for every input. gpt-tokenizer splits text into pre-token
// pieces with its regex (linear) and merges each piece with a quadratic loop, which is fast for the short
// pieces of ordinary text and pathological for long ones (a run of one letter, emoji or spaces is one piece).
// Here short pieces go through the library (and its merge cache) and long ones through PieceMerge, which
// applies the same merges in O(n log n): the count is the library's count, exactly.
//
// CountJob is the resumable form the worker threads use: it counts a list of texts in time slices, and when a
// time budget runs out it finishes with an upper bound (tokens so far + the UTF-8 bytes not yet counted: a
// byte-level BPE token is at least one byte), so a runaway input costs a bounded over-count, never a stall.
import { MAX_EXACT_PIECE_BYTES, PieceMerge, RankLookup } from './bpe.ts';
import { getEncoderCore, type EncoderCore, type TokenEncoding } from './encoding.ts';

/** Pieces up to this many UTF-16 units use the library's merge (quadratic, but fast and cached when short). */
const SHORT_PIECE = 48;
/** Pieces between deadline checks. */
const CHECK_EVERY = 64;

const utf8 = new TextEncoder();
const lookups: Partial<Record<TokenEncoding, RankLookup>> = {};

function lookupFor(enc: TokenEncoding, core: EncoderCore): RankLookup {
  return (lookups[enc] ??= new RankLookup(core));
}

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

function shortPiece(core: EncoderCore, piece: string): number {
  return core.getBpeRankFromString(piece) !== undefined ? 1 : core.bytePairEncode(piece).length;
}

// One regex per encoding for synchronous counting (a /g regex carries lastIndex state; sync calls never overlap).
const syncRegex: Partial<Record<TokenEncoding, RegExp>> = {};

function regexFor(enc: TokenEncoding, core: EncoderCore): RegExp {
  return (syncRegex[enc] ??= new RegExp(core.tokenSplitRegex.source, core.tokenSplitRegex.flags));
}

/** Exact token count of `text` as ordinary text (special-token markers are plain text), synchronously. */
export function countTextExact(text: string, enc: TokenEncoding): number {
  if (text.length === 0) return 0;
  const core = getEncoderCore(enc);
  const re = regexFor(enc, core);
  re.lastIndex = 0;
  let n = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    const piece = m[0];
    if (piece.length <= SHORT_PIECE) { n += shortPiece(core, piece); continue; }
    const bytes = utf8.encode(piece);
    if (bytes.length > MAX_EXACT_PIECE_BYTES) { n += bytes.length; continue; }
    const merge = new PieceMerge(bytes, lookupFor(enc, core));
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
  private readonly core: EncoderCore;
  private readonly re: RegExp;
  private readonly ranks: RankLookup;
  private readonly opts: CountJobOptions;
  private t = 0;
  /** Tokens of the current text so far; the regex's lastIndex is the resume point within it. */
  private inText = 0;
  private started = false;
  private merge: PieceMerge | undefined;

  constructor(texts: readonly string[], enc: TokenEncoding, opts: CountJobOptions = {}) {
    this.texts = texts;
    this.core = getEncoderCore(enc);
    this.re = new RegExp(this.core.tokenSplitRegex.source, this.core.tokenSplitRegex.flags);
    this.ranks = lookupFor(enc, this.core);
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
    const core = this.core;
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
        if (piece.length <= SHORT_PIECE) this.inText += shortPiece(core, piece);
        else {
          const bytes = utf8.encode(piece);
          if (bytes.length > MAX_EXACT_PIECE_BYTES) {
            this.inText += bytes.length;
            this.exact = false;
          } else {
            const merge = new PieceMerge(bytes, this.ranks);
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
