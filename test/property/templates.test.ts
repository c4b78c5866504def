// Properties of templates (src/rules/template.ts), request variables (request-vars.ts) and cost expressions
// (cost-expr.ts): any source either compiles or fails with a position-bearing Error (never a RangeError or
// TypeError); compiled templates and expressions never throw on any request or usage; a charge is a
// non-negative integer within the cap; parsing pathological sources stays linear.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { compileCountTemplate, compileTemplate } from '../../src/rules/template.ts';
import { compileVar, cookieValue, queryParam, type RequestVars } from '../../src/rules/request-vars.ts';
import { compileCostExpr, type CostUsage } from '../../src/rules/cost-expr.ts';
import { check, describeThrown, within } from './fc-setup.ts';

const MAX_COST = 2 ** 40;

/** Compiles, returning the function or the thrown Error; anything but a plain Error fails the property. */
function compile<T>(fn: () => T, what: string): T | Error {
  try {
    return fn();
  } catch (err) {
    assert.ok(err instanceof Error && err.constructor === Error, `${what} threw ${describeThrown(err)}`);
    assert.ok(err.message.length > 0, `${what}: empty error message`);
    return err;
  }
}

function noThrow<T>(fn: () => T, what: string): T {
  try {
    return fn();
  } catch (err) {
    assert.fail(`${what} threw ${describeThrown(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Request variables

const VAR_NAMES = ['http_x_user', 'http_x_tier', 'http_authorization', 'http_host', 'arg_apikey', 'arg_a', 'cookie_session', 'cookie_a_b',
  'remote_addr', 'consumer_name', 'route_id', 'uri', 'host'] as const;

const headerValue = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('', ' ', 'a=1; session="s v"; a_b=2', '%41', '1e3', '500', '0', '-3', '99999999999999999'));
const requestVars: fc.Arbitrary<RequestVars> = fc.record({
  headers: fc.dictionary(fc.oneof(fc.constantFrom('x-user', 'x-tier', 'authorization', 'host', 'cookie', 'x-custom-count', 'constructor', '__proto__', 'tostring'), fc.string({ maxLength: 6 })), headerValue, { maxKeys: 6 }),
  query: fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('apikey=k&a=1', 'a=%E0%A4%A&apikey=%zz', 'a&a=&a=2', '+a+=+b+', 'apikey')),
  remoteAddr: fc.constantFrom('127.0.0.1', '::1', ''),
  consumer: fc.option(fc.string({ maxLength: 8 }), { nil: undefined }),
  routeId: fc.string({ maxLength: 8 }),
  uri: fc.string({ maxLength: 12 }),
});

/** Sources biased towards template syntax. */
const templateSource = fc.string({
  unit: fc.oneof(
    fc.string({ minLength: 1, maxLength: 1 }),
    fc.constantFrom('$', '${', '}', '??', ' ', '-', ...VAR_NAMES, 'http_', 'arg_', 'cookie_', 'unknown', '500', '0', '日'),
  ),
  maxLength: 12,
});

test('templates: any key template compiles or fails with an Error; a compiled one never throws on any request', () => {
  check(fc.property(templateSource, fc.array(requestVars, { minLength: 1, maxLength: 3 }), (src, varsList) => {
    const t = compile(() => compileTemplate(src), `compileTemplate(${JSON.stringify(src)})`);
    if (t instanceof Error) {
      assert.ok(t.message.includes('template'), t.message);
      return;
    }
    for (const vars of varsList) {
      const v = noThrow(() => t(vars), `template ${JSON.stringify(src)}`);
      assert.ok(v === undefined || typeof v === 'string', `template gave ${typeof v}`);
    }
  }), 500);
});

test('templates: a key template yields its literal text with each variable substituted, or undefined when one is missing', () => {
  const literal = fc.string({ maxLength: 5 }).map((s) => s.replace(/\$/g, '#'));
  const part = fc.oneof(
    literal.map((text) => ({ kind: 'lit' as const, text })),
    fc.record({ kind: fc.constant('var' as const), header: fc.constantFrom('a', 'b', 'c'), fallback: fc.option(fc.stringMatching(/^[a-z0-9]{1,4}$/), { nil: undefined }) }),
  );
  check(fc.property(fc.array(part, { minLength: 1, maxLength: 5 }), fc.dictionary(fc.constantFrom('x-a', 'x-b', 'x-c'), fc.string({ maxLength: 4 })), (parts, headers) => {
    const src = parts.map((p) => (p.kind === 'lit' ? p.text : `\${http_x_${p.header}${p.fallback === undefined ? '' : ' ?? ' + p.fallback}}`)).join('');
    if (src === '') return;
    const t = compileTemplate(src);
    let expected: string | undefined = '';
    for (const p of parts) {
      if (p.kind === 'lit') { expected += p.text; continue; }
      const h = headers[`x-${p.header}`];
      const v = h !== undefined && h !== '' ? h : p.fallback;
      if (v === undefined) { expected = undefined; break; }
      expected += v;
    }
    assert.equal(t({ headers, query: '', remoteAddr: '127.0.0.1', consumer: undefined, routeId: 'r', uri: '/' }), expected);
  }), 400);
});

test('templates: any count template compiles or fails with an Error; a compiled one yields a positive safe integer or undefined', () => {
  const src = fc.oneof(templateSource, fc.double(), fc.integer(), fc.constantFrom('${http_x_custom_count ?? 500}', '${http_x_custom_count}', ' 12 ', '${arg_a ?? 0}', '1e3'));
  check(fc.property(src, fc.array(requestVars, { minLength: 1, maxLength: 3 }), (s, varsList) => {
    const t = compile(() => compileCountTemplate(s), `compileCountTemplate(${JSON.stringify(s)})`);
    if (t instanceof Error) return;
    for (const vars of varsList) {
      const v = noThrow(() => t(vars), `count template ${JSON.stringify(s)}`);
      assert.ok(v === undefined || (Number.isSafeInteger(v) && v > 0), `count template ${JSON.stringify(s)} gave ${v}`);
    }
  }), 500);
});

test('request vars: variable names compile or fail with an Error; queries and cookies never throw and round-trip', () => {
  check(fc.property(fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom(...VAR_NAMES)), requestVars, (name, vars) => {
    const g = compile(() => compileVar(name), `compileVar(${JSON.stringify(name)})`);
    if (g instanceof Error) return;
    const v = noThrow(() => g(vars), `var ${name}`);
    assert.ok(v === undefined || (typeof v === 'string' && v !== ''), `var ${name} gave ${JSON.stringify(v)}`);
  }), 300);

  const paramName = fc.string({ minLength: 1, maxLength: 6 });
  check(fc.property(fc.array(fc.tuple(paramName, fc.string({ maxLength: 6 })), { maxLength: 5 }), paramName, fc.string({ maxLength: 30 }), (pairs, name, junk) => {
    noThrow(() => queryParam(junk, name), 'queryParam');
    noThrow(() => cookieValue(junk, name), 'cookieValue');
    const q = pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
    const first = pairs.find(([k]) => k === name);
    const want = first === undefined || first[1] === '' ? undefined : first[1];
    assert.equal(queryParam(q, name), want, `query ${q}`);
  }), 300);

  const cookieName = fc.stringMatching(/^[A-Za-z0-9_-]{1,6}$/);
  const cookieVal = fc.stringMatching(/^[!#-+\--:<-[\]-~]{0,6}$/);
  check(fc.property(fc.uniqueArray(fc.tuple(cookieName, cookieVal), { selector: ([k]) => k, maxLength: 5 }), cookieName, fc.constantFrom('; ', ';', ';  '), (pairs, name, sep) => {
    const header = pairs.map(([k, v]) => `${k}=${v}`).join(sep);
    const hit = pairs.find(([k]) => k === name);
    let want = hit?.[1];
    if (want !== undefined && want.length >= 2 && want.startsWith('"') && want.endsWith('"')) want = want.slice(1, -1);
    assert.equal(cookieValue(header, name), want === '' ? undefined : want, `cookie ${header}`);
  }), 300);
});

// ---------------------------------------------------------------------------------------------------------
// Cost expressions

const IDENTS = ['prompt_tokens', 'completion_tokens', 'total_tokens', 'input_tokens', 'output_tokens', 'cached_tokens', 'reasoning_tokens', 'cache_read_input_tokens', 'unknown_field'] as const;

/** Sources biased towards expression syntax: most parse, many do not. */
const exprSource = fc.string({
  unit: fc.oneof(
    fc.string({ minLength: 1, maxLength: 1 }),
    fc.constantFrom(' ', '+', '-', '*', '/', '(', ')', ',', '.', '1', '0', '4', '0.5', '1e3', 'max', 'min', 'ceil', 'floor', 'max(', ...IDENTS),
  ),
  maxLength: 16,
});

/** Well-formed expressions over every construct. */
const expr: fc.Arbitrary<string> = fc.letrec<{ e: string }>((tie) => ({
  e: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(...IDENTS),
    fc.oneof(fc.nat({ max: 1000 }).map(String), fc.constantFrom('0.5', '.25', '1000000', '0', '3.0')),
    fc.tuple(tie('e'), fc.constantFrom('+', '-', '*', '/'), tie('e')).map(([a, op, b]) => `(${a} ${op} ${b})`),
    tie('e').map((a) => `-${a}`),
    fc.tuple(fc.constantFrom('max', 'min'), tie('e'), tie('e')).map(([f, a, b]) => `${f}(${a}, ${b})`),
    fc.tuple(fc.constantFrom('ceil', 'floor'), tie('e')).map(([f, a]) => `${f}(${a})`),
  ),
})).e;

const hostileNumber = fc.oneof(fc.nat({ max: 1_000_000 }), fc.double(), fc.constantFrom(1e300, -1e300, NaN, Infinity, -Infinity, -0, 0.5, 2 ** 53 + 2));
const hostileUsage: fc.Arbitrary<CostUsage> = fc.record({
  prompt_tokens: hostileNumber,
  completion_tokens: hostileNumber,
  total_tokens: hostileNumber,
  raw: fc.option(fc.dictionary(fc.constantFrom(...IDENTS, 'prompt_tokens_details', 'x'), fc.oneof(hostileNumber, fc.jsonValue({ maxDepth: 1 }), fc.dictionary(fc.constantFrom(...IDENTS), hostileNumber))), { nil: undefined }),
}).map(({ raw, ...counts }) => (raw === undefined ? counts : { ...counts, raw }));

function assertCharge(v: unknown, what: string): void {
  assert.ok(typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= MAX_COST, `${what} charged ${String(v)}`);
}

test('cost_expr: any source compiles or fails with an Error naming a position', () => {
  check(fc.property(exprSource, (src) => {
    const f = compile(() => compileCostExpr(src), `compileCostExpr(${JSON.stringify(src)})`);
    if (f instanceof Error) assert.match(f.message, /position \d+|every charge would be 0|divides by the constant 0/);
  }), 800);
});

test('cost_expr: a compiled expression never throws and charges an integer in [0, 2^40] for any usage', () => {
  check(fc.property(fc.oneof(expr, exprSource), fc.array(hostileUsage, { minLength: 1, maxLength: 4 }), (src, usages) => {
    const f = compile(() => compileCostExpr(src), `compileCostExpr(${JSON.stringify(src)})`);
    if (f instanceof Error) return;
    for (const u of usages) assertCharge(noThrow(() => f(u), `cost_expr ${src}`), `cost_expr ${src} on ${fc.stringify(u)}`);
  }), 500);
});

/**
 * Well-formed expressions whose divisors are 0 or at least 1 in magnitude, the documented assumption of the
 * bound (token counts, non-zero constants, and what ceil/floor/max/min make of them).
 */
const boundedExpr: fc.Arbitrary<string> = fc.letrec<{ e: string; d: string }>((tie) => ({
  e: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constantFrom(...IDENTS),
    fc.oneof(fc.nat({ max: 1000 }).map(String), fc.constantFrom('0.5', '.25', '3.0')),
    fc.tuple(tie('e'), fc.constantFrom('+', '-', '*'), tie('e')).map(([a, op, b]) => `(${a} ${op} ${b})`),
    fc.tuple(tie('e'), tie('d')).map(([a, d]) => `(${a} / ${d})`),
    tie('e').map((a) => `-${a}`),
    fc.tuple(fc.constantFrom('max', 'min'), tie('e'), tie('e')).map(([f, a, b]) => `${f}(${a}, ${b})`),
    fc.tuple(fc.constantFrom('ceil', 'floor'), tie('e')).map(([f, a]) => `${f}(${a})`),
  ),
  d: fc.oneof(
    { depthSize: 'small' },
    fc.constantFrom(...IDENTS),
    fc.constantFrom('1', '4', '1000', '0.5', '-0.25', '0'),
    fc.tuple(fc.constantFrom(...IDENTS), fc.integer({ min: 1, max: 10 })).map(([i, k]) => `(${i} + ${k})`),
    fc.tuple(fc.constantFrom('ceil', 'floor'), tie('e')).map(([f, a]) => `${f}(${a})`),
    fc.tuple(fc.constantFrom('max', 'min'), tie('d'), tie('d')).map(([f, a, b]) => `${f}(${a}, ${b})`),
  ),
})).e;

test('cost_expr: the charge without the raw usage (admission, usage-less streams) is an upper bound of the charge with it', () => {
  // The estimate: the counted prompt and the reserved completion. The actual usage as upstreams send it:
  // integers, the same prompt, a completion within the reservation, total >= prompt + completion within the
  // reserved total, other fields (top level or nested) within the total.
  const frac = fc.double({ min: 0, max: 1, noNaN: true });
  const usage = fc.tuple(fc.nat({ max: 100_000 }), fc.nat({ max: 100_000 }), frac, frac, fc.dictionary(fc.constantFrom('cached_tokens', 'reasoning_tokens', 'cache_read_input_tokens'), frac), fc.boolean())
    .map(([p, reserved, f1, f2, fractions, nested]) => {
      const c = Math.floor(f1 * reserved);
      const total = p + c + Math.floor(f2 * (reserved - c));
      const fields: Record<string, number> = {};
      for (const [k, f] of Object.entries(fractions)) fields[k] = Math.floor(f * total);
      const counts = { prompt_tokens: p, completion_tokens: c, total_tokens: total };
      const raw = nested ? { ...counts, prompt_tokens_details: fields } : { ...counts, ...fields };
      return { estimate: { prompt_tokens: p, completion_tokens: reserved, total_tokens: p + reserved }, actual: { ...counts, raw } };
    });
  check(fc.property(boundedExpr, usage, (src, { estimate, actual }) => {
    let f: ReturnType<typeof compileCostExpr>;
    try {
      f = compileCostExpr(src);
    } catch (err) {
      // Refused at compile time (a constant 0 divisor, or a bound ≤ 0 everywhere probed): nothing to bound.
      if (err instanceof Error && /every charge would be 0|divides by the constant 0/.test(err.message)) return;
      throw err;
    }
    assert.ok(f(estimate) >= f(actual), `${src}: bound ${f(estimate)} < actual ${f(actual)} for ${JSON.stringify(actual.raw)}`);
  }), 500, [
    // A constant divisor below 1 once made the bound 0.
    ['(total_tokens / 0.5)', { estimate: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }, actual: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, raw: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } } }],
    // A divisor that is 0.5 inside its range [0, 2], neither an end nor a count: the bound once divided by 1.
    ['(prompt_tokens / min(completion_tokens, max(unknown_field, 0.5)))', { estimate: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }, actual: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, raw: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } } }],
  ]);
});

// ---------------------------------------------------------------------------------------------------------
// Pathological sources: linear time, and a clean outcome (compiled and usable, or a position-bearing Error)

const N = 100_000;
const USAGE: CostUsage = { prompt_tokens: 10, completion_tokens: 20, total_tokens: 30 };

test('cost_expr: long and deeply nested sources finish in seconds and fail cleanly or evaluate', () => {
  const sources: [string, string][] = [
    ['nested parentheses', '('.repeat(N) + 'prompt_tokens' + ')'.repeat(N)],
    ['unclosed parentheses', '('.repeat(N)],
    ['unary minus chain', '-'.repeat(N) + 'prompt_tokens'],
    ['unary plus chain', '+'.repeat(N) + 'prompt_tokens'],
    ['long sum', Array(N / 10).fill('prompt_tokens').join('+')],
    ['long product of constants', Array(N / 2).fill('1').join('*') + '*total_tokens'],
    ['3000-term sum', Array(3000).fill('completion_tokens').join(' + ')],
    ['nested max', 'max('.repeat(N / 10) + 'total_tokens' + ', 1)'.repeat(N / 10)],
    ['long number', '9'.repeat(N)],
    ['long identifier', 'a'.repeat(N)],
    ['whitespace', ' '.repeat(N) + 'total_tokens' + ' '.repeat(N)],
    ['operators only', '+-*/'.repeat(N / 4)],
  ];
  for (const [name, src] of sources) {
    within(5, `compileCostExpr(${name})`, () => {
      const f = compile(() => compileCostExpr(src), name);
      if (f instanceof Error) {
        assert.match(f.message, /position \d+/, `${name}: ${f.message.slice(0, 200)}`);
        return;
      }
      assertCharge(noThrow(() => f(USAGE), `${name} (estimate)`), name);
      assertCharge(noThrow(() => f({ ...USAGE, raw: { ...USAGE } }), `${name} (actual)`), name);
    });
  }
});

test('templates: long pathological sources finish in seconds and fail cleanly or evaluate', () => {
  const vars: RequestVars = { headers: { 'x-a': 'v', cookie: 'a=1;'.repeat(N / 4) }, query: 'a=1&'.repeat(N / 4), remoteAddr: '::1', consumer: 'c', routeId: 'r', uri: '/' };
  const sources: [string, string][] = [
    ['dollars', '$'.repeat(N)],
    ['unclosed braces', '${'.repeat(N)],
    ['many variables', '${http_x_a}'.repeat(N / 10)],
    ['bare variables', '$http_x_a-'.repeat(N / 10)],
    ['long default', '${http_x_b ?? ' + 'd'.repeat(N) + '}'],
    ['nested-looking', '${http_x_a ?? ${'.repeat(N / 10) + '}'],
    ['long name', '${http_' + 'x'.repeat(N) + '}'],
    ['query and cookie scans', '${arg_zz}${cookie_zz}'],
  ];
  for (const [name, src] of sources) {
    within(5, `compileTemplate(${name})`, () => {
      const t = compile(() => compileTemplate(src), name);
      if (t instanceof Error) return;
      noThrow(() => t(vars), name);
    });
    within(5, `compileCountTemplate(${name})`, () => {
      const t = compile(() => compileCountTemplate(src), name);
      if (t instanceof Error) return;
      noThrow(() => t(vars), name);
    });
  }
  within(5, 'queryParam over 100k segments', () => queryParam('%41=1&'.repeat(N / 6) + 'x=1', 'x'));
  within(5, 'cookieValue over 100k segments', () => cookieValue(' ;'.repeat(N / 2) + 'x=1', 'x'));
});
