// Status lines are built once per code and cached: uWS takes the whole "200 OK" text.
import { STATUS_CODES } from 'node:http';

const cache = new Map<number, string>();

export function statusLine(status: number): string {
  let line = cache.get(status);
  if (line === undefined) {
    line = `${status} ${STATUS_CODES[status] ?? 'Unknown'}`;
    cache.set(status, line);
  }
  return line;
}
