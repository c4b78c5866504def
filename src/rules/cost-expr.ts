// Cost expressions for `limit_strategy: expression`, e.g. `prompt_tokens + 4 * completion_tokens`.
// A recursive-descent parser builds a closure tree once; nothing is ever handed to eval or Function.
//
//   expr    := term (('+' | '-') term)*
//   term    := unary (('*' | '/') unary)*
//   unary   := ('-' | '+') unary | primary
//   primary := number | ident | func '(' expr (',' expr)* ')' | '(' expr ')'
//
// Identifiers: prompt_tokens, completion_tokens, total_tokens (input_tokens and output_tokens are accepted as
// the Anthropic-style aliases of the first two). Functions: max(a,b), min(a,b), ceil(x), floor(x).
// Division by zero yields 0 so a usage with no completion tokens cannot produce an infinite charge.

export interface CostUsage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
}

type Node = (u: CostUsage) => number;

const IDENTS: Readonly<Record<string, Node>> = {
  prompt_tokens: (u) => u.prompt_tokens,
  completion_tokens: (u) => u.completion_tokens,
  total_tokens: (u) => u.total_tokens,
  input_tokens: (u) => u.prompt_tokens,
  output_tokens: (u) => u.completion_tokens,
};

const FUNCS: Readonly<Record<string, { arity: number; build: (a: Node[]) => Node; fold: (x: number[]) => number }>> = {
  max: { arity: 2, build: ([a, b]) => (u) => Math.max(a!(u), b!(u)), fold: ([x, y]) => Math.max(x!, y!) },
  min: { arity: 2, build: ([a, b]) => (u) => Math.min(a!(u), b!(u)), fold: ([x, y]) => Math.min(x!, y!) },
  ceil: { arity: 1, build: ([a]) => (u) => Math.ceil(a!(u)), fold: ([x]) => Math.ceil(x!) },
  floor: { arity: 1, build: ([a]) => (u) => Math.floor(a!(u)), fold: ([x]) => Math.floor(x!) },
};

function div(x: number, y: number): number {
  return y === 0 ? 0 : x / y;
}

/** A compiled node remembers its constant value so constant sub-trees fold at compile time. */
interface Compiled {
  readonly fn: Node;
  readonly constant: number | undefined;
}

function constant(v: number): Compiled {
  return { fn: () => v, constant: v };
}

class Parser {
  private pos = 0;

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

  parseAll(): Compiled {
    if (this.peek() === '') this.fail('empty expression');
    const e = this.expr();
    if (this.peek() !== '') this.fail(`unexpected "${this.src[this.pos]}"`);
    return e;
  }

  private binary(left: Compiled, op: string, right: Compiled): Compiled {
    const a = left.fn;
    const b = right.fn;
    if (left.constant !== undefined && right.constant !== undefined) {
      const x = left.constant;
      const y = right.constant;
      return constant(op === '+' ? x + y : op === '-' ? x - y : op === '*' ? x * y : div(x, y));
    }
    switch (op) {
      case '+': return { fn: (u) => a(u) + b(u), constant: undefined };
      case '-': return { fn: (u) => a(u) - b(u), constant: undefined };
      case '*': return { fn: (u) => a(u) * b(u), constant: undefined };
      default: return { fn: (u) => div(a(u), b(u)), constant: undefined };
    }
  }

  private expr(): Compiled {
    let left = this.term();
    for (let op = this.peek(); op === '+' || op === '-'; op = this.peek()) {
      this.pos++;
      left = this.binary(left, op, this.term());
    }
    return left;
  }

  private term(): Compiled {
    let left = this.unary();
    for (let op = this.peek(); op === '*' || op === '/'; op = this.peek()) {
      this.pos++;
      left = this.binary(left, op, this.unary());
    }
    return left;
  }

  private unary(): Compiled {
    const c = this.peek();
    if (c === '-') {
      this.pos++;
      const inner = this.unary();
      if (inner.constant !== undefined) return constant(-inner.constant);
      const f = inner.fn;
      return { fn: (u) => -f(u), constant: undefined };
    }
    if (c === '+') {
      this.pos++;
      return this.unary();
    }
    return this.primary();
  }

  private primary(): Compiled {
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
      if (this.peek() === '(') {
        if (!Object.hasOwn(FUNCS, name)) this.fail(`unknown function "${name}"`, start);
        return this.call(name, start);
      }
      if (!Object.hasOwn(IDENTS, name)) this.fail(`unknown identifier "${name}"`, start);
      return { fn: IDENTS[name]!, constant: undefined };
    }
    return this.fail(`unexpected "${c}"`);
  }

  private call(name: string, start: number): Compiled {
    const spec = FUNCS[name]!;
    this.pos++; // '('
    const args: Compiled[] = [this.expr()];
    while (this.peek() === ',') {
      this.pos++;
      args.push(this.expr());
    }
    if (this.peek() !== ')') this.fail('expected ")" or ","');
    this.pos++;
    if (args.length !== spec.arity) this.fail(`${name}() takes ${spec.arity} argument(s), got ${args.length}`, start);
    if (args.every((a) => a.constant !== undefined)) return constant(spec.fold(args.map((a) => a.constant!)));
    return { fn: spec.build(args.map((a) => a.fn)), constant: undefined };
  }

  private number(): Compiled {
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
    return constant(Number(this.src.slice(start, this.pos)));
  }

  private isDigit(c: number): boolean {
    return c >= 48 && c <= 57;
  }
}

/** Largest charge a single request can produce: keeps counters inside safe-integer arithmetic. */
const MAX_COST = 2 ** 40;

/**
 * Compile a cost expression. Throws Error naming the position on bad syntax or unknown names.
 * The compiled function returns a non-negative integer: the value rounded up, negatives and NaN as 0.
 */
export function compileCostExpr(src: string): (u: CostUsage) => number {
  const { fn, constant: k } = new Parser(src).parseAll();
  const clamp = (v: number): number => (v > 0 ? (v >= MAX_COST ? MAX_COST : Math.ceil(v)) : 0);
  if (k !== undefined) {
    const v = clamp(k);
    return () => v;
  }
  return (u) => clamp(fn(u));
}
