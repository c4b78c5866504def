// Byte-pair merging in O(n log n) for long pre-token pieces. gpt-tokenizer's merge rescans every pair after
// each merge, which is quadratic in the length of one piece: one 160k-character run of a single letter took
// ~40 s. This merge applies exactly the same rule (lowest rank first, the leftmost on ties), so its count is
// the library's count, with a lazily-invalidated binary heap of (rank, position) keys over a linked list.
// It is resumable: run(until) stops at a deadline, and at any point `tokens` (the pieces not yet merged) is an
// upper bound of the final count, since merging only ever lowers it.

/** Rank of a byte string, or -1: src/tokens/rank-table.ts's RankTable (gpt-tokenizer's getBpeRankFromBytes). */
export interface ByteRanks {
  rankOfBytes(bytes: Uint8Array, start: number, end: number): number;
}

const TOKEN_BITS = 2 ** 18;
const MEMO_MAX = 1 << 17;

/**
 * Pair ranks memoised by the two tokens' ids, for pieces without a BOM: there a token's bytes are always its
 * id's bytes, so the pair's rank is a function of (left id, right id), and a long run repeats few pairs.
 * (With a BOM in the piece, one id can stand for two byte strings: see rank-table.ts; no memo then.)
 */
export class PairMemo {
  private readonly ranks: ByteRanks;
  private memo = new Map<number, number>();
  private readonly byteRank = new Int32Array(256);

  constructor(ranks: ByteRanks) {
    this.ranks = ranks;
    for (let b = 0; b < 256; b++) {
      const r = ranks.rankOfBytes(Uint8Array.of(b), 0, 1);
      if (r < 0 || r >= TOKEN_BITS) throw new Error('unsupported BPE table: a byte without a token');
      this.byteRank[b] = r;
    }
  }

  /** The token of one byte (byte-level BPE has one for every byte). */
  single(b: number): number {
    return this.byteRank[b]!;
  }

  /** Rank of bytes[start..end), the concatenation of tokens `left` and `right`, or -1. */
  pair(left: number, right: number, bytes: Uint8Array, start: number, end: number): number {
    const key = left * TOKEN_BITS + right;
    let r = this.memo.get(key);
    if (r === undefined) {
      r = this.ranks.rankOfBytes(bytes, start, end);
      if (r >= TOKEN_BITS) r = -1;
      if (this.memo.size >= MEMO_MAX) this.memo = new Map();
      this.memo.set(key, r);
    }
    return r;
  }
}

function hasBom(b: Uint8Array): boolean {
  for (let i = b.indexOf(0xef); i !== -1 && i + 2 < b.length; i = b.indexOf(0xef, i + 1)) {
    if (b[i + 1] === 0xbb && b[i + 2] === 0xbf) return true;
  }
  return false;
}

// Heap keys pack rank and position into one double: rank · 2^POS_BITS + position, exact below 2^53.
const POS_BITS = 26;
const POS_SCALE = 2 ** POS_BITS;
/**
 * Longest piece (bytes) merged exactly; longer ones are bounded by their byte length (each token has ≥ 1 byte).
 * A merge holds ~40 bytes per byte of piece (links, ranks, heap): 256 KiB keeps one under ~10 MB.
 */
export const MAX_EXACT_PIECE_BYTES = 256 * 1024;
const NO_RANK = -1;
const CHECK_EVERY = 1024;

class KeyHeap {
  private a: Float64Array;
  size = 0;

  constructor(capacity: number) {
    this.a = new Float64Array(Math.max(16, capacity));
  }

  push(k: number): void {
    if (this.size === this.a.length) {
      const grown = new Float64Array(this.a.length * 2);
      grown.set(this.a);
      this.a = grown;
    }
    const a = this.a;
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]! <= k) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = k;
  }

  pop(): number {
    const a = this.a;
    const top = a[0]!;
    const last = a[--this.size]!;
    const n = this.size;
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && a[c + 1]! < a[c]!) c++;
      if (a[c]! >= last) break;
      a[i] = a[c]!;
      i = c;
    }
    if (n > 0) a[i] = last;
    return top;
  }
}

/** One piece's merge, resumable. Node ids are the byte offsets where each current token starts. */
export class PieceMerge {
  /** Current number of tokens: the final count once done, an upper bound before. */
  tokens: number;
  done = false;
  private readonly bytes: Uint8Array;
  private readonly ranks: ByteRanks;
  /** With a memo: the token id of the span each live node covers. */
  private readonly memo: PairMemo | undefined;
  private readonly tok: Int32Array | undefined;
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly rank: Int32Array;
  private readonly heap: KeyHeap;

  constructor(bytes: Uint8Array, ranks: ByteRanks, memo?: PairMemo) {
    const m = bytes.length;
    if (m >= POS_SCALE) throw new RangeError('piece too long for an exact merge');
    this.bytes = bytes;
    this.ranks = ranks;
    this.tokens = m;
    this.next = new Int32Array(m);
    this.prev = new Int32Array(m);
    this.rank = new Int32Array(m);
    if (memo !== undefined && !hasBom(bytes)) {
      this.memo = memo;
      this.tok = new Int32Array(m);
    }
    // n − 1 initial pairs plus at most two per merge: 3n entries at most, so the heap never grows.
    this.heap = new KeyHeap(m * 3);
    // Only allocation here: the first pass over the pairs is part of run(), so it too stops at deadlines.
    if (m < 2) this.done = true;
  }

  /** Next byte to initialise; the pass is over when it reaches the piece's length. */
  private init = 0;

  private end(i: number): number {
    return i < this.bytes.length ? this.next[i]! : this.bytes.length;
  }

  /** Recomputes the rank of the pair starting at node i and queues it. */
  private setRank(i: number): void {
    const j = this.next[i]!;
    if (j >= this.bytes.length) {
      this.rank[i] = NO_RANK;
      return;
    }
    const tok = this.tok;
    const r = tok !== undefined
      ? this.memo!.pair(tok[i]!, tok[j]!, this.bytes, i, this.end(j))
      : this.ranks.rankOfBytes(this.bytes, i, this.end(j));
    if (r < 0) {
      this.rank[i] = NO_RANK;
      return;
    }
    this.rank[i] = r;
    this.heap.push(r * POS_SCALE + i);
  }

  /** Merges until done or performance.now() ≥ until (checked every 1024 steps). Returns done. */
  run(until = Infinity): boolean {
    if (this.done) return true;
    const bytes = this.bytes;
    const m = bytes.length;
    if (this.init < m) {
      const next = this.next;
      const prev = this.prev;
      // Links of every byte first, then the ranks of the pairs.
      if (this.init === 0) {
        for (let i = 0; i < m; i++) {
          next[i] = i + 1;
          prev[i] = i - 1;
        }
        const tok = this.tok;
        if (tok !== undefined) for (let i = 0; i < m; i++) tok[i] = this.memo!.single(bytes[i]!);
        this.rank[m - 1] = NO_RANK;
      }
      for (let i = this.init; i < m - 1; i++) {
        this.setRank(i);
        if ((i & (CHECK_EVERY - 1)) === 0 && until !== Infinity && performance.now() >= until) {
          this.init = i + 1;
          return false;
        }
      }
      this.init = m;
    }
    const heap = this.heap;
    const next = this.next;
    const prev = this.prev;
    const rank = this.rank;
    let steps = 0;
    while (heap.size > 0) {
      if (++steps === CHECK_EVERY) {
        steps = 0;
        if (until !== Infinity && performance.now() >= until) return false;
      }
      const key = heap.pop();
      const r = Math.floor(key / POS_SCALE);
      const i = key - r * POS_SCALE;
      // Stale entry: node i was merged into its left neighbour, or its pair changed since it was queued.
      if (rank[i] !== r) continue;
      const j = next[i]!;
      const k = next[j]!;
      next[i] = k;
      if (k < m) prev[k] = i;
      rank[j] = NO_RANK;
      if (this.tok !== undefined) this.tok[i] = r;
      this.tokens--;
      this.setRank(i);
      const p = prev[i]!;
      if (p >= 0) this.setRank(p);
    }
    this.done = true;
    return true;
  }
}
