// Bounded holder of a stream's generated text, kept for counting in case the upstream never reports usage.
// Text accumulates up to `bound` characters; past it, the held text up to its last whitespace is handed out
// to be counted (and dropped here), and only the tail after that whitespace stays, since a token may
// straddle it. Cutting just before whitespace follows the tokenizers' pre-split (whitespace opens the next
// word), so the pieces nearly always count the same as the whole or more. Not always: a run of newlines, or a
// text without whitespace cut at the bound, can regroup at the cut and count one token less (found by the
// property tests; fuzzing 100k random cuts never found more than one). So every cut adds CUT_MARGIN_TOKENS to
// the estimate: an over-count is fine, an under-count is not. A stream short enough to stay under the bound is
// never counted at all when its usage arrives.

export const DEFAULT_TEXT_BOUND = 64 * 1024;
/** Tokens added per cut: the most one cut was seen to lose is 1. */
export const CUT_MARGIN_TOKENS = 4;

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09 || c === 0x0c || c === 0x0b || c === 0xa0 || c === 0x3000;
}

export class TextTally {
  private readonly bound: number;
  private parts: string[] = [];
  private length = 0;
  private ready: string | undefined = undefined;
  private cuts = 0;
  /** Characters ever added, and that count when mark() was last called (-1: never). */
  private added = 0;
  private markAt = -1;

  constructor(bound: number = DEFAULT_TEXT_BOUND) {
    this.bound = Math.max(16, bound);
  }

  add(text: string): void {
    if (text.length === 0) return;
    this.added += text.length;
    this.parts.push(text);
    this.length += text.length;
    if (this.length > this.bound) this.cut();
  }

  /** Text to count now and forget, when the bound was passed since the last call. */
  take(): string | undefined {
    const r = this.ready;
    this.ready = undefined;
    return r;
  }

  /** Everything held and not yet taken (the tail, plus a piece not taken yet). */
  rest(): string {
    const tail = this.parts.join('');
    return this.ready === undefined ? tail : this.ready + tail;
  }

  /** Tokens to add to the pieces' counts so that cutting never under-counts (CUT_MARGIN_TOKENS per cut). */
  get margin(): number {
    return this.cuts * CUT_MARGIN_TOKENS;
  }

  /** Records that everything added so far is covered (by a usage report): addedSinceMark tells if more came. */
  mark(): void {
    this.markAt = this.added;
  }

  /** Text was added after the last mark() (false when never marked). */
  get addedSinceMark(): boolean {
    return this.markAt !== -1 && this.added > this.markAt;
  }

  /** Characters ever added. */
  get total(): number {
    return this.added;
  }

  /** Characters held. */
  get held(): number {
    return this.length + (this.ready?.length ?? 0);
  }

  private cut(): void {
    const s = this.parts.join('');
    // The cut is searched in the second half only, so the kept tail never exceeds half the bound.
    const min = s.length >> 1;
    let at = -1;
    for (let i = s.length - 1; i > min; i--) {
      if (isSpace(s.charCodeAt(i))) { at = i; break; }
    }
    if (at === -1) {
      // No whitespace (CJK, base64): cut at the end, but never between the halves of a surrogate pair.
      at = s.length;
      const last = s.charCodeAt(at - 1);
      if (last >= 0xd800 && last <= 0xdbff) at--;
    }
    this.cuts++;
    const piece = s.slice(0, at);
    // A fresh copy of the tail, so it does not keep the whole joined string alive.
    const tail = at < s.length ? (' ' + s.slice(at)).slice(1) : '';
    this.ready = this.ready === undefined ? piece : this.ready + piece;
    this.parts = tail.length > 0 ? [tail] : [];
    this.length = tail.length;
  }
}
