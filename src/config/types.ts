// Readonly shapes of a validated, defaulted and frozen configuration snapshot. Field names follow the
// APISIX standalone file (routes, consumers, plugins) and the Higress ai-token-ratelimit plugin, so users
// of the seed documents can bring their definitions. Every other layer imports config types from here.

/** What a quota counts: a token kind of the normalised usage (streaming/usage.ts), or a cost expression. */
export type LimitStrategy =
  | 'total_tokens' | 'prompt_tokens' | 'completion_tokens'
  | 'cached_prompt_tokens' | 'cache_write_tokens' | 'reasoning_tokens' | 'uncached_prompt_tokens'
  | 'expression';
export type WindowType = 'fixed' | 'sliding';
export type HeaderStyle = 'apisix' | 'ietf';
/** A config `provider` name as APISIX `ai-proxy` spells it; the registered ones are providers/registry.ts PROVIDER_NAMES. */
export type Provider = string;
export type FallbackReason = 'rate_limiting' | 'http_429' | 'http_5xx' | 'instance_health';

export interface ListenConfig {
  readonly host: string;
  readonly port: number;
  /** The node:net HTTP/1.x guard on the port, serving requests itself (src/frontend/http1-guard.ts); false: uWS
   *  alone. Default true; false only behind a proxy that already normalises HTTP/1.x. */
  readonly http1_guard: boolean;
}

/** The largest upstream answer Sluice buffers whole (a non-streamed answer); larger: 502. */
export const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

export interface LimitsConfig {
  /** Largest accepted request body; larger bodies get 413. Default 8 MiB. */
  readonly max_body_bytes: number;
  /** Upstream TCP connect timeout, ms. Default 2000. */
  readonly upstream_connect_timeout_ms: number;
  /** Time to the upstream's response headers, ms. Default 60000. */
  readonly upstream_first_byte_timeout_ms: number;
  /** Longest silence between two body chunks of a streaming response, ms. Default 60000. */
  readonly upstream_idle_timeout_ms: number;
  /** Longest time from a buffered (non-stream) answer's headers to its last byte, ms. Default 300000. */
  readonly upstream_body_timeout_ms: number;
  /**
   * Most quota counters (distinct quota keys) one store tracks in this process. Beyond it idle counters are
   * evicted (after their state is in Redis); a new key when none can be evicted gets 503 SLC_OVERLOADED.
   * Default 100000.
   */
  readonly max_quota_keys: number;
  /** Request-body bytes all requests together may hold in the front end; beyond it: 503 SLC_OVERLOADED. Default 64 MiB. */
  readonly max_inflight_body_bytes: number;
  /**
   * Bytes of buffered (non-streamed) upstream answers all requests together may hold while they arrive; past it the
   * answer being read is cut: 503 SLC_OVERLOADED, charged the prompt plus what arrived. At least 64 MiB (one answer
   * of the most Sluice buffers). Default 256 MiB.
   */
  readonly max_inflight_answer_bytes: number;
  /** Most header fields in a request; more: 431. Default 48 (uWS itself cannot parse 49 or more). */
  readonly max_header_fields: number;
  /** Longest request line or header line (name: value), bytes; longer: 431. Default 8192 (nginx's buffer size). */
  readonly max_header_line_bytes: number;
  /** Most bytes of request line and header lines together; more: 431. Default 32768 (nginx: 4 × 8 KiB). */
  readonly max_header_bytes: number;
  /** After an early answer (413, 503, 431), how much of the unread body is read and discarded before the
   *  connection is closed, so clients still sending can read the answer (nginx's lingering close). Default 64 MiB. */
  readonly max_drain_bytes: number;
  /** Longest silence between two chunks of a request body, ms; then 408 and close (nginx client_body_timeout). Default 60000. */
  readonly client_body_timeout_ms: number;
  /** With the HTTP/1.x guard: longest wait for a started request head to complete, ms; then 408 and close. Default 10000. */
  readonly client_header_timeout_ms: number;
  /** With the HTTP/1.x guard: a keep-alive connection quiet this long (ms) between requests is closed. Default 60000. */
  readonly client_idle_timeout_ms: number;
  /** Longest wait for a client to take more of an answer it stopped reading, ms; then the answer is cut (a stream is
   *  settled as a client abort, nginx send_timeout). Default 60000. */
  readonly client_send_timeout_ms: number;
  /** With the HTTP/1.x guard: most client connections a serving thread holds open (idle ones included); a connection
   *  accepted past it is closed at once (nginx worker_connections). Default 10000. */
  readonly max_client_connections: number;
  /** With the HTTP/1.x guard: connections the kernel may hold accepted but not yet taken by the gateway (listen(2)'s
   *  backlog, capped by net.core.somaxconn). Past it a new client's SYN is dropped and it retries after 1 s. Default 4096. */
  readonly listen_backlog: number;
}

export interface TokensConfig {
  /** Completion tokens reserved at admission when a request sets no max_tokens. Default 256. */
  readonly default_max_tokens: number;
  /** Bodies at least this large are tokenized on a worker thread instead of inline. Default 4096. */
  readonly offload_bytes: number;
  /** Size of the tokenizer pool (piscina) of each serving thread, started on its first offloaded task. Default 1.
   *  Read when the gateway starts (the pool is not rebuilt on reload). */
  readonly offload_threads: number;
  /** Most completion tokens one request reserves, all `n` choices together; also the per-choice cap of a
   *  model not in the known-model table. Default 32768. */
  readonly max_reservation: number;
  /** Largest single usage number believed from an upstream. Default max(16 × max_reservation, the largest
   *  known context window) — 1047576 with the defaults. */
  readonly max_usage: number;
  /** Limits of models beyond (or overriding) the built-in table; a name also matches its `-suffixed` variants. */
  readonly models: Readonly<Record<string, TokensModelConfig>>;
  /** Worker-thread time one task may spend tokenizing before the rest is estimated by its UTF-8 byte length
   *  (an upper bound), ms. Default 2000. Read when the gateway starts (the pool is not rebuilt on reload). */
  readonly count_budget_ms: number;
}

export interface TokensModelConfig {
  readonly max_output_tokens: number;
  readonly context_window: number;
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
  /** Client headers this instance may receive beyond (or instead of) the default allowlist; absent: the default. */
  readonly forward_headers?: ForwardHeadersConfig;
  /** `options` other than `model`, merged into the upstream body over the client's fields (APISIX: options win). */
  readonly body_options?: Readonly<Record<string, unknown>>;
  /** The plugin's `timeout`, `ssl_verify`, `keepalive*` (APISIX); absent: the defaults and limits.* timeouts. */
  readonly transport?: InstanceTransportConfig;
}

export interface InstanceTransportConfig {
  /** Upstream first-byte and idle timeout for this instance, ms (APISIX `timeout`); undefined: limits.*. */
  readonly timeout_ms: number | undefined;
  /** false: the upstream's TLS certificate is not verified. Default true. */
  readonly ssl_verify: boolean;
  /** false: a new connection per request. Default true. */
  readonly keepalive: boolean;
  /** How long an idle kept-alive connection stays open, ms. Default 60000 (APISIX). */
  readonly keepalive_timeout_ms: number;
}

export interface ForwardHeadersConfig {
  /** Lower-case header names; an entry ending in '*' is a prefix. */
  readonly headers: readonly string[];
  /** true: these replace the default allowlist; false: they extend it. */
  readonly replace: boolean;
}

export interface ShutdownConfig {
  /** On SIGTERM, how long in-flight requests may run before remaining streams are cut and settled, ms. Default 30000. */
  readonly drain_timeout_ms: number;
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
  /** A positive integer, or a template such as '${http_x_count ?? 10}' resolved per request. */
  readonly limit: number | string;
  /** Seconds, or a template. */
  readonly time_window: number | string;
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

/** ai-rate-limiting `model_limits[]`: a quota per upstream model (the instance's model after rewriting). */
export interface ModelLimitConfig {
  /** An exact model name, or a pattern with `*` (any run of characters); the first matching entry applies. */
  readonly model: string;
  /** A positive integer, or a template. Each matching model gets its own counter. */
  readonly limit: number | string;
  readonly time_window: number | string;
  readonly limit_strategy: LimitStrategy;
  readonly cost_expr: string | undefined;
}

export type RedisPolicy = 'local' | 'redis' | 'redis-cluster' | 'redis-sentinel';

/** A Redis connection, normalised from either plugin's fields. Routes naming the same target with the same client settings share one client (redisClientKey). */
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
  /** Top-level quota, applied to every instance not listed in `instances` (absent when not configured).
   *  A positive integer or a template resolved per request, like `instances[].limit`. */
  readonly limit: number | string | undefined;
  readonly time_window: number | string | undefined;
  readonly limit_strategy: LimitStrategy;
  readonly cost_expr: string | undefined;
  readonly instances: readonly InstanceQuotaConfig[];
  readonly rules: readonly RuleConfig[];
  /** Per-model quotas, applied per upstream attempt to the instance's model (absent or empty: none). */
  readonly model_limits?: readonly ModelLimitConfig[];
  readonly rejected_code: number;
  readonly rejected_msg: string | undefined;
  readonly show_limit_quota_header: boolean;
  readonly header_style: HeaderStyle;
  /** APISIX `standard_headers`: X-RateLimit-{Limit,Remaining,Reset}-{Tokens|PromptTokens|CompletionTokens}
   *  instead of the X-AI-RateLimit-* forms. Default false. */
  readonly standard_headers: boolean;
  /** A rule (or templated limit) needing a request variable the request lacks: 'reject' (default) answers
   *  `missing_key_code`; 'skip' serves the request without that quota. */
  readonly on_missing_key: 'reject' | 'skip';
  /** Status of the missing-variable answer. Default 400. */
  readonly missing_key_code: number;
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
  /** 'all' (current Higress): every matching rule item applies and any can reject; 'first': only the first
   *  matching item (Higress before PR #4011). Default 'all'. */
  readonly rule_match: 'all' | 'first';
  /** Sluice extension: what every counter of the rule charges. Absent: 'total_tokens' (Higress: input + output). */
  readonly limit_strategy?: LimitStrategy;
  readonly cost_expr?: string | undefined;
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
  /** The consumer's own ai-proxy / ai-proxy-multi: replaces the route's on every route the consumer is authenticated on. */
  readonly ai_proxy?: AiProxyConfig;
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
  /**
   * Lease of this process's reservations in Redis, ms: renewed by its flushes; when the process dies (or
   * cannot reach Redis) its reservations stop counting at most this long after its last write. Default 15000.
   */
  readonly reservation_lease_ms?: number;
}

export interface SluiceConfig {
  readonly listen: ListenConfig;
  readonly admin: AdminConfig;
  /** Serving threads (`workers: auto | N`, "auto" resolved to os.availableParallelism() at validation). 1: the
   *  main thread serves (no extra thread); N > 1: N threads each run a uWS App and a Gateway (src/threads/).
   *  Read at start-up only. */
  readonly workers: number;
  readonly limits: LimitsConfig;
  readonly tokens: TokensConfig;
  /** Peers whose X-Forwarded-For is believed (exact addresses or CIDR ranges). */
  readonly trusted_proxies: readonly string[];
  readonly redis_batching: RedisBatchingConfig;
  /** HMAC-SHA256 key for rule key values (API keys, user ids) in counter ids. Absent: a random key per
   *  process, which replicas sharing Redis cannot agree on. Never logged. */
  readonly key_hash_secret: string | undefined;
  readonly shutdown: ShutdownConfig;
  readonly routes: readonly RouteConfig[];
  readonly consumers: readonly ConsumerConfig[];
}

/** Longest quota window, in seconds (366 days): a longer one is a slip, and its counters would live for ages. */
export const MAX_TIME_WINDOW_S = 31_622_400;
