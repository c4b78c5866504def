// The request and response the pipeline sees. The front end (uWS) adapts to these, so no other layer has to
// know uWS's rules (cork every async write, respond exactly once, never touch a response after abort).

import type { SluiceError } from '../core/errors.ts';
import type { ErrorFormat } from './error-response.ts';

export type HeaderList = [string, string][];

export interface ClientRequest {
  /** Upper-case method. */
  readonly method: string;
  readonly path: string;
  /** Raw query string without '?'. */
  readonly query: string;
  /** Lower-case header names; repeated headers joined with ', '. */
  readonly headers: Record<string, string>;
  readonly remoteAddr: string;
  /** Monotonic start time (performance.now()). */
  readonly startedAt: number;
}

export interface ClientResponse {
  /** The client went away; nothing more may be written. */
  readonly aborted: boolean;
  /** A response has been completed (sent or ended). */
  readonly done: boolean;
  /** Status line and headers have been written. */
  readonly started: boolean;
  /** Called once when the client disconnects before the response completed. */
  onAbort(cb: () => void): void;
  /** Whole response at once. Ignored after abort. */
  send(status: number, headers: HeaderList, body: string | Uint8Array): void;
  /** Begin a streamed response; `first`, when given, leaves with the head in one write. false: the client is
   *  slow, await drain() before writing more. */
  start(status: number, headers: HeaderList, first?: Uint8Array): boolean;
  /** Write a chunk of a streamed response. false: the client is slow, await drain() before writing more. */
  write(chunk: Uint8Array): boolean;
  /** Resolves when the client can take more data (or has gone). */
  drain(): Promise<void>;
  /** Bytes of a whole answer sent still wait in the transport for the client (it reads slowly). */
  unsent(): boolean;
  /** `cb` runs once, when the transport has handed the whole answer to the kernel or the client is gone. */
  onSent(cb: () => void): void;
  /** Finish a streamed response, optionally with a last chunk. */
  end(chunk?: Uint8Array): void;
  /** Drop the connection (a stream that cannot be completed properly). */
  destroy(): void;
}

/** What the front end hands each request to (the Gateway): decided from the head, before any body byte is read. */
export interface RequestSink {
  /** Synchronous route/method check before any body is read. */
  accept(req: ClientRequest): Accepted | SluiceError;
  /** The error-body format of the client API a path belongs to (undefined: OpenAI's). */
  errorFormat(path: string): ErrorFormat | undefined;
}

export interface Accepted {
  readonly maxBodyBytes: number;
  run(req: ClientRequest, res: ClientResponse, body: Buffer): void | Promise<void>;
}
