// An OpenAI chat/completions request → an Anthropic Messages request, for OpenAI clients served by an
// Anthropic instance. Fields without an Anthropic counterpart (n, logprobs, response_format, seed, penalties)
// are dropped: one choice is produced.
import { SluiceError } from '../../core/errors.ts';
import { isObject } from './events.ts';

/** max_tokens when neither the request nor its reservation gives one: Anthropic requires the field. */
export const DEFAULT_TRANSLATED_MAX_TOKENS = 4096;

type Block = Record<string, unknown>;

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  let out = '';
  for (const p of content) {
    if (typeof p === 'string') out += p;
    else if (isObject(p) && typeof p.text === 'string') out += p.text;
  }
  return out;
}

/** data:image/png;base64,XXXX → a base64 source; anything else → a URL source. */
function imageBlock(url: string): Block {
  if (url.startsWith('data:')) {
    const comma = url.indexOf(',');
    const meta = url.slice(5, comma === -1 ? 5 : comma);
    if (comma !== -1 && meta.endsWith(';base64')) {
      return { type: 'image', source: { type: 'base64', media_type: meta.slice(0, -7), data: url.slice(comma + 1) } };
    }
  }
  return { type: 'image', source: { type: 'url', url } };
}

/** User or assistant content → Anthropic content (a string stays a string). */
function contentBlocks(content: unknown): string | Block[] {
  if (typeof content === 'string') return content;
  const blocks: Block[] = [];
  if (!Array.isArray(content)) return blocks;
  for (const p of content) {
    if (typeof p === 'string') { blocks.push({ type: 'text', text: p }); continue; }
    if (!isObject(p)) continue;
    if (p.type === 'image_url') {
      const iu = p.image_url;
      const url = typeof iu === 'string' ? iu : isObject(iu) && typeof iu.url === 'string' ? iu.url : undefined;
      if (url !== undefined) blocks.push(imageBlock(url));
    } else if (p.type === 'file') {
      blocks.push(documentBlock(p.file));
    } else if (typeof p.text === 'string') {
      blocks.push({ type: 'text', text: p.text });
    } else if (typeof p.refusal === 'string') {
      blocks.push({ type: 'text', text: p.refusal });
    } else {
      // Dropped, the turn could vanish and the model answer another question (the last turn its prefill).
      throw untranslatable(`content part of type ${JSON.stringify(String(p.type)).slice(0, 40)}`);
    }
  }
  return blocks;
}

function untranslatable(what: string): SluiceError {
  return new SluiceError('SLC_BAD_REQUEST', `${what} cannot be sent to an Anthropic instance`, { param: 'messages' });
}

/** An OpenAI `file` part with inline PDF data → a document block; a file id or another type cannot be sent. */
function documentBlock(file: unknown): Block {
  const data = isObject(file) && typeof file.file_data === 'string' ? file.file_data : undefined;
  const m = data === undefined ? null : /^data:application\/pdf;base64,/.exec(data);
  if (m === null) throw untranslatable('a file part other than inline PDF data (file_data: data:application/pdf;base64,…)');
  return { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: data!.slice(m[0].length) } };
}

function toolInput(args: unknown): unknown {
  if (typeof args !== 'string') return isObject(args) ? args : {};
  if (args.trim() === '') return {};
  try {
    const v: unknown = JSON.parse(args);
    return isObject(v) ? v : { value: v };
  } catch {
    // Arguments that are not JSON (a model's truncated call) still reach the model as text.
    return { arguments: args };
  }
}

interface Turn { role: 'user' | 'assistant'; content: string | Block[] }

function asBlocks(c: string | Block[]): Block[] {
  return typeof c === 'string' ? (c === '' ? [] : [{ type: 'text', text: c }]) : c;
}

/**
 * Appends content to the conversation, merging into the previous turn of the same role (tool results follow).
 * Empty content is left out: Anthropic refuses an empty turn.
 */
function push(turns: Turn[], role: 'user' | 'assistant', content: string | Block[]): void {
  if (content.length === 0) return;
  const last = turns[turns.length - 1];
  if (last !== undefined && last.role === role) {
    last.content = [...asBlocks(last.content), ...asBlocks(content)];
    return;
  }
  turns.push({ role, content });
}

function toolChoice(tc: unknown, parallel: unknown): Block | undefined {
  let out: Block | undefined;
  if (tc === 'auto') out = { type: 'auto' };
  else if (tc === 'none') out = { type: 'none' };
  else if (tc === 'required') out = { type: 'any' };
  else if (isObject(tc) && isObject(tc.function) && typeof tc.function.name === 'string') out = { type: 'tool', name: tc.function.name };
  if (parallel === false) {
    // none takes no flag; the others can forbid parallel calls.
    if (out === undefined) out = { type: 'auto' };
    if (out.type !== 'none') out.disable_parallel_tool_use = true;
  }
  return out;
}

/**
 * The Anthropic body for an OpenAI chat request `obj` (already parsed, its `model` removed), sent as `model`.
 * `reserved` is the request's completion reservation (used for max_tokens when the client gave none).
 */
export function translateRequest(obj: Record<string, unknown>, model: string | undefined, reserved: number): string {
  const system: Block[] = [];
  const turns: Turn[] = [];
  const messages = Array.isArray(obj.messages) ? obj.messages : [];
  for (const m of messages) {
    if (!isObject(m)) continue;
    switch (m.role) {
      case 'system':
      case 'developer': {
        const t = textOf(m.content);
        if (t !== '') system.push({ type: 'text', text: t });
        break;
      }
      case 'user':
        push(turns, 'user', contentBlocks(m.content));
        break;
      case 'assistant': {
        const blocks = asBlocks(contentBlocks(m.content));
        const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
        for (const c of calls) {
          if (!isObject(c)) continue;
          const fn = isObject(c.function) ? c.function : {};
          blocks.push({ type: 'tool_use', id: typeof c.id === 'string' ? c.id : '', name: typeof fn.name === 'string' ? fn.name : '', input: toolInput(fn.arguments) });
        }
        if (isObject(m.function_call)) {
          const fn = m.function_call;
          blocks.push({ type: 'tool_use', id: typeof fn.name === 'string' ? fn.name : '', name: typeof fn.name === 'string' ? fn.name : '', input: toolInput(fn.arguments) });
        }
        push(turns, 'assistant', blocks);
        break;
      }
      case 'tool':
      case 'function': {
        const id = typeof m.tool_call_id === 'string' ? m.tool_call_id : typeof m.name === 'string' ? m.name : '';
        push(turns, 'user', [{ type: 'tool_result', tool_use_id: id, content: textOf(m.content) }]);
        break;
      }
      default:
        break;
    }
  }

  const out: Record<string, unknown> = {};
  if (model !== undefined) out.model = model;
  const mct = obj.max_completion_tokens;
  const mt = obj.max_tokens;
  out.max_tokens = typeof mct === 'number' && mct > 0 ? mct
    : typeof mt === 'number' && mt > 0 ? mt
      : reserved > 0 ? reserved : DEFAULT_TRANSLATED_MAX_TOKENS;
  if (system.length > 0) out.system = system.length === 1 ? system[0]!.text : system;
  out.messages = turns;
  // OpenAI's temperature runs to 2, Anthropic's to 1.
  if (typeof obj.temperature === 'number') out.temperature = Math.min(Math.max(obj.temperature, 0), 1);
  if (typeof obj.top_p === 'number') out.top_p = obj.top_p;
  const stop = obj.stop;
  if (typeof stop === 'string') out.stop_sequences = [stop];
  else if (Array.isArray(stop) && stop.length > 0) out.stop_sequences = stop.filter((s) => typeof s === 'string');
  if (Array.isArray(obj.tools) && obj.tools.length > 0) {
    out.tools = obj.tools.filter(isObject).map((t) => {
      const fn = isObject(t.function) ? t.function : t;
      const tool: Block = { name: fn.name };
      if (typeof fn.description === 'string') tool.description = fn.description;
      tool.input_schema = isObject(fn.parameters) ? fn.parameters : { type: 'object', properties: {} };
      return tool;
    });
  } else if (Array.isArray(obj.functions) && obj.functions.length > 0) {
    out.tools = obj.functions.filter(isObject).map((fn) => ({
      name: fn.name,
      ...(typeof fn.description === 'string' ? { description: fn.description } : {}),
      input_schema: isObject(fn.parameters) ? fn.parameters : { type: 'object', properties: {} },
    }));
  }
  if (out.tools !== undefined) {
    const tc = toolChoice(obj.tool_choice, obj.parallel_tool_calls);
    if (tc !== undefined) out.tool_choice = tc;
  }
  if (typeof obj.user === 'string') out.metadata = { user_id: obj.user };
  if (obj.stream === true) out.stream = true;
  return JSON.stringify(out);
}
