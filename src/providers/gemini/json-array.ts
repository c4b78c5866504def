// Incremental scanner for Gemini's non-SSE stream: one JSON array whose elements arrive over time
// (`[{…}\n,\r\n{…}\n]`). It tracks strings, escapes and nesting byte by byte and hands out each top-level
// element's bytes once complete; chunks may split anywhere, a multi-byte character included (bytes are joined
// before decoding). Memory is one element at most, bounded like an SSE event. A body that is a single object
// instead of an array (an error, or an upstream ignoring the stream) is handed out as one element.
import { SluiceError } from '../../core/errors.ts';
import { DEFAULT_MAX_EVENT_BYTES } from '../../streaming/sse-parser.ts';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

const enum State { Start, Between, InElement, Done }

export class JsonArrayScanner {
  private readonly onElement: (json: string) => void;
  private readonly onOversized: ((held: string) => void) | undefined;
  private readonly maxElementBytes: number;
  private state = State.Start;
  /** true: the body is one bare object, not an array. */
  private bare = false;
  private depth = 0;
  private inString = false;
  private escape = false;
  /** Bytes of the element in progress from earlier chunks. */
  private held: Buffer[] = [];
  private heldLen = 0;

  /** `onOversized`: an element past the bound is refused (push throws); it is first given what the element held. */
  constructor(onElement: (json: string) => void, maxElementBytes: number = DEFAULT_MAX_EVENT_BYTES, onOversized?: (held: string) => void) {
    this.onElement = onElement;
    this.onOversized = onOversized;
    this.maxElementBytes = maxElementBytes;
  }

  push(chunk: Buffer): void {
    const len = chunk.length;
    let i = 0;
    let start = this.state === State.InElement ? 0 : -1;
    while (i < len) {
      const c = chunk[i]!;
      switch (this.state) {
        case State.Start:
          // The opening bracket of an element is left for scan() to count.
          if (c === OPEN_BRACE) { this.bare = true; this.open(); start = i; break; }
          if (c === OPEN_BRACKET) this.state = State.Between;
          i++;
          break;
        case State.Between:
          if (c === OPEN_BRACE || c === OPEN_BRACKET) { this.open(); start = i; break; }
          if (c === CLOSE_BRACKET) this.state = State.Done;
          // Separators, whitespace and stray scalars between elements carry nothing to meter.
          i++;
          break;
        case State.InElement: {
          i = this.scan(chunk, i, len);
          if (this.depth === 0) {
            this.emit(chunk, start, i);
            start = -1;
            this.state = this.bare ? State.Done : State.Between;
          }
          break;
        }
        case State.Done:
          return;
      }
    }
    if (this.state === State.InElement && start !== -1 && start < len) this.hold(chunk.subarray(start, len));
  }

  /** Bytes of an unfinished element at the end of the stream are dropped: there is no whole frame to read. */
  get pendingBytes(): number {
    return this.heldLen;
  }

  private open(): void {
    this.state = State.InElement;
    this.depth = 0;
    this.inString = false;
    this.escape = false;
  }

  /** Advances through an element from `i`; returns the index just past its closing bracket, or `len`. */
  private scan(b: Buffer, i: number, len: number): number {
    let depth = this.depth;
    let inString = this.inString;
    let escape = this.escape;
    for (; i < len; i++) {
      const c = b[i]!;
      if (inString) {
        if (escape) escape = false;
        else if (c === BACKSLASH) escape = true;
        else if (c === QUOTE) inString = false;
        continue;
      }
      if (c === QUOTE) inString = true;
      else if (c === OPEN_BRACE || c === OPEN_BRACKET) depth++;
      else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
        depth--;
        if (depth === 0) { i++; break; }
      }
    }
    this.depth = depth;
    this.inString = inString;
    this.escape = escape;
    return i;
  }

  private hold(piece: Buffer): void {
    if (this.heldLen + piece.length > this.maxElementBytes) this.tooLarge(piece);
    // A copy: the caller may reuse its chunk.
    this.held.push(Buffer.from(piece));
    this.heldLen += piece.length;
  }

  private emit(chunk: Buffer, start: number, end: number): void {
    let bytes: Buffer;
    if (this.heldLen === 0) bytes = chunk.subarray(start, end);
    else {
      if (this.heldLen + end > this.maxElementBytes) this.tooLarge(chunk.subarray(0, end));
      this.held.push(chunk.subarray(0, end));
      bytes = Buffer.concat(this.held);
      this.held = [];
      this.heldLen = 0;
    }
    if (bytes.length > this.maxElementBytes) this.tooLarge(undefined, bytes);
    this.onElement(bytes.toString('utf8'));
  }

  /** `extra`: bytes of the element not held yet; `whole`: the element joined already (then nothing is held). */
  private tooLarge(extra?: Buffer, whole?: Buffer): never {
    if (this.onOversized !== undefined) {
      const all = whole ?? Buffer.concat(extra === undefined ? this.held : [...this.held, extra]);
      this.onOversized(all.toString('utf8'));
    }
    throw new SluiceError('SLC_UPSTREAM_ERROR', `upstream stream element exceeds ${this.maxElementBytes} bytes`);
  }
}
