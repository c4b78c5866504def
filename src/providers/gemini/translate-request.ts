// An OpenAI chat/completions request → a Gemini generateContent request. Roles: system and developer become
// systemInstruction, assistant becomes `model`, tool results become functionResponse parts of a user turn
// (consecutive ones in one turn, as Gemini wants parallel calls answered together). Tools become
// functionDeclarations (their JSON Schema as parametersJsonSchema), tool_calls functionCall parts, image_url data
// URLs inlineData. Sampling fields map to generationConfig; fields Gemini has no equivalent for are dropped.

type Obj = Record<string, unknown>;

function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `data:<mime>;base64,<data>` → inlineData; any other URL → fileData (Gemini fetches https and gs:// URIs). */
function imagePart(url: string): Obj {
  if (url.startsWith('data:')) {
    const comma = url.indexOf(',');
    const meta = url.slice(5, comma === -1 ? url.length : comma);
    const semi = meta.indexOf(';');
    const mimeType = (semi === -1 ? meta : meta.slice(0, semi)) || 'application/octet-stream';
    return { inlineData: { mimeType, data: comma === -1 ? '' : url.slice(comma + 1) } };
  }
  const ext = /\.([a-z0-9]+)(?:[?#].*)?$/i.exec(url)?.[1]?.toLowerCase();
  const mimeType = ext === 'png' ? 'image/png' : ext === 'webp' ? 'image/webp' : ext === 'gif' ? 'image/gif' : ext === 'pdf' ? 'application/pdf' : 'image/jpeg';
  return { fileData: { mimeType, fileUri: url } };
}

const AUDIO_MIME: Readonly<Record<string, string>> = { wav: 'audio/wav', mp3: 'audio/mp3', flac: 'audio/flac', ogg: 'audio/ogg', aac: 'audio/aac' };

/** OpenAI message content (a string or parts) → Gemini parts. */
function contentParts(content: unknown): Obj[] {
  if (typeof content === 'string') return content === '' ? [] : [{ text: content }];
  if (!Array.isArray(content)) return [];
  const out: Obj[] = [];
  for (const p of content) {
    if (typeof p === 'string') { out.push({ text: p }); continue; }
    if (!isObject(p)) continue;
    if (typeof p.text === 'string') out.push({ text: p.text });
    else if (typeof p.refusal === 'string') out.push({ text: p.refusal });
    else if (p.type === 'image_url') {
      const iu = p.image_url;
      const url = typeof iu === 'string' ? iu : isObject(iu) && typeof iu.url === 'string' ? iu.url : undefined;
      if (url !== undefined) out.push(imagePart(url));
    } else if (p.type === 'input_audio' && isObject(p.input_audio) && typeof p.input_audio.data === 'string') {
      const fmt = typeof p.input_audio.format === 'string' ? p.input_audio.format : 'wav';
      out.push({ inlineData: { mimeType: AUDIO_MIME[fmt] ?? `audio/${fmt}`, data: p.input_audio.data } });
    } else if (p.type === 'file' && isObject(p.file) && typeof p.file.file_data === 'string') {
      out.push(imagePart(p.file.file_data));
    }
  }
  return out;
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  let s = '';
  for (const p of contentParts(content)) if (typeof p.text === 'string') s += (s === '' ? '' : '\n') + p.text;
  return s;
}

/** Tool-call arguments are a JSON string in OpenAI, an object in Gemini. */
function argsOf(raw: unknown): Obj {
  if (isObject(raw)) return raw;
  if (typeof raw !== 'string' || raw.trim() === '') return {};
  try {
    const v: unknown = JSON.parse(raw);
    return isObject(v) ? v : { value: v };
  } catch {
    return { arguments: raw };
  }
}

/** A tool message's content as a functionResponse `response` (an object in Gemini). */
function responseOf(content: unknown): Obj {
  const text = textOf(content);
  try {
    const v: unknown = JSON.parse(text);
    if (isObject(v)) return v;
  } catch {
    // Plain text: wrapped below.
  }
  return { content: text };
}

interface Turn { role: string; parts: Obj[] }

/** OpenAI messages → Gemini contents and systemInstruction. */
export function translateMessages(messages: readonly unknown[]): { contents: Turn[]; system: Obj | undefined } {
  const contents: Turn[] = [];
  const systemParts: Obj[] = [];
  // Tool results name the function Gemini needs by the id of the call: remember them.
  const callNames = new Map<string, string>();
  let toolTurn: Turn | undefined;
  for (const raw of messages) {
    if (!isObject(raw)) continue;
    const role = raw.role;
    if (role === 'system' || role === 'developer') {
      for (const p of contentParts(raw.content)) if (typeof p.text === 'string') systemParts.push({ text: p.text });
      continue;
    }
    if (role === 'tool' || role === 'function') {
      const id = typeof raw.tool_call_id === 'string' ? raw.tool_call_id : undefined;
      const name = (id !== undefined ? callNames.get(id) : undefined) ?? (typeof raw.name === 'string' ? raw.name : id ?? 'function');
      const part: Obj = { functionResponse: { name, response: responseOf(raw.content) } };
      if (toolTurn !== undefined) toolTurn.parts.push(part);
      else {
        toolTurn = { role: 'user', parts: [part] };
        contents.push(toolTurn);
      }
      continue;
    }
    toolTurn = undefined;
    if (role === 'assistant') {
      const parts = contentParts(raw.content);
      const calls = raw.tool_calls;
      if (Array.isArray(calls)) {
        for (const c of calls) {
          if (!isObject(c) || !isObject(c.function)) continue;
          const name = typeof c.function.name === 'string' ? c.function.name : '';
          if (typeof c.id === 'string') callNames.set(c.id, name);
          parts.push({ functionCall: { name, args: argsOf(c.function.arguments) } });
        }
      }
      const fc = raw.function_call;
      if (isObject(fc) && typeof fc.name === 'string') parts.push({ functionCall: { name: fc.name, args: argsOf(fc.arguments) } });
      // Gemini refuses a turn without parts.
      contents.push({ role: 'model', parts: parts.length > 0 ? parts : [{ text: '' }] });
      continue;
    }
    const parts = contentParts(raw.content);
    contents.push({ role: 'user', parts: parts.length > 0 ? parts : [{ text: '' }] });
  }
  return { contents, system: systemParts.length > 0 ? { parts: systemParts } : undefined };
}

function functionDeclarations(tools: unknown, functions: unknown): Obj[] {
  const decls: Obj[] = [];
  const add = (f: Obj): void => {
    const d: Obj = { name: f.name };
    if (typeof f.description === 'string') d.description = f.description;
    if (isObject(f.parameters)) d.parametersJsonSchema = f.parameters;
    decls.push(d);
  };
  if (Array.isArray(tools)) for (const t of tools) if (isObject(t) && isObject(t.function) && typeof t.function.name === 'string') add(t.function);
  if (Array.isArray(functions)) for (const f of functions) if (isObject(f) && typeof f.name === 'string') add(f);
  return decls;
}

function toolConfig(choice: unknown): Obj | undefined {
  if (choice === 'none') return { functionCallingConfig: { mode: 'NONE' } };
  if (choice === 'auto') return { functionCallingConfig: { mode: 'AUTO' } };
  if (choice === 'required') return { functionCallingConfig: { mode: 'ANY' } };
  if (isObject(choice) && isObject(choice.function) && typeof choice.function.name === 'string') {
    return { functionCallingConfig: { mode: 'ANY', allowedFunctionNames: [choice.function.name] } };
  }
  return undefined;
}

/** The OpenAI request (model already taken out) → the Gemini request body. */
export function translateRequest(req: Obj): Obj {
  const messages = Array.isArray(req.messages) ? req.messages : [];
  const { contents, system } = translateMessages(messages);
  const out: Obj = { contents };
  if (system !== undefined) out.systemInstruction = system;
  const decls = functionDeclarations(req.tools, req.functions);
  if (decls.length > 0) out.tools = [{ functionDeclarations: decls }];
  const tc = toolConfig(req.tool_choice ?? req.function_call);
  if (tc !== undefined && decls.length > 0) out.toolConfig = tc;

  const gen: Obj = {};
  const maxTokens = req.max_completion_tokens ?? req.max_tokens;
  if (typeof maxTokens === 'number') gen.maxOutputTokens = maxTokens;
  if (typeof req.temperature === 'number') gen.temperature = req.temperature;
  if (typeof req.top_p === 'number') gen.topP = req.top_p;
  if (typeof req.n === 'number' && req.n > 1) gen.candidateCount = req.n;
  if (typeof req.stop === 'string') gen.stopSequences = [req.stop];
  else if (Array.isArray(req.stop) && req.stop.length > 0) gen.stopSequences = req.stop.filter((s) => typeof s === 'string');
  if (typeof req.presence_penalty === 'number') gen.presencePenalty = req.presence_penalty;
  if (typeof req.frequency_penalty === 'number') gen.frequencyPenalty = req.frequency_penalty;
  if (typeof req.seed === 'number') gen.seed = req.seed;
  const rf = req.response_format;
  if (isObject(rf)) {
    if (rf.type === 'json_object') gen.responseMimeType = 'application/json';
    else if (rf.type === 'json_schema' && isObject(rf.json_schema)) {
      gen.responseMimeType = 'application/json';
      if (isObject(rf.json_schema.schema)) gen.responseJsonSchema = rf.json_schema.schema;
    }
  }
  if (Object.keys(gen).length > 0) out.generationConfig = gen;
  return out;
}
