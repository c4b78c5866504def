// What crosses the thread boundary, and how: one discriminated union each way, msgpackr-encoded into a
// Uint8Array that owns its ArrayBuffer so it can be transferred rather than copied by postMessage.
import { Packr } from 'msgpackr';
import { move } from 'piscina';
import type { TokenEncoding } from '../tokens/encoding.ts';
import type { InstanceConfig } from '../config/types.ts';
import type { CallFailure, DecodedBody, ParseOptions, PreparedCall } from '../providers/types.ts';

/**
 * budgetMs: worker time the task may spend counting before the rest is bounded by its UTF-8 bytes. A prepare
 * task carries its surface, path and query in `opts`: the worker asks the provider registry for the parser.
 */
export type WorkerTask =
  | { kind: 'prepare'; body: Uint8Array; opts: ParseOptions; budgetMs: number }
  | { kind: 'count-text'; text: string; enc: TokenEncoding; budgetMs: number }
  | { kind: 'decode'; instance: InstanceConfig; call: PreparedCall; body: Uint8Array; maxUsage: number };

/** exact: false when the budget ran out and the count is an upper bound. */
export type WorkerResult =
  | { kind: 'prepare'; result: PreparedCall | CallFailure }
  | { kind: 'count-text'; tokens: number; exact: boolean }
  | { kind: 'decode'; decoded: DecodedBody; raw: Readonly<Record<string, unknown>> | undefined }
  | { kind: 'error'; message: string };

export type TaskKind = WorkerTask['kind'];

// Records without shared structures: each message carries its own record definitions, so the two threads'
// Packr instances never have to agree on state.
const packr = new Packr({ useRecords: true });

/** Packs a message into a fresh buffer: pack() returns a view of msgpackr's reused scratch buffer. */
export function encodeMessage(msg: WorkerTask | WorkerResult): Uint8Array {
  const packed = packr.pack(msg);
  const owned = new Uint8Array(packed.byteLength);
  owned.set(packed);
  return owned;
}

function decode(bytes: Uint8Array): unknown {
  // Unpacking from a Buffer makes binary fields (the request tail) come back as Buffers, as views of `bytes`.
  return packr.unpack(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

export function decodeTask(bytes: Uint8Array): WorkerTask {
  return decode(bytes) as WorkerTask;
}

export function decodeResult(bytes: Uint8Array): WorkerResult {
  return decode(bytes) as WorkerResult;
}

/** Marks an encoded message for transfer (not copy) when returned from a piscina handler. */
export function transferable(bytes: Uint8Array): Uint8Array {
  return move(bytes) as Uint8Array;
}
