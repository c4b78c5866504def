// The one way an error becomes a response: status, content type, the error's own headers (Allow,
// Retry-After) and the OpenAI-style body. Used by the front end and the pipeline alike.
import { toErrorBody, type SluiceError } from '../core/errors.ts';
import type { ClientResponse, HeaderList } from './http-types.ts';

export function sendError(res: ClientResponse, err: SluiceError): void {
  const headers: HeaderList = [['content-type', 'application/json']];
  if (err.headers !== undefined) for (const k of Object.keys(err.headers)) headers.push([k, err.headers[k]!]);
  res.send(err.status, headers, toErrorBody(err));
}
