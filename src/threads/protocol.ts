// Messages between the main thread (supervisor.ts) and the serving threads (serving.ts): plain objects sent by
// structured clone over each Worker's port, discriminated by `kind`. A request that expects an answer carries an
// `id` the answer repeats. Per-request work never crosses this port: quota admissions are decided on the shared
// ledger (src/quota/shared/) and only its delegated cases (near a limit, a new window, Redis) come here.
import type { SluiceConfig } from '../config/types.ts';
import type { LedgerDescriptor, LedgerReply, LedgerRequest } from '../quota/shared/protocol.ts';
import type { MetricsJson } from '../metrics/aggregate.ts';
import type { StoreMap } from './store-key.ts';

/**
 * Where a serving thread listens. With the HTTP/1.x guard, the first thread binds host:port and serves on it
 * itself; each other thread serves on its own descriptor of that socket (`shareFd`, the first thread's
 * `listening.fd`). Without it, each thread's uWS App binds host:port with SO_REUSEPORT.
 */
export interface ListenSpec {
  readonly host: string;
  readonly port: number;
  readonly guard: boolean;
  readonly shareFd?: number;
}

/** The serving thread's workerData. */
export interface ThreadInit {
  readonly index: number;
  readonly config: SluiceConfig;
  /** Config version (0 at start, +1 per reload): a snapshot's retirement is reported by it. */
  readonly version: number;
  /** The backend store of every quota plugin of the config. */
  readonly stores: StoreMap;
  readonly ledger: LedgerDescriptor;
  /** limits.max_inflight_body_bytes is one budget for the process: every thread's App draws from this cell. */
  readonly bodyBudget: SharedArrayBuffer;
  /** The shared cell of limits.max_inflight_answer_bytes (buffered upstream answers). */
  readonly answerBudget: SharedArrayBuffer;
}

/** Main → serving thread. */
export type ToThread =
  | { readonly kind: 'listen'; readonly id: number; readonly spec: ListenSpec }
  | { readonly kind: 'swap'; readonly id: number; readonly version: number; readonly config: SluiceConfig; readonly stores: StoreMap }
  | { readonly kind: 'metrics'; readonly id: number }
  | { readonly kind: 'stop-listening'; readonly id: number }
  /** Wait (at most graceMs) until no answer is still being written to a client (Listening.quiesce). */
  | { readonly kind: 'quiesce'; readonly id: number; readonly graceMs: number }
  /** Refuse new requests (503), wait up to drainMs for in-flight ones, cut the rest and wait for their settlement. */
  | { readonly kind: 'drain'; readonly id: number; readonly drainMs: number; readonly settleMs: number }
  /** Close the App, the tokenizer pool and the upstream client; the thread then ends. */
  | { readonly kind: 'close'; readonly id: number }
  | { readonly kind: 'ledger-reply'; readonly id: number; readonly reply: LedgerReply }
  /** Throw `message` as an uncaught error on the thread (SluiceHandle.threads.crash: the failure path, for tests). */
  | { readonly kind: 'crash'; readonly message: string }
  /** Block the thread's loop for `ms` (SluiceHandle.threads.stall: a busy or wedged thread, for tests). */
  | { readonly kind: 'stall'; readonly ms: number };

/** Serving thread → main. */
export type FromThread =
  /** The first snapshot is built: the thread can listen. */
  | { readonly kind: 'ready' }
  /** Start-up failed (the message says why); the thread ends. */
  | { readonly kind: 'failed'; readonly message: string }
  /** An uncaught error: the thread closed its App (a thread ending with a live uWS App aborts the process) and
   *  serves no more; the main thread ends the process. */
  | { readonly kind: 'crashed'; readonly message: string }
  /** `fd`: with the guard, the listening socket's descriptor (for ListenSpec.shareFd). */
  | { readonly kind: 'listening'; readonly id: number; readonly port: number; readonly fd?: number }
  /** `code`: the errno node:net reports for the address (ListenError). */
  | { readonly kind: 'listen-failed'; readonly id: number; readonly code: string; readonly message: string }
  | { readonly kind: 'swapped'; readonly id: number; readonly version: number }
  | { readonly kind: 'swap-failed'; readonly id: number; readonly version: number; readonly message: string }
  | { readonly kind: 'metrics-reply'; readonly id: number; readonly metrics: MetricsJson }
  | { readonly kind: 'stopped-listening'; readonly id: number }
  | { readonly kind: 'quiesced'; readonly id: number }
  /** `cut`: requests cut after drainMs; `left`: still unsettled when settleMs ran out. */
  | { readonly kind: 'drained'; readonly id: number; readonly cut: number; readonly left: number }
  | { readonly kind: 'closed'; readonly id: number }
  /** A snapshot of this version has no request left on this thread: the main thread may drop its stores' refs. */
  | { readonly kind: 'retired'; readonly version: number }
  | { readonly kind: 'ledger'; readonly id: number; readonly req: LedgerRequest };

/** Answers carry the id of their request. */
export type ThreadReply = Exclude<Extract<FromThread, { readonly id: number }>, { readonly kind: 'ledger' }>;
