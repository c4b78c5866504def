// The OpenAI Responses surface (POST …/responses): request parsing and validation, prompt parts for the real
// tokenizer, and the codecs of its answers. Usage is `input_tokens` (cached included) / `output_tokens`
// (reasoning included) with their details; a stream reports it only in its terminal event
// (`response.completed`, `response.incomplete` or `response.failed`), which repeats the whole output: the
// stream codec frames the SSE itself and scans an event larger than SMALL_EVENT_BYTES incrementally
// (streaming/json-scan.ts) for its type, delta, usage and (for counting) output text, so a stream's memory is
// bounded however large its events. Bytes pass through unchanged.
//
// What the reservation cannot see: with `previous_response_id` or `conversation` the upstream prepends
// earlier turns it stores, `item_reference` items and stored `prompt` templates are expanded upstream, and
// built-in tools (web or file search) add their results as input. The prompt counted is what the client sent;
// settlement charges the upstream's own usage, so only admission near a limit is affected.
import { TOKENS_PER_IMAGE, TOKENS_PER_MESSAGE, TOKENS_REPLY_PRIMING, addInlineData, addJson, type PromptParts } from '../../tokens/count.ts';
import { encodingForModel } from '../../tokens/encoding.ts';
import { completionReservation, mergedReservation } from '../../tokens/limits.ts';
import { isJsonObject, positiveInt, takeOverrideFields } from '../../tokens/prepare.ts';
import { firstNonSpace } from '../../tokens/json-members.ts';
import { JsonScanner, SCAN_RAW, SCAN_SKIP, SCAN_SKIP_TREE, SCAN_TEXT, type JsonScanSink, type ScanPath } from '../../streaming/json-scan.ts';
import { TextTally } from '../../streaming/text-tally.ts';
import { coversMore, textToVerify, isRejection, laterUsage, zeroCompletionText, usageFromCounts, type Usage, type UsageRejection, type UsageRejectReason } from '../../streaming/usage.ts';
import type { CallFailure, DecodedBody, ParseOptions, ParsedCall, PreparedCall, StreamCodec, StreamOptions, SurfaceSpec } from '../types.ts';
import { fail, modelAndStream, parseBodyObject, promptScale, unusableNative } from '../parse-common.ts';
import { openAiErrorBody } from './chat.ts';

type Obj = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------------
// Request

/** A message's or a tool output's content: a string, or parts (input_text, output_text, refusal, image, file, audio). */
function addContent(parts: PromptParts, content: unknown): void {
  if (typeof content === 'string') { parts.texts.push(content); return; }
  if (!Array.isArray(content)) return;
  for (const part of content) {
    if (typeof part === 'string') { parts.texts.push(part); continue; }
    if (!isJsonObject(part)) continue;
    switch (part.type) {
      case 'input_image':
        parts.fixed += TOKENS_PER_IMAGE;
        break;
      case 'input_file':
        if (typeof part.filename === 'string') parts.texts.push(part.filename);
        if (typeof part.file_data === 'string') addInlineData(parts, part.file_data);
        else parts.fixed += TOKENS_PER_IMAGE;
        break;
      case 'input_audio':
        addInlineData(parts, isJsonObject(part.input_audio) ? part.input_audio.data : part.data);
        break;
      default:
        if (typeof part.text === 'string') parts.texts.push(part.text);
        else if (typeof part.refusal === 'string') parts.texts.push(part.refusal);
        else addJson(parts, part);
    }
  }
}

function addTexts(parts: PromptParts, list: unknown): void {
  if (!Array.isArray(list)) return;
  for (const s of list) if (isJsonObject(s) && typeof s.text === 'string') parts.texts.push(s.text);
}

/** One input item: a message (typed or not), a tool call or its output, a reasoning item, a reference. */
function addItem(parts: PromptParts, item: Obj): void {
  const type = item.type;
  parts.fixed += TOKENS_PER_MESSAGE;
  if (type === undefined || type === 'message') {
    if (typeof item.role === 'string') parts.texts.push(item.role);
    addContent(parts, item.content);
    return;
  }
  switch (type) {
    case 'function_call':
    case 'custom_tool_call':
    case 'mcp_call':
      if (typeof item.name === 'string') parts.texts.push(item.name);
      if (typeof item.arguments === 'string') parts.texts.push(item.arguments);
      if (typeof item.input === 'string') parts.texts.push(item.input);
      if (typeof item.output === 'string') parts.texts.push(item.output);
      return;
    case 'function_call_output':
    case 'custom_tool_call_output':
      addContent(parts, item.output);
      return;
    case 'reasoning':
      // Only the summary is visible; encrypted reasoning the client hands back is opaque to us.
      addTexts(parts, item.summary);
      addTexts(parts, item.content);
      return;
    case 'item_reference':
      // Stored upstream: its content cannot be counted here.
      parts.fixed -= TOKENS_PER_MESSAGE;
      return;
    default:
      addJson(parts, item);
  }
}

/**
 * What to count of a Responses request: instructions (a developer message), the input (a string is one user
 * message; an array holds messages with content parts, tool calls and their outputs, reasoning items), tool
 * definitions, a structured-output schema and a stored prompt's variables, as JSON text.
 */
export function responsesPromptParts(obj: Obj): PromptParts {
  const parts: PromptParts = { fixed: TOKENS_REPLY_PRIMING, texts: [] };
  if (typeof obj.instructions === 'string') {
    parts.fixed += TOKENS_PER_MESSAGE + 1;
    parts.texts.push(obj.instructions);
  }
  const input = obj.input;
  if (typeof input === 'string') {
    parts.fixed += TOKENS_PER_MESSAGE + 1;
    parts.texts.push(input);
  } else if (Array.isArray(input)) {
    for (const item of input) if (isJsonObject(item)) addItem(parts, item);
  }
  addJson(parts, obj.tools);
  const text = obj.text;
  if (isJsonObject(text) && isJsonObject(text.format) && text.format.type === 'json_schema') addJson(parts, text.format.schema);
  const prompt = obj.prompt;
  if (isJsonObject(prompt)) addJson(parts, prompt.variables);
  return parts;
}

function optionalString(obj: Obj, field: string): CallFailure | undefined {
  const v = obj[field];
  if (v === undefined || v === null || typeof v === 'string') return undefined;
  return fail('SLC_BAD_REQUEST', `${field} must be a string`, field);
}

function validInput(input: unknown): string | undefined {
  if (input === undefined || input === null || typeof input === 'string') return undefined;
  if (!Array.isArray(input)) return 'input must be a string or an array of input items';
  for (let i = 0; i < input.length; i++) {
    const item: unknown = input[i];
    if (!isJsonObject(item)) return `input[${i}] must be an object`;
    if (item.type !== undefined && typeof item.type !== 'string') return `input[${i}].type must be a string`;
    if (item.type === undefined || item.type === 'message') {
      if (item.role !== undefined && typeof item.role !== 'string') return `input[${i}].role must be a string`;
      const content = item.content;
      if (typeof content === 'string') continue;
      if (!Array.isArray(content)) return `input[${i}].content must be a string or an array of content parts`;
      for (let j = 0; j < content.length; j++) {
        if (!isJsonObject(content[j])) return `input[${i}].content[${j}] must be an object`;
      }
    }
  }
  return undefined;
}

function parseResponses(body: Uint8Array, opts: ParseOptions): ParsedCall | CallFailure {
  const parsed = parseBodyObject(body);
  if (!parsed.ok) return parsed;
  const obj = parsed.obj;
  const head = modelAndStream(obj);
  if (!head.ok) return head;
  const { model, stream } = head;
  // A background response answers at once with no usage and finishes later upstream: it could not be metered.
  if (obj.background === true) {
    return fail('SLC_BAD_REQUEST', 'background responses cannot be metered by this gateway: send the request without background', 'background');
  }
  const maxOutput = positiveInt(obj, 'max_output_tokens');
  if (typeof maxOutput === 'string') return fail('SLC_BAD_REQUEST', maxOutput, 'max_output_tokens');
  const badString = optionalString(obj, 'instructions') ?? optionalString(obj, 'previous_response_id');
  if (badString !== undefined) return badString;
  const inputFault = validInput(obj.input);
  if (inputFault !== undefined) return fail('SLC_BAD_REQUEST', inputFault, 'input');
  const hasContext = [obj.previous_response_id, obj.conversation, obj.prompt].some((v) => v !== undefined && v !== null);
  if ((obj.input === undefined || obj.input === null) && !hasContext) return fail('SLC_BAD_REQUEST', 'input is required', 'input');
  const tools = obj.tools;
  if (tools !== undefined && tools !== null) {
    if (!Array.isArray(tools)) return fail('SLC_BAD_REQUEST', 'tools must be an array', 'tools');
    for (let i = 0; i < tools.length; i++) {
      if (!isJsonObject(tools[i])) return fail('SLC_BAD_REQUEST', `tools[${i}] must be an object`, 'tools');
    }
  }

  const reservation = completionReservation(opts, model, maxOutput, 'max_output_tokens', 1);
  if (!reservation.ok) return fail('SLC_BAD_REQUEST', reservation.message, reservation.param);
  const reserveCompletion = opts.instanceAsks === undefined
    ? reservation.tokens
    : mergedReservation(opts, opts.instanceAsks, model, undefined, maxOutput, 1);

  const enc = encodingForModel(model);
  const parts = opts.countPrompt !== false ? responsesPromptParts(obj) : undefined;
  const fieldKeys = opts.overrideKeys;
  const clientFields = takeOverrideFields(obj, fieldKeys);
  return {
    ok: true, surface: opts.surface, obj, model, stream,
    // The terminal event always carries usage: nothing to force on or strip.
    clientWantsUsage: true,
    maxTokens: maxOutput, n: 1, reserveCompletion, enc, parts,
    scale: promptScale(opts),
    fieldKeys: clientFields === undefined ? undefined : fieldKeys, clientFields,
  };
}

export const responsesSurface: SurfaceSpec = {
  id: 'openai-responses',
  metered: true,
  parse: parseResponses,
  errorBody: openAiErrorBody,
};

// ---------------------------------------------------------------------------------------------------------
// Usage and generated text

function detail(o: Obj, field: string, key: string): unknown {
  const d = o[field];
  return isJsonObject(d) ? d[key] : undefined;
}

/**
 * A Responses usage object → Usage: input_tokens (cached reads and writes are parts of it), output_tokens
 * (reasoning is a part of it). Servers that send chat-style prompt_tokens/completion_tokens are read too.
 */
export function responsesUsage(u: unknown, maxUsage: number): Usage | UsageRejection | undefined {
  if (u === undefined || u === null) return undefined;
  if (!isJsonObject(u)) return { rejected: 'malformed' };
  const chatStyle = u.input_tokens === undefined && u.output_tokens === undefined;
  // A null count is no count, as on chat (read as 0 it would make the answer free): not believed, labelled so.
  if (chatStyle ? u.prompt_tokens === null || u.completion_tokens === null : u.input_tokens === null || u.output_tokens === null) {
    return { rejected: 'not_a_number' };
  }
  const counts = chatStyle
    ? {
      prompt: u.prompt_tokens, completion: u.completion_tokens, total: u.total_tokens,
      cachedPrompt: detail(u, 'prompt_tokens_details', 'cached_tokens'),
      reasoning: detail(u, 'completion_tokens_details', 'reasoning_tokens'),
    }
    : {
      prompt: u.input_tokens, completion: u.output_tokens, total: u.total_tokens,
      cachedPrompt: detail(u, 'input_tokens_details', 'cached_tokens'),
      cacheWrite: detail(u, 'input_tokens_details', 'cache_write_tokens'),
      reasoning: detail(u, 'output_tokens_details', 'reasoning_tokens'),
    };
  const r = usageFromCounts(counts, u, maxUsage);
  // cache_write_tokens is recent and optional: an inconsistent one must not discard counts that are fine.
  if (isRejection(r) && r.rejected === 'inconsistent' && 'cacheWrite' in counts && counts.cacheWrite !== undefined) {
    return usageFromCounts({ ...counts, cacheWrite: undefined }, u, maxUsage);
  }
  return r;
}

/** Generated text of a Response object's output items (for counting when usage is missing). */
export function responsesOutputText(response: unknown, skip?: ReadonlySet<string>): string {
  if (!isJsonObject(response) || !Array.isArray(response.output)) return '';
  const out: string[] = [];
  for (const item of response.output) {
    if (!isJsonObject(item) || (skip !== undefined && typeof item.id === 'string' && skip.has(item.id))) continue;
    itemText(item, out);
  }
  return out.join('\n');
}

/** The generated strings of one output item (message parts, reasoning summaries, tool-call fields) onto `out`. */
function itemText(item: Obj, out: string[]): void {
  for (const list of [item.content, item.summary]) {
    if (!Array.isArray(list)) continue;
    for (const c of list) {
      if (!isJsonObject(c)) continue;
      if (typeof c.text === 'string') out.push(c.text);
      else if (typeof c.refusal === 'string') out.push(c.refusal);
    }
  }
  for (const key of OUTPUT_ITEM_TEXT_KEYS) {
    const v = item[key];
    if (typeof v === 'string') out.push(v);
  }
}

/** Generated strings of tool-call output items (function, custom and MCP calls, interpreter code). */
const OUTPUT_ITEM_TEXT_KEYS = ['name', 'arguments', 'input', 'code'] as const;

/** A buffered 2xx Responses answer: relayed as it came; its usage, or its output text to count. */
export function decodeResponses(_call: PreparedCall | undefined, body: Buffer, maxUsage: number): DecodedBody {
  let usage: Usage | undefined;
  let rejected: UsageRejectReason | undefined;
  let text = '';
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    json = undefined;
  }
  const unusable = unusableNative(json, 'output');
  if (unusable !== undefined) return unusable;
  if (isJsonObject(json)) {
    const u = responsesUsage(json.usage, maxUsage);
    if (isRejection(u)) rejected = u.rejected; else usage = u;
    const zero = zeroCompletionText(usage, () => responsesOutputText(json));
    if (zero !== undefined) return { body, contentType: undefined, usage, rejected: 'zero_completion', text: zero };
    if (usage === undefined) text = responsesOutputText(json);
    else {
      const verifyText = textToVerify(usage.completion_tokens, body.length, () => responsesOutputText(json));
      if (verifyText !== undefined) return { body, contentType: undefined, usage, rejected, text, verifyText };
    }
  }
  return { body, contentType: undefined, usage, rejected, text };
}

// ---------------------------------------------------------------------------------------------------------
// Stream

const TERMINAL_TYPES: ReadonlySet<string> = new Set(['response.completed', 'response.incomplete', 'response.failed']);
/** Events whose `delta` is generated text (audio and image deltas are base64 media: not text). */
const DELTA_TYPES: ReadonlySet<string> = new Set([
  'response.output_text.delta', 'response.refusal.delta', 'response.reasoning_summary_text.delta', 'response.reasoning_text.delta',
  'response.function_call_arguments.delta', 'response.custom_tool_call_input.delta', 'response.mcp_call_arguments.delta',
  'response.code_interpreter_call_code.delta', 'response.audio.transcript.delta',
]);
const ITEM_ADDED = 'response.output_item.added';
const ITEM_DONE = 'response.output_item.done';
const PART_DONE = 'response.content_part.done';
/** Events that repeat an item's generated text whole once it is complete, and the member holding it. A server
 *  that sends only these (no deltas) still produced that text: it is counted once per item. */
const DONE_TEXT: ReadonlyMap<string, string> = new Map([
  ['response.output_text.done', 'text'], ['response.refusal.done', 'refusal'], ['response.reasoning_summary_text.done', 'text'],
  ['response.reasoning_text.done', 'text'], ['response.function_call_arguments.done', 'arguments'],
  ['response.custom_tool_call_input.done', 'input'], ['response.mcp_call_arguments.done', 'arguments'],
  ['response.code_interpreter_call_code.done', 'code'], ['response.audio.transcript.done', 'transcript'],
]);
/** Characters of a large done event's text held while its item id is not known yet. */
const MAX_BEFORE_ID_CHARS = 1024 * 1024;
/** Every member a done event holds its text in. */
const DONE_MEMBERS: ReadonlySet<string> = new Set(DONE_TEXT.values());
/** Items whose text was counted, remembered up to this many (past it a done event's text may count twice: more, never less). */
const MAX_TEXT_ITEMS = 1024;

function wanted(type: string): boolean {
  return DELTA_TYPES.has(type) || TERMINAL_TYPES.has(type) || type === ITEM_ADDED || type === ITEM_DONE || type === PART_DONE || DONE_TEXT.has(type);
}

/** Events up to this size are JSON.parsed whole; larger ones are scanned as they arrive. */
export const SMALL_EVENT_BYTES = 256 * 1024;
/** Most bytes of a usage object believed (a real one is a few hundred). */
const MAX_USAGE_JSON_BYTES = 64 * 1024;
const MAX_EVENT_NAME_BYTES = 64;
/** Longest line that is not a `data:` line (a field name, an `event:`/`id:` value, a comment): past it the body is
 *  not SSE, and the stream is cut rather than relayed unread without bound. */
const MAX_OTHER_LINE_BYTES = 64 * 1024;

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;
const NEWLINE = Buffer.from('\n');
const EMPTY = Buffer.alloc(0);

// Line states of the SSE framing.
const L_FIELD = 0;   // reading a field name (an empty line so far: a blank line dispatches)
const L_DATA = 1;
const L_EVENT = 2;
const L_IGNORE = 3;  // a comment or a field Sluice does not read

function notSse(): Error {
  return new Error(`upstream Responses stream is not SSE: a line of more than ${MAX_OTHER_LINE_BYTES} bytes that is not data`);
}

/**
 * One Responses stream on its way to the client: every byte is forwarded as it came; the codec reads the
 * usage of the terminal event and keeps the generated text (output text, refusal, reasoning and tool-call
 * deltas) in a bounded TextTally for when usage never comes.
 */
export class ResponsesStream implements StreamCodec, JsonScanSink {
  readonly contentType = 'text/event-stream';
  private readonly maxUsage: number;
  private readonly tally: TextTally;
  private usageSeen: Usage | undefined;
  private rejectedSeen: UsageRejectReason | undefined;
  /** Text arrived incrementally: a terminal event's output (the same text again) is not collected. */
  private sawDelta = false;
  /** A terminal event came (StreamCodec.complete). */
  complete = false;
  /** Items (by id) whose text was counted, from deltas or from a done event: their done events and their part of the
   *  terminal event's output are the same text again. */
  private readonly textItems = new Set<string>();
  private events = 0;

  // SSE framing.
  private lineState = L_FIELD;
  private readonly field = Buffer.alloc(8);
  private fieldLen = 0;
  /** Right after a field's colon: one space may be skipped. */
  private valueStart = false;
  private crPending = false;
  private readonly eventName = Buffer.alloc(MAX_EVENT_NAME_BYTES);
  private eventNameLen = -1;
  private hasData = false;
  /** The current event's data (small mode): bytes from earlier chunks, copied, then views of the chunk being pushed. */
  private carry: Buffer = EMPTY;
  private carryLen = 0;
  private views: Buffer[] = [];
  private viewsLen = 0;
  /** Large mode: the data is scanned as it arrives. */
  private scanner: JsonScanner | undefined;
  /** The event's `event:` field names a type Sluice does not read: its data is dropped unread. */
  private skipData = false;
  private scanType: string | undefined;
  /** A large done event's item_id (read before its text, as servers order them), to count each item once. */
  private scanItemId: string | undefined;
  /** A large done event's text came before its item_id: counted (more, never less), its item marked once the id comes. */
  private scanTextBeforeId = false;
  /** That text, held until the id says whether it was counted already (bounded: past it, counted at once). */
  private beforeId: string[] = [];
  private beforeIdLen = 0;
  /** A large terminal event's current output item was counted already (its id is in textItems): its text is skipped. */
  private scanOutSkip = false;
  private scanUsage: string | undefined | null = null;
  /** Bytes of the current line that is not a data line. */
  private otherLine = 0;
  /** end() is reading what the stream ended inside. */
  private ending = false;

  constructor(opts: StreamOptions) {
    this.maxUsage = opts.maxUsage;
    this.tally = new TextTally(opts.textBound);
  }

  get usage(): Usage | undefined { return this.usageSeen; }
  get usageRejected(): UsageRejectReason | undefined { return this.rejectedSeen; }
  get text(): string { return this.tally.rest(); }
  get textChars(): number { return this.tally.total; }
  get countMargin(): number { return this.tally.margin; }
  get textAfterUsage(): boolean { return this.usageSeen !== undefined && this.tally.addedSinceMark; }
  takeCountable(): string | undefined { return this.tally.take(); }
  /** Events dispatched so far. */
  get frames(): number { return this.events; }
  /** Bytes of event data held (bounded by SMALL_EVENT_BYTES; scanned events hold none). */
  get heldBytes(): number { return this.carryLen + this.viewsLen; }

  push(chunk: Buffer): Buffer | undefined {
    if (chunk.length === 0) return undefined;
    this.read(chunk);
    // Data still pending must not pin the upstream's chunk: copy the views into the one carry buffer.
    if (this.views.length > 0) this.keepViews();
    return chunk;
  }

  end(): Buffer | undefined {
    this.ending = true;
    this.crPending = false;
    if (this.lineState !== L_FIELD || this.fieldLen > 0) this.endLine();
    if (this.hasData || this.scanner !== undefined) this.dispatch();
    return undefined;
  }

  private read(chunk: Buffer): void {
    const len = chunk.length;
    let pos = 0;
    if (this.crPending) {
      this.crPending = false;
      if (chunk[0] === LF) pos = 1;
    }
    const anyCR = chunk.indexOf(CR, pos) !== -1;
    while (pos < len) {
      if (this.lineState === L_FIELD) {
        const b = chunk[pos]!;
        if (b === LF || b === CR) {
          pos = this.lineEnd(chunk, pos);
          continue;
        }
        pos++;
        if (b === COLON) {
          this.lineState = this.fieldState();
          this.valueStart = true;
          continue;
        }
        if (this.fieldLen < this.field.length) this.field[this.fieldLen] = b;
        if (++this.fieldLen > MAX_OTHER_LINE_BYTES) throw notSse();
        continue;
      }
      if (this.valueStart) {
        this.valueStart = false;
        if (chunk[pos] === SPACE) { pos++; continue; }
      }
      let stop = chunk.indexOf(LF, pos);
      if (anyCR) {
        const cr = chunk.indexOf(CR, pos);
        if (cr !== -1 && (stop === -1 || cr < stop)) stop = cr;
      }
      const to = stop === -1 ? len : stop;
      if (this.lineState === L_DATA) this.data(chunk, pos, to);
      else {
        this.otherLine += to - pos;
        if (this.otherLine > MAX_OTHER_LINE_BYTES) throw notSse();
        if (this.lineState === L_EVENT) this.eventNameBytes(chunk, pos, to);
      }
      if (stop === -1) return;
      pos = this.lineEnd(chunk, stop);
    }
  }

  /** The field whose name was just read (before its colon): what to do with the rest of the line. */
  private fieldState(): number {
    const n = this.fieldLen;
    const f = this.field;
    if (n === 4 && f[0] === 0x64 && f[1] === 0x61 && f[2] === 0x74 && f[3] === 0x61) {
      this.dataLine();
      return L_DATA;
    }
    if (n === 5 && f[0] === 0x65 && f[1] === 0x76 && f[2] === 0x65 && f[3] === 0x6e && f[4] === 0x74) {
      this.eventNameLen = 0;
      return L_EVENT;
    }
    return L_IGNORE;
  }

  /** A data line starts: lines of one event are joined by '\n'. */
  private dataLine(): void {
    if (this.hasData) this.data(NEWLINE, 0, 1);
    else {
      this.hasData = true;
      // Only a Responses event name Sluice does not read skips parsing (servers naming every event `message` do not).
      const name = this.eventNameLen > 0 ? this.eventName.toString('latin1', 0, this.eventNameLen) : '';
      this.skipData = name.startsWith('response.') && !wanted(name);
    }
  }

  /** A CR or LF at `at` ends the line; returns the offset after the line terminator. */
  private lineEnd(chunk: Buffer, at: number): number {
    this.endLine();
    if (chunk[at] === CR) {
      if (at + 1 === chunk.length) {
        this.crPending = true;
        return at + 1;
      }
      if (chunk[at + 1] === LF) return at + 2;
    }
    return at + 1;
  }

  private endLine(): void {
    if (this.lineState === L_FIELD) {
      if (this.fieldLen === 0) {
        if (this.hasData || this.scanner !== undefined) this.dispatch();
        else this.eventNameLen = -1;
      } else {
        // A field name with no colon: its value is ''.
        this.lineState = this.fieldState();
      }
    }
    this.lineState = L_FIELD;
    this.fieldLen = 0;
    this.otherLine = 0;
    this.valueStart = false;
  }

  private eventNameBytes(chunk: Buffer, from: number, to: number): void {
    const n = Math.min(to - from, MAX_EVENT_NAME_BYTES - this.eventNameLen);
    if (n <= 0) return;
    chunk.copy(this.eventName, this.eventNameLen, from, from + n);
    this.eventNameLen += n;
  }

  private data(chunk: Buffer, from: number, to: number): void {
    if (to <= from || this.skipData) return;
    if (this.scanner !== undefined) {
      // An event too large to hold that is not JSON either: nothing in it can be read or counted.
      if (this.scanner.broken) throw new Error(`upstream Responses event is not JSON and exceeds ${SMALL_EVENT_BYTES} bytes`);
      this.scanner.push(chunk.subarray(from, to));
      return;
    }
    const n = to - from;
    if (this.carryLen + this.viewsLen + n <= SMALL_EVENT_BYTES) {
      this.views.push(chunk.subarray(from, to));
      this.viewsLen += n;
      return;
    }
    // Too large to hold and not JSON (a small one is counted as text): what it held is counted, and the stream cut.
    const held = this.carryLen > 0 ? this.carry.subarray(0, this.carryLen) : this.views[0] ?? chunk.subarray(from, to);
    const first = firstNonSpace(held);
    if (first !== -1 && first !== 0x7b && first !== 0x5b) {
      this.tally.add(Buffer.concat([this.carry.subarray(0, this.carryLen), ...this.views, chunk.subarray(from, to)]).toString('utf8'));
      this.clearData();
      throw new Error(`upstream Responses event is not JSON and exceeds ${SMALL_EVENT_BYTES} bytes`);
    }
    // Too large to hold: scan what was held, then everything that follows, as it arrives.
    this.scanType = undefined;
    this.scanItemId = undefined;
    this.scanTextBeforeId = false;
    this.dropBeforeId();
    this.scanOutSkip = false;
    this.scanUsage = null;
    const scanner = new JsonScanner(this, MAX_USAGE_JSON_BYTES);
    this.scanner = scanner;
    if (this.carryLen > 0) scanner.push(this.carry.subarray(0, this.carryLen));
    for (const v of this.views) scanner.push(v);
    this.clearData();
    scanner.push(chunk.subarray(from, to));
  }

  private keepViews(): void {
    const need = this.carryLen + this.viewsLen;
    if (need > this.carry.length) {
      const grown = Buffer.allocUnsafe(Math.min(Math.max(need, 2 * this.carry.length, 1024), SMALL_EVENT_BYTES));
      this.carry.copy(grown, 0, 0, this.carryLen);
      this.carry = grown;
    }
    for (const v of this.views) {
      v.copy(this.carry, this.carryLen);
      this.carryLen += v.length;
    }
    this.views = [];
    this.viewsLen = 0;
  }

  private clearData(): void {
    this.carryLen = 0;
    // A large carry is not kept for the stream's next events (most are small).
    if (this.carry.length > 16 * 1024) this.carry = EMPTY;
    this.views = [];
    this.viewsLen = 0;
  }

  private dispatch(): void {
    const named = this.eventNameLen > 0 ? this.eventName.toString('latin1', 0, this.eventNameLen) : '';
    if (this.scanner !== undefined) {
      this.scanner.end();
      this.scanner = undefined;
      this.scannedEvent(named);
    } else if (this.hasData && !this.skipData) {
      const views = this.views;
      const json = this.carryLen === 0 && views.length === 1
        ? views[0]!.toString('utf8')
        : Buffer.concat([this.carry.subarray(0, this.carryLen), ...views], this.carryLen + this.viewsLen).toString('utf8');
      let ev: unknown;
      try {
        ev = JSON.parse(json);
      } catch {
        // Not JSON, yet relayed to the client: counted as produced text (no relayed byte is free); not a last event
        // the stream ended inside (a cut frame).
        if (!this.ending) this.tally.add(json);
        ev = undefined;
      }
      if (isJsonObject(ev)) this.parsedEvent(ev, named);
    }
    if (this.hasData) this.events++;
    this.clearData();
    this.hasData = false;
    this.skipData = false;
    this.eventNameLen = -1;
  }

  private parsedEvent(ev: Obj, named: string): void {
    const type = typeof ev.type === 'string' ? ev.type : named;
    if (DELTA_TYPES.has(type)) {
      if (typeof ev.delta === 'string') this.tally.add(ev.delta);
      this.sawDelta = true;
      this.textOf(ev.item_id);
    } else if (type === ITEM_ADDED) {
      const item = ev.item;
      if (isJsonObject(item) && typeof item.name === 'string') {
        this.tally.add(item.name);
        this.sawDelta = true;
      }
    } else if (TERMINAL_TYPES.has(type)) {
      this.complete = true;
      const response = ev.response;
      if (!isJsonObject(response)) return;
      // Output whose text no delta or done event brought (all of it when nothing came incrementally).
      if (!this.sawDelta) this.tally.add(responsesOutputText(response, this.textItems));
      this.recordUsage(responsesUsage(response.usage, this.maxUsage));
    } else {
      this.doneEvent(ev, type);
    }
  }

  /** Whether the text of item `id` is still to be counted; from now on it is counted (or unknown: no id). */
  private textOf(id: unknown): boolean {
    if (typeof id !== 'string') return !this.sawDelta;
    if (this.textItems.has(id)) return false;
    if (this.textItems.size < MAX_TEXT_ITEMS) this.textItems.add(id);
    return true;
  }

  /** A done event: its text counts when no delta or earlier done event of its item brought it. */
  private doneEvent(ev: Obj, type: string): void {
    let text: unknown;
    let id: unknown = ev.item_id;
    const member = DONE_TEXT.get(type);
    if (member !== undefined) text = ev[member];
    else if (type === PART_DONE) {
      const part = ev.part;
      if (isJsonObject(part)) text = typeof part.text === 'string' ? part.text : part.refusal;
    } else if (type === ITEM_DONE) {
      const item = ev.item;
      if (!isJsonObject(item)) return;
      id = item.id;
      const out: string[] = [];
      itemText(item, out);
      text = out.join('\n');
    } else return;
    if (typeof text !== 'string' || text === '' || !this.textOf(id)) return;
    this.tally.add(text);
  }

  private recordUsage(u: Usage | UsageRejection | undefined): void {
    if (u === undefined) return;
    if (isRejection(u)) {
      // An earlier believed report stays the floor (the gateway charges it or the count, each part the larger).
      this.rejectedSeen = u.rejected;
    } else {
      // Never below an earlier report (laterUsage), as for chat; it covers the text before it only when it grew.
      const prev = this.usageSeen;
      this.usageSeen = prev === undefined ? u : laterUsage(prev, u);
      this.rejectedSeen = undefined;
      if (coversMore(prev, this.usageSeen)) this.tally.mark();
    }
  }

  private scannedEvent(named: string): void {
    // Text whose item id never came: counted (more, never less).
    this.flushBeforeId();
    const type = this.scanType ?? named;
    // A large delta's item is counted: its done event must not count the text again.
    if (DELTA_TYPES.has(type)) this.textOf(this.scanItemId);
    if (!TERMINAL_TYPES.has(type)) return;
    this.complete = true;
    if (this.scanUsage === null) return;
    if (this.scanUsage === undefined) {
      this.recordUsage({ rejected: 'malformed' });
      return;
    }
    let u: unknown;
    try {
      u = JSON.parse(this.scanUsage);
    } catch {
      this.recordUsage({ rejected: 'malformed' });
      return;
    }
    this.recordUsage(responsesUsage(u, this.maxUsage));
  }

  // JsonScanSink: what a large event's scan keeps. Paths: ['type'], ['delta'], ['response', 'usage'], and the
  // output text at ['response', 'output', i, <key>] or ['response', 'output', i, 'content'|'summary', j, 'text'|'refusal'].
  value(path: ScanPath): number {
    const depth = path.length;
    if (depth === 0) return SCAN_SKIP;
    const top = path[0];
    if (depth === 1) {
      if (top === 'type' || top === 'item_id') return SCAN_RAW;
      if (top === 'delta') return this.scanType === undefined || DELTA_TYPES.has(this.scanType) ? SCAN_TEXT : SCAN_SKIP;
      if (top === 'response') return SCAN_SKIP;
      // A done event's whole text (a server that sends no deltas), counted once per item as when parsed whole. A type
      // not known yet (JSON members come in any order) counts any member that may hold it: more, never less.
      const type = this.knownType();
      if (type === undefined ? !DONE_MEMBERS.has(top as string) : DONE_TEXT.get(type) !== top) return SCAN_SKIP_TREE;
      if (this.scanItemId !== undefined) return this.textOf(this.scanItemId) ? SCAN_TEXT : SCAN_SKIP_TREE;
      // Its item is not known yet: counted, and the item marked when its id comes.
      this.scanTextBeforeId = true;
      return SCAN_TEXT;
    }
    if (top !== 'response') return SCAN_SKIP_TREE;
    const key = path[1];
    if (depth === 2) {
      if (key === 'usage') return SCAN_RAW;
      // The output of a terminal event, or of an event whose type comes after it (counted: more, never less).
      const type = this.knownType();
      const collect = key === 'output' && !this.sawDelta && (type === undefined || TERMINAL_TYPES.has(type));
      return collect ? SCAN_SKIP : SCAN_SKIP_TREE;
    }
    if (key !== 'output') return SCAN_SKIP_TREE;
    if (depth === 3) {
      // A new output item: whether its text counts is known once its id is read (servers send the id first).
      this.scanOutSkip = false;
      return SCAN_SKIP;
    }
    const itemKey = path[3];
    if (depth === 4 && itemKey === 'id') return SCAN_RAW;
    // An item whose text a delta or done event brought (responsesOutputText's skip): not counted again.
    if (this.scanOutSkip) return SCAN_SKIP_TREE;
    if (depth === 4) {
      if (itemKey === 'content' || itemKey === 'summary') return SCAN_SKIP;
      return (OUTPUT_ITEM_TEXT_KEYS as readonly unknown[]).includes(itemKey) ? SCAN_TEXT : SCAN_SKIP_TREE;
    }
    if (depth === 5) return SCAN_SKIP;
    const partKey = path[5];
    return depth === 6 && (partKey === 'text' || partKey === 'refusal') ? SCAN_TEXT : SCAN_SKIP_TREE;
  }

  raw(path: ScanPath, json: string | undefined): void {
    if (path.length === 2) {
      this.scanUsage = json;
      return;
    }
    let t: unknown;
    try { t = json === undefined ? undefined : JSON.parse(json); } catch { t = undefined; }
    if (typeof t !== 'string') return;
    // An output item's id: its text is skipped if counted already, else counted now and marked, so the same item in a
    // later event (an event whose type came last, then the terminal one) is not counted again.
    if (path.length === 4) this.scanOutSkip = !this.textOf(t);
    else if (path[0] === 'type') this.scanType = t;
    else {
      this.scanItemId = t;
      if (this.scanTextBeforeId) {
        if (this.textOf(t)) this.flushBeforeId();
        else this.dropBeforeId();
      }
    }
  }

  piece(path: ScanPath, text: string): void {
    if (path.length === 1 && path[0] !== 'delta' && this.scanTextBeforeId && this.scanItemId === undefined) {
      if (this.beforeIdLen + text.length <= MAX_BEFORE_ID_CHARS) {
        this.beforeId.push(text);
        this.beforeIdLen += text.length;
        return;
      }
      this.flushBeforeId();
    }
    this.tally.add(text);
    if (path.length === 1 && path[0] === 'delta') this.sawDelta = true;
  }

  private flushBeforeId(): void {
    for (const t of this.beforeId) this.tally.add(t);
    this.dropBeforeId();
  }

  private dropBeforeId(): void {
    this.beforeId = [];
    this.beforeIdLen = 0;
  }

  /** A large event's type as far as known: its `type` member once read, else its `event:` field when that names a
   *  Responses event (servers naming every event `message` say nothing); undefined: not known yet. */
  private knownType(): string | undefined {
    if (this.scanType !== undefined) return this.scanType;
    const named = this.eventNameLen > 0 ? this.eventName.toString('latin1', 0, this.eventNameLen) : undefined;
    return named !== undefined && named.startsWith('response.') ? named : undefined;
  }
}

export function streamResponses(_call: PreparedCall | undefined, opts: StreamOptions): StreamCodec {
  return new ResponsesStream(opts);
}
