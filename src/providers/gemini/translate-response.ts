// Gemini answers → what an OpenAI chat/completions client expects: a chat.completion body, a stream of
// chat.completion.chunk SSE frames ending in `data: [DONE]` (with a usage chunk first only when the client set
// stream_options.include_usage), and errors in OpenAI's shape. Usage is mapped to OpenAI's names, thoughts
// inside completion_tokens (and reported as reasoning_tokens), cached content as cached_tokens.
//
// Per frame: a plain text frame is read by the fast scan (frame-scan.ts) and its text literal copied into the
// chunk as it came; other frames cost one JSON.parse. The chunk's constant head is built once per stream.
import { randomBytes } from 'node:crypto';
import { isRejection, textToVerify, zeroCompletionText, type Usage, type UsageRejectReason } from '../../streaming/usage.ts';
import { heldText } from '../../streaming/held-text.ts';
import { truncatedFrame, untranslatable } from '../parse-common.ts';
import type { DecodedBody, PreparedCall, StreamCodec, StreamOptions } from '../types.ts';
import { scanTextFrame } from './frame-scan.ts';
import { FrameReader, GeminiMeter } from './stream.ts';
import { geminiUsage } from './usage.ts';

type Obj = Record<string, unknown>;

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Gemini's finishReason → OpenAI's finish_reason. */
export function finishReason(reason: unknown, calledTools: boolean): string | null {
  if (typeof reason !== 'string' || reason === '' || reason === 'FINISH_REASON_UNSPECIFIED') return null;
  switch (reason) {
    case 'STOP': return calledTools ? 'tool_calls' : 'stop';
    case 'MAX_TOKENS': return 'length';
    case 'SAFETY': case 'RECITATION': case 'BLOCKLIST': case 'PROHIBITED_CONTENT': case 'SPII': case 'IMAGE_SAFETY': case 'LANGUAGE':
      return 'content_filter';
    default: return calledTools ? 'tool_calls' : 'stop';
  }
}

/** A Usage → OpenAI's usage object. */
export function openAiUsageOf(u: Usage): Obj {
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.total_tokens,
    prompt_tokens_details: { cached_tokens: u.cached_prompt_tokens ?? 0 },
    completion_tokens_details: { reasoning_tokens: u.reasoning_tokens ?? 0 },
  };
}

export function completionId(responseId: unknown): string {
  return 'chatcmpl-' + (typeof responseId === 'string' && responseId !== '' ? responseId : randomBytes(12).toString('hex'));
}

let callSeq = 0;
function callId(): string {
  callSeq = (callSeq + 1) % 1_000_000_000;
  return 'call_' + randomBytes(6).toString('hex') + callSeq.toString(36);
}

interface ToolCall { id: string; type: 'function'; function: { name: string; arguments: string }; raw: string }

const NO_CALLS: readonly ToolCall[] = Object.freeze([]);

interface Parts { text: string; thought: string; calls: readonly ToolCall[] }

/** One candidate's parts → content, reasoning text and tool calls (no array allocated for a text-only frame). */
function readParts(parts: unknown): Parts {
  let text = '';
  let thought = '';
  let calls: ToolCall[] | undefined;
  if (!Array.isArray(parts)) return { text, thought, calls: NO_CALLS };
  for (let i = 0; i < parts.length; i++) {
    const p: unknown = parts[i];
    if (typeof p !== 'object' || p === null) continue;
    const part = p as { text?: unknown; thought?: unknown; functionCall?: unknown };
    if (typeof part.text === 'string') {
      if (part.thought === true) thought += part.text; else text += part.text;
    }
    const fc = part.functionCall;
    if (fc !== undefined && isObject(fc)) {
      // `raw` (the call as Gemini sent it) is what a native stream counts; it never reaches the client.
      const call: ToolCall = { id: typeof fc.id === 'string' ? fc.id : callId(), type: 'function', function: { name: typeof fc.name === 'string' ? fc.name : '', arguments: JSON.stringify(fc.args ?? {}) }, raw: '' };
      Object.defineProperty(call, 'raw', { value: JSON.stringify(fc), enumerable: false });
      (calls ??= []).push(call);
    }
  }
  return { text, thought, calls: calls ?? NO_CALLS };
}

/** A buffered generateContent answer → chat.completion; its usage, or the text to count when usage is missing. */
export function decodeTranslated(call: PreparedCall, body: Buffer, maxUsage: number): DecodedBody {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    json = undefined;
  }
  if (!isObject(json)) return untranslatable(false, undefined);
  if (isObject(json.error)) return untranslatable(true, json.error.message);
  const choices: Obj[] = [];
  let allText = '';
  const cands = Array.isArray(json.candidates) ? json.candidates : [];
  for (let i = 0; i < cands.length; i++) {
    const c = cands[i];
    if (!isObject(c)) continue;
    const { text, thought, calls } = readParts(isObject(c.content) ? c.content.parts : undefined);
    allText += thought + text;
    for (const tc of calls) allText += tc.raw;
    const message: Obj = { role: 'assistant', content: text === '' && calls.length > 0 ? null : text };
    if (thought !== '') message.reasoning_content = thought;
    if (calls.length > 0) message.tool_calls = calls;
    choices.push({ index: typeof c.index === 'number' ? c.index : i, message, logprobs: null, finish_reason: finishReason(c.finishReason, calls.length > 0) ?? 'stop' });
  }
  if (choices.length === 0 && isObject(json.promptFeedback) && json.promptFeedback.blockReason !== undefined) {
    choices.push({ index: 0, message: { role: 'assistant', content: null }, logprobs: null, finish_reason: 'content_filter' });
  }
  const u = geminiUsage(json.usageMetadata, maxUsage);
  const usage = isRejection(u) ? undefined : u;
  const out: Obj = {
    id: completionId(json.responseId),
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: typeof json.modelVersion === 'string' ? json.modelVersion : call.model ?? '',
    choices,
  };
  if (usage !== undefined) out.usage = openAiUsageOf(usage);
  // A completion that looks small for the text (as the native decoder checks): the text is counted, the larger charged.
  const zero = zeroCompletionText(usage, () => allText) !== undefined;
  const verifyText = usage === undefined || zero ? undefined : textToVerify(usage.completion_tokens, body.length, () => allText);
  if (verifyText !== undefined) return { body: Buffer.from(JSON.stringify(out), 'utf8'), contentType: 'application/json', usage, rejected: undefined, text: '', verifyText };
  return {
    body: Buffer.from(JSON.stringify(out), 'utf8'),
    contentType: 'application/json',
    usage,
    rejected: isRejection(u) ? u.rejected : zero ? 'zero_completion' : undefined,
    text: usage === undefined || usage.completion_tokens === 0 ? allText : '',
  };
}

const DONE = Buffer.from('data: [DONE]\n\n', 'utf8');

/** A Gemini SSE stream → OpenAI chat.completion.chunk frames. */
export class TranslatedStream implements StreamCodec {
  readonly contentType = 'text/event-stream';
  private readonly meter: GeminiMeter;
  private readonly reader: FrameReader;
  private readonly wantsUsage: boolean;
  private readonly model: string;
  /** `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[` once the id is known. */
  private head: string | undefined = undefined;
  private out = '';
  /** Per candidate index: a role was sent, tool calls were made (their count: the next index). */
  private readonly roleSent = new Set<number>();
  private readonly toolCalls = new Map<number, number>();
  private readonly finished = new Set<number>();
  /** Google sent an error frame: it reached the client as OpenAI's error object, and no [DONE] follows. */
  private errored = false;
  /** The client asked for usage: its chunk and [DONE] wait for the usage charged (closing). */
  private owed = false;
  truncated = false;

  constructor(call: PreparedCall, opts: StreamOptions) {
    this.meter = new GeminiMeter(opts);
    this.reader = new FrameReader((data) => this.onFrame(data), (held) => this.meter.add(heldText(held)));
    this.wantsUsage = call.clientWantsUsage;
    this.model = call.model ?? '';
  }

  push(chunk: Buffer): Buffer | undefined {
    this.reader.push(chunk);
    return this.take();
  }

  end(): Buffer | undefined {
    this.reader.end();
    if (this.errored) return this.take();
    // No candidate finished (and no blocked prompt): the stream was cut, and the client is told so.
    if (this.finished.size === 0) {
      this.truncated = true;
      this.out += truncatedFrame('a finishReason');
      return this.take();
    }
    // The usage chunk says what was charged, so it and [DONE] wait for the settlement (closing).
    if (this.wantsUsage) {
      this.owed = true;
      return this.take();
    }
    const rest = this.take();
    return rest === undefined ? DONE : Buffer.concat([rest, DONE]);
  }

  closing(charged: Usage | undefined): Buffer | undefined {
    if (!this.owed) return undefined;
    this.owed = false;
    return charged === undefined ? DONE : Buffer.concat([Buffer.from(this.usageChunk(charged), 'utf8'), DONE]);
  }

  private usageChunk(u: Usage): string {
    return this.chunkHead() + ']' + ',"usage":' + JSON.stringify(openAiUsageOf(u)) + '}\n\n';
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

  private take(): Buffer | undefined {
    if (this.out === '') return undefined;
    const b = Buffer.from(this.out, 'utf8');
    this.out = '';
    return b;
  }

  private chunkHead(responseId?: unknown, modelVersion?: unknown): string {
    if (this.head === undefined) {
      const model = typeof modelVersion === 'string' ? modelVersion : this.model;
      this.head = 'data: {"id":' + JSON.stringify(completionId(responseId)) + ',"object":"chat.completion.chunk","created":'
        + Math.floor(Date.now() / 1000) + ',"model":' + JSON.stringify(model) + ',"choices":[';
    }
    return this.head;
  }

  private onFrame(data: string): void {
    if (this.errored) return;
    // A plain text frame once the head and the candidate's role are out: its literal is written as it came.
    if (this.head !== undefined) {
      const fast = scanTextFrame(data);
      if (fast !== null && this.roleSent.has(fast.index)) {
        this.meter.add(fast.text);
        if (fast.usageAt !== -1) this.meter.usageFrame(data, fast.usageAt);
        if (fast.text !== '') this.out += this.head + '{"index":' + fast.index + ',"delta":{"content":' + fast.literal + '},"logprobs":null,"finish_reason":null}]}\n\n';
        return;
      }
    }
    let json: unknown;
    try {
      json = JSON.parse(data);
    } catch {
      return;
    }
    if (!isObject(json)) return;
    // The meter reads the frame's usage and finish after its text is added: text after a finish unsettles the usage.
    try {
      this.emit(json);
    } finally {
      this.meter.frame(json, false);
    }
  }

  /** Writes one parsed frame for the client and adds its text to the meter. */
  private emit(json: Record<string, unknown>): void {
    if (isObject(json.error)) {
      // An error in the stream (Google sends {"error":{code,message,status}} and stops): OpenAI clients raise it
      // only if it reaches them as an error object, not as a quiet end of stream.
      this.errored = true;
      const e = json.error;
      const status = typeof e.code === 'number' ? e.code : 500;
      this.out += 'data: ' + JSON.stringify({ error: openAiErrorOf(status, e) }) + '\n\n';
      return;
    }
    const head = this.chunkHead(json.responseId, json.modelVersion);
    const cands = json.candidates;
    if (!Array.isArray(cands)) {
      if (isObject(json.promptFeedback) && json.promptFeedback.blockReason !== undefined && !this.finished.has(0)) {
        this.finished.add(0);
        // OpenAI streams open each choice with its role (the SDK's accumulator refuses a choice without one).
        const role = this.roleSent.has(0) ? '' : '"role":"assistant","content":null';
        this.roleSent.add(0);
        this.out += head + `{"index":0,"delta":{${role}},"logprobs":null,"finish_reason":"content_filter"}]}\n\n`;
      }
      return;
    }
    for (let i = 0; i < cands.length; i++) {
      const c = cands[i];
      if (!isObject(c)) continue;
      const index = typeof c.index === 'number' ? c.index : i;
      const { text, thought, calls } = readParts(isObject(c.content) ? c.content.parts : undefined);
      const add = this.meter.add;
      if (thought !== '') add(thought);
      if (text !== '') add(text);
      for (const tc of calls) add(tc.raw);
      const role = this.roleSent.has(index) ? '' : '"role":"assistant",';
      if (text !== '' || thought !== '' || role !== '') {
        this.roleSent.add(index);
        let delta = role + '"content":' + JSON.stringify(text);
        if (thought !== '') delta += ',"reasoning_content":' + JSON.stringify(thought);
        this.out += head + '{"index":' + index + ',"delta":{' + delta + '},"logprobs":null,"finish_reason":null}]}\n\n';
      }
      if (calls.length > 0) {
        let next = this.toolCalls.get(index) ?? 0;
        const items = calls.map((tc) => ({ index: next++, ...tc }));
        this.toolCalls.set(index, next);
        this.out += head + '{"index":' + index + ',"delta":{"tool_calls":' + JSON.stringify(items) + '},"logprobs":null,"finish_reason":null}]}\n\n';
      }
      const fr = finishReason(c.finishReason, this.toolCalls.has(index));
      if (fr !== null && !this.finished.has(index)) {
        this.finished.add(index);
        this.out += head + '{"index":' + index + ',"delta":{},"logprobs":null,"finish_reason":"' + fr + '"}]}\n\n';
      }
    }
  }
}

/** OpenAI's error object for a Google error (`e`: its `error` member, when it had one) answered with `status`. */
function openAiErrorOf(status: number, e: Record<string, unknown> | undefined, fallback?: string): { message: string; type: string; code: string; param: null } {
  let message = fallback ?? `upstream answered ${status}`;
  let code: string = status === 429 ? 'rate_limit_exceeded' : 'upstream_error';
  if (e !== undefined) {
    if (typeof e.message === 'string') message = e.message;
    if (typeof e.status === 'string' && status !== 429) code = e.status.toLowerCase();
  }
  const type = status === 429 ? 'rate_limit_error' : status === 401 ? 'authentication_error' : status === 403 ? 'permission_error'
    : status >= 500 ? 'server_error' : 'invalid_request_error';
  return { message, type, code, param: null };
}

/** Google's error → OpenAI's shape ({"error":{"message","type","code","param"}}); other bodies wrapped. */
export function translateError(status: number, body: Buffer): Buffer {
  let e: Record<string, unknown> | undefined;
  let text: string | undefined;
  try {
    const json: unknown = JSON.parse(body.toString('utf8'));
    if (isObject(json) && isObject(json.error)) e = json.error;
  } catch {
    const t = body.toString('utf8', 0, Math.min(body.length, 512)).trim();
    if (t !== '') text = t;
  }
  return Buffer.from(JSON.stringify({ error: openAiErrorOf(status, e, text) }), 'utf8');
}
