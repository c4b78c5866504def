// Readonly shapes of a validated, defaulted and frozen configuration snapshot. Field names follow the
// APISIX standalone file (routes, consumers, plugins) and the Higress ai-token-ratelimit plugin, so users
// of the seed documents can bring their definitions. Every other layer imports config types from here.

export type LimitStrategy = 'total_tokens' | 'prompt_tokens' | 'completion_tokens' | 'expression';
export type WindowType = 'fixed' | 'sliding';
export type HeaderStyle = 'apisix' | 'ietf';
export type Provider = 'openai' | 'deepseek' | 'openai-compatible';
export type FallbackReason = 'rate_limiting' | 'http_429' | 'http_5xx' | 'instance_health';

export interface ListenConfig {
  readonly host: string;
  readonly port: number;
}

export interface LimitsConfig {
  /** Largest accepted request body; larger bodies get 413. Default 8 MiB. */
  readonly max_body_bytes: number;
  /** Upstream TCP connect timeout, ms. Default 2000. */
  readonly upstream_connect_timeout_ms: number;
  /** Time to the upstream's response headers, ms. Default 60000. */
  readonly upstream_first_byte_timeout_ms: number;
  /** Longest silence between two body chunks of a streaming response, ms. Default 60000. */
  readonly upstream_idle_timeout_ms: number;
}

export interface TokensConfig {
  /** Completion tokens reserved at admission when a request sets no max_tokens. Default 256. */
  readonly default_max_tokens: number;
  /** Bodies at least this large are tokenized on a worker thread instead of inline. Default 4096. */
  readonly offload_bytes: number;
}

export interface InstanceConfig {
  readonly name: string;
  readonly provider: Provider;
  readonly weight: number;
  readonly priority: number;
  /** Headers set on every upstream request (credentials). Never logged. */
  readonly auth_header: Readonly<Record<string, string>>;
  /** Query parameters added to every upstream request (auth.query). */
  readonly auth_query: Readonly<Record<string, string>>;
  readonly model: string | undefined;
  /** Full URL of the upstream endpoint, e.g. http://127.0.0.1:9100/v1/chat/completions.
   *  When absent, the provider's public endpoint for the request path is used. */
  readonly endpoint: string | undefined;
}

export interface AiProxyConfig {
  readonly instances: readonly InstanceConfig[];
  readonly fallback_strategy: readonly FallbackReason[];
  /** true for ai-proxy (single instance), false for ai-proxy-multi. */
  readonly single: boolean;
}

export interface KeyAuthRouteConfig {
  /** Header carrying the key. Default 'apikey'; `Authorization: Bearer <key>` is accepted too. */
  readonly header: string;
  /** Query parameter carrying the key. Default 'apikey'. */
  readonly query: string;
  /** Remove the credential before proxying (always true for upstream auth headers). */
  readonly hide_credentials: boolean;
}

/** A quota definition, resolved from either plugin. */
export interface QuotaSpec {
  readonly limit: number;
  readonly window_seconds: number;
  readonly limit_strategy: LimitStrategy;
  /** Parsed cost expression source when limit_strategy is 'expression'. */
  readonly cost_expr: string | undefined;
}

export interface InstanceQuotaConfig {
  readonly name: string;
  readonly limit: number;
  readonly time_window: number;
  readonly limit_strategy: LimitStrategy;
  readonly cost_expr: string | undefined;
}

export interface RuleConfig {
  /** Template over request variables, e.g. '${http_x_subscription_id}' or '${consumer_name}-${remote_addr}'. */
  readonly key: string;
  /** A positive integer, or a template such as '${http_x_custom_count ?? 500}'. */
  readonly count: number | string;
  /** Seconds, or a template. */
  readonly time_window: number | string;
  readonly header_prefix: string | undefined;
}

export type RedisPolicy = 'local' | 'redis' | 'redis-cluster' | 'redis-sentinel';

/** A Redis connection, normalised from either plugin's fields. Two routes naming the same target share one client. */
export interface RedisTargetConfig {
  readonly mode: 'standalone' | 'cluster' | 'sentinel';
  readonly host: string;
  readonly port: number;
  readonly username: string | undefined;
  readonly password: string | undefined;
  readonly database: number;
  /** Command timeout, ms. */
  readonly timeout_ms: number;
  readonly connect_timeout_ms: number;
  /** cluster: seed nodes as {host, port}. */
  readonly cluster_nodes: readonly { readonly host: string; readonly port: number }[];
  readonly cluster_name: string | undefined;
  /** sentinel */
  readonly sentinels: readonly { readonly host: string; readonly port: number }[];
  readonly master_name: string | undefined;
  readonly role: 'master' | 'slave' | undefined;
  readonly sentinel_username: string | undefined;
  readonly sentinel_password: string | undefined;
  /** Identity used to share clients: mode + endpoints + username + database (never the password). */
  readonly id: string;
}

export interface AiRateLimitingConfig {
  /** Top-level quota, applied to every instance not listed in `instances` (absent when not configured). */
  readonly limit: number | undefined;
  readonly time_window: number | undefined;
  readonly limit_strategy: LimitStrategy;
  readonly cost_expr: string | undefined;
  readonly instances: readonly InstanceQuotaConfig[];
  readonly rules: readonly RuleConfig[];
  readonly rejected_code: number;
  readonly rejected_msg: string | undefined;
  readonly show_limit_quota_header: boolean;
  readonly header_style: HeaderStyle;
  readonly window_type: WindowType;
  readonly policy: RedisPolicy;
  readonly redis: RedisTargetConfig | undefined;
  readonly allow_degradation: boolean;
}

export type TokenUnit = 'second' | 'minute' | 'hour' | 'day';

export interface TokenLimitKey {
  /** Exact value, 'regexp:<re>', '*', or for IPs an address or CIDR range. */
  readonly key: string;
  readonly tokens: number;
  readonly window_seconds: number;
}

export type LimitByKind = 'header' | 'param' | 'consumer' | 'cookie' | 'ip';

export interface TokenRuleItem {
  readonly by: LimitByKind;
  /** true for limit_by_per_*: each distinct value gets its own counter. */
  readonly per: boolean;
  /** Header, param or cookie name; for ip: 'from-remote-addr' or 'from-header-<name>'. */
  readonly name: string;
  readonly limit_keys: readonly TokenLimitKey[];
}

export interface AiTokenRatelimitConfig {
  readonly rule_name: string;
  readonly global_threshold: { readonly tokens: number; readonly window_seconds: number } | undefined;
  readonly rule_items: readonly TokenRuleItem[];
  readonly rejected_code: number;
  readonly rejected_msg: string;
  readonly show_limit_quota_header: boolean;
  readonly window_type: WindowType;
  readonly redis: RedisTargetConfig | undefined;
  readonly allow_degradation: boolean;
}

export interface RoutePlugins {
  readonly 'ai-proxy-multi': AiProxyConfig | undefined;
  readonly 'key-auth': KeyAuthRouteConfig | undefined;
  readonly 'ai-rate-limiting': AiRateLimitingConfig | undefined;
  readonly 'ai-token-ratelimit': AiTokenRatelimitConfig | undefined;
}

export interface RouteConfig {
  readonly id: string;
  /** Exact path, or a prefix ending in '*'. */
  readonly uri: string;
  /** Upper-case methods; empty means every method. */
  readonly methods: readonly string[];
  readonly plugins: RoutePlugins;
}

export interface ConsumerConfig {
  readonly username: string;
  /** key-auth credential. Never logged, never a metric label. */
  readonly key: string | undefined;
  readonly ai_rate_limiting: AiRateLimitingConfig | undefined;
}

export interface AdminConfig {
  readonly host: string;
  readonly port: number;
}

export interface RedisBatchingConfig {
  /** Interval between flushes of pre-aggregated deltas, ms. 0: synchronous (every admission asks Redis). */
  readonly flush_interval_ms: number;
  /** A flush starts early when this many keys are dirty. */
  readonly max_batch_keys: number;
  /** Most deltas kept while Redis is unreachable; beyond it the oldest windows are dropped and counted. */
  readonly max_pending_keys: number;
}

export interface SluiceConfig {
  readonly listen: ListenConfig;
  readonly admin: AdminConfig;
  /** Worker threads in the piscina pool. */
  readonly workers: number;
  readonly limits: LimitsConfig;
  readonly tokens: TokensConfig;
  /** Peers whose X-Forwarded-For is believed (exact addresses or CIDR ranges). */
  readonly trusted_proxies: readonly string[];
  readonly redis_batching: RedisBatchingConfig;
  readonly routes: readonly RouteConfig[];
  readonly consumers: readonly ConsumerConfig[];
}
