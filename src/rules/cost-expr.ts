// Cost expressions for `limit_strategy: expression`, e.g. `prompt_tokens + 4 * completion_tokens`.
// A recursive-descent parser builds an expression tree once; nothing is ever handed to eval or Function.
//
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '/') unary)*
//   unary   := ('-' | '+') unary | primary
//   primary := number | ident | func '(' expr (',' expr)* ')' | '(' expr ')'
//
// Names. The normalised token kinds come from Sluice's own Usage first, so an expression means the same on
// every provider: `prompt_tokens`, `completion_tokens`, `total_tokens`, `cached_prompt_tokens`,
// `cache_write_tokens`, `reasoning_tokens` and the derived `uncached_prompt_tokens` (prompt − cached). The
// kinds are parts of prompt/completion (streaming/usage.ts), never added on top. A kind the Usage does not
// carry falls through to the upstream's raw usage object, like every other name, as in APISIX: a top-level
// numeric field first (`input_tokens`, `cache_creation_input_tokens` on an Anthropic usage), then a numeric
// field of a nested object (`cached_tokens` under `prompt_tokens_details`); a name the usage does not carry
// is 0. `input_tokens` / `output_tokens` are raw names (Anthropic's input_tokens excludes cache tokens) that
// fall back to the normalised prompt / completion. Functions: max(a,b), min(a,b), ceil(x), floor(x).
// Division by zero yields 0 so a usage with no completion tokens cannot produce an infinite charge; an expression
// dividing by the constant 0, a constant 0 and one no usage can make positive fail to compile (they never charge).
//
// Without the raw usage (the reservation at admission, or a stream that reported none) the charge is an
// upper bound. Domains: prompt_tokens is the counted prompt p; input_tokens, cached_prompt_tokens,
// cache_write_tokens and uncached_prompt_tokens are in [0, p] (cached + write ≤ p); completion_tokens and
// output_tokens in [0, C] (the reserved completion); reasoning_tokens in [0, completion_tokens];
// total_tokens in [p, p + C]; every other name in [0, p + C]. The part of an expression that is linear in
// these names is maximised exactly over those domains (so `prompt_tokens - cached_prompt_tokens +
// 0.1 * cached_prompt_tokens` reserves p, not 1.1 p); non-linear sub-expressions (products of names,
// division by a name, functions) are bounded by interval arithmetic (a divisor is taken to be 0, an end of its
// range, or no nearer 0 than its constants allow: 1 for token counts, 0.5 for `max(x, 0.5)`; 1 where a sum of
// non-integers makes that unknown).

export type RawUsage = Readonly<Record<string, unknown>>;

export interface CostUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
  /** Of prompt_tokens; absent when not known (the reservation, a counted usage). */
  readonly cached_prompt_tokens?: number;
  /** Of prompt_tokens. */
  readonly cache_write_tokens?: number;
  /** Of completion_tokens. */
  readonly reasoning_tokens?: number;
  /** The upstream's usage object, when there is one. */
  readonly raw?: RawUsage;
}

type Ast =
  | { readonly t: 'num'; readonly v: number }
  | { readonly t: 'id'; readonly name: string }
  | { readonly t: 'neg'; readonly a: Ast }
  | { readonly t: 'bin'; readonly op: '+' | '-' | '*' | '/'; readonly a: Ast; readonly b: Ast }
  | { readonly t: 'call'; readonly fn: 'max' | 'min' | 'ceil' | 'floor'; readonly args: readonly Ast[] };

const ARITY = { max: 2, min: 2, ceil: 1, floor: 1 } as const;

/** The normalised token kinds, read from Sluice's Usage before the raw object (undefined: not known). */
const NORMALISED: Readonly<Record<string, (u: CostUsage) => number | undefined>> = {
  prompt_tokens: (u) => u.prompt_tokens,
  completion_tokens: (u) => u.completion_tokens,
  total_tokens: (u) => u.total_tokens,
  cached_prompt_tokens: (u) => u.cached_prompt_tokens,
  cache_write_tokens: (u) => u.cache_write_tokens,
  reasoning_tokens: (u) => u.reasoning_tokens,
};

/** Raw names that fall back to a normalised count when the upstream's usage lacks them. */
const FALLBACK: Readonly<Record<string, (u: CostUsage) => number>> = {
  input_tokens: (u) => u.prompt_tokens,
  output_tokens: (u) => u.completion_tokens,
};

/** The names `limit_strategy` accepts besides `expression`, each the same as the cost expression of that name. */
export const TOKEN_KIND_NAMES: readonly string[] = [
  'total_tokens', 'prompt_tokens', 'completion_tokens', 'cached_prompt_tokens', 'cache_write_tokens', 'reasoning_tokens',
  'uncached_prompt_tokens',
];

/**
 * Usage fields some provider reports (OpenAI, Azure, DeepSeek, Anthropic, Gemini native and OpenAI-compatible), and the
 * normalised kinds.
 * `sluice validate` warns about other names: they would always count 0 unless an upstream sends them.
 */
export const KNOWN_USAGE_FIELDS: ReadonlySet<string> = new Set([
  'prompt_tokens', 'completion_tokens', 'total_tokens', 'input_tokens', 'output_tokens',
  'cached_prompt_tokens', 'cache_write_tokens', 'uncached_prompt_tokens',
  'cached_tokens', 'audio_tokens', 'text_tokens', 'image_tokens', 'reasoning_tokens',
  'accepted_prediction_tokens', 'rejected_prediction_tokens',
  'cache_creation_input_tokens', 'cache_read_input_tokens', 'ephemeral_5m_input_tokens', 'ephemeral_1h_input_tokens',
  'prompt_cache_hit_tokens', 'prompt_cache_miss_tokens', 'web_search_requests', 'thoughts_tokens',
  'promptTokenCount', 'candidatesTokenCount', 'totalTokenCount', 'cachedContentTokenCount', 'thoughtsTokenCount',
  'toolUsePromptTokenCount',
]);

const MAX_IDENT = 64;
// Folding and evaluation recurse over the tree, per request: a tree deep enough to overflow the stack must
// fail to compile instead. A path from the root passes at most MAX_OPERATORS binary nodes and MAX_NESTING
// unary operators, parentheses and calls.
const MAX_OPERATORS = 256;
const MAX_NESTING = 64;

function fieldValue(v: unknown): number | undefined {
  // Numbers from upstreams are validated: a non-finite or negative count is no count.
  return typeof v === 'number' && Number.isFinite(v) ? (v > 0 ? v : 0) : undefined;
}

/** The count a part-of kind lies within: a raw value standing in for a missing kind is capped by it. */
const PARENT: Readonly<Record<string, (u: CostUsage) => number>> = {
  cached_prompt_tokens: (u) => u.prompt_tokens,
  cache_write_tokens: (u) => u.prompt_tokens,
  reasoning_tokens: (u) => u.completion_tokens,
};

/** A kind of Sluice's Usage, else a field of the raw usage (top level, then nested), else a fallback count, else 0. */
function lookup(u: CostUsage, name: string): number {
  if (Object.hasOwn(NORMALISED, name)) {
    const v = NORMALISED[name]!(u);
    if (v !== undefined) return v;
    // A usage without the kind (an older reader, a counted estimate): the raw field of that name, but never
    // more than its whole, which is what the reservation's upper bound assumes.
    if (Object.hasOwn(PARENT, name)) return Math.min(rawLookup(u, name), PARENT[name]!(u));
  } else if (name === 'uncached_prompt_tokens') {
    const v = u.prompt_tokens - lookup(u, 'cached_prompt_tokens');
    return v > 0 ? v : 0;
  }
  return rawLookup(u, name);
}

function rawLookup(u: CostUsage, name: string): number {
  const raw = u.raw;
  if (raw !== undefined) {
    const top = Object.hasOwn(raw, name) ? fieldValue(raw[name]) : undefined;
    if (top !== undefined) return top;
  }
  if (Object.hasOwn(FALLBACK, name)) return FALLBACK[name]!(u);
  if (raw === undefined) return 0;
  for (const k in raw) {
    if (!Object.hasOwn(raw, k)) continue;
    const o = raw[k];
    if (typeof o !== 'object' || o === null || Array.isArray(o)) continue;
    const nested = Object.hasOwn(o, name) ? fieldValue((o as Record<string, unknown>)[name]) : undefined;
    if (nested !== undefined) return nested;
  }
  return 0;
}

function div(x: number, y: number): number {
  return y === 0 ? 0 : x / y;
}

function evalPoint(n: Ast, u: CostUsage): number {
  switch (n.t) {
    case 'num': return n.v;
    case 'id': return lookup(u, n.name);
    case 'neg': return -evalPoint(n.a, u);
    case 'bin': {
      const a = evalPoint(n.a, u);
      const b = evalPoint(n.b, u);
      return n.op === '+' ? a + b : n.op === '-' ? a - b : n.op === '*' ? a * b : div(a, b);
    }
    case 'call': {
      const a = evalPoint(n.args[0]!, u);
      if (n.fn === 'ceil') return Math.ceil(a);
      if (n.fn === 'floor') return Math.floor(a);
      const b = evalPoint(n.args[1]!, u);
      return n.fn === 'max' ? Math.max(a, b) : Math.min(a, b);
    }
  }
}

type Interval = readonly [lo: number, hi: number];

function evalInterval(n: Ast, u: CostUsage): Interval {
  switch (n.t) {
    case 'num': return [n.v, n.v];
    case 'id': return domain(n.name, u);
    case 'neg': {
      const [lo, hi] = evalInterval(n.a, u);
      return [-hi, -lo];
    }
    case 'bin': {
      const [alo, ahi] = evalInterval(n.a, u);
      const [blo, bhi] = evalInterval(n.b, u);
      if (n.op === '+') return [alo + blo, ahi + bhi];
      if (n.op === '-') return [alo - bhi, ahi - blo];
      if (n.op === '*') {
        const p = [alo * blo, alo * bhi, ahi * blo, ahi * bhi];
        return [Math.min(...p), Math.max(...p)];
      }
      // A divisor range without 0 (a constant such as 0.5 included): plain interval division.
      if (blo > 0 || bhi < 0) {
        const q = [alo / blo, alo / bhi, ahi / blo, ahi / bhi];
        return [Math.min(...q), Math.max(...q)];
      }
      // Otherwise divisors are 0 (quotient 0), an end of the range, or no nearer 0 than the smallest magnitude the
      // divisor can take when not 0: 1 for token counts, less where constants enter (`min(completion_tokens,
      // max(x, 0.5))` can be 0.5 inside a range [0, C]); 1 where that is not known (the documented assumption).
      const ds: number[] = [];
      const cands: number[] = [];
      if (blo <= 0 && bhi >= 0) cands.push(0);
      for (const d of [blo, bhi]) if (d !== 0) ds.push(d);
      const m = nonZeroMagnitude(n.b, u).m;
      const s = m > 0 && m < 1 ? m : 1;
      for (const d of [s, -s]) if (d >= blo && d <= bhi) ds.push(d);
      for (const d of ds) cands.push(alo / d, ahi / d);
      return cands.length === 0 ? [0, 0] : [Math.min(...cands), Math.max(...cands)];
    }
    case 'call': {
      const [alo, ahi] = evalInterval(n.args[0]!, u);
      if (n.fn === 'ceil') return [Math.ceil(alo), Math.ceil(ahi)];
      if (n.fn === 'floor') return [Math.floor(alo), Math.floor(ahi)];
      const [blo, bhi] = evalInterval(n.args[1]!, u);
      return n.fn === 'max' ? [Math.max(alo, blo), Math.max(ahi, bhi)] : [Math.min(alo, blo), Math.min(ahi, bhi)];
    }
  }
}

/**
 * What a divisor's value can be near 0: `m`, a lower bound of |v| for every value v ≠ 0 it can take (Infinity
 * when it is always 0; 0 when unknown), and `int`, whether every value is an integer (token counts are).
 */
function nonZeroMagnitude(n: Ast, u: CostUsage): { int: boolean; m: number } {
  switch (n.t) {
    case 'num': return { int: Number.isInteger(n.v), m: n.v === 0 ? Infinity : Math.abs(n.v) };
    case 'id': return { int: true, m: 1 };
    case 'neg': return nonZeroMagnitude(n.a, u);
    case 'call': {
      if (n.fn === 'ceil' || n.fn === 'floor') return { int: true, m: 1 };
      const a = nonZeroMagnitude(n.args[0]!, u);
      const b = nonZeroMagnitude(n.args[1]!, u);
      return { int: a.int && b.int, m: Math.min(a.m, b.m) };
    }
    case 'bin': {
      const a = nonZeroMagnitude(n.a, u);
      if (n.op === '/') {
        // A quotient is never nearer 0 than its dividend's magnitude over the divisor's largest.
        if (a.m === Infinity) return { int: false, m: Infinity };
        const [blo, bhi] = evalInterval(n.b, u);
        const most = Math.max(Math.abs(blo), Math.abs(bhi));
        return { int: false, m: most === 0 ? Infinity : a.m / most };
      }
      const b = nonZeroMagnitude(n.b, u);
      if (n.op === '*') return { int: a.int && b.int, m: a.m === Infinity || b.m === Infinity ? Infinity : a.m * b.m };
      if (a.m === Infinity) return b;
      if (b.m === Infinity) return a;
      if (a.int && b.int) return { int: true, m: 1 };
      // An integer plus a constant c is never nearer 0 than c is to an integer.
      const c = n.a.t === 'num' && b.int ? n.a.v : n.b.t === 'num' && a.int ? n.b.v : undefined;
      if (c !== undefined) return { int: false, m: Math.abs(c - Math.round(c)) };
      return { int: false, m: 0 };
    }
  }
}

/** The range a name can take when only the estimate is known (the file comment lists the domains). */
function domain(name: string, u: CostUsage): Interval {
  const p = u.prompt_tokens;
  switch (name) {
    case 'prompt_tokens': return [p, p];
    case 'input_tokens':
    case 'cached_prompt_tokens':
    case 'cache_write_tokens':
    case 'uncached_prompt_tokens':
      return [0, Math.max(0, p)];
    case 'completion_tokens':
    case 'output_tokens':
    case 'reasoning_tokens':
      return [0, Math.max(0, u.completion_tokens)];
    case 'total_tokens': return [p, u.total_tokens];
    default: return [0, Math.max(0, u.total_tokens)];
  }
}

/** An expression as k + Σ coef·name + Σ a·(non-linear sub-expression), built once at compile time. */
interface Linear {
  readonly k: number;
  readonly coef: ReadonlyMap<string, number>;
  readonly opaque: readonly { readonly a: number; readonly node: Ast }[];
}

function isConst(l: Linear): boolean {
  return l.coef.size === 0 && l.opaque.length === 0;
}

function scale(l: Linear, f: number): Linear {
  const coef = new Map<string, number>();
  for (const [n, a] of l.coef) coef.set(n, a * f);
  return { k: l.k * f, coef, opaque: l.opaque.map((o) => ({ a: o.a * f, node: o.node })) };
}

function sum(x: Linear, y: Linear): Linear {
  const coef = new Map(x.coef);
  for (const [n, a] of y.coef) coef.set(n, (coef.get(n) ?? 0) + a);
  return { k: x.k + y.k, coef, opaque: [...x.opaque, ...y.opaque] };
}

function linear(n: Ast): Linear {
  const none = new Map<string, number>();
  switch (n.t) {
    case 'num': return { k: n.v, coef: none, opaque: [] };
    case 'id':
      // prompt − cached: never negative, as cached ≤ prompt.
      if (n.name === 'uncached_prompt_tokens') return { k: 0, coef: new Map([['prompt_tokens', 1], ['cached_prompt_tokens', -1]]), opaque: [] };
      return { k: 0, coef: new Map([[n.name, 1]]), opaque: [] };
    case 'neg': return scale(linear(n.a), -1);
    case 'bin': {
      const a = linear(n.a);
      const b = linear(n.b);
      if (n.op === '+') return sum(a, b);
      if (n.op === '-') return sum(a, scale(b, -1));
      if (n.op === '*') {
        if (isConst(a)) return scale(b, a.k);
        if (isConst(b)) return scale(a, b.k);
      } else if (isConst(b)) {
        return b.k === 0 ? { k: 0, coef: none, opaque: [] } : scale(a, 1 / b.k);
      }
      return { k: 0, coef: none, opaque: [{ a: 1, node: n }] };
    }
    case 'call': return { k: 0, coef: none, opaque: [{ a: 1, node: n }] };
  }
}

/**
 * Largest value of the expression over the estimate's domains: the linear part maximised exactly (cached and
 * cache-write tokens share the prompt; reasoning tokens are part of the completion), each non-linear part
 * bounded by its interval.
 */
function linearMax(l: Linear, u: CostUsage): number {
  const p = Math.max(0, u.prompt_tokens);
  const c = Math.max(0, u.completion_tokens);
  const t = Math.max(0, u.total_tokens);
  const co = (name: string): number => l.coef.get(name) ?? 0;
  let hi = l.k;
  hi += co('prompt_tokens') * u.prompt_tokens;
  hi += p * Math.max(0, co('cached_prompt_tokens'), co('cache_write_tokens'));
  hi += Math.max(0, co('input_tokens') * p);
  hi += c * Math.max(0, co('completion_tokens'), co('completion_tokens') + co('reasoning_tokens'));
  hi += Math.max(0, co('output_tokens') * c);
  hi += Math.max(co('total_tokens') * u.prompt_tokens, co('total_tokens') * u.total_tokens);
  for (const [name, a] of l.coef) if (!SHAPED.has(name)) hi += Math.max(0, a * t);
  for (const o of l.opaque) {
    const [lo, up] = evalInterval(o.node, u);
    hi += Math.max(o.a * lo, o.a * up);
  }
  return hi;
}

/** Names with a domain of their own in linearMax. */
const SHAPED: ReadonlySet<string> = new Set([
  'prompt_tokens', 'cached_prompt_tokens', 'cache_write_tokens', 'input_tokens', 'completion_tokens', 'reasoning_tokens',
  'output_tokens', 'total_tokens',
]);

/** Fold constant sub-trees once at compile time. */
function fold(n: Ast): Ast {
  switch (n.t) {
    case 'num':
    case 'id':
      return n;
    case 'neg': {
      const a = fold(n.a);
      return a.t === 'num' ? { t: 'num', v: -a.v } : { t: 'neg', a };
    }
    case 'bin': {
      const a = fold(n.a);
      const b = fold(n.b);
      const node: Ast = { t: 'bin', op: n.op, a, b };
      return a.t === 'num' && b.t === 'num' ? { t: 'num', v: evalPoint(node, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }) } : node;
    }
    case 'call': {
      const args = n.args.map(fold);
      const node: Ast = { t: 'call', fn: n.fn, args };
      return args.every((x) => x.t === 'num') ? { t: 'num', v: evalPoint(node, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }) } : node;
    }
  }
}

class Parser {
  private pos = 0;
  private operators = 0;
  private nesting = 0;
  readonly idents = new Set<string>();

  constructor(private readonly src: string) {}

  fail(msg: string, at = this.pos): never {
    throw new Error(`cost_expr "${this.src}": ${msg} at position ${at}`);
  }

  private skipSpace(): void {
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos);
      if (c !== 32 && c !== 9 && c !== 10 && c !== 13) break;
      this.pos++;
    }
  }

  private peek(): string {
    this.skipSpace();
    return this.pos < this.src.length ? this.src[this.pos]! : '';
  }

  parseAll(): Ast {
    if (this.peek() === '') this.fail('empty expression');
    const e = this.expr();
    if (this.peek() !== '') this.fail(`unexpected "${this.src[this.pos]}"`);
    return e;
  }

  private expr(): Ast {
    let left = this.term();
    for (let op = this.peek(); op === '+' || op === '-'; op = this.peek()) {
      this.operator();
      left = { t: 'bin', op, a: left, b: this.term() };
    }
    return left;
  }

  private term(): Ast {
    let left = this.unary();
    for (let op = this.peek(); op === '*' || op === '/'; op = this.peek()) {
      this.operator();
      left = { t: 'bin', op, a: left, b: this.unary() };
    }
    return left;
  }

  private operator(): void {
    if (++this.operators > MAX_OPERATORS) this.fail(`more than ${MAX_OPERATORS} operators`);
    this.pos++;
  }

  /** Every descent (unary operator, parenthesis, function call) passes here once per level. */
  private unary(): Ast {
    if (++this.nesting > MAX_NESTING) this.fail(`nested more than ${MAX_NESTING} levels deep`);
    const c = this.peek();
    let n: Ast;
    if (c === '-') {
      this.pos++;
      n = { t: 'neg', a: this.unary() };
    } else if (c === '+') {
      this.pos++;
      n = this.unary();
    } else {
      n = this.primary();
    }
    this.nesting--;
    return n;
  }

  private primary(): Ast {
    const c = this.peek();
    const start = this.pos;
    if (c === '') this.fail('unexpected end of expression');
    if (c === '(') {
      this.pos++;
      const e = this.expr();
      if (this.peek() !== ')') this.fail('expected ")"');
      this.pos++;
      return e;
    }
    const code = c.charCodeAt(0);
    if ((code >= 48 && code <= 57) || c === '.') return this.number();
    if ((code >= 65 && code <= 90) || (code >= 97 && code <= 122) || c === '_') {
      let end = this.pos;
      while (end < this.src.length) {
        const k = this.src.charCodeAt(end);
        if (!((k >= 48 && k <= 57) || (k >= 65 && k <= 90) || (k >= 97 && k <= 122) || k === 95)) break;
        end++;
      }
      const name = this.src.slice(this.pos, end);
      this.pos = end;
      const isFunc = Object.hasOwn(ARITY, name);
      if (this.peek() === '(') {
        if (!isFunc) this.fail(`unknown function "${name}"`, start);
        return this.call(name as keyof typeof ARITY, start);
      }
      if (isFunc) this.fail(`function "${name}" needs arguments`, start);
      if (name.length > MAX_IDENT) this.fail(`identifier longer than ${MAX_IDENT} characters`, start);
      // `.` after a name would be member access in the languages this resembles: not a usage field.
      if (this.src[this.pos] === '.') this.fail(`unexpected "."`);
      this.idents.add(name);
      return { t: 'id', name };
    }
    return this.fail(`unexpected "${c}"`);
  }

  private call(name: keyof typeof ARITY, start: number): Ast {
    this.pos++; // '('
    const args: Ast[] = [this.expr()];
    while (this.peek() === ',') {
      this.pos++;
      args.push(this.expr());
    }
    if (this.peek() !== ')') this.fail('expected ")" or ","');
    this.pos++;
    if (args.length !== ARITY[name]) this.fail(`${name}() takes ${ARITY[name]} argument(s), got ${args.length}`, start);
    return { t: 'call', fn: name, args };
  }

  private number(): Ast {
    const start = this.pos;
    let digits = 0;
    while (this.pos < this.src.length && this.isDigit(this.src.charCodeAt(this.pos))) { this.pos++; digits++; }
    if (this.src[this.pos] === '.') {
      this.pos++;
      while (this.pos < this.src.length && this.isDigit(this.src.charCodeAt(this.pos))) { this.pos++; digits++; }
    }
    if (digits === 0) this.fail('malformed number', start);
    const next = this.src.charCodeAt(this.pos);
    if (next === 46 || (next >= 65 && next <= 90) || (next >= 97 && next <= 122) || next === 95) this.fail('malformed number', start);
    return { t: 'num', v: Number(this.src.slice(start, this.pos)) };
  }

  private isDigit(c: number): boolean {
    return c >= 48 && c <= 57;
  }
}

/** Largest charge a single request can produce: keeps counters inside safe-integer arithmetic. */
const MAX_COST = 2 ** 40;

/** Rounded to a millionth first, so floating-point noise in `0.1 * x` cannot tip a whole token either way. */
function clamp(v: number): number {
  return v > 0 ? (v >= MAX_COST ? MAX_COST : Math.ceil(Math.round(v * 1e6) / 1e6)) : 0;
}

/**
 * Compile a cost expression. Throws Error naming the position on bad syntax or unknown functions.
 * The compiled function returns a non-negative integer: the value rounded up, negatives and NaN as 0; an
 * upper bound when the usage has no `raw` object (see the file comment).
 */
export function compileCostExpr(src: string): (u: CostUsage) => number {
  const ast = fold(new Parser(src).parseAll());
  // A divisor written as (or folding to) the constant 0 makes its quotient 0 for every usage: a slip, never meant.
  if (dividesByZero(ast)) throw new Error(`cost_expr "${src}": divides by the constant 0 (a quotient by 0 counts as 0)`);
  if (ast.t === 'num') {
    const v = clamp(ast.v);
    if (v === 0) throw new Error(`cost_expr "${src}": is the constant ${ast.v}, so every charge would be 0`);
    return () => v;
  }
  const lin = linear(ast);
  // Nor may an expression that no usage can make positive (`0 - prompt_tokens`): its upper bound over the usage
  // domains (the file comment) is 0 or less at every probed prompt and completion size.
  if (NEVER_POSITIVE_PROBES.every((u) => linearMax(lin, u) <= 0)) {
    throw new Error(`cost_expr "${src}": is 0 or less for every usage, so every charge would be 0`);
  }
  return (u) => clamp(u.raw !== undefined ? evalPoint(ast, u) : linearMax(lin, u));
}

/** Prompt and completion each 0, 1, 10, … 10^9: the refusal must not catch `1000 - total_tokens`. */
const NEVER_POSITIVE_PROBES: readonly CostUsage[] = (() => {
  const counts = [0, 1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e9];
  return counts.flatMap((p) => counts.map((c) => ({ prompt_tokens: p, completion_tokens: c, total_tokens: p + c })));
})();

function dividesByZero(n: Ast): boolean {
  switch (n.t) {
    case 'num':
    case 'id':
      return false;
    case 'neg': return dividesByZero(n.a);
    case 'bin': return (n.op === '/' && n.b.t === 'num' && n.b.v === 0) || dividesByZero(n.a) || dividesByZero(n.b);
    case 'call': return n.args.some(dividesByZero);
  }
}

/** The usage field names an expression reads (for `sluice validate` warnings). Throws like compileCostExpr. */
export function costExprIdentifiers(src: string): string[] {
  const p = new Parser(src);
  p.parseAll();
  return [...p.idents];
}
