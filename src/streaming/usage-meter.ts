// Watches an upstream OpenAI SSE stream on its way to the client: records the usage chunk and the generated
// text (to count tokens when usage never comes), and, when the client did not ask for usage, removes the
// usage-only chunk that Sluice made the upstream send. Pass-through mode forwards every input chunk as is.
// The text is held in a bounded TextTally: past its bound, pieces are handed out to be counted and dropped.
//
// Most frames of a stream differ only in their text: `{"id":…,"choices":[{"index":0,"delta":{"content":"` +
// text + `"},"logprobs":null,"finish_reason":null}],"usage":null}`. Once a frame has been read whole (the scan
// of delta-scan.ts found exactly one text literal, without escapes), its bytes before and after the text are
// kept; a later frame made of the same prefix and suffix around bytes without a quote or backslash is that
// frame with other text, so its text bytes are copied as they are — no string, no scan — and decoded only
// when the text is needed: the stream ends without usage, is aborted, or holds more than the bound. A stream
// whose usage arrives never decodes them. Any other frame (the usage chunk, tool calls, escapes, another
// shape) takes the decoded path.
import { SseParser, type SseHandler } from './sse-parser.ts';
import { coversMore, isRejection, laterUsage, readUsage, DEFAULT_MAX_USAGE, type Usage, type UsageRejection, type UsageRejectReason } from './usage.ts';
import { lastScan, scanDeltaText } from './delta-scan.ts';
import { DEFAULT_TEXT_BOUND, TextTally } from './text-tally.ts';
import { heldText } from './held-text.ts';
import { chatMessageText, type TextSink } from './chat-text.ts';

export interface StreamMeterOptions {
  /** The client did not set stream_options.include_usage: drop the usage-only chunk (choices: [] with usage). */
  stripUsage: boolean;
  maxEventBytes?: number;
  /** JSON.parse every frame instead of scanning plain content frames (tests compare the two paths). */
  parseEveryFrame?: boolean;
  /** Per-request ceiling of a believable usage count (tokens.max_usage). */
  maxUsage?: number;
  /** Characters of text held before a piece is handed out for counting (default 64 KiB). */
  textBound?: number;
  /** Reads a frame's `usage` object (default readUsage: the three counts; a provider may read its token kinds too). */
  readUsage?: (u: unknown, maxUsage: number) => Usage | UsageRejection | undefined;
}

const DONE = '[DONE]';
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
/** Times a stream may learn a new frame shape: a stream whose frames keep changing shape stops trying. */
const MAX_LEARN = 4;
/** First size of the undecoded-text buffer. */
const RAW_START = 64;
/** First size of the buffer holding an event that spans reads (strip mode). */
const PEND_START = 512;

/** buf[a, b) starts and ends on whole UTF-8 characters, so decoding it alone or joined to others gives the same text. */
function wholeChars(buf: Buffer, a: number, b: number): boolean {
  const first = buf[a]!;
  if (first >= 0x80 && first < 0xc0) return false;
  let i = b - 1;
  let tail = 0;
  while (i > a && tail < 3 && (buf[i]! & 0xc0) === 0x80) { i--; tail++; }
  const lead = buf[i]!;
  const need = lead < 0x80 ? 0 : lead >= 0xf8 ? -1 : lead >= 0xf0 ? 3 : lead >= 0xe0 ? 2 : lead >= 0xc0 ? 1 : -1;
  return need === tail;
}

export class StreamMeter {
  private usageSeen: Usage | undefined = undefined;
  private rejectedSeen: UsageRejectReason | undefined = undefined;
  /** Text came in a frame after the one that reported usageSeen. */
  private afterUsage = false;
  /** addText as a callback, made on the first frame that takes the full parse. */
  private sink: TextSink | undefined = undefined;
  private readonly tally: TextTally;
  private readonly maxUsage: number;
  private readonly readUsage: (u: unknown, maxUsage: number) => Usage | UsageRejection | undefined;
  private done = false;
  private frameCount = 0;
  private readonly bound: number;
  // The learned frame's bytes (an ASCII frame's data), where its text starts and where its suffix starts; and the
  // undecoded text bytes held. Bytes, not the string: indexed reads cost 250 ns a ~190-byte frame, charCodeAt 600.
  private shape: Uint8Array | undefined = undefined;
  private preLen = 0;
  private sufAt = 0;
  private learned = 0;
  private raw: Buffer | undefined = undefined;
  private rawLen = 0;

  private readonly strip: boolean;
  private readonly fast: boolean;
  private readonly parser: SseParser;
  // Strip mode only: the chunk being pushed, where its current event starts, the bytes of an event begun in
  // earlier chunks (copied into one growing buffer: a Buffer per read held ~100 bytes per byte of an event trickled
  // a byte at a time), and the kept pieces of output.
  private cur: Buffer | undefined = undefined;
  private segStart = 0;
  private pend: Buffer | undefined = undefined;
  private pendLen = 0;
  private runStart = -1;
  private runEnd = -1;
  /** Output pieces [0, outN): the array is reused across chunks (emptying it with `length = 0` would free its
   *  backing store and allocate a new one on the next chunk's push). */
  private out: (Buffer | undefined)[] = [];
  private outN = 0;

  constructor(opts: StreamMeterOptions) {
    this.strip = opts.stripUsage;
    this.fast = opts.parseEveryFrame !== true;
    this.maxUsage = opts.maxUsage ?? DEFAULT_MAX_USAGE;
    this.readUsage = opts.readUsage ?? readUsage;
    this.tally = new TextTally(opts.textBound);
    this.bound = Math.max(16, opts.textBound ?? DEFAULT_TEXT_BOUND);
    // An event past the size bound cuts the stream; what it held was produced all the same: counted as text.
    const onOversized = (held: string): void => { this.addText(heldText(held)); };
    const handler: SseHandler = this.fast
      ? { onEvent: (data, _event, end) => this.onEvent(data, end), onRawData: (buf, start, stop, end) => this.onRaw(buf, start, stop, end), onOversized }
      : { onEvent: (data, _event, end) => this.onEvent(data, end), onOversized };
    this.parser = new SseParser(handler, opts.maxEventBytes);
  }

  /** The usage the stream reported: its last plausible report, never below an earlier one (laterUsage). */
  get usage(): Usage | undefined { return this.usageSeen; }
  /** Why the last usage-bearing frame's usage was not believed (`usage` then holds an earlier believed report, if any). */
  get usageRejected(): UsageRejectReason | undefined { return this.rejectedSeen; }
  /** Generated text came after the last usage report (a usage chunk followed by more content). */
  get textAfterUsage(): boolean { return this.afterUsage && this.usageSeen !== undefined; }
  /**
   * Generated text (content, text, reasoning_content, tool-call names and arguments) held and not yet handed
   * out by takeCountable(): all of it for a stream shorter than the bound.
   */
  get text(): string { this.decodeHeld(); return this.tally.rest(); }
  /** Characters of generated text held (undecoded bytes counted as characters: never fewer). */
  get heldChars(): number { return this.tally.held + this.rawLen; }
  /** Characters of text the stream carried (text kept as bytes counted by its bytes, a bound). */
  get textChars(): number { return this.tally.total + this.rawLen; }
  /** Tokens to add to the count of the pieces and the rest, so that cutting the text never under-counts. */
  get countMargin(): number { return this.tally.margin; }
  /** A piece of text to count now; the meter has dropped it. undefined until the bound is passed. */
  takeCountable(): string | undefined { return this.tally.take(); }
  get sawDone(): boolean { return this.done; }
  /** Data events received, [DONE] excluded. */
  get frames(): number { return this.frameCount; }

  /** Bytes to forward now: `chunk` itself unless something was stripped or held back; undefined for none. */
  push(chunk: Buffer): Buffer | undefined {
    if (!this.strip) {
      this.parser.push(chunk);
      return chunk.length > 0 ? chunk : undefined;
    }
    this.cur = chunk;
    this.segStart = 0;
    this.parser.push(chunk);
    this.flushRun();
    if (this.segStart < chunk.length) this.hold(chunk, this.segStart);
    this.cur = undefined;
    return this.takeOutput();
  }

  /** The stream ended: any held-back trailing bytes to forward. */
  end(): Buffer | undefined {
    if (!this.strip) {
      this.parser.end();
      return undefined;
    }
    this.cur = undefined;
    this.segStart = 0;
    this.parser.end();
    // Bytes after the last boundary that formed no event (a stray partial line) are forwarded as they came.
    this.emitHeld();
    return this.takeOutput();
  }

  /** Keeps chunk[from, end) of an event not complete yet, after what is held. */
  private hold(chunk: Buffer, from: number): void {
    const n = chunk.length - from;
    const need = this.pendLen + n;
    let p = this.pend;
    if (p === undefined || need > p.length) {
      // Its own memory (a pool slice would pin a shared slab); at most twice the event, which the parser bounds.
      const grown = Buffer.allocUnsafeSlow(Math.max(PEND_START, need, p === undefined ? 0 : 2 * p.length));
      if (p !== undefined) p.copy(grown, 0, 0, this.pendLen);
      p = this.pend = grown;
    }
    chunk.copy(p, this.pendLen, from);
    this.pendLen = need;
  }

  /** The held bytes go out; their buffer goes with them (the socket may keep it queued), so it is not reused. */
  private emitHeld(): void {
    if (this.pendLen === 0) return;
    this.emit(this.pend!.subarray(0, this.pendLen));
    this.pend = undefined;
    this.pendLen = 0;
  }

  /** A one-line data event as bytes: a frame of the learned shape is kept undecoded, any other is decoded. */
  private onRaw(buf: Buffer, start: number, stop: number, end: number): void {
    if (this.keepIfPlain(buf, start, stop)) {
      this.frameCount++;
      if (this.strip) this.afterEvent(false, end);
      return;
    }
    this.onEvent(buf.toString('utf8', start, stop), end);
  }

  /** buf[start, stop) is the learned prefix + text without quote or backslash + the learned suffix: keep the text bytes. */
  private keepIfPlain(buf: Buffer, start: number, stop: number): boolean {
    const shape = this.shape;
    if (shape === undefined) return false;
    const preLen = this.preLen;
    const sufAt = this.sufAt;
    const sufLen = shape.length - sufAt;
    const a = start + preLen;
    const b = stop - sufLen;
    if (b < a) return false;
    // From the end: the suffix (usage, finish_reason) tells frames apart sooner than the constant id.
    for (let i = sufLen - 1; i >= 0; i--) if (buf[b + i] !== shape[sufAt + i]) return false;
    for (let i = preLen - 1; i >= 0; i--) if (buf[start + i] !== shape[i]) return false;
    let high = false;
    for (let i = a; i < b; i++) {
      const c = buf[i]!;
      if (c === QUOTE || c === BACKSLASH) return false;
      if (c >= 0x80) high = true;
    }
    if (a === b) return true;
    if (high && !wholeChars(buf, a, b)) return false;
    if (this.usageSeen !== undefined) this.afterUsage = true;
    const n = b - a;
    let raw = this.raw;
    if (raw === undefined || this.rawLen + n > raw.length) {
      // Its own memory (not a pool slice, which would pin a shared 8 KiB slab for the stream's life).
      const grown = Buffer.allocUnsafeSlow(Math.max(RAW_START, (this.rawLen + n) * 3 >> 1));
      if (raw !== undefined) raw.copy(grown, 0, 0, this.rawLen);
      raw = this.raw = grown;
    }
    if (n < 32) { let o = this.rawLen; for (let i = a; i < b; i++) raw[o++] = buf[i]!; } else buf.copy(raw, this.rawLen, a, b);
    this.rawLen += n;
    if (this.rawLen + this.tally.held > this.bound) this.decodeHeld();
    return true;
  }

  /** The undecoded text bytes go to the tally (which may cut a piece to count). */
  private decodeHeld(): void {
    if (this.rawLen === 0) return;
    const text = this.raw!.toString('utf8', 0, this.rawLen);
    this.rawLen = 0;
    if (this.raw!.length > 4096) this.raw = undefined;
    this.tally.add(text);
  }

  private addText(text: string): void {
    if (text.length > 0 && this.usageSeen !== undefined) this.afterUsage = true;
    if (this.rawLen > 0) this.decodeHeld();
    this.tally.add(text);
  }

  /** A frame read by the scan, with one text literal and no escape: its bytes around the text are the shape. */
  private learn(data: string): void {
    if (this.learned >= MAX_LEARN || lastScan.literals !== 1 || lastScan.escaped || lastScan.end <= lastScan.start) return;
    // ASCII only: its characters are its bytes. Its own memory, not a pool slice pinning a shared 8 KiB slab.
    if (Buffer.byteLength(data) !== data.length) return;
    this.learned++;
    const shape = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) shape[i] = data.charCodeAt(i);
    this.shape = shape;
    this.preLen = lastScan.start;
    this.sufAt = lastScan.end;
  }

  private onEvent(data: string | null, end: number): void {
    const drop = data !== null && this.onData(data);
    if (!this.strip) return;
    this.afterEvent(drop, end);
  }

  private afterEvent(drop: boolean, end: number): void {
    const cur = this.cur;
    if (drop) {
      this.flushRun();
      this.pendLen = 0;
      if (this.pend !== undefined && this.pend.length > 4 * PEND_START) this.pend = undefined;
    } else {
      this.emitHeld();
      if (cur !== undefined && end > this.segStart) {
        if (this.runStart === -1) this.runStart = this.segStart;
        this.runEnd = end;
      }
    }
    this.segStart = end;
  }

  /** Records what a data frame says; true when it is the usage-only chunk and must be stripped. */
  private onData(data: string): boolean {
    if (data === DONE) {
      this.done = true;
      return false;
    }
    this.frameCount++;
    if (this.fast) {
      const text = scanDeltaText(data);
      if (text !== null) {
        if (text.length > 0) {
          this.addText(text);
          this.learn(data);
        }
        return false;
      }
    }
    let frame: unknown;
    try {
      frame = JSON.parse(data);
    } catch {
      // Not JSON, yet relayed to the client: counted as produced text (no relayed byte is free). A last event the
      // stream ended inside is a cut frame, not text: its content up to the cut is what the count misses, a few tokens.
      if (!this.parser.endedInside) this.addText(data);
      return false;
    }
    if (typeof frame !== 'object' || frame === null) return false;
    const f = frame as { usage?: unknown; choices?: unknown };
    const choices = f.choices;
    if (Array.isArray(choices)) {
      for (const c of choices) this.collectText(c);
    }
    if (f.usage === undefined || f.usage === null) return false;
    const usage = this.readUsage(f.usage, this.maxUsage);
    if (isRejection(usage)) {
      // An earlier report stays: it is a floor of what was used (the gateway charges it or the count, the larger).
      this.rejectedSeen = usage.rejected;
    } else if (usage !== undefined) {
      const prev = this.usageSeen;
      this.usageSeen = prev === undefined ? usage : laterUsage(prev, usage);
      this.rejectedSeen = undefined;
      if (coversMore(prev, this.usageSeen)) this.afterUsage = false;
    }
    return this.strip && Array.isArray(choices) && choices.length === 0;
  }

  private collectText(choice: unknown): void {
    if (typeof choice !== 'object' || choice === null) return;
    const c = choice as { delta?: unknown; text?: unknown };
    if (typeof c.text === 'string') this.addText(c.text);
    // Tool calls, refusals, reasoning and transcripts are generated tokens too: an aborted one must still be charged.
    chatMessageText(c.delta, this.sink ??= (t) => this.addText(t));
  }

  /** Closes the current run of kept bytes of the current chunk into an output piece. */
  private flushRun(): void {
    if (this.runStart === -1) return;
    const cur = this.cur as Buffer;
    this.emit(this.runStart === 0 && this.runEnd === cur.length ? cur : cur.subarray(this.runStart, this.runEnd));
    this.runStart = -1;
    this.runEnd = -1;
  }

  private emit(piece: Buffer): void {
    this.out[this.outN++] = piece;
  }

  /** One piece is returned as is (the pushed chunk itself when all of it was kept); several are joined. */
  private takeOutput(): Buffer | undefined {
    const n = this.outN;
    if (n === 0) return undefined;
    const out = this.out;
    const result = n === 1 ? out[0]! : Buffer.concat(out.slice(0, n) as Buffer[]);
    // Emptied without shrinking, so no piece stays pinned; a chunk that split into many pieces gives its array up.
    if (out.length > 16) this.out = [];
    else for (let i = 0; i < n; i++) out[i] = undefined;
    this.outN = 0;
    return result;
  }
}
