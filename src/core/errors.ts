// One catalogue of every error Sluice answers with. Codes are stable: tests and clients match on `code`,
// never on message text. Each entry fixes the HTTP status and the OpenAI-style `type`.

export interface ErrorSpec {
  readonly status: number;
  readonly type: string;
  readonly message: string;
}

export const ERRORS = {
  SLC_BAD_JSON: { status: 400, type: 'invalid_request_error', message: 'request body is not valid JSON' },
  SLC_BAD_REQUEST: { status: 400, type: 'invalid_request_error', message: 'invalid request' },
  SLC_UNAUTHORIZED: { status: 401, type: 'authentication_error', message: 'missing or invalid API key' },
  SLC_NOT_FOUND: { status: 404, type: 'invalid_request_error', message: 'no route matches this path' },
  SLC_METHOD_NOT_ALLOWED: { status: 405, type: 'invalid_request_error', message: 'method not allowed on this route' },
  SLC_BODY_TOO_LARGE: { status: 413, type: 'invalid_request_error', message: 'request body exceeds the limit' },
  SLC_REQUEST_TIMEOUT: { status: 408, type: 'invalid_request_error', message: 'the request body did not arrive in time' },
  SLC_HEADERS_TOO_LARGE: { status: 431, type: 'invalid_request_error', message: 'request header fields too large' },
  SLC_UNSUPPORTED_ENCODING: { status: 415, type: 'invalid_request_error', message: 'request bodies must not be content-encoded' },
  SLC_HTTP_VERSION_NOT_SUPPORTED: { status: 505, type: 'invalid_request_error', message: 'only HTTP/1.0 and HTTP/1.1 are supported' },
  SLC_RATE_LIMITED: { status: 429, type: 'rate_limit_error', message: 'token quota exhausted' },
  SLC_RULE_KEY_MISSING: { status: 400, type: 'invalid_request_error', message: 'a request variable a rate-limit rule needs is missing' },
  SLC_UPSTREAM_ERROR: { status: 502, type: 'upstream_error', message: 'upstream failed' },
  SLC_UPSTREAM_UNAVAILABLE: { status: 503, type: 'upstream_error', message: 'no upstream instance available' },
  SLC_QUOTA_STORE_UNAVAILABLE: { status: 503, type: 'server_error', message: 'quota store unavailable' },
  SLC_OVERLOADED: { status: 503, type: 'server_error', message: 'gateway overloaded' },
  SLC_SHUTTING_DOWN: { status: 503, type: 'server_error', message: 'gateway is shutting down' },
  SLC_UPSTREAM_TIMEOUT: { status: 504, type: 'upstream_error', message: 'upstream timed out' },
  SLC_INTERNAL: { status: 500, type: 'server_error', message: 'internal gateway error' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly type: string;
  /** Extra response headers (Retry-After, rate-limit headers). */
  headers: Record<string, string> | undefined;
  /** The request field at fault (OpenAI's `param`, e.g. 'max_tokens'); null in the body when absent. */
  readonly param: string | undefined;
  /** The answer's body already in the client's API format (an error raised before the pipeline knew it). */
  body: string | undefined = undefined;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; status?: number; headers?: Record<string, string>; param?: string }) {
    const spec: ErrorSpec = ERRORS[code];
    super(message ?? spec.message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SluiceError';
    this.code = code;
    this.status = options?.status ?? spec.status;
    this.type = spec.type;
    this.headers = options?.headers;
    this.param = options?.param;
  }
}

export function isSluiceError(err: unknown): err is SluiceError {
  return err instanceof SluiceError;
}

/** OpenAI-compatible error body: {"error":{"message","type","code"}}. */
export function errorBody(message: string, type: string, code: string, param: string | null = null): string {
  return JSON.stringify({ error: { message, type, code, param } });
}

export function toErrorBody(err: SluiceError): string {
  return errorBody(err.message, err.type, err.code, err.param ?? null);
}
