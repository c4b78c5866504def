// The HTTP/1.x guard's limits at their defaults, for tests that run a Guard directly.
import type { GuardLimits } from '../../src/frontend/http1-guard.ts';

export const GUARD_LIMITS: GuardLimits = {
  max_header_fields: 48,
  max_header_line_bytes: 8192,
  max_header_bytes: 32768,
  client_header_timeout_ms: 10_000,
  client_idle_timeout_ms: 60_000,
  client_send_timeout_ms: 10_000,
  max_client_connections: 10_000,
  listen_backlog: 4096,
};
