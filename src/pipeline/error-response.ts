// The one way an error becomes a response: status, content type, the error's own headers (Allow,
// Retry-After) and the body (OpenAI-style, or in the client surface's format). Used by the front end and the pipeline alike.
import { toErrorBody, type SluiceError } from '../core/errors.ts';
import type { ClientResponse, HeaderList } from './http-types.ts';

/** An error body in a client surface's own format (SurfaceSpec.errorBody); absent: the OpenAI shape. */
export type ErrorFormat = (status: number, code: string, type: string, message: string, param: string | undefined) => string;

export function sendError(res: ClientResponse, err: SluiceError, format?: ErrorFormat): void {
  res.send(err.status, errorHeaders(err), errorText(err, format));
}

/** Content type and the error's own headers; every 503 of Sluice's own (a quota store down, shutting down,
 *  overloaded) is worth retrying, so it says when. */
export function errorHeaders(err: SluiceError): HeaderList {
  const headers: HeaderList = [['content-type', 'application/json']];
  if (err.headers !== undefined) for (const k of Object.keys(err.headers)) headers.push([k, err.headers[k]!]);
  if (err.status === 503 && err.headers?.['retry-after'] === undefined) headers.push(['retry-after', '1']);
  return headers;
}

/** The body: the one the error already carries in the client's format, else in `format`, else OpenAI's. */
export function errorText(err: SluiceError, format?: ErrorFormat): string {
  return err.body ?? (format === undefined ? toErrorBody(err) : format(err.status, err.code, err.type, err.message, err.param));
}
