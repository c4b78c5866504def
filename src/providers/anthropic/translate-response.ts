// Anthropic answers → OpenAI chat answers: a buffered message becomes a chat.completion, a stream becomes
// chat.completion.chunk frames, an error becomes OpenAI's error object. Frames are built as strings: a text
// delta's JSON string literal is copied from the Anthropic event as is (both are JSON), never unescaped and
// escaped again, so a translated frame costs little more than a passed-through one.
import { isRejection, textToVerify, zeroCompletionText, type Usage } from '../../streaming/usage.ts';
import { MAX_ERROR_MESSAGE, truncatedFrame, untranslatable } from '../parse-common.ts';
import type { DecodedBody, StreamCodec, StreamOptions } from '../types.ts';
import { contentText, isObject } from './events.ts';
import { AnthropicStreamReader, JSON_TYPE, parseBody, SSE_TYPE } from './native.ts';
import { anthropicUsage, openAiUsageJson } from './usage.ts';

/** Anthropic stop_reason → OpenAI finish_reason. */
export function finishReason(stop: unknown): string | null {
  switch (stop) {
    case 'end_turn': case 'stop_sequence': case 'pause_turn': return 'stop';
    case 'max_tokens': case 'model_context_window_exceeded': return 'length';
    case 'tool_use': return 'tool_calls';
    case 'refusal': return 'content_filter';
    default: return stop === undefined || stop === null ? null : 'stop';
  }
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** A buffered Anthropic message → an OpenAI chat.completion (usage mapped when plausible). */
export function decodeTranslated(body: Buffer, maxUsage: number, fallbackModel: string | undefined): DecodedBody {
  const msg = parseBody(body);
  if (msg === undefined) return untranslatable(false, undefined);
  if (msg.type === 'error') return untranslatable(true, isObject(msg.error) ? msg.error.message : undefined);
  const u = anthropicUsage(msg.usage, maxUsage);
  const usage = u !== undefined && !isRejection(u) ? u : undefined;
  let text = '';
  let reasoning = '';
  const calls: unknown[] = [];
  const content = Array.isArray(msg.content) ? msg.content : [];
  for (const b of content) {
    if (!isObject(b)) continue;
    if (b.type === 'text' && typeof b.text === 'string') text += b.text;
    else if (b.type === 'thinking' && typeof b.thinking === 'string') reasoning += b.thinking;
    else if (b.type === 'tool_use') {
      calls.push({ id: b.id, type: 'function', function: { name: b.name, arguments: JSON.stringify(b.input ?? {}) } });
    }
  }
  const message: Record<string, unknown> = { role: 'assistant', content: text === '' && calls.length > 0 ? null : text, refusal: null };
  if (reasoning !== '') message.reasoning_content = reasoning;
  if (calls.length > 0) message.tool_calls = calls;
  const model = typeof msg.model === 'string' ? msg.model : fallbackModel;
  const head = JSON.stringify({
    id: typeof msg.id === 'string' ? msg.id : 'chatcmpl-sluice',
    object: 'chat.completion',
    created: nowSeconds(),
    model: model ?? '',
    choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason(msg.stop_reason) ?? 'stop' }],
  });
  const out = usage === undefined ? head : head.slice(0, -1) + ',"usage":' + openAiUsageJson(usage) + '}';
  const zero = zeroCompletionText(usage, () => contentText(msg.content));
  if (zero !== undefined) return { body: Buffer.from(out, 'utf8'), contentType: JSON_TYPE, usage, rejected: 'zero_completion', text: zero };
  // A completion that looks small for the text (as the native decoder checks): the text is counted, the larger charged.
  const verifyText = usage === undefined ? undefined : textToVerify(usage.completion_tokens, body.length, () => contentText(msg.content));
  if (verifyText !== undefined) return { body: Buffer.from(out, 'utf8'), contentType: JSON_TYPE, usage, rejected: undefined, text: '', verifyText };
  return {
    body: Buffer.from(out, 'utf8'), contentType: JSON_TYPE, usage, rejected: u !== undefined && isRejection(u) ? u.rejected : undefined,
    text: usage === undefined ? contentText(msg.content) : '',
  };
}


/** An Anthropic error body (or any body) → OpenAI's error object. */
export function openAiErrorFrom(status: number, body: Buffer): string {
  const obj = parseBody(body);
  const e = obj !== undefined && isObject(obj.error) ? obj.error : undefined;
  const type = e !== undefined && typeof e.type === 'string' ? e.type : status >= 500 ? 'api_error' : 'invalid_request_error';
  const raw = e !== undefined && typeof e.message === 'string' ? e.message : body.toString('utf8');
  const message = raw === '' ? `upstream answered ${status}` : raw.slice(0, MAX_ERROR_MESSAGE);
  return JSON.stringify({ error: { message, type, param: null, code: type } });
}

/** The Anthropic stream → OpenAI chat.completion.chunk frames, then `data: [DONE]`. */
export class TranslatedStreamCodec extends AnthropicStreamReader implements StreamCodec {
  readonly contentType = SSE_TYPE;
  private readonly wantsUsage: boolean;
  private readonly created = nowSeconds();
  private id = 'chatcmpl-sluice';
  private model: string;
  /** 'data: {…"choices":[{"index":0,"delta":' — every content frame starts so. */
  private prefix = '';
  private out = '';
  private started = false;
  private finished = false;
  private closed = false;
  private stopReason: string | undefined = undefined;
  /** The client asked for usage: its usage chunk and [DONE] wait for the usage charged (closing), so the chunk
   *  says what the quotas were charged, also when that is not the upstream's report. */
  private owed = false;
  truncated = false;
  /** Anthropic block index → OpenAI tool_calls index. */
  private readonly tools = new Map<number, number>();
  /** Tool blocks (by Anthropic index) whose arguments have not been sent: each gets "{}" when it stops, as the
   *  buffered translation gives, since "" is not JSON to a client that parses it. */
  private readonly noArgs = new Set<number>();

  constructor(opts: StreamOptions, clientWantsUsage: boolean, model: string | undefined) {
    super(opts);
    this.wantsUsage = clientWantsUsage;
    this.model = model ?? '';
    this.setPrefix();
  }

  private setPrefix(): void {
    this.prefix = 'data: {"id":' + JSON.stringify(this.id) + ',"object":"chat.completion.chunk","created":' + this.created
      + ',"model":' + JSON.stringify(this.model) + ',"choices":[{"index":0,"delta":';
  }

  private frame(delta: string): void {
    if (!this.started) this.start();
    this.out += this.prefix + delta + ',"logprobs":null,"finish_reason":null}]}\n\n';
  }

  private start(): void {
    this.started = true;
    this.out += this.prefix + '{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n';
  }

  push(chunk: Buffer): Buffer | undefined {
    this.parser.push(chunk);
    return this.take();
  }

  end(): Buffer | undefined {
    this.parser.end();
    // Closed after message_delta (the stop reason and final count) but before message_stop: ended as OpenAI clients
    // expect. Closed before it: the answer was cut, and the client is told so rather than given a finish_reason.
    if (!this.closed && this.error === undefined) {
      if (this.finished) this.close();
      else {
        this.closed = true;
        this.truncated = true;
        this.out += truncatedFrame('message_delta');
      }
    }
    return this.take();
  }

  private take(): Buffer | undefined {
    if (this.out === '') return undefined;
    const b = Buffer.from(this.out, 'utf8');
    this.out = '';
    return b;
  }

  protected override onFastDelta(data: string, index: number, kind: 'text' | 'thinking' | 'json', start: number, end: number): void {
    const literal = data.slice(start, end + 1);
    if (kind === 'text') this.frame('{"content":' + literal + '}');
    else if (kind === 'thinking') this.frame('{"reasoning_content":' + literal + '}');
    else this.toolArgs(index, literal);
  }

  protected override onDelta(index: number, kind: 'text' | 'thinking' | 'json', text: string): void {
    const literal = JSON.stringify(text);
    this.onFastDelta(literal, index, kind, 0, literal.length - 1);
  }

  private toolArgs(index: number, literal: string): void {
    const k = this.tools.get(index);
    if (k === undefined) return;
    if (literal !== '""') this.noArgs.delete(index);
    this.frame('{"tool_calls":[{"index":' + k + ',"function":{"arguments":' + literal + '}}]}');
  }

  protected override onMessageStart(m: Record<string, unknown>): void {
    if (typeof m.id === 'string') this.id = m.id;
    if (typeof m.model === 'string') this.model = m.model;
    this.setPrefix();
    if (!this.started) this.start();
  }

  protected override onBlockStart(index: number, b: Record<string, unknown>): void {
    if (b.type === 'tool_use') {
      const k = this.tools.size;
      this.tools.set(index, k);
      this.frame('{"tool_calls":[{"index":' + k + ',"id":' + JSON.stringify(typeof b.id === 'string' ? b.id : '') + ',"type":"function","function":{"name":'
        + JSON.stringify(typeof b.name === 'string' ? b.name : '') + ',"arguments":""}}]}');
      this.noArgs.add(index);
      if (isObject(b.input) && Object.keys(b.input).length > 0) this.toolArgs(index, JSON.stringify(JSON.stringify(b.input)));
    } else if (typeof b.text === 'string' && b.text !== '') {
      this.frame('{"content":' + JSON.stringify(b.text) + '}');
    }
  }

  protected override onBlockStop(index: number): void {
    if (this.noArgs.has(index)) this.toolArgs(index, '"{}"');
  }

  protected override onMessageDelta(stopReason: string | undefined): void {
    if (stopReason !== undefined) this.stopReason = stopReason;
    this.finish();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    for (const index of this.noArgs) this.toolArgs(index, '"{}"');
    if (!this.started) this.start();
    this.out += this.prefix + '{},"logprobs":null,"finish_reason":' + JSON.stringify(finishReason(this.stopReason) ?? 'stop') + '}]}\n\n';
  }

  protected override onMessageStop(): void {
    this.close();
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.finish();
    if (this.wantsUsage) {
      this.owed = true;
      return;
    }
    this.out += 'data: [DONE]\n\n';
  }

  closing(charged: Usage | undefined): Buffer | undefined {
    if (!this.owed) return undefined;
    this.owed = false;
    return Buffer.from((charged === undefined ? '' : this.usageChunk(charged)) + 'data: [DONE]\n\n', 'utf8');
  }

  private usageChunk(u: Usage): string {
    return 'data: {"id":' + JSON.stringify(this.id) + ',"object":"chat.completion.chunk","created":' + this.created
      + ',"model":' + JSON.stringify(this.model) + ',"choices":[],"usage":' + openAiUsageJson(u) + '}\n\n';
  }

  protected override onError(e: { type: string; message: string }): void {
    this.closed = true;
    this.out += 'data: ' + JSON.stringify({ error: { message: e.message, type: e.type, param: null, code: e.type } }) + '\n\n';
  }
}
