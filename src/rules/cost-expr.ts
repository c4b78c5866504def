// Cost expressions for `limit_strategy: expression`, e.g. `prompt_tokens + 4 * completion_tokens`.
// A recursive-descent parser builds an expression tree once; nothing is ever handed to eval or Function.
//
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '/') unary)*
//   unary   := ('-' | '+') unary | primary
//   primary := number | ident | func '(' expr (',' expr)* ')' | '(' expr ')'
//
// Identifiers name fields of the upstream's usage object, as in APISIX: a top-level numeric field first
// (`input_tokens`, `cache_creation_input_tokens` on an Anthropic usage), then a numeric field of a nested
// object (`cached_tokens` under `prompt_tokens_details`); a name the usage does not carry is 0.
// `prompt_tokens`, `completion_tokens` and `total_tokens` fall back to Sluice's normalised counts, and
// `input_tokens` / `output_tokens` to the first two. Functions: max(a,b), min(a,b), ceil(x), floor(x).
// Division by zero yields 0 so a usage with no completion tokens cannot produce an infinite charge.
//
// Without the raw usage (the reservation at admission, or a stream that reported none) the charge is an
// upper bound: prompt_tokens / input_tokens take the counted prompt, completion_tokens / output_tokens
// anything from 0 to the reserved completion, total_tokens from the prompt to the reserved total, and
// every other name anything from 0 to the reserved total; interval arithmetic gives the largest value the
// expression can then take (divisors are assumed to be 0 or at least 1 in magnitude, as token counts are).

export type RawUsage = Readonly<Record<string, unknown>>;

export interface CostUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
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

/** Names Sluice computes itself when the upstream's usage lacks them. */
const NORMALISED: Readonly<Record<string, (u: CostUsage) => number>> = {
  prompt_tokens: (u) => u.prompt_tokens,
  completion_tokens: (u) => u.completion_tokens,
  total_tokens: (u) => u.total_tokens,
  input_tokens: (u) => u.prompt_tokens,
  output_tokens: (u) => u.completion_tokens,
};

/**
 * Usage fields some provider reports (OpenAI, Azure, DeepSeek, Anthropic, Gemini's OpenAI endpoint).
 * `sluice validate` warns about other names: they would always count 0 unless an upstream sends them.
 */
export const KNOWN_USAGE_FIELDS: ReadonlySet<string> = new Set([
  'prompt_tokens', 'completion_tokens', 'total_tokens', 'input_tokens', 'output_tokens',
  'cached_tokens', 'audio_tokens', 'text_tokens', 'image_tokens', 'reasoning_tokens',
  'accepted_prediction_tokens', 'rejected_prediction_tokens',
  'cache_creation_input_tokens', 'cache_read_input_tokens', 'ephemeral_5m_input_tokens', 'ephemeral_1h_input_tokens',
  'prompt_cache_hit_tokens', 'prompt_cache_miss_tokens', 'web_search_requests', 'thoughts_tokens',
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

/** A field of the usage: top level, then Sluice's normalised count, then the first nested object carrying it. */
function lookup(u: CostUsage, name: string): number {
  const raw = u.raw;
  if (raw !== undefined) {
    const top = Object.hasOwn(raw, name) ? fieldValue(raw[name]) : undefined;
    if (top !== undefined) return top;
  }
  if (Object.hasOwn(NORMALISED, name)) return NORMALISED[name]!(u);
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
    case 'id': {
      // The prompt is counted before the call; completion (and so total) counts are at most the reservation.
      if (n.name === 'prompt_tokens' || n.name === 'input_tokens') return [u.prompt_tokens, u.prompt_tokens];
      if (n.name === 'total_tokens') return [u.prompt_tokens, u.total_tokens];
      if (n.name === 'completion_tokens' || n.name === 'output_tokens') return [0, Math.max(0, u.completion_tokens)];
      return [0, Math.max(0, u.total_tokens)];
    }
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
      // Otherwise divisors are 0 (quotient 0) or at least 1 in magnitude.
      const ds: number[] = [];
      const cands: number[] = [];
      if (blo <= 0 && bhi >= 0) cands.push(0);
      for (const d of [blo, bhi, 1, -1]) if (d >= blo && d <= bhi && Math.abs(d) >= 1) ds.push(d);
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

function clamp(v: number): number {
  return v > 0 ? (v >= MAX_COST ? MAX_COST : Math.ceil(v)) : 0;
}

/**
 * Compile a cost expression. Throws Error naming the position on bad syntax or unknown functions.
 * The compiled function returns a non-negative integer: the value rounded up, negatives and NaN as 0; an
 * upper bound when the usage has no `raw` object (see the file comment).
 */
export function compileCostExpr(src: string): (u: CostUsage) => number {
  const ast = fold(new Parser(src).parseAll());
  if (ast.t === 'num') {
    const v = clamp(ast.v);
    return () => v;
  }
  return (u) => clamp(u.raw !== undefined ? evalPoint(ast, u) : evalInterval(ast, u)[1]);
}

/** The usage field names an expression reads (for `sluice validate` warnings). Throws like compileCostExpr. */
export function costExprIdentifiers(src: string): string[] {
  const p = new Parser(src);
  p.parseAll();
  return [...p.idents];
}
