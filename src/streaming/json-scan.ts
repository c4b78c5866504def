// Incremental, byte-level JSON scanner for values too large to hold: bytes go in as they arrive, and a sink
// says, value by value (by its path of keys and indices), whether to skip it, capture its raw JSON (bounded),
// or decode a string's text in pieces. Memory is the path, one capture and one text piece, whatever the size
// of the document. A `response.completed` event repeats a whole Responses answer; an embeddings body holds
// thousands of vectors: both are scanned here for their few interesting fields instead of JSON.parsed whole.
// Invalid JSON stops the scan (`broken`); what was captured before stays valid. A value nesting deeper than
// MAX_SCAN_DEPTH is skipped by counting its brackets (its bytes checked to be JSON's, not its grammar; nothing asked about): the path stays
// bounded, and a field after it (a `response.completed` event's usage after a deeply nested output) is still read.

/** Sink answers (JsonScanSink.value). */
export const SCAN_SKIP = 0;
/** Capture this value's raw JSON (up to the scanner's capture bound). */
export const SCAN_RAW = 1;
/** Decode this value, if a string, and hand its text out in pieces. */
export const SCAN_TEXT = 2;
/** Skip this value and never ask about anything inside it. */
export const SCAN_SKIP_TREE = 3;

export type ScanPath = readonly (string | number)[];

export interface JsonScanSink {
  /** What to do with the value starting at `path` (the array is reused: read it now, do not keep it). */
  value(path: ScanPath): number;
  /** The raw JSON of a SCAN_RAW value; undefined when it exceeded the capture bound. */
  raw(path: ScanPath, json: string | undefined): void;
  /** A decoded piece of a SCAN_TEXT string (a long string comes in several). */
  piece(path: ScanPath, text: string): void;
}

const ST_VALUE = 0;      // expecting a value (after ':' or ',' in an array, or at the top)
const ST_ARR_OPEN = 1;   // after '[': a value or ']'
const ST_OBJ_OPEN = 2;   // after '{': a key or '}'
const ST_KEY_NEXT = 3;   // after ',' in an object: a key
const ST_KEY = 4;        // inside an object key
const ST_COLON = 5;      // after a key
const ST_STRING = 6;     // inside a string value
const ST_LITERAL = 7;    // inside a number, true, false or null
const ST_AFTER = 8;      // after a value: ',' or a closer
const ST_DONE = 9;       // the top-level value ended
const ST_BROKEN = 10;
const ST_DEEP = 11;      // inside a value nested past MAX_SCAN_DEPTH: brackets counted
const ST_DEEP_STR = 12;  // inside a string in such a value

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const MAX_KEY_BYTES = 64;
/** Deeper nesting is skipped by counting brackets: no field Sluice reads nests near it, and the path must stay bounded. */
export const MAX_SCAN_DEPTH = 256;
/** Text pieces are cut at about this many bytes (at a character and escape boundary). */
const TEXT_PIECE_BYTES = 16 * 1024;
/** A key longer than MAX_KEY_BYTES: matches nothing a sink looks for. */
const LONG_KEY = '\u0000';

/** Bytes JSON may have outside strings besides brackets and quotes: whitespace, `,` `:`, and those of numbers and
 *  literals. What a value nested past MAX_SCAN_DEPTH is checked against (its grammar is not followed). */
const DEEP_BYTES = new Uint8Array(256);
for (const c of ' \t\r\n,:0123456789-+.eEtrufalsn') DEEP_BYTES[c.charCodeAt(0)] = 1;

function isWs(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

function isDelimiter(b: number): boolean {
  return b === 0x2c || b === 0x7d || b === 0x5d || isWs(b);
}

/** Decodes the inside of a JSON string literal; on bad escapes or control characters, the raw text (counting only). */
function decodeStringBody(s: string): string {
  if (s.indexOf('\\') === -1) return s;
  try {
    return JSON.parse('"' + s + '"') as string;
  } catch {
    return s;
  }
}

/** The largest prefix of raw string-literal bytes that ends on a character and escape boundary. */
function safeCut(buf: Buffer, len: number): number {
  let i = 0;
  let p = 0;
  while (i < len) {
    const b = buf[i]!;
    let n: number;
    if (b === BACKSLASH) n = i + 1 < len && buf[i + 1] === 0x75 ? 6 : 2;
    else if (b < 0x80) n = 1;
    else n = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    if (i + n > len) break;
    i += n;
    p = i;
  }
  return p;
}

export class JsonScanner {
  private readonly sink: JsonScanSink;
  private readonly captureBound: number;
  private state = ST_VALUE;
  /** Per open container: true for an object. */
  private readonly objects: boolean[] = [];
  /** path[k]: the key or index of the current child of the container at depth k. */
  private readonly path: (string | number)[] = [];
  /** Values deeper than this are not asked about (inside a SCAN_SKIP_TREE container); -1: none. */
  private quietDepth = -1;
  /** Inside a string: the previous chunk ended in an unescaped backslash. */
  private esc = false;
  /** ST_DEEP: brackets open in the value nested past MAX_SCAN_DEPTH. */
  private deep = 0;

  private readonly key: Buffer = Buffer.allocUnsafe(MAX_KEY_BYTES);
  private keyLen = 0;
  private keyLong = false;

  /** SCAN_RAW capture: depth of the captured value (-1: none), its pieces and size. */
  private capDepth = -1;
  private capParts: Buffer[] = [];
  private capLen = 0;
  private capOver = false;

  /** SCAN_TEXT: the string's raw bytes not yet handed out. */
  private texting = false;
  private text: Buffer | undefined;
  private textLen = 0;

  constructor(sink: JsonScanSink, captureBound = 64 * 1024) {
    this.sink = sink;
    this.captureBound = captureBound;
  }

  /** The input was not JSON: scanning stopped at the fault. */
  get broken(): boolean { return this.state === ST_BROKEN; }
  /** The top-level value ended. */
  get done(): boolean { return this.state === ST_DONE; }

  push(buf: Buffer): void {
    if (this.state === ST_BROKEN) return;
    const end = buf.length;
    let i = 0;
    // Where the bytes of an open capture start in this chunk.
    let capFrom = 0;
    while (i < end) {
      const state = this.state;
      if (state === ST_DEEP) {
        let b = 0;
        for (; i < end; i++) {
          b = buf[i]!;
          if (b === QUOTE) break;
          if (b === 0x7b || b === 0x5b) this.deep++;
          else if (b === 0x7d || b === 0x5d) { if (--this.deep === 0) break; }
          else if (DEEP_BYTES[b] === 0) {
            // Not a byte JSON has outside strings: the input is no JSON, as at any depth.
            this.fail();
            return;
          }
        }
        if (i === end) break;
        i++;
        if (b === QUOTE) {
          this.state = ST_DEEP_STR;
          this.esc = false;
        } else {
          capFrom = this.closeDeep(buf, capFrom, i);
        }
        continue;
      }
      if (state === ST_DEEP_STR) {
        const close = this.stringEnd(buf, i, end);
        if (close === -1) break;
        i = close + 1;
        this.state = ST_DEEP;
        continue;
      }
      if (state === ST_STRING || state === ST_KEY) {
        const close = this.stringEnd(buf, i, end);
        const stop = close === -1 ? end : close;
        if (state === ST_KEY) this.keyBytes(buf, i, stop);
        else if (this.texting) this.textBytes(buf, i, stop);
        if (close === -1) break;
        i = close + 1;
        if (state === ST_KEY) {
          this.state = ST_COLON;
          continue;
        }
        if (this.texting) this.endText();
        if (this.capDepth === this.objects.length) {
          this.capture(buf, capFrom, i);
          capFrom = i;
          this.endCapture();
        }
        this.state = this.objects.length === 0 ? ST_DONE : ST_AFTER;
        continue;
      }
      const b = buf[i]!;
      if (state === ST_LITERAL) {
        if (!isDelimiter(b)) { i++; continue; }
        if (this.capDepth === this.objects.length) {
          this.capture(buf, capFrom, i);
          capFrom = i;
          this.endCapture();
        }
        this.state = this.objects.length === 0 ? ST_DONE : ST_AFTER;
        continue;
      }
      if (isWs(b)) { i++; continue; }
      if ((state === ST_ARR_OPEN && b === 0x5d) || (state === ST_OBJ_OPEN && b === 0x7d)) {
        i++;
        capFrom = this.closeContainer(buf, capFrom, i);
        continue;
      }
      switch (state) {
        case ST_ARR_OPEN:
        case ST_VALUE: {
          const capturing = this.capDepth !== -1;
          this.startValue(b);
          if (!capturing && this.capDepth !== -1) capFrom = i;
          i++;
          break;
        }
        case ST_OBJ_OPEN:
        case ST_KEY_NEXT:
          if (b !== QUOTE) { this.fail(); return; }
          this.state = ST_KEY;
          this.esc = false;
          this.keyLen = 0;
          this.keyLong = false;
          i++;
          break;
        case ST_COLON:
          if (b !== 0x3a) { this.fail(); return; }
          this.path[this.path.length - 1] = this.keyLong ? LONG_KEY : decodeStringBody(this.key.toString('utf8', 0, this.keyLen));
          this.state = ST_VALUE;
          i++;
          break;
        case ST_AFTER: {
          const depth = this.objects.length;
          const inObject = this.objects[depth - 1]!;
          i++;
          if (b === 0x2c) {
            if (inObject) this.state = ST_KEY_NEXT;
            else {
              (this.path[depth - 1] as number)++;
              this.state = ST_VALUE;
            }
          } else if (b === (inObject ? 0x7d : 0x5d)) {
            capFrom = this.closeContainer(buf, capFrom, i);
          } else {
            this.fail();
            return;
          }
          break;
        }
        default:
          // ST_DONE: only whitespace may follow; ST_BROKEN: nothing is read any more.
          if (state === ST_DONE) this.fail();
          return;
      }
    }
    if (this.capDepth !== -1 && capFrom < end) this.capture(buf, capFrom, end);
  }

  /** The input ended: a top-level literal ends here; a value still open is dropped, but for the text of a string it
   *  ended inside, handed out as far as it came (its pieces before were too). */
  end(): void {
    if (this.state === ST_LITERAL && this.objects.length === 0) {
      if (this.capDepth === 0) this.endCapture();
      this.state = ST_DONE;
    }
    if (this.texting && this.state === ST_STRING) this.flushText(true);
    this.capDepth = -1;
    this.capParts = [];
    this.texting = false;
    this.textLen = 0;
  }

  private fail(): void {
    this.state = ST_BROKEN;
    this.capDepth = -1;
    this.capParts = [];
    this.texting = false;
  }

  /** Offset of the quote closing the current string (-1: not in this chunk; the escape state is carried). */
  private stringEnd(buf: Buffer, from: number, end: number): number {
    let i = from;
    if (this.esc) {
      this.esc = false;
      i++;
    }
    while (i < end) {
      const q = buf.indexOf(QUOTE, i);
      const limit = q === -1 ? end : q;
      // The run of backslashes just before the quote (or the chunk's end) decides whether it is escaped.
      let k = limit - 1;
      while (k >= i && buf[k] === BACKSLASH) k--;
      const odd = ((limit - 1 - k) & 1) === 1;
      if (q === -1) {
        this.esc = odd;
        return -1;
      }
      if (!odd) return q;
      i = q + 1;
    }
    return -1;
  }

  private startValue(b: number): void {
    const depth = this.objects.length;
    const quiet = this.quietDepth !== -1 && depth > this.quietDepth;
    const mode = quiet || this.capDepth !== -1 ? SCAN_SKIP : this.sink.value(this.path);
    if (mode === SCAN_RAW) {
      this.capDepth = depth;
      this.capParts = [];
      this.capLen = 0;
      this.capOver = false;
    }
    if (b === 0x7b || b === 0x5b) {
      if (depth >= MAX_SCAN_DEPTH) {
        this.deep = 1;
        this.state = ST_DEEP;
        return;
      }
      if (mode === SCAN_SKIP_TREE) this.quietDepth = depth;
      const isObject = b === 0x7b;
      this.objects.push(isObject);
      this.path.push(isObject ? '' : 0);
      this.state = isObject ? ST_OBJ_OPEN : ST_ARR_OPEN;
    } else if (b === QUOTE) {
      this.state = ST_STRING;
      this.esc = false;
      if (mode === SCAN_TEXT) {
        this.texting = true;
        this.textLen = 0;
      }
    } else if (b === 0x2d || (b >= 0x30 && b <= 0x39) || b === 0x74 || b === 0x66 || b === 0x6e) {
      this.state = ST_LITERAL;
    } else {
      this.fail();
    }
  }

  /** A container closed (its closer is just before `i`): ends a capture that started with it. */
  private closeContainer(buf: Buffer, capFrom: number, i: number): number {
    this.objects.pop();
    this.path.pop();
    const depth = this.objects.length;
    if (this.quietDepth !== -1 && depth <= this.quietDepth) this.quietDepth = -1;
    this.state = depth === 0 ? ST_DONE : ST_AFTER;
    if (this.capDepth === depth) {
      this.capture(buf, capFrom, i);
      this.endCapture();
      return i;
    }
    return capFrom;
  }

  /** The value nested past MAX_SCAN_DEPTH closed (its closer is just before `i`): as closeContainer, nothing to pop. */
  private closeDeep(buf: Buffer, capFrom: number, i: number): number {
    this.state = ST_AFTER;
    if (this.capDepth === this.objects.length) {
      this.capture(buf, capFrom, i);
      this.endCapture();
      return i;
    }
    return capFrom;
  }

  private keyBytes(buf: Buffer, from: number, to: number): void {
    if (this.keyLong) return;
    const n = to - from;
    if (this.keyLen + n > MAX_KEY_BYTES) { this.keyLong = true; return; }
    buf.copy(this.key, this.keyLen, from, to);
    this.keyLen += n;
  }

  private capture(buf: Buffer, from: number, to: number): void {
    if (this.capOver || to <= from) return;
    const n = to - from;
    if (this.capLen + n > this.captureBound) {
      this.capOver = true;
      this.capParts = [];
      return;
    }
    this.capParts.push(Buffer.from(buf.subarray(from, to)));
    this.capLen += n;
  }

  private endCapture(): void {
    const json = this.capOver ? undefined : Buffer.concat(this.capParts, this.capLen).toString('utf8');
    this.capDepth = -1;
    this.capParts = [];
    this.capLen = 0;
    this.capOver = false;
    this.sink.raw(this.path, json);
  }

  private textBytes(buf: Buffer, from: number, to: number): void {
    let n = to - from;
    while (n > 0) {
      if (this.text === undefined) this.text = Buffer.allocUnsafe(TEXT_PIECE_BYTES + 8);
      const take = Math.min(this.text.length - this.textLen, n);
      buf.copy(this.text, this.textLen, from, from + take);
      this.textLen += take;
      from += take;
      n -= take;
      if (this.textLen >= TEXT_PIECE_BYTES) this.flushText(false);
    }
  }

  private flushText(all: boolean): void {
    const t = this.text;
    if (t === undefined || this.textLen === 0) return;
    const cut = all ? this.textLen : safeCut(t, this.textLen);
    if (cut === 0) return;
    const piece = decodeStringBody(t.toString('utf8', 0, cut));
    t.copy(t, 0, cut, this.textLen);
    this.textLen -= cut;
    if (piece.length > 0) this.sink.piece(this.path, piece);
  }

  private endText(): void {
    this.flushText(true);
    this.texting = false;
    this.textLen = 0;
  }
}
