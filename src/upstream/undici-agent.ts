// undici's Agent and errors without the package's index: the index loads ~110 modules (fetch, WebSocket,
// caches, mocks), and through its cookie code Node's own bundled undici as well, ~140 ms of a ~0.5 s start;
// the agent, the request API and the errors are ~30 modules. This does the one thing the index does that
// the Agent needs: mixing the request API into Dispatcher.prototype. undici is pinned to an exact version in
// package.json; test/unit/upstream-undici-agent.test.ts checks these are the package's own objects.
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

const require = createRequire(import.meta.url);
const dispatcher = require('undici/lib/dispatcher/dispatcher.js') as { prototype: object };
Object.assign(dispatcher.prototype, require('undici/lib/api/index.js') as object);

export const Agent = require('undici/lib/dispatcher/agent.js') as typeof Undici.Agent;
export type Agent = Undici.Agent;
export const errors = require('undici/lib/core/errors.js') as typeof Undici.errors;
/** undici's own raw-header parser (the one `request()` uses): `[name, value, ...]` buffers to a lower-cased record. */
export const parseHeaders = (require('undici/lib/core/util.js') as { parseHeaders: (raw: Buffer[]) => Record<string, string | string[] | undefined> }).parseHeaders;
export type DispatchHandler = Undici.Dispatcher.DispatchHandler;
