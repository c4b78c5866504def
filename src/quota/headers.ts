// Quota response headers.
//
// Remaining = limit - consumed, where consumed counts only tokens of finished requests in the window
// (reservations of running requests are left out), clamped at 0 and rounded down. A non-streaming answer is
// settled before its headers, so its own tokens are in it; a stream's headers leave first, so its are not. It never
// increases within a window.
// On a rejection every spent quota (consumed + reserved >= limit) shows Remaining 0.
// Reset = seconds until the window ends, rounded up (at least 1 on a rejection).
//
// apisix style: X-AI-RateLimit-{Limit,Remaining,Reset}-<instance>, X-AI-<n|prefix>-RateLimit-*,
//               X-AI-<rule_name>-RateLimit-*, X-AI-RateLimit-* for a route-wide quota.
// ietf style:   RateLimit-Policy: "<label>";q=<limit>;w=<window s>, ...   RateLimit: "<label>";r=<remaining>;t=<reset>, ...
//               (draft-ietf-httpapi-ratelimit-headers-09 structured fields, one list member per quota)
// standard_headers (APISIX): X-RateLimit-{Limit,Remaining,Reset}-{Tokens|PromptTokens|CompletionTokens},
//               Reset in whole seconds; quotas sharing a name show the one with the least remaining.
// Both styles also get the OpenAI trio for the most constraining quota shown:
//               x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens ("12s", "7m27s"),
//               unless standard headers already wrote X-RateLimit-*-Tokens.
// A rejection by an ai-token-ratelimit quota also carries Higress's X-TokenRateLimit-Reset: <seconds> (1 when the
// quota is spent only by the reservations of running requests, as Retry-After).
// Retry-After is the caller's.

import type { CounterView } from './types.ts';
import type { PlannedQuota, Usage } from './plan.ts';

/** Lower-case: how the pipeline's header lists hold names (an upstream's copy is dropped before ours is added). */
export const USAGE_HEADER = 'x-sluice-usage';

/**
 * X-Sluice-Usage, a structured-field dictionary (RFC 8941) of integers: the usage a non-streaming answer was
 * settled with, `prompt=…, completion=…, total=…, cached_prompt=…, cache_write=…, reasoning=…`. The last three
 * are parts of prompt / completion (never added on top). A usage Sluice counted itself (the upstream gave
 * none, or none believable) has no kinds and ends with the bare key `estimated` (true).
 */
export function usageHeaderValue(u: Usage): string {
  const head = `prompt=${u.prompt_tokens}, completion=${u.completion_tokens}, total=${u.total_tokens}`;
  if (u.raw === undefined) return `${head}, estimated`;
  return `${head}, cached_prompt=${u.cached_prompt_tokens ?? 0}, cache_write=${u.cache_write_tokens ?? 0}, reasoning=${u.reasoning_tokens ?? 0}`;
}

export interface QuotaHeaderEntry {
  readonly q: PlannedQuota;
  readonly view: CounterView;
  /** Whether this quota denied the request; derived from the view when absent. */
  readonly spent?: boolean;
}

/** The decimal text of a limit, remembered: a limit repeats answer after answer, and one past 2^31 (a heap number)
 *  costs a slow conversion each time. */
let limitNum = Number.NaN;
let limitStr = '';
function limitText(n: number): string {
  if (n !== limitNum) {
    limitNum = n;
    limitStr = String(n);
  }
  return limitStr;
}

/** Whole seconds as OpenAI writes its reset headers (Go's duration format): `44s`, `7m27s`, `1h0m0s`. */
export function goDuration(seconds: number): string {
  if (seconds < 60) return `${seconds}s`;
  const s = seconds % 60;
  const m = Math.floor(seconds / 60) % 60;
  const h = Math.floor(seconds / 3600);
  return h > 0 ? `${h}h${m}m${s}s` : `${m}m${s}s`;
}

function isSpent(e: QuotaHeaderEntry): boolean {
  return e.spent ?? e.view.consumed + e.view.reserved >= e.view.limit;
}

function remainingOf(e: QuotaHeaderEntry, rejected: boolean): number {
  if (rejected && isSpent(e)) return 0;
  const r = Math.floor(e.view.limit - e.view.consumed);
  return r > 0 ? r : 0;
}

function resetOf(view: CounterView, rejected: boolean): number {
  const s = Math.ceil(view.resetMs / 1000);
  return rejected && s < 1 ? 1 : s > 0 ? s : 0;
}

/** True when an earlier-or-better entry claims the same header set (e.g. a route and a consumer quota on one instance). */
function shadowed(entries: readonly QuotaHeaderEntry[], i: number, remaining: number, rejected: boolean): boolean {
  const key = entries[i]!.q.headerNames.key;
  for (let j = 0; j < entries.length; j++) {
    if (j === i) continue;
    const o = entries[j]!;
    if (!o.q.showHeader || o.q.headerNames.key !== key) continue;
    const r = remainingOf(o, rejected);
    if (r < remaining || (r === remaining && j < i)) return true;
  }
  return false;
}

/** Push the headers of every shown quota onto `out`. */
export function quotaHeaders(
  entries: readonly QuotaHeaderEntry[],
  opts: { readonly rejected: boolean; readonly retryAfterS?: number },
  out: [string, string][],
): void {
  const rejected = opts.rejected;
  let best = -1;
  let bestRemaining = 0;
  let bestReset = 0;
  let policy = '';
  let state = '';
  let trioTaken = false;
  let rejectReset: [string, number] | undefined;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const q = e.q;
    // Higress sends this header on every rejection, whatever show_limit_quota_header says.
    if (rejected && q.rejectResetHeader !== undefined && isSpent(e)) {
      // Spent only by reservations of running requests: room comes back as they settle (Retry-After says 1 too).
      const reset = e.view.consumed < e.view.limit ? 1 : resetOf(e.view, true);
      if (rejectReset === undefined || reset > rejectReset[1]) rejectReset = [q.rejectResetHeader, reset];
    }
    if (!q.showHeader) continue;
    const remaining = remainingOf(e, rejected);
    if (shadowed(entries, i, remaining, rejected)) continue;
    const reset = resetOf(e.view, rejected);
    const names = q.headerNames;
    if (q.headerStyle === 'apisix') {
      out.push([names.limit, limitText(e.view.limit)], [names.remaining, String(remaining)], [names.reset, String(reset)]);
      if (names.key === 'x-ratelimit-limit-tokens') trioTaken = true;
    } else {
      const sep = policy === '' ? '' : ', ';
      policy += `${sep}${names.ietfLabel};q=${e.view.limit};w=${Math.round(q.counter.windowMs / 1000)}`;
      state += `${sep}${names.ietfLabel};r=${remaining};t=${reset}`;
    }
    if (best < 0 || remaining < bestRemaining) {
      best = i;
      bestRemaining = remaining;
      bestReset = reset;
    }
  }
  if (policy !== '') out.push(['RateLimit-Policy', policy], ['RateLimit', state]);
  // Higress's reset header says when to retry: the caller's Retry-After when it knows it (a sliding window frees room
  // after its fixed window's end, and the store's wait is the one that knows when), else the window's reset.
  if (rejectReset !== undefined) out.push([rejectReset[0], String(opts.retryAfterS ?? rejectReset[1])]);
  if (best >= 0 && !trioTaken) {
    out.push(
      ['x-ratelimit-limit-tokens', limitText(entries[best]!.view.limit)],
      ['x-ratelimit-remaining-tokens', String(bestRemaining)],
      ['x-ratelimit-reset-tokens', goDuration(bestReset)],
    );
  }
}
