// Watches an upstream OpenAI SSE stream on its way to the client: records the usage chunk and the generated
// text (to count tokens when usage never comes), and, when the client did not ask for usage, removes the
// usage-only chunk that Sluice made the upstream send. Pass-through mode forwards every input chunk as is.
// The text is held in a bounded TextTally: past its bound, pieces are handed out to be counted and dropped.
import { SseParser, type SseHandler } from './sse-parser.ts';
import { isRejection, readUsage, DEFAULT_MAX_USAGE, type Usage, type UsageRejection, type UsageRejectReason } from './usage.ts';
import { scanDeltaText } from './delta-scan.ts';
import { TextTally } from './text-tally.ts';

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

export class StreamMeter {
  private usageSeen: Usage | undefined = undefined;
  private rejectedSeen: UsageRejectReason | undefined = undefined;
  private readonly tally: TextTally;
  private readonly maxUsage: number;
  private readonly readUsage: (u: unknown, maxUsage: number) => Usage | UsageRejection | undefined;
  private done = false;
  private frameCount = 0;

  private readonly strip: boolean;
  private readonly fast: boolean;
  private readonly parser: SseParser;
  // Strip mode only: the chunk being pushed, where its current event starts, the bytes of an event begun in
  // earlier chunks, and the kept pieces of output.
  private cur: Buffer | undefined = undefined;
  private segStart = 0;
  private pend: Buffer[] = [];
  private runStart = -1;
  private runEnd = -1;
  private out: Buffer[] = [];

  constructor(opts: StreamMeterOptions) {
    this.strip = opts.stripUsage;
    this.fast = opts.parseEveryFrame !== true;
    this.maxUsage = opts.maxUsage ?? DEFAULT_MAX_USAGE;
    this.readUsage = opts.readUsage ?? readUsage;
    this.tally = new TextTally(opts.textBound);
    const handler: SseHandler = { onEvent: (data, _event, end) => this.onEvent(data, end) };
    this.parser = new SseParser(handler, opts.maxEventBytes);
  }

  /** The usage object of the last usage-bearing frame, when it was plausible. */
  get usage(): Usage | undefined { return this.usageSeen; }
  /** Why the last usage-bearing frame's usage was not believed (then `usage` is undefined). */
  get usageRejected(): UsageRejectReason | undefined { return this.rejectedSeen; }
  /**
   * Generated text (content, text, reasoning_content, tool-call names and arguments) held and not yet handed
   * out by takeCountable(): all of it for a stream shorter than the bound.
   */
  get text(): string { return this.tally.rest(); }
  /** Characters of generated text held. */
  get heldChars(): number { return this.tally.held; }
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
    if (this.segStart < chunk.length) this.pend.push(Buffer.from(chunk.subarray(this.segStart)));
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
    for (const p of this.pend) this.out.push(p);
    this.pend.length = 0;
    return this.takeOutput();
  }

  private onEvent(data: string | null, end: number): void {
    const drop = data !== null && this.onData(data);
    if (!this.strip) return;
    const cur = this.cur;
    if (drop) {
      this.flushRun();
      this.pend.length = 0;
    } else {
      if (this.pend.length > 0) {
        for (const p of this.pend) this.out.push(p);
        this.pend.length = 0;
      }
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
        if (text.length > 0) this.tally.add(text);
        return false;
      }
    }
    let frame: unknown;
    try {
      frame = JSON.parse(data);
    } catch {
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
      this.usageSeen = undefined;
      this.rejectedSeen = usage.rejected;
    } else if (usage !== undefined) {
      this.usageSeen = usage;
      this.rejectedSeen = undefined;
    }
    return this.strip && Array.isArray(choices) && choices.length === 0;
  }

  private collectText(choice: unknown): void {
    if (typeof choice !== 'object' || choice === null) return;
    const c = choice as { delta?: unknown; text?: unknown };
    if (typeof c.text === 'string') this.tally.add(c.text);
    const delta = c.delta;
    if (typeof delta !== 'object' || delta === null) return;
    const d = delta as { content?: unknown; reasoning_content?: unknown; tool_calls?: unknown };
    if (typeof d.content === 'string') this.tally.add(d.content);
    if (typeof d.reasoning_content === 'string') this.tally.add(d.reasoning_content);
    // Tool-call names and arguments are generated tokens too: an aborted tool call must still be charged.
    if (Array.isArray(d.tool_calls)) {
      for (const call of d.tool_calls) {
        const fn = (call as { function?: { name?: unknown; arguments?: unknown } } | null)?.function;
        if (typeof fn !== 'object' || fn === null) continue;
        if (typeof fn.name === 'string') this.tally.add(fn.name);
        if (typeof fn.arguments === 'string') this.tally.add(fn.arguments);
      }
    }
  }

  /** Closes the current run of kept bytes of the current chunk into an output piece. */
  private flushRun(): void {
    if (this.runStart === -1) return;
    const cur = this.cur as Buffer;
    this.out.push(this.runStart === 0 && this.runEnd === cur.length ? cur : cur.subarray(this.runStart, this.runEnd));
    this.runStart = -1;
    this.runEnd = -1;
  }

  /** One piece is returned as is (the pushed chunk itself when all of it was kept); several are joined. */
  private takeOutput(): Buffer | undefined {
    const out = this.out;
    if (out.length === 0) return undefined;
    const result = out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out);
    out.length = 0;
    return result;
  }
}
