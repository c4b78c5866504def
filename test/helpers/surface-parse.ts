// One surface's parser as the unit tests call it: a body (an object, or raw text for bad JSON) parsed with the
// surface's options, `ok` asserting it parsed and `bad` asserting the failure code and the `param` at fault.
import assert from 'node:assert/strict';
import type { CallFailure, ParseOptions, ParsedCall, SurfaceSpec } from '../../src/providers/types.ts';

export interface SurfaceParser {
  parse(body: unknown, opts?: Partial<ParseOptions>): ParsedCall | CallFailure;
  ok(body: unknown, opts?: Partial<ParseOptions>): ParsedCall;
  bad(body: unknown, param: string | undefined, code?: string): void;
}

export function surfaceParser(spec: SurfaceSpec, base: ParseOptions): SurfaceParser {
  const parse = (body: unknown, opts: Partial<ParseOptions> = {}): ParsedCall | CallFailure => {
    const raw = typeof body === 'string' ? body : JSON.stringify(body);
    return spec.parse(Buffer.from(raw), { ...base, ...opts });
  };
  return {
    parse,
    ok(body, opts = {}) {
      const r = parse(body, opts);
      assert.ok(r.ok, `expected ok, got ${JSON.stringify(r)}`);
      return r;
    },
    bad(body, param, code = 'SLC_BAD_REQUEST') {
      const r = parse(body);
      assert.equal(r.ok, false, `expected a failure for ${JSON.stringify(body).slice(0, 80)}`);
      assert.equal((r as CallFailure).code, code);
      assert.equal((r as CallFailure).param, param);
    },
  };
}
