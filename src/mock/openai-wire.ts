// OpenAI (and Azure OpenAI) wire formats of the mock: chat completions, legacy completions, the Responses API
// and embeddings, non-streaming and streaming, with usage in OpenAI's shapes.
import { errorBody } from '../core/errors.ts';
import { completionSlice, embeddingInputs, PromptShapeError } from './tokens.ts';
import { wire, type AnswerContext, type Renderer } from './surface.ts';

export function openaiErrorType(status: number): string {
  switch (status) {
    case 401: return 'authentication_error';
    case 403: return 'permission_error';
    case 404: return 'not_found_error';
    case 429: return 'rate_limit_error';
    default: return status >= 500 ? 'server_error' : 'invalid_request_error';
  }
}

export function openaiError(status: number, message: string, code: string): string {
  return errorBody(message, openaiErrorType(status), code);
}

function withEcho(out: Record<string, unknown>, ctx: AnswerContext): string {
  if (ctx.echoHeaders !== undefined) out.mock_request_headers = ctx.echoHeaders;
  return JSON.stringify(out);
}

/** Chat/completions usage; the details objects appear only when a cached or reasoning count is set. */
function chatUsage(ctx: AnswerContext): Record<string, unknown> {
  const t = ctx.tokens;
  const u: Record<string, unknown> = {
    prompt_tokens: wire(ctx.lies, 'prompt', t.prompt),
    completion_tokens: wire(ctx.lies, 'completion', t.completion),
    total_tokens: wire(ctx.lies, 'total', t.prompt + t.completion),
  };
  if (t.cached > 0 || t.reasoning > 0) {
    u.prompt_tokens_details = { cached_tokens: t.cached, audio_tokens: 0 };
    u.completion_tokens_details = { reasoning_tokens: t.reasoning, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 };
  }
  return u;
}

function responsesUsage(ctx: AnswerContext): Record<string, unknown> {
  const t = ctx.tokens;
  return {
    input_tokens: wire(ctx.lies, 'prompt', t.prompt),
    input_tokens_details: { cached_tokens: t.cached },
    output_tokens: wire(ctx.lies, 'completion', t.completion),
    output_tokens_details: { reasoning_tokens: t.reasoning },
    total_tokens: wire(ctx.lies, 'total', t.prompt + t.completion),
  };
}

/** Chat completions and legacy completions (the frames the mock always sent: existing tests pin them). */
export function chatRenderer(ctx: AnswerContext): Renderer {
  const chat = ctx.route.kind === 'chat';
  const t = ctx.tokens;
  const finish = t.capped ? 'length' : 'stop';
  const streamOptions = ctx.body.stream_options as { include_usage?: unknown } | undefined | null;
  const streamUsage = ctx.usage === 'on' || (ctx.usage === 'auto' && streamOptions?.include_usage === true);
  const stream = ctx.body.stream === true;
  const head = `data: {"id":"${ctx.id}","object":"${chat ? 'chat.completion.chunk' : 'text_completion'}","created":${ctx.created},`
    + `"model":${JSON.stringify(ctx.model)},"system_fingerprint":"fp_mock","choices":[`;
  // OpenAI sends "usage":null on every frame when usage was asked for.
  const tail = streamUsage ? '],"usage":null}\n\n' : ']}\n\n';
  const frame = (text: string, fin: string | null) => chat
    ? `${head}{"index":0,"delta":${fin === null ? `{"content":${JSON.stringify(text)}}` : '{}'},"logprobs":null,"finish_reason":${fin === null ? 'null' : `"${fin}"`}}${tail}`
    : `${head}{"text":${JSON.stringify(text)},"index":0,"logprobs":null,"finish_reason":${fin === null ? 'null' : `"${fin}"`}}${tail}`;
  return {
    reportsUsage: stream ? streamUsage : ctx.usage !== 'off',
    json() {
      const text = completionSlice(0, t.text);
      const out: Record<string, unknown> = chat
        ? {
          id: ctx.id, object: 'chat.completion', created: ctx.created, model: ctx.model, system_fingerprint: 'fp_mock',
          choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: finish }],
        }
        : { id: ctx.id, object: 'text_completion', created: ctx.created, model: ctx.model, choices: [{ text, index: 0, logprobs: null, finish_reason: finish }] };
      if (ctx.usage !== 'off') out.usage = chatUsage(ctx);
      return withEcho(out, ctx);
    },
    streamContentType: 'text/event-stream; charset=utf-8',
    head: () => chat ? `${head}{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}${tail}` : '',
    frame: (text) => frame(text, null),
    tail: () => frame('', finish) + (streamUsage ? `${head}],"usage":${JSON.stringify(chatUsage(ctx))}}\n\n` : '') + 'data: [DONE]\n\n',
    streamError: (status, message) => `data: ${openaiError(status, message, 'mock_stream_error')}\n\n`,
  };
}

/** The Responses API: a response object, or the typed SSE events ending in response.completed. */
export function responsesRenderer(ctx: AnswerContext): Renderer {
  const t = ctx.tokens;
  const msgId = `msg_${ctx.id.slice(5)}`;
  let seq = 0;
  const event = (type: string, data: Record<string, unknown>) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, ...data, sequence_number: seq++ })}\n\n`;
  const part = (text: string) => ({ type: 'output_text', text, annotations: [], logprobs: [] });
  const item = (text: string | undefined) => ({
    id: msgId, type: 'message', status: text === undefined ? 'in_progress' : (t.capped ? 'incomplete' : 'completed'), role: 'assistant',
    content: text === undefined ? [] : [part(text)],
  });
  const response = (status: 'in_progress' | 'completed' | 'incomplete', text: string | undefined) => {
    const r: Record<string, unknown> = {
      id: ctx.id, object: 'response', created_at: ctx.created, status, background: false, error: null,
      incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
      instructions: typeof ctx.body.instructions === 'string' ? ctx.body.instructions : null,
      max_output_tokens: ctx.body.max_output_tokens ?? null, model: ctx.model,
      output: text === undefined ? [] : [item(text)],
      parallel_tool_calls: true, previous_response_id: null, reasoning: { effort: null, summary: null }, store: false,
      temperature: 1, text: { format: { type: 'text' } }, tool_choice: 'auto', tools: [], top_p: 1, truncation: 'disabled',
      user: null, metadata: {},
    };
    if (status === 'in_progress') r.usage = null;
    else if (ctx.usage !== 'off') r.usage = responsesUsage(ctx);
    return r;
  };
  const finalStatus = t.capped ? 'incomplete' : 'completed';
  let sent = '';
  const at = { output_index: 0, content_index: 0, item_id: msgId };
  return {
    reportsUsage: ctx.usage !== 'off',
    json: () => withEcho(response(finalStatus, completionSlice(0, t.text)), ctx),
    streamContentType: 'text/event-stream; charset=utf-8',
    head: () => event('response.created', { response: response('in_progress', undefined) })
      + event('response.in_progress', { response: response('in_progress', undefined) })
      + event('response.output_item.added', { output_index: 0, item: item(undefined) })
      + event('response.content_part.added', { ...at, part: part('') }),
    frame(text) {
      sent += text;
      return event('response.output_text.delta', { ...at, delta: text, logprobs: [] });
    },
    tail: () => event('response.output_text.done', { ...at, text: sent, logprobs: [] })
      + event('response.content_part.done', { ...at, part: part(sent) })
      + event('response.output_item.done', { output_index: 0, item: item(sent) })
      + event(`response.${finalStatus}`, { response: response(finalStatus, sent) }),
    streamError: (status, message) => event('error', { code: String(status), message, param: null }),
  };
}

const MAX_EMBEDDING_INPUTS = 2048;
const MAX_DIMENSIONS = 4096;
const DEFAULT_DIMENSIONS = 8;
const MAX_EMBEDDING_FLOATS = 1 << 20;

/** Deterministic unit vector for an input: FNV-1a seed, mulberry32 stream, L2-normalised. */
export function mockEmbedding(key: string, dimensions: number): Float32Array {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  let s = h >>> 0;
  const v = new Float32Array(dimensions);
  let norm = 0;
  for (let i = 0; i < dimensions; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x ^= x + Math.imul(x ^ (x >>> 7), 61 | x);
    const f = (((x ^ (x >>> 14)) >>> 0) / 4294967296) * 2 - 1;
    v[i] = f;
    norm += f * f;
  }
  const scale = norm > 0 ? 1 / Math.sqrt(norm) : 0;
  for (let i = 0; i < dimensions; i++) v[i] = v[i]! * scale;
  return v;
}

export interface EmbeddingsFacts {
  prompt: number;
  inputs: Array<{ key: string; tokens: number }>;
  dimensions: number;
  base64: boolean;
}

export function readEmbeddings(body: Record<string, unknown>): EmbeddingsFacts {
  const inputs = embeddingInputs(body.input);
  if (inputs.length > MAX_EMBEDDING_INPUTS) throw new PromptShapeError(`input must hold at most ${MAX_EMBEDDING_INPUTS} items`);
  const d = body.dimensions ?? DEFAULT_DIMENSIONS;
  if (!Number.isInteger(d) || (d as number) < 1 || (d as number) > MAX_DIMENSIONS) throw new PromptShapeError(`dimensions must be an integer in 1..${MAX_DIMENSIONS}`);
  // Bounds the answer: 2048 inputs × 4096 floats would be ~160 MB of JSON.
  if (inputs.length * (d as number) > MAX_EMBEDDING_FLOATS) throw new PromptShapeError(`inputs × dimensions must be at most ${MAX_EMBEDDING_FLOATS}`);
  const fmt = body.encoding_format ?? 'float';
  if (fmt !== 'float' && fmt !== 'base64') throw new PromptShapeError('encoding_format must be float or base64');
  let prompt = 0;
  for (const i of inputs) prompt += i.tokens;
  return { prompt, inputs, dimensions: d as number, base64: fmt === 'base64' };
}

export function embeddingsJson(ctx: AnswerContext, facts: EmbeddingsFacts): string {
  const data = facts.inputs.map((input, index) => {
    const v = mockEmbedding(input.key, facts.dimensions);
    const embedding = facts.base64 ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') : Array.from(v);
    return { object: 'embedding', index, embedding };
  });
  const out: Record<string, unknown> = { object: 'list', data, model: ctx.model };
  if (ctx.usage !== 'off') {
    out.usage = { prompt_tokens: wire(ctx.lies, 'prompt', facts.prompt), total_tokens: wire(ctx.lies, 'total', facts.prompt) };
  }
  return withEcho(out, ctx);
}

