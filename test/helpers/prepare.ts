// The OpenAI chat and completions surfaces' preparation under the names the older tests use: a `kind` picks
// the surface (and its path), the rest is the reservation policy. Everything goes through providers/prepare.ts.
import { prepareCall } from '../../src/providers/prepare.ts';
import type { CallFailure, ParseOptions, PreparedCall } from '../../src/providers/types.ts';
import type { ReservationPolicy } from '../../src/tokens/limits.ts';

export type PreparedRequest = PreparedCall;
export type PrepareFailure = CallFailure;

export interface PrepareOptions extends ReservationPolicy {
  readonly kind: 'chat' | 'completion';
  readonly countPrompt?: boolean;
  readonly promptScale?: number;
}

export function parseOptions(opts: PrepareOptions): ParseOptions {
  const { kind, ...rest } = opts;
  return kind === 'chat'
    ? { ...rest, surface: 'openai-chat', path: '/v1/chat/completions', query: '' }
    : { ...rest, surface: 'openai-completions', path: '/v1/completions', query: '' };
}

export function prepareRequest(body: Uint8Array, opts: PrepareOptions): PreparedRequest | PrepareFailure {
  return prepareCall(body, parseOptions(opts));
}
