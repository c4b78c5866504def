// Generic request-preparation helpers every surface's parser shares (src/providers/*/): reading a JSON object
// body, positive-integer fields, taking instance-overridable fields out of the body, serialising the tail, and
// composing an upstream body from a tail without parsing it again. Pure and thread-agnostic: surface parsers
// run inline on the main thread for small bodies and on a worker thread for large ones (src/workers).

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export { isObject as isJsonObject };

export function asBuffer(body: Uint8Array): Buffer {
  return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

/** The body as a JSON object; 'json' when it does not parse, 'object' when it parses to something else. */
export function parseJsonObject(body: Uint8Array): Record<string, unknown> | 'json' | 'object' {
  let obj: unknown;
  try {
    obj = JSON.parse(asBuffer(body).toString('utf8'));
  } catch {
    return 'json';
  }
  return isObject(obj) ? obj : 'object';
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

/** The body JSON without `model` and without its leading '{' (may be '}' alone): what composeUpstreamBody takes. */
export function serializeTail(obj: Record<string, unknown>): Buffer {
  // JSON.stringify drops undefined-valued keys, so this removes `model` without reshaping the object.
  if (Object.hasOwn(obj, 'model')) obj.model = undefined;
  return Buffer.from(JSON.stringify(obj), 'utf8').subarray(1);
}

const CLOSE_BRACE = 0x7d;

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
