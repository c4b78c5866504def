// Metering a Gemini stream: SSE (`alt=sse`, one GenerateContentResponse per `data:` event, no [DONE]) or one
// JSON array of them. The framing is read from the first byte that is not whitespace ('[' or '{': JSON), so a
// stream is metered right whatever the request said. Every frame may carry usageMetadata; it is cumulative, so
// nothing is added up and no count is taken back: the reported usage holds, part by part, the largest of every
// believed report (a report is parsed only when its text changes). It is reported
// only once final: a usageMetadata in or after a frame with a finishReason, with no text after it (or a prompt blocked
// with promptFeedback.blockReason, which has no candidates). Gemini's mid-stream usageMetadata counts the prompt only,
// so a stream that ends, even cleanly, before its finish (cut, or after an in-stream error object), or whose finish
// brings no usage of its own, is charged that prompt (promptReport) and its counted text, not a partial usage, plus
// the thoughts a report gave (hiddenCompletion: thinking shows in no text).
import { BomSkipper, DEFAULT_MAX_EVENT_BYTES, SseParser } from '../../streaming/sse-parser.ts';
import { heldText } from '../../streaming/held-text.ts';
import { TextTally } from '../../streaming/text-tally.ts';
import { isRejection, laterUsage, promptOnly, type Usage, type UsageRejection, type UsageRejectReason } from '../../streaming/usage.ts';
import type { StreamCodec, StreamOptions } from '../types.ts';
import { scanTextFrame, usageMetadataStart, usageMetadataText } from './frame-scan.ts';
import { JsonArrayScanner } from './json-array.ts';
import { geminiUsage, responseText } from './usage.ts';

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** Feeds an upstream byte stream frame by frame (each frame's JSON text) to `onFrame`, SSE or JSON array alike. A frame
 *  past the size bound cuts the stream (push throws), after `onOversized` got what it held: produced all the same. */
export class FrameReader {
  private readonly onFrame: (json: string) => void;
  private readonly onOversized: (held: string) => void;
  private sse: SseParser | undefined;
  private json: JsonArrayScanner | undefined;
  private readonly bom = new BomSkipper();

  constructor(onFrame: (json: string) => void, onOversized: (held: string) => void) {
    this.onFrame = onFrame;
    this.onOversized = onOversized;
  }

  push(chunk: Buffer): void {
    if (this.sse !== undefined) { this.sse.push(chunk); return; }
    if (this.json !== undefined) { this.json.push(chunk); return; }
    let i = this.bom.done ? 0 : this.bom.skip(chunk);
    while (i < chunk.length && isSpace(chunk[i]!)) i++;
    if (i === chunk.length) return;
    const c = chunk[i]!;
    if (c === 0x5b || c === 0x7b) {
      this.json = new JsonArrayScanner(this.onFrame, DEFAULT_MAX_EVENT_BYTES, this.onOversized);
      this.json.push(chunk.subarray(i));
    } else {
      this.sse = new SseParser({ onEvent: (data) => { if (data !== null && data !== '' && data !== '[DONE]') this.onFrame(data); }, onOversized: this.onOversized });
      this.sse.push(chunk.subarray(i));
    }
  }

  end(): void {
    this.sse?.end();
  }
}

/** A final usage whose prompt is below the one reported on the way: that prompt, the rest (and the raw object) kept. */
function withPrompt(u: Usage, p: Usage): Usage {
  const usage: Usage = { ...u, prompt_tokens: p.prompt_tokens, total_tokens: u.total_tokens - u.prompt_tokens + p.prompt_tokens };
  if ((p.cached_prompt_tokens ?? 0) > (u.cached_prompt_tokens ?? 0)) usage.cached_prompt_tokens = p.cached_prompt_tokens;
  if (u.raw !== undefined) Object.defineProperty(usage, 'raw', { value: u.raw, enumerable: false });
  return usage;
}

/** Usage and text of a Gemini stream, frame by frame. */
export class GeminiMeter {
  private readonly tally: TextTally;
  private readonly maxUsage: number;
  /** The last usageMetadata seen (or the fast-path frame holding it), read only when asked: every frame has one. */
  private lastMeta: unknown = undefined;
  private read: Usage | UsageRejection | undefined = undefined;
  private readDone = true;
  /** A finish (finishReason, or a blocked prompt) came, and no text after it. */
  private final = false;
  /** The last usageMetadata came with that finish or after it: mid-stream ones count the prompt only. */
  private metaFinal = false;
  /** The largest counts of every usage believed before the last one: what a later report, final or not, believed or
   *  not, cannot lower (counts are cumulative: a mid-stream report of 400 thoughts then a final one of 1 is 400). */
  private floor: Usage | undefined = undefined;
  /** The largest believable prompt counts of any usageMetadata so far (a later frame's lie or smaller count cannot
   *  lower it): the prompt a stream without a believable final usage is charged. */
  private prompt: Usage | undefined = undefined;
  /** The largest believable thoughts count of any usageMetadata: tokens no relayed text shows (hiddenCompletion). */
  private thoughts = 0;
  /** The usageMetadata text of the last fast-path frame: frames that repeat it are not parsed again. */
  private metaText: string | undefined = undefined;
  readonly add = (t: string): void => {
    // Text after a finish (another candidate still generating, or an upstream that goes on): the usage read so far
    // is not the whole; a later finish with its own usage is final, and a stream ending first is counted.
    if (this.final && t !== '') {
      this.final = false;
      this.metaFinal = false;
    }
    this.tally.add(t);
  };

  constructor(opts: StreamOptions) {
    this.maxUsage = opts.maxUsage;
    this.tally = new TextTally(opts.textBound);
  }

  /** Reads one parsed frame: its usage, whether it is the last, and (unless a translator does) its text. */
  frame(json: unknown, collectText = true): void {
    if (typeof json !== 'object' || json === null) return;
    if (collectText) responseText(json, this.add);
    const f = json as { usageMetadata?: unknown; candidates?: unknown };
    const meta = f.usageMetadata !== undefined && f.usageMetadata !== null;
    if (meta) {
      this.keepFloor();
      this.lastMeta = f.usageMetadata;
      this.metaText = undefined;
      this.readDone = false;
      this.notePrompt();
    }
    if (!this.final) {
      const cands = f.candidates;
      if (Array.isArray(cands)) {
        for (const c of cands) if (typeof (c as { finishReason?: unknown } | null)?.finishReason === 'string') this.final = true;
      }
      const fb = (json as { promptFeedback?: { blockReason?: unknown } | null }).promptFeedback;
      if (typeof fb === 'object' && fb !== null && typeof fb.blockReason === 'string') this.final = true;
    }
    if (this.final && meta) this.metaFinal = true;
  }

  /** A frame read by the fast path (frame-scan.ts) that carries usageMetadata (its key at `keyAt`): parsed only when its
   *  usage text differs from the last one's. */
  usageFrame(data: string, keyAt: number): void {
    const at = usageMetadataStart(data, keyAt);
    // The same counts again (mid-stream frames repeat the prompt's): nothing to read. A complete object is a prefix
    // of the text at `at` only if it is the object there (indexOf: a native compare, several times startsWith's speed).
    if (at !== -1 && this.metaText !== undefined && data.indexOf(this.metaText, at) === at) {
      if (this.final) this.metaFinal = true;
      return;
    }
    const text = usageMetadataText(data, at);
    this.keepFloor();
    if (text === undefined) this.lastMeta = data;
    else {
      try { this.lastMeta = JSON.parse(text) as unknown; } catch { this.lastMeta = undefined; }
    }
    this.metaText = text;
    this.readDone = false;
    if (this.final) this.metaFinal = true;
    this.notePrompt();
  }

  /** Folds the last usageMetadata's prompt counts, when believable and above 0, into the largest seen. */
  private notePrompt(): void {
    const u = this.last();
    if (u === undefined || isRejection(u)) return;
    // Thinking done before a cut was produced (and billed) although the stream shows none of it.
    if ((u.reasoning_tokens ?? 0) > this.thoughts) this.thoughts = u.reasoning_tokens!;
    if (u.prompt_tokens === 0) return;
    const p = this.prompt;
    if (p === undefined || u.prompt_tokens > p.prompt_tokens) this.prompt = promptOnly(u);
  }

  private last(): Usage | UsageRejection | undefined {
    if (!this.readDone) {
      let meta = this.lastMeta;
      if (typeof meta === 'string') {
        try { meta = (JSON.parse(meta) as { usageMetadata?: unknown }).usageMetadata; } catch { meta = undefined; }
      }
      this.read = geminiUsage(meta, this.maxUsage);
      this.readDone = true;
    }
    return this.read;
  }

  /** A usage is about to be replaced by a later one: kept, when believed, as the floor under that one. */
  private keepFloor(): void {
    if (this.lastMeta === undefined) return;
    const u = this.last();
    if (u !== undefined && !isRejection(u)) this.floor = this.floor === undefined ? u : laterUsage(this.floor, u);
  }

  get usage(): Usage | undefined {
    const u = this.final && this.metaFinal ? this.last() : undefined;
    if (u === undefined) return undefined;
    // A final lie after believed reports: the floor, when it holds more than a prompt (else the count decides).
    if (isRejection(u)) return this.floor !== undefined && this.floor.completion_tokens > 0 ? this.floor : undefined;
    // Cumulative counts: neither an earlier report nor the prompt reported on the way is taken back.
    let most = this.floor === undefined ? u : laterUsage(this.floor, u);
    const p = this.prompt;
    if (p !== undefined && p.prompt_tokens > most.prompt_tokens) most = withPrompt(most, p);
    return most;
  }

  /** The largest believable prompt counts any usageMetadata reported (a frame before the finish counts the prompt). */
  get promptReport(): Usage | undefined {
    return this.prompt;
  }

  /** Thoughts a usageMetadata reported (Gemini 2.5 reports them once thinking is done): no relayed text shows them,
   *  so a stream charged from its count is charged them beside it. A thought summary streamed as text (includeThoughts)
   *  is then counted in both, a small overcharge rather than thinking for free. */
  get hiddenCompletion(): number {
    return this.thoughts;
  }

  get usageRejected(): UsageRejectReason | undefined {
    const u = this.final && this.metaFinal ? this.last() : undefined;
    return u !== undefined && isRejection(u) ? u.rejected : undefined;
  }

  get text(): string { return this.tally.rest(); }
  get textChars(): number { return this.tally.total; }
  get countMargin(): number { return this.tally.margin; }
  takeCountable(): string | undefined { return this.tally.take(); }
}

/** A native Gemini stream: bytes pass through untouched, each frame is parsed to meter it. */
export class GeminiStream implements StreamCodec {
  readonly contentType: string;
  private readonly meter: GeminiMeter;
  private readonly reader: FrameReader;

  constructor(sse: boolean, opts: StreamOptions) {
    this.contentType = sse ? 'text/event-stream' : 'application/json';
    this.meter = new GeminiMeter(opts);
    this.reader = new FrameReader((data) => this.onFrame(data), (held) => this.meter.add(heldText(held)));
  }

  push(chunk: Buffer): Buffer | undefined {
    this.reader.push(chunk);
    return chunk.length > 0 ? chunk : undefined;
  }

  end(): Buffer | undefined {
    this.reader.end();
    return undefined;
  }

  get usage(): Usage | undefined { return this.meter.usage; }
  get usageRejected(): UsageRejectReason | undefined { return this.meter.usageRejected; }
  get promptReport(): Usage | undefined { return this.meter.promptReport; }
  get hiddenCompletion(): number { return this.meter.hiddenCompletion; }
  get text(): string { return this.meter.text; }
  get textChars(): number { return this.meter.textChars; }
  get countMargin(): number { return this.meter.countMargin; }
  /** The Gemini meter unsettles a usage that text followed (GeminiMeter): what it reports stands. */
  readonly textAfterUsage = false;
  takeCountable(): string | undefined { return this.meter.takeCountable(); }

  private onFrame(data: string): void {
    const fast = scanTextFrame(data);
    if (fast !== null) {
      this.meter.add(fast.text);
      if (fast.usageAt !== -1) this.meter.usageFrame(data, fast.usageAt);
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(data);
    } catch {
      return;
    }
    this.meter.frame(json);
  }
}
