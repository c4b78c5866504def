// Raw HTTP/1.x over node:net for hostile-input tests: send exact bytes, read back what the server wrote and
// whether it closed the connection. Responses are split by their Content-Length (the gateway never sends
// chunked error answers), so pipelined answers can be checked in order.
import { connect, type Socket } from 'node:net';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Parsed JSON body, or undefined. */
  json: any;
}

export interface RawResult {
  /** Every byte received, latin1. */
  raw: string;
  responses: RawResponse[];
  /** The server closed (or reset) the connection before `waitMs` ran out. */
  closed: boolean;
}

/** Parses consecutive responses; stops at the first incomplete one. `headRequests` marks HEAD answers (no body). */
export function parseResponses(raw: string, headRequests = 0): RawResponse[] {
  const out: RawResponse[] = [];
  let at = 0;
  while (at < raw.length) {
    const end = raw.indexOf('\r\n\r\n', at);
    if (end < 0) break;
    const lines = raw.slice(at, end).split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!)?.[1]);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    const len = out.length < headRequests ? 0 : Number(headers['content-length'] ?? 0);
    if (raw.length < end + 4 + len) break;
    const body = raw.slice(end + 4, end + 4 + len);
    let json: unknown;
    try { json = JSON.parse(body); } catch { json = undefined; }
    out.push({ status, headers, body, json });
    at = end + 4 + len;
  }
  return out;
}

export interface ExchangeOptions {
  /** Stop waiting once this many complete responses arrived (the connection is then left open). */
  responses?: number;
  /** Upper bound on the wait, ms. */
  waitMs?: number;
  /** Called after connect, to send more bytes over time. */
  feed?: (s: Socket) => void;
  headRequests?: number;
}

/** Sends `data`, then waits until the server closes, `responses` answers arrived, or `waitMs` passes. */
export function exchange(port: number, data: string | Buffer, opts: ExchangeOptions = {}): Promise<RawResult> {
  const waitMs = opts.waitMs ?? 10_000;
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let raw = '';
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ raw, responses: parseResponses(raw, opts.headRequests), closed });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    s.on('data', (d) => {
      raw += d.toString('latin1');
      if (opts.responses !== undefined && parseResponses(raw, opts.headRequests).length >= opts.responses) finish(false);
    });
    s.on('close', () => finish(true));
    s.on('error', () => finish(true));
    s.write(data);
    opts.feed?.(s);
  });
}
