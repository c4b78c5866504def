// Config builders for rule tests: the shapes of src/config/types.ts as the validator produces them.
import type { AiRateLimitingConfig } from '../../src/config/types.ts';

/** An ai-rate-limiting block with the validator's defaults, overridden by `over`. */
export function arl(over: Partial<AiRateLimitingConfig>): AiRateLimitingConfig {
  return {
    limit: undefined, time_window: undefined, limit_strategy: 'total_tokens', cost_expr: undefined,
    instances: [], rules: [], rejected_code: 429, rejected_msg: undefined, show_limit_quota_header: true,
    header_style: 'apisix', standard_headers: false, on_missing_key: 'reject', missing_key_code: 400, window_type: 'fixed', policy: 'local', redis: undefined, allow_degradation: false,
    ...over,
  };
}
