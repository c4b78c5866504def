// Incremental, byte-level parser for upstream Server-Sent Events (the WHATWG event-stream grammar).
// Chunks may split anywhere: inside a multi-byte UTF-8 character, between CR and LF, inside a field name.
// Only complete lines are decoded, and only `data` and `event` values become strings: a typical OpenAI frame
// costs one utf8 slice and no other allocation.
import { SluiceError } from '../core/errors.ts';

export const DEFAULT_MAX_EVENT_BYTES = 1024 * 1024;

export interface SseHandler {
  /**
   * Called at every blank line, i.e. at every event boundary, including blocks that had no data field
   * (`data` is then null; browsers would dispatch nothing). `event` is '' when the block set no event type.
   * `end` is the offset in the chunk being pushed just past the blank line; 0 when the boundary was completed
   * by the start of this chunk or, from end(), when it ends the stream.
   */
  onEvent(data: string | null, event: string, end: number): void;
  /**
   * Optional: an event whose data is one line lying whole in the pushed chunk is handed over as bytes,
   * undecoded (`buf[start, stop)`, valid only during the call), instead of onEvent. Events with several data
   * lines, or whose line spans chunks, still come to onEvent.
   */
  onRawData?(buf: Buffer, start: number, stop: number, end: number): void;
  /**
   * Optional: the event went past the size bound and the stream is about to be refused (push throws). `held` is
   * its data as far as it came (data lines' values joined, the last one cut), about to be dropped: an upstream
   * produced it all the same, so a meter counts its text (streaming/held-text.ts).
   */
  onOversized?(held: string): void;
}

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;
const EMPTY = Buffer.alloc(0);
const MIN_CARRY = 256;

const BOM = [0xef, 0xbb, 0xbf];

/** Drops one UTF-8 byte order mark at the start of a byte stream, split across chunks or not (the SSE spec ignores
 *  one; a JSON body read as a stream the same). */
export class BomSkipper {
  /** BOM bytes matched so far; -1 once the stream's first bytes are past. */
  private matched = 0;

  get done(): boolean { return this.matched < 0; }

  /** How many bytes at the start of `chunk` are (the rest of) the mark. */
  skip(chunk: Buffer): number {
    let i = 0;
    while (this.matched >= 0 && this.matched < 3 && i < chunk.length && chunk[i] === BOM[this.matched]) { this.matched++; i++; }
    if (this.matched === 3 || i < chunk.length) this.matched = -1;
    return i;
  }
}

export class SseParser {
  private readonly bom = new BomSkipper();
  private readonly handler: SseHandler;
  private readonly maxEventBytes: number;
  /** Bytes of an unterminated line carried over from earlier chunks. */
  private carry: Buffer = EMPTY;
  private carryLen = 0;
  /** The previous chunk ended in CR: its line is complete only once we know whether LF follows. */
  private crPending = false;
  private data: string | null = null;
  private eventType = '';
  /** Bytes of the current, not yet dispatched event, line terminators included. */
  private eventBytes = 0;
  /** Raw mode (handler.onRawData): the event's one data line, not decoded yet. */
  private rawBuf: Buffer | undefined = undefined;
  private rawStart = 0;
  private rawStop = 0;

  constructor(handler: SseHandler, maxEventBytes: number = DEFAULT_MAX_EVENT_BYTES) {
    this.handler = handler;
    this.maxEventBytes = maxEventBytes;
  }

  /** Bytes received since the last event boundary (the partial trailing event). */
  get pendingBytes(): number {
    return this.eventBytes + this.carryLen + (this.crPending ? 1 : 0);
  }

  push(chunk: Buffer): void {
    // Skipped by offset, not sliced off: handler offsets are the pushed chunk's.
    this.scan(chunk, this.bom.done ? 0 : this.bom.skip(chunk));
    // An event still open at the chunk's end keeps no reference to the chunk.
    if (this.rawBuf !== undefined) this.decodeRaw();
  }

  private scan(chunk: Buffer, from: number): void {
    const len = chunk.length;
    // An empty chunk says nothing, not even whether a pending CR is followed by LF.
    if (from >= len) return;
    let pos = from;
    if (this.crPending) {
      this.crPending = false;
      if (chunk[0] === LF) pos = 1;
      this.lineFromCarry(pos, 1 + pos);
    }
    if (pos >= len) return;
    // Nearly every upstream terminates lines with LF alone; native indexOf then finds every line end.
    const anyCR = chunk.indexOf(CR, pos) !== -1;
    while (pos < len) {
      let i: number;
      if (anyCR) {
        i = pos;
        while (i < len && chunk[i] !== LF && chunk[i] !== CR) i++;
        if (i === len) i = -1;
      } else {
        i = chunk.indexOf(LF, pos);
      }
      if (i === -1) {
        this.appendCarry(chunk, pos, len);
        return;
      }
      let next = i + 1;
      if (chunk[i] === CR) {
        if (next === len) {
          this.appendCarry(chunk, pos, i);
          this.crPending = true;
          return;
        }
        if (chunk[next] === LF) next++;
      }
      if (this.carryLen > 0) {
        this.appendCarry(chunk, pos, i);
        this.lineFromCarry(next, next - i);
      } else {
        this.line(chunk, pos, i, next, next - pos);
      }
      pos = next;
    }
  }

  /** The stream ended: a final line or event without its terminating blank line still counts. */
  /** The event being dispatched is one the stream ended inside (no blank line after it): a cut frame. */
  endedInside = false;

  end(): void {
    if (this.crPending) {
      this.crPending = false;
      this.lineFromCarry(0, 1);
    } else if (this.carryLen > 0) {
      this.lineFromCarry(0, 0);
    }
    if (this.data !== null || this.eventBytes > 0) {
      this.endedInside = true;
      this.dispatch(0);
    }
  }

  private appendCarry(src: Buffer, start: number, end: number): void {
    const n = end - start;
    if (n === 0) return;
    const need = this.carryLen + n;
    if (this.eventBytes + need > this.maxEventBytes) this.tooLarge(src, start, end);
    if (need > this.carry.length) {
      const grown = Buffer.allocUnsafe(Math.min(Math.max(need, this.carry.length * 2, MIN_CARRY), this.maxEventBytes));
      this.carry.copy(grown, 0, 0, this.carryLen);
      this.carry = grown;
    }
    src.copy(this.carry, this.carryLen, start, end);
    this.carryLen = need;
  }

  private lineFromCarry(end: number, terminatorBytes: number): void {
    const n = this.carryLen;
    this.carryLen = 0;
    this.line(this.carry, 0, n, end, n + terminatorBytes);
  }

  /** One complete line buf[start, stop); `end` is the chunk offset just past its terminator. */
  private line(buf: Buffer, start: number, stop: number, end: number, bytes: number): void {
    if (start === stop) {
      this.dispatch(end);
      return;
    }
    this.eventBytes += bytes;
    if (this.eventBytes > this.maxEventBytes) this.tooLarge(buf, start, stop);
    const first = buf[start];
    if (first === COLON) return;
    // Field names compared byte by byte: only `data` and `event` matter here (`id` and `retry` do not).
    if (first === 0x64 && stop - start >= 4 && buf[start + 1] === 0x61 && buf[start + 2] === 0x74 && buf[start + 3] === 0x61
      && (stop - start === 4 || buf[start + 4] === COLON)) {
      if (this.handler.onRawData !== undefined && this.data === null && this.rawBuf === undefined && buf !== this.carry) {
        let at = start + 4;
        if (at < stop) { at++; if (at < stop && buf[at] === SPACE) at++; }
        this.rawBuf = buf;
        this.rawStart = at;
        this.rawStop = stop;
        return;
      }
      if (this.rawBuf !== undefined) this.decodeRaw();
      const v = this.value(buf, start + 4, stop);
      this.data = this.data === null ? v : this.data + '\n' + v;
    } else if (first === 0x65 && stop - start >= 5 && buf[start + 1] === 0x76 && buf[start + 2] === 0x65 && buf[start + 3] === 0x6e
      && buf[start + 4] === 0x74 && (stop - start === 5 || buf[start + 5] === COLON)) {
      this.eventType = this.value(buf, start + 5, stop);
    }
  }

  /** The value after a field name at `at`: skip the colon and one optional space. */
  private value(buf: Buffer, at: number, stop: number): string {
    if (at >= stop) return '';
    at++;
    if (at < stop && buf[at] === SPACE) at++;
    return at >= stop ? '' : buf.toString('utf8', at, stop);
  }

  private decodeRaw(): void {
    const b = this.rawBuf as Buffer;
    this.rawBuf = undefined;
    this.data = this.rawStart >= this.rawStop ? '' : b.toString('utf8', this.rawStart, this.rawStop);
  }

  private dispatch(end: number): void {
    const raw = this.rawBuf;
    if (raw !== undefined) {
      this.rawBuf = undefined;
      this.data = null;
      this.eventType = '';
      this.eventBytes = 0;
      this.handler.onRawData!(raw, this.rawStart, this.rawStop, end);
      return;
    }
    const data = this.data;
    const event = this.eventType;
    this.data = null;
    this.eventType = '';
    this.eventBytes = 0;
    this.handler.onEvent(data, event, end);
  }

  /** `src[start, end)`: the bytes that went past the bound, not held yet. */
  private tooLarge(src: Buffer, start: number, end: number): never {
    const report = this.handler.onOversized;
    if (report !== undefined) {
      let held = this.rawBuf !== undefined ? this.rawBuf.toString('utf8', this.rawStart, this.rawStop) : this.data;
      // The line being read: the carry holds its start when the bytes came from elsewhere (appendCarry).
      const line = (this.carryLen > 0 && src !== this.carry ? this.carry.toString('utf8', 0, this.carryLen) : '') + src.toString('utf8', start, end);
      // Only a data line's value is the event's: a comment or another field past the bound is no text.
      if (line.startsWith('data:')) {
        const v = line.charCodeAt(5) === SPACE ? line.slice(6) : line.slice(5);
        held = held === null ? v : held + '\n' + v;
      }
      report(held ?? '');
    }
    throw new SluiceError('SLC_UPSTREAM_ERROR', `upstream SSE event exceeds ${this.maxEventBytes} bytes`);
  }
}
