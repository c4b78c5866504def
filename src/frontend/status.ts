// Status lines are built once per code and cached: uWS takes the whole "200 OK" text.
import { STATUS_CODES } from 'node:http';

const cache = new Map<number, string>();
/** Codes upstreams use beyond Node's table (Anthropic's 529 overloaded_error); others get their class's name. */
const EXTRA: Readonly<Record<number, string>> = { 529: 'Overloaded' };
const CLASS = ['Informational', 'Success', 'Redirection', 'Client Error', 'Server Error'];

export function statusLine(status: number): string {
  let line = cache.get(status);
  if (line === undefined) {
    // Statuses are 100-599 (the upstream client refuses others): the cache holds at most 500 lines.
    line = `${status} ${STATUS_CODES[status] ?? EXTRA[status] ?? CLASS[Math.floor(status / 100) - 1] ?? 'Unknown'}`;
    cache.set(status, line);
  }
  return line;
}
