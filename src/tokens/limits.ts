// How many completion tokens a request may reserve, and when it asks for more than any instance can give.
// Without a cap one client could reserve max_tokens = 2^53 − 1 and lock a shared quota for the length of its
// stream. The rule (README "Accounting semantics"):
//
//   per choice   = min(max(max_completion_tokens, max_tokens) (either when only one is sent) ?? tokens.default_max_tokens, model cap)
//   completion   = min(n · per choice, tokens.max_reservation)
//   reservation  = prompt tokens + completion
//
// The model cap is the largest max_output_tokens among the models the route's instances may send (an instance
// without a model sends the request's own); a model not in the table (built-in or tokens.models) has
// tokens.max_reservation as its cap. When every candidate model is known and the request asks for more than
// the largest cap, the answer is a 400 like OpenAI's; with an unknown model the upstream decides.

export interface ModelLimits {
  readonly max_output_tokens: number;
  readonly context_window: number;
}

/** Default of tokens.max_reservation: the most completion tokens one request reserves. */
export const DEFAULT_MAX_RESERVATION = 32768;
/** Largest `n` accepted (OpenAI's own limit). */
export const MAX_N = 128;

/** Published limits of common models. A name matches itself and its dated or suffixed variants (`gpt-4o-2024-08-06`). */
export const KNOWN_MODELS: Readonly<Record<string, ModelLimits>> = Object.freeze({
  'gpt-4o': { max_output_tokens: 16384, context_window: 128000 },
  'gpt-4o-mini': { max_output_tokens: 16384, context_window: 128000 },
  'chatgpt-4o': { max_output_tokens: 16384, context_window: 128000 },
  'gpt-4.1': { max_output_tokens: 32768, context_window: 1047576 },
  'gpt-4.1-mini': { max_output_tokens: 32768, context_window: 1047576 },
  'gpt-4.1-nano': { max_output_tokens: 32768, context_window: 1047576 },
  'gpt-4.5': { max_output_tokens: 16384, context_window: 128000 },
  'gpt-5': { max_output_tokens: 128000, context_window: 400000 },
  'o1': { max_output_tokens: 100000, context_window: 200000 },
  'o1-mini': { max_output_tokens: 65536, context_window: 128000 },
  'o1-preview': { max_output_tokens: 32768, context_window: 128000 },
  'o3': { max_output_tokens: 100000, context_window: 200000 },
  'o3-mini': { max_output_tokens: 100000, context_window: 200000 },
  'o4-mini': { max_output_tokens: 100000, context_window: 200000 },
  'gpt-4-turbo': { max_output_tokens: 4096, context_window: 128000 },
  'gpt-4': { max_output_tokens: 8192, context_window: 8192 },
  'gpt-4-32k': { max_output_tokens: 8192, context_window: 32768 },
  'gpt-3.5-turbo': { max_output_tokens: 4096, context_window: 16385 },
  'deepseek-chat': { max_output_tokens: 8192, context_window: 128000 },
  'deepseek-reasoner': { max_output_tokens: 65536, context_window: 128000 },
});

function bareName(model: string): string {
  const slash = model.lastIndexOf('/');
  const name = slash === -1 ? model : model.slice(slash + 1);
  return name.toLowerCase();
}

function longestMatch(name: string, table: Readonly<Record<string, ModelLimits>>): ModelLimits | undefined {
  let best: ModelLimits | undefined;
  let bestLen = -1;
  for (const key of Object.keys(table)) {
    const k = key.toLowerCase();
    if (k.length <= bestLen || !name.startsWith(k)) continue;
    // 'gpt-4' must not claim 'gpt-4o' or 'gpt-4.5': a prefix ends at the name's end or at '-', ':' or '@'.
    const after = name.charCodeAt(k.length);
    if (name.length !== k.length && after !== 0x2d && after !== 0x3a && after !== 0x40) continue;
    best = table[key];
    bestLen = k.length;
  }
  return best;
}

/** modelLimits per custom table (tokens.models, fixed once loaded) and model name: every request asks again. */
const limitsMemo = new WeakMap<object, Map<string, ModelLimits | null>>();
const NO_CUSTOM = {};
/** Bounds of the memo: model names come from clients. */
const MEMO_NAMES = 256;
const MEMO_NAME_CHARS = 128;

/** Limits of a model: tokens.models entries first, then the built-in table; undefined when unknown. */
export function modelLimits(model: string | undefined, custom?: Readonly<Record<string, ModelLimits>>): ModelLimits | undefined {
  if (model === undefined || model === '') return undefined;
  if (model.length > MEMO_NAME_CHARS) return lookupLimits(model, custom);
  let memo = limitsMemo.get(custom ?? NO_CUSTOM);
  if (memo === undefined) limitsMemo.set(custom ?? NO_CUSTOM, (memo = new Map()));
  let found = memo.get(model);
  if (found === undefined) {
    found = lookupLimits(model, custom) ?? null;
    if (memo.size >= MEMO_NAMES) memo.clear();
    memo.set(model, found);
  }
  return found ?? undefined;
}

function lookupLimits(model: string, custom: Readonly<Record<string, ModelLimits>> | undefined): ModelLimits | undefined {
  const name = bareName(model);
  return (custom !== undefined ? longestMatch(name, custom) : undefined) ?? longestMatch(name, KNOWN_MODELS);
}

/** What prepareRequest needs to size a reservation; plain data so it crosses to worker threads. */
export interface ReservationPolicy {
  /** Completion tokens per choice when the request sets no max_tokens. */
  readonly defaultMaxTokens: number;
  /** Most completion tokens one request reserves (all choices together). Default 32768. */
  readonly maxReservation?: number;
  /** Models the route's instances send; null: the instance sends the request's own model. Default [null]. */
  readonly instanceModels?: readonly (string | null)[];
  /** tokens.models */
  readonly models?: Readonly<Record<string, ModelLimits>>;
  /**
   * Body fields some instance's `options` set (sorted): prepare takes them out of the client's body and keeps
   * their JSON, so each attempt writes the instance's value or the client's (bodyMembers in prepare.ts).
   */
  readonly overrideKeys?: readonly string[];
  /** Per instance (parallel to instanceModels), the counting fields its options set; absent when none does. */
  readonly instanceAsks?: readonly (InstanceAsk | null)[];
}

/** `options.max_tokens`, `options.max_completion_tokens`, `options.n` of one instance. */
export interface InstanceAsk {
  readonly max_tokens?: number;
  readonly max_completion_tokens?: number;
  readonly n?: number;
}

export interface CompletionReservation {
  ok: true;
  /** Completion tokens to reserve. */
  tokens: number;
}

export interface ReservationRefusal {
  ok: false;
  param: 'max_tokens' | 'max_completion_tokens' | 'max_output_tokens';
  message: string;
}

/**
 * Completion tokens to reserve for a request asking `requested` per choice (undefined: not set) and `n`
 * choices, or a refusal when every instance's model is known and none can give that many.
 */
export function completionReservation(
  policy: ReservationPolicy, requestModel: string | undefined, requested: number | undefined,
  param: 'max_tokens' | 'max_completion_tokens' | 'max_output_tokens', n: number, refuse = true,
): CompletionReservation | ReservationRefusal {
  const maxReservation = policy.maxReservation ?? DEFAULT_MAX_RESERVATION;
  const candidates = policy.instanceModels ?? [null];
  let cap = 0;
  let allKnown = candidates.length > 0;
  for (const m of candidates) {
    const limits = modelLimits(m ?? requestModel, policy.models);
    if (limits === undefined) {
      allKnown = false;
      cap = Math.max(cap, maxReservation);
    } else cap = Math.max(cap, limits.max_output_tokens);
  }
  if (candidates.length === 0) cap = maxReservation;
  if (refuse && requested !== undefined && allKnown && requested > cap) {
    return {
      ok: false,
      param,
      message: `${param} is too large: ${requested}. This model supports at most ${cap} completion tokens, whereas you provided ${requested}.`,
    };
  }
  const perChoice = Math.min(requested ?? policy.defaultMaxTokens, cap);
  return { ok: true, tokens: Math.min(n * perChoice, maxReservation) };
}

/**
 * tokens.max_usage when the config does not set it: the largest single usage number believed from an upstream.
 * max(16 × max_reservation, the largest context window known), so that a real response (at most a context
 * window, or n choices of the largest reservation) always fits and a corrupt 2^53 never does.
 */
export function defaultMaxUsage(maxReservation: number, custom?: Readonly<Record<string, ModelLimits>>): number {
  let n = 16 * maxReservation;
  for (const table of [KNOWN_MODELS, custom ?? {}]) {
    for (const k of Object.keys(table)) n = Math.max(n, table[k]!.context_window);
  }
  return n;
}

/** The usage ceiling of a validated tokens config (what H4's usage validation reads). */
export function maxUsageOf(tokens: { readonly max_usage?: number; readonly max_reservation?: number; readonly models?: Readonly<Record<string, ModelLimits>> }): number {
  if (typeof tokens.max_usage === 'number' && tokens.max_usage > 0) return tokens.max_usage;
  return defaultMaxUsage(tokens.max_reservation ?? DEFAULT_MAX_RESERVATION, tokens.models);
}

/**
 * Completion tokens to reserve when some instance's options set max_tokens, max_completion_tokens or n (APISIX
 * merges options over the client's body): the largest of what any instance may be asked for, so the
 * reservation bounds whichever instance serves. A field set in the merged body counts (both when both are).
 */
export function mergedReservation(
  policy: ReservationPolicy, asks: readonly (InstanceAsk | null)[], requestModel: string | undefined,
  clientMaxTokens: number | undefined, clientMaxCompletion: number | undefined, clientN: number,
): number {
  let requested: number | undefined;
  let unset = false;
  let n = 1;
  for (const ask of asks) {
    let v: number | undefined;
    const mt = ask?.max_tokens ?? clientMaxTokens;
    const mct = ask?.max_completion_tokens ?? clientMaxCompletion;
    v = mt === undefined ? mct : mct === undefined ? mt : Math.max(mt, mct);
    if (v === undefined) unset = true;
    else requested = Math.max(requested ?? 0, v);
    n = Math.max(n, ask?.n ?? clientN);
  }
  if (unset && requested !== undefined) requested = Math.max(requested, policy.defaultMaxTokens);
  const r = completionReservation(policy, requestModel, requested, 'max_tokens', n, false);
  return r.ok ? r.tokens : 0;
}

type PolicyInstance = { readonly model: string | undefined; readonly bodyOptions?: Readonly<Record<string, unknown>> | undefined };

function askOf(o: Readonly<Record<string, unknown>> | undefined): InstanceAsk | null {
  if (o === undefined) return null;
  const num = (k: string): number | undefined => (typeof o[k] === 'number' ? o[k] : undefined);
  const ask: InstanceAsk = { max_tokens: num('max_tokens'), max_completion_tokens: num('max_completion_tokens'), n: num('n') };
  return ask.max_tokens === undefined && ask.max_completion_tokens === undefined && ask.n === undefined ? null : ask;
}

/** Option keys that set an output budget this module does not read (the Gemini and legacy Anthropic shapes). */
const UNREAD_LIMITS = ['generationConfig', 'generation_config', 'max_tokens_to_sample'] as const;

/**
 * Most completion tokens an upstream can have produced for one request (choices × the output limit), or undefined when
 * nothing known limited it. An instance's options replace the client's fields of the same name, but the client's
 * limit may sit in a field they leave (or one the provider reads instead): the largest of what either set is taken,
 * an upper bound, never an undercharge (an instance that lowers the client's limit leaves the looser ceiling).
 * Options that set a budget in a shape not read here give no ceiling at all.
 */
export function completionCeiling(clientMax: number | undefined, clientN: number, options: Readonly<Record<string, unknown>> | undefined): number | undefined {
  if (options !== undefined && UNREAD_LIMITS.some((k) => Object.hasOwn(options, k))) return undefined;
  const ask = askOf(options);
  const mot = typeof options?.max_output_tokens === 'number' ? options.max_output_tokens : 0;
  const own = Math.max(ask?.max_tokens ?? 0, ask?.max_completion_tokens ?? 0, mot);
  const limit = own === 0 ? clientMax : Math.max(own, clientMax ?? 0);
  return limit === undefined ? undefined : Math.max(ask?.n ?? 0, clientN) * limit;
}

const policies = new WeakMap<object, WeakMap<readonly PolicyInstance[], ReservationPolicy>>();

/**
 * The reservation policy of a route: tokens.* and the models its instances send. Memoised per (frozen) tokens
 * config and instance list, so the request path allocates nothing for it.
 */
export function reservationPolicy(
  tokens: { readonly default_max_tokens: number; readonly max_reservation?: number; readonly models?: Readonly<Record<string, ModelLimits>> },
  instances: readonly PolicyInstance[],
): ReservationPolicy {
  let byInstances = policies.get(tokens);
  if (byInstances === undefined) policies.set(tokens, (byInstances = new WeakMap()));
  let p = byInstances.get(instances);
  if (p === undefined) {
    const keys = [...new Set(instances.flatMap((i) => (i.bodyOptions === undefined ? [] : Object.keys(i.bodyOptions))))].sort();
    const asks = instances.map((i) => askOf(i.bodyOptions));
    p = Object.freeze({
      defaultMaxTokens: tokens.default_max_tokens,
      maxReservation: tokens.max_reservation ?? DEFAULT_MAX_RESERVATION,
      instanceModels: Object.freeze(instances.map((i) => i.model ?? null)),
      models: tokens.models ?? {},
      ...(keys.length > 0 ? { overrideKeys: Object.freeze(keys) } : {}),
      ...(asks.some((a) => a !== null) ? { instanceAsks: Object.freeze(asks) } : {}),
    });
    byInstances.set(instances, p);
  }
  return p;
}
