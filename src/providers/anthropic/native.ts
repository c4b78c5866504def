// Anthropic answers to Anthropic clients: bytes pass through untouched, usage and text are read on the side.
import { QUOTED_USAGE } from '../../streaming/json-tail.ts';
import { heldText } from '../../streaming/held-text.ts';
import { SseParser } from '../../streaming/sse-parser.ts';
import { TextTally } from '../../streaming/text-tally.ts';
import { coversMore, isRejection, textToVerify, zeroCompletionText, type Usage, type UsageRejectReason } from '../../streaming/usage.ts';
import { answerTailUsage, untranslatable } from '../parse-common.ts';
import type { DecodedBody, StreamCodec, StreamOptions } from '../types.ts';
import { contentText, deltaText, isObject, literalText, scanDelta } from './events.ts';
import { anthropicUsage, StreamUsage } from './usage.ts';

export const JSON_TYPE = 'application/json';
export const SSE_TYPE = 'text/event-stream';

/** Parses a buffered body; undefined when it is not a JSON object. */
export function parseBody(body: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    return isObject(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

const QUOTED_CONTENT = Buffer.from('"content"');

/** A buffered Messages answer, passed through: its usage, or its text to count; a 2xx no client could use (not a
 *  JSON object, an error object, no content array) is refused (502), charged as an answer that broke off. */
export function decodeNative(body: Buffer, maxUsage: number): DecodedBody {
  const fromTail = answerTailUsage(body, QUOTED_CONTENT, QUOTED_USAGE, anthropicUsage, maxUsage);
  if (fromTail !== undefined) return { body, contentType: JSON_TYPE, usage: fromTail, rejected: undefined, text: '' };
  const obj = parseBody(body);
  if (obj === undefined) return untranslatable(false, undefined);
  if (obj.type === 'error' || (isObject(obj.error) && !Array.isArray(obj.content))) {
    return untranslatable(true, isObject(obj.error) ? obj.error.message : undefined);
  }
  if (!Array.isArray(obj.content)) return { ...untranslatable(false, undefined), unusable: 'the upstream answer has no content array' };
  const u = anthropicUsage(obj.usage, maxUsage);
  if (u === undefined || isRejection(u)) return { body, contentType: JSON_TYPE, usage: undefined, rejected: u?.rejected, text: contentText(obj.content) };
  const zero = zeroCompletionText(u, () => contentText(obj.content));
  if (zero !== undefined) return { body, contentType: JSON_TYPE, usage: u, rejected: 'zero_completion', text: zero };
  const verifyText = textToVerify(u.completion_tokens, body.length, () => contentText(obj.content));
  if (verifyText !== undefined) return { body, contentType: JSON_TYPE, usage: u, rejected: undefined, text: '', verifyText };
  return { body, contentType: JSON_TYPE, usage: u, rejected: undefined, text: '' };
}

/**
 * Reads an Anthropic event stream: usage (message_start + message_delta), generated text into a bounded tally,
 * the error event. Subclasses decide what the client gets.
 */
export abstract class AnthropicStreamReader {
  protected readonly tally: TextTally;
  protected readonly su = new StreamUsage();
  /** The last final usage that was believed: stays the floor when a later report is not (StreamCodec.usage). */
  private believed: Usage | undefined = undefined;
  protected readonly maxUsage: number;
  protected readonly parser: SseParser;
  /** The stream's error event, when one came. */
  error: { type: string; message: string } | undefined = undefined;
  stopped = false;

  get complete(): boolean {
    return this.stopped;
  }

  constructor(opts: StreamOptions) {
    this.maxUsage = opts.maxUsage;
    this.tally = new TextTally(opts.textBound);
    // An event past the size bound cuts the stream; what it held was produced all the same: counted as text.
    this.parser = new SseParser({ onEvent: (data) => { if (data !== null) this.onData(data); }, onOversized: (held) => this.tally.add(heldText(held)) });
  }

  get usage(): Usage | undefined {
    const u = this.su.read(this.maxUsage);
    if (u === undefined) return undefined;
    return isRejection(u) ? this.believed : u;
  }

  get usageRejected(): UsageRejectReason | undefined {
    const u = this.su.read(this.maxUsage);
    return u !== undefined && isRejection(u) ? u.rejected : undefined;
  }

  get promptReport(): Usage | undefined { return this.su.readPrompt(this.maxUsage); }
  get text(): string { return this.tally.rest(); }
  get textChars(): number { return this.tally.total; }
  get countMargin(): number { return this.tally.margin; }
  get textAfterUsage(): boolean { return this.su.finalSeen && this.tally.addedSinceMark; }
  takeCountable(): string | undefined { return this.tally.take(); }

  private onData(data: string): void {
    const s = scanDelta(data);
    if (s !== null) {
      this.tally.add(literalText(data, s));
      this.onFastDelta(data, s.index, s.kind, s.start, s.end);
      return;
    }
    let f: unknown;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!isObject(f)) return;
    switch (f.type) {
      case 'message_start': {
        const m = isObject(f.message) ? f.message : {};
        this.su.add(m.usage, false, this.maxUsage);
        this.onMessageStart(m);
        return;
      }
      case 'content_block_start': {
        const b = isObject(f.content_block) ? f.content_block : {};
        const index = typeof f.index === 'number' ? f.index : 0;
        if (typeof b.text === 'string') this.tally.add(b.text);
        if (typeof b.thinking === 'string') this.tally.add(b.thinking);
        if (b.type === 'tool_use' || b.type === 'server_tool_use') {
          if (typeof b.name === 'string') this.tally.add(b.name);
          // Input given whole at the start (not streamed) is generated output too.
          if (isObject(b.input) && Object.keys(b.input).length > 0) this.tally.add(JSON.stringify(b.input));
        }
        this.onBlockStart(index, b);
        return;
      }
      case 'content_block_delta': {
        const d = deltaText(f.delta);
        if (d === undefined) return;
        this.tally.add(d.text);
        this.onDelta(typeof f.index === 'number' ? f.index : 0, d.kind, d.text);
        return;
      }
      case 'message_delta': {
        const before = this.su.finalSeen ? this.usage : undefined;
        this.su.add(f.usage, true, this.maxUsage);
        const read = this.su.read(this.maxUsage);
        if (read !== undefined && !isRejection(read)) this.believed = read;
        const after = this.usage;
        if (f.usage !== undefined && f.usage !== null && after !== undefined && coversMore(before, after)) this.tally.mark();
        const d = isObject(f.delta) ? f.delta : {};
        this.onMessageDelta(typeof d.stop_reason === 'string' ? d.stop_reason : undefined);
        return;
      }
      case 'message_stop':
        this.stopped = true;
        this.onMessageStop();
        return;
      case 'error': {
        const e = isObject(f.error) ? f.error : {};
        this.error = {
          type: typeof e.type === 'string' ? e.type : 'api_error',
          message: typeof e.message === 'string' ? e.message : 'upstream stream error',
        };
        this.onError(this.error);
        return;
      }
      case 'content_block_stop':
        this.onBlockStop(typeof f.index === 'number' ? f.index : 0);
        return;
      default:
        // ping and event kinds added later carry nothing to meter.
    }
  }

  protected onFastDelta(_data: string, _index: number, _kind: 'text' | 'thinking' | 'json', _start: number, _end: number): void {}
  protected onMessageStart(_m: Record<string, unknown>): void {}
  protected onBlockStart(_index: number, _b: Record<string, unknown>): void {}
  protected onBlockStop(_index: number): void {}
  protected onDelta(_index: number, _kind: 'text' | 'thinking' | 'json', _text: string): void {}
  protected onMessageDelta(_stopReason: string | undefined): void {}
  protected onMessageStop(): void {}
  protected onError(_e: { type: string; message: string }): void {}
}

/** Native: every byte goes to the client as it came. */
export class NativeStreamCodec extends AnthropicStreamReader implements StreamCodec {
  readonly contentType = SSE_TYPE;

  push(chunk: Buffer): Buffer | undefined {
    this.parser.push(chunk);
    return chunk.length > 0 ? chunk : undefined;
  }

  end(): Buffer | undefined {
    this.parser.end();
    return undefined;
  }
}
