// key-auth: on a route it demands a consumer key (header `apikey`, `Authorization: Bearer <key>`, or query
// `apikey`); on a consumer it holds that consumer's key.

import type { KeyAuthRouteConfig } from '../types.ts';
import type { Issues } from '../issues.ts';
import { isHeaderName } from '../net.ts';
import { Section } from '../section.ts';

export function readRouteKeyAuth(is: Issues, path: string, value: unknown): KeyAuthRouteConfig | undefined {
  const sec = Section.open(is, path, value, ['header', 'query', 'hide_credentials']);
  if (sec === undefined) return undefined;
  let header = sec.str('header');
  if (header !== undefined && !isHeaderName(header)) {
    is.add(sec.p('header'), 'is not a valid header name');
    header = undefined;
  }
  return {
    // Lower-cased because the front end reports request header names in lower case.
    header: (header ?? 'apikey').toLowerCase(),
    query: sec.str('query') ?? 'apikey',
    hide_credentials: sec.bool('hide_credentials') ?? false,
  };
}

/** A consumer's credential; undefined when the plugin is malformed (the issue is recorded). */
export function readConsumerKeyAuth(is: Issues, path: string, value: unknown): string | undefined {
  const sec = Section.open(is, path, value, ['key']);
  const key = sec?.str('key', { required: true });
  // A key no client could send (header values hold no control characters, nor leading or trailing blanks) is a slip.
  if (sec !== undefined && key !== undefined && (/[\x00-\x1f\x7f]/.test(key) || key !== key.trim())) {
    is.add(sec.p('key'), 'must not hold control characters or leading/trailing spaces (a client could not send it)');
    return undefined;
  }
  return key;
}
