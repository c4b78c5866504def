// Generic request-preparation helpers every surface's parser shares (src/providers/*/): reading a JSON object
// body, positive-integer fields, taking instance-overridable fields out of the body, serialising the tail, and
// composing an upstream body from a tail without parsing it again. Pure and thread-agnostic: surface parsers
// run inline on the main thread for small bodies and on a worker thread for large ones (src/workers).

import { jsonMembers, type JsonMember } from './json-members.ts';

const CLOSE_BRACE = 0x7d;
const COMMA = 0x2c;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export { isObject as isJsonObject };

export function asBuffer(body: Uint8Array): Buffer {
  return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

/** Where a parsed body came from: serializeTail copies its members' bytes instead of re-serialising them. */
interface Source {
  readonly buf: Buffer;
  readonly members: readonly JsonMember[];
  /** Top-level keys changed after parsing (markRewritten): serialised from the object, not copied. */
  rewritten: string[] | undefined;
}

const SOURCE = Symbol('sluice.jsonSource');
type Sourced = Record<string, unknown> & { [SOURCE]?: Source };

/**
 * The body as a JSON object; 'json' when it does not parse, 'object' when it parses to something else, 'depth'
 * when it nests deeper than MAX_JSON_DEPTH.
 */
export function parseJsonObject(body: Uint8Array): Record<string, unknown> | 'json' | 'object' | 'depth' {
  const buf = asBuffer(body);
  let obj: unknown;
  try {
    obj = JSON.parse(buf.toString('utf8'));
  } catch {
    return 'json';
  }
  if (!isObject(obj)) return 'object';
  const members = jsonMembers(buf, Object.keys(obj));
  if (members === 'too_deep') return 'depth';
  (obj as Sourced)[SOURCE] = { buf, members, rewritten: undefined };
  return obj;
}

/**
 * A parser or surface hook that sets or changes a top-level member after parsing must say so here, or the
 * client's bytes of it are sent instead (serializeTail). Removing one (setting it undefined) needs no mark.
 */
export function markRewritten(obj: Record<string, unknown>, key: string): void {
  const src = (obj as Sourced)[SOURCE];
  if (src === undefined) return;
  if (src.rewritten === undefined) src.rewritten = [key];
  else if (!src.rewritten.includes(key)) src.rewritten.push(key);
}

/** undefined/null → absent; otherwise a positive safe integer or a failure message. */
export function positiveInt(obj: Record<string, unknown>, field: string): number | undefined | string {
  const v = obj[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) return v;
  return `${field} must be a positive integer`;
}

/**
 * Fields an instance's options may replace (ReservationPolicy.overrideKeys) leave the body: the client's JSON of
 * each (null: not sent), for bodyMembers() to write back per attempt. undefined when there are no such keys.
 */
export function takeOverrideFields(obj: Record<string, unknown>, keys: readonly string[] | undefined): (string | null)[] | undefined {
  if (keys === undefined || keys.length === 0) return undefined;
  return keys.map((k) => {
    if (!Object.hasOwn(obj, k) || obj[k] === undefined) return null;
    const json = JSON.stringify(obj[k]);
    obj[k] = undefined;
    return json;
  });
}

/**
 * The body JSON without `model` and without its leading '{' (may be '}' alone): what composeUpstreamBody takes.
 * A body parseJsonObject read keeps the client's bytes of every member still set (the last of duplicates, as
 * JSON.parse reads them); members marked rewritten follow, serialised. Any other object is serialised whole.
 */
export function serializeTail(obj: Record<string, unknown>): Buffer {
  // JSON.stringify drops undefined-valued keys, so this removes `model` without reshaping the object.
  if (Object.hasOwn(obj, 'model')) obj.model = undefined;
  const src = (obj as Sourced)[SOURCE];
  if (src === undefined) return Buffer.from(JSON.stringify(obj), 'utf8').subarray(1);
  const { buf, members, rewritten } = src;
  // Index of each key's last occurrence: a Map only when there are many members (keeps the usual case cheap).
  const last = members.length > 16 ? new Map<string, number>() : undefined;
  if (last !== undefined) for (let j = 0; j < members.length; j++) last.set(members[j]!.key, j);
  const keep: JsonMember[] = [];
  let size = 1;
  for (let j = 0; j < members.length; j++) {
    const m = members[j]!;
    if (obj[m.key] === undefined || (rewritten !== undefined && rewritten.includes(m.key))) continue;
    if (last !== undefined ? last.get(m.key) !== j : laterKey(members, j)) continue;
    keep.push(m);
    size += m.end - m.start + 1;
  }
  let extra = '';
  if (rewritten !== undefined) {
    for (const k of rewritten) {
      const v = obj[k];
      if (v !== undefined) extra += `${keep.length > 0 || extra !== '' ? ',' : ''}${JSON.stringify(k)}:${JSON.stringify(v)}`;
    }
  }
  const extraLen = Buffer.byteLength(extra, 'utf8');
  const out = Buffer.allocUnsafe(size - (keep.length > 0 ? 1 : 0) + extraLen);
  let at = 0;
  for (let j = 0; j < keep.length; j++) {
    const m = keep[j]!;
    if (j > 0) out[at++] = COMMA;
    at += buf.copy(out, at, m.start, m.end);
  }
  if (extraLen > 0) at += out.write(extra, at, 'utf8');
  out[at] = CLOSE_BRACE;
  return out;
}

function laterKey(members: readonly JsonMember[], j: number): boolean {
  const key = members[j]!.key;
  for (let k = j + 1; k < members.length; k++) if (members[k]!.key === key) return true;
  return false;
}


/**
 * The members an instance adds to its upstream body ('"k":v,"k2":v2'), from the prepared request's field keys:
 * the instance's option when it sets the key (APISIX: options override the client), else the client's value.
 * `optionJson` holds the instance's option values, JSON-encoded once at config load.
 */
export function bodyMembers(keys: readonly string[], client: readonly (string | null)[], optionJson: ReadonlyMap<string, string> | undefined): string | undefined {
  let out = '';
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    const v = optionJson?.get(k) ?? client[i] ?? null;
    if (v === null) continue;
    out += (out === '' ? '' : ',') + JSON.stringify(k) + ':' + v;
  }
  return out === '' ? undefined : out;
}

/**
 * The upstream body: '{"model":<model>,' + tail, or '{' + tail when there is no model to send; `members`
 * (bodyMembers) go after the model.
 */
export function composeUpstreamBody(model: string | undefined, tail: Buffer, members?: string): Buffer {
  if (members !== undefined) {
    const empty = tail.length === 1 && tail[0] === CLOSE_BRACE;
    const head = '{' + (model === undefined ? '' : '"model":' + JSON.stringify(model) + ',') + members + (empty ? '' : ',');
    const headLen = Buffer.byteLength(head, 'utf8');
    const out = Buffer.allocUnsafe(headLen + tail.length);
    out.write(head, 0, 'utf8');
    tail.copy(out, headLen);
    return out;
  }
  if (model === undefined) {
    const out = Buffer.allocUnsafe(tail.length + 1);
    out[0] = 0x7b;
    tail.copy(out, 1);
    return out;
  }
  const empty = tail.length === 1 && tail[0] === CLOSE_BRACE;
  const head = '{"model":' + JSON.stringify(model) + (empty ? '' : ',');
  const headLen = Buffer.byteLength(head, 'utf8');
  const out = Buffer.allocUnsafe(headLen + tail.length);
  out.write(head, 0, 'utf8');
  tail.copy(out, headLen);
  return out;
}
