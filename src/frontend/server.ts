// uWS front end: accepts connections, turns each request into a ClientRequest/ClientResponse pair, reads the
// body under a byte limit, and hands it to the gateway. uWebSockets.js is imported in this folder only.
import uWS from 'uWebSockets.js';
import type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket } from 'uWebSockets.js';
import { SluiceError, toErrorBody } from '../core/errors.ts';
import type { ClientRequest, ClientResponse } from '../pipeline/http-types.ts';
import { UwsResponse } from './response.ts';
import { sendError } from '../pipeline/error-response.ts';

/** What the front end needs from the gateway behind it. */
export interface RequestSink {
  /** Synchronous route/method check before any body is read. */
  accept(req: ClientRequest): Accepted | SluiceError;
}

export interface Accepted {
  readonly maxBodyBytes: number;
  run(req: ClientRequest, res: ClientResponse, body: Buffer): void | Promise<void>;
}

export interface Listening {
  readonly port: number;
  /** Stop accepting new connections; open ones keep being served. */
  stopListening(): void;
  /** Close every connection. */
  close(): void;
}

/** Fails fast when uWS fell back to its slow `ws` shim instead of the native binary. */
export function assertNativeUws(): void {
  const mod = uWS as unknown as Record<string, unknown>;
  if (typeof mod.SSLApp !== 'function' || typeof mod.getParts !== 'function') {
    throw new Error('uWebSockets.js native binary did not load (a JS fallback is active); refusing to start');
  }
}

const JSON_HEADERS: [string, string][] = [['content-type', 'application/json']];

function listen(app: TemplatedApp, host: string, port: number): Promise<Listening> {
  return new Promise((resolve, reject) => {
    app.listen(host, port, (token: us_listen_socket | false) => {
      if (!token) { reject(new Error(`cannot listen on ${host}:${port}`)); return; }
      let listening = true;
      const stopListening = () => {
        if (listening) uWS.us_listen_socket_close(token);
        listening = false;
      };
      resolve({
        port: uWS.us_socket_local_port(token),
        stopListening,
        // close() exists on the native App (20.30) but is missing from its typings.
        close: () => { stopListening(); (app as unknown as { close(): void }).close(); },
      });
    });
  });
}

function readRequest(res: HttpResponse, req: HttpRequest, startedAt: number): ClientRequest {
  const headers: Record<string, string> = {};
  req.forEach((k, v) => {
    const prev = headers[k];
    headers[k] = prev === undefined ? v : `${prev}, ${v}`;
  });
  return {
    method: req.getMethod().toUpperCase(),
    path: req.getUrl(),
    query: req.getQuery() ?? '',
    headers,
    remoteAddr: Buffer.from(res.getRemoteAddressAsText()).toString('latin1'),
    startedAt,
  };
}

function handle(sink: RequestSink, res: HttpResponse, req: HttpRequest): void {
  const client = new UwsResponse(res);
  const request = readRequest(res, req, performance.now());
  let accepted: Accepted | SluiceError;
  try {
    accepted = sink.accept(request);
  } catch (err) {
    accepted = new SluiceError('SLC_INTERNAL', undefined, { cause: err });
  }
  if (accepted instanceof SluiceError) { sendError(client, accepted); return; }
  const gate = accepted;
  const declared = request.headers['content-length'];
  if (declared !== undefined && Number(declared) > gate.maxBodyBytes) {
    client.sendAndClose(413, JSON_HEADERS, toErrorBody(new SluiceError('SLC_BODY_TOO_LARGE', `request body exceeds ${gate.maxBodyBytes} bytes`)));
    return;
  }
  let parts: Buffer[] | undefined;
  let size = 0;
  let tooLarge = false;
  res.onData((ab, isLast) => {
    if (tooLarge || client.aborted) return;
    size += ab.byteLength;
    if (size > gate.maxBodyBytes) {
      tooLarge = true;
      client.sendAndClose(413, JSON_HEADERS, toErrorBody(new SluiceError('SLC_BODY_TOO_LARGE', `request body exceeds ${gate.maxBodyBytes} bytes`)));
      return;
    }
    // uWS neuters the ArrayBuffer when this callback returns: copy it.
    const chunk = Buffer.from(new Uint8Array(ab).slice());
    if (!isLast) { (parts ??= []).push(chunk); return; }
    const body = parts === undefined ? chunk : Buffer.concat([...parts, chunk], size);
    run(gate, request, client, body);
  });
}

function run(gate: Accepted, req: ClientRequest, res: UwsResponse, body: Buffer): void {
  let out: void | Promise<void>;
  try {
    out = gate.run(req, res, body);
  } catch (err) {
    fail(res, err);
    return;
  }
  if (out !== undefined) out.catch((err: unknown) => fail(res, err));
}

function fail(res: UwsResponse, err: unknown): void {
  if (res.done || res.aborted) return;
  if (res.started) { res.destroy(); return; }
  sendError(res, err instanceof SluiceError ? err : new SluiceError('SLC_INTERNAL', undefined, { cause: err }));
}

export function startFrontend(sink: RequestSink, host: string, port: number): Promise<Listening> {
  assertNativeUws();
  const app = uWS.App();
  app.any('/*', (res, req) => handle(sink, res, req));
  return listen(app, host, port);
}

export interface AdminHandlers {
  metrics(): Promise<{ contentType: string; body: string }>;
  ready(): boolean;
}

/** The admin listener: /metrics for Prometheus, /healthz (process alive), /readyz (able to serve). */
export function startAdmin(handlers: AdminHandlers, host: string, port: number): Promise<Listening> {
  assertNativeUws();
  const app = uWS.App();
  app.get('/metrics', (res) => {
    const client = new UwsResponse(res);
    handlers.metrics().then(
      (m) => client.send(200, [['content-type', m.contentType]], m.body),
      (err: unknown) => sendError(client, new SluiceError('SLC_INTERNAL', undefined, { cause: err })),
    );
  });
  app.get('/healthz', (res) => { new UwsResponse(res).send(200, JSON_HEADERS, '{"status":"ok"}'); });
  app.get('/readyz', (res) => {
    const ok = handlers.ready();
    new UwsResponse(res).send(ok ? 200 : 503, JSON_HEADERS, ok ? '{"status":"ready"}' : '{"status":"not ready"}');
  });
  app.any('/*', (res) => { sendError(new UwsResponse(res), new SluiceError('SLC_NOT_FOUND')); });
  return listen(app, host, port);
}
