// The request lifecycle, in order: route → key-auth → parse and count the prompt → reserve quotas →
// pick an instance (skipping spent ones when fallback allows) → forward → relay (buffered or streamed) →
// settle actual usage. Every path ends by settling or releasing each hold exactly once.
// No wire format is known here: the request path gives the client's surface (providers/registry.ts), whose
// spec parses the body and formats errors; each instance's resolved provider builds its upstream request,
// decodes its answer (buffered, or streamed through a codec) and classifies its failures for fallback.
// A request runs on the config snapshot current when it started, to its end: a reload swaps the snapshot
// for new requests only, and a retired snapshot is handed back (its stores may close) once its last request
// has finished. At shutdown, requests still running past the drain time are cut and settled (cutAll).
import { ERRORS, SluiceError, errorBody } from '../core/errors.ts';
import { errorHeaders, errorText, sendError, type ErrorFormat } from './error-response.ts';
import { log } from '../core/log.ts';
import { connectionListed } from '../core/http-token.ts';
import { LiveList, type LiveEntry } from '../core/live-list.ts';
import { MAX_ANSWER_BYTES, type ConsumerConfig } from '../config/types.ts';
import type { Metrics } from '../metrics/registry.ts';
import type { PlannedQuota, RequestQuotaPlan, Usage } from '../quota/plan.ts';
import { planRequest } from '../quota/plan.ts';
import { USAGE_HEADER, quotaHeaders, usageHeaderValue } from '../quota/headers.ts';
import type { RequestVars } from '../rules/request-vars.ts';
import { canonicalIp } from '../rules/ip.ts';
import { bodyMembers } from '../tokens/prepare.ts';
import { firstNonSpace } from '../tokens/json-members.ts';
import { completionCeiling, reservationPolicy } from '../tokens/limits.ts';
import { countText } from '../tokens/count.ts';
import { encodingForModel } from '../tokens/encoding.ts';
import type { WorkerPool } from '../workers/pool.ts';
import { completionBelowText, cutShortUsage, largerUsage, laterUsage, verifiedUsage, type UsageRejectReason } from '../streaming/usage.ts';
import { prepareCall } from '../providers/prepare.ts';
import { errorSurfaceForPath, surfaceForPath, surfaceSpec, unservedAnthropicPath, unservedGeminiMethod, unservedOpenAiPath } from '../providers/registry.ts';
import type { DecodedBody, FailureAnswer, ParseOptions, PreparedCall, SurfaceId, SurfaceSpec } from '../providers/types.ts';
import { ANSWERS_OVER_BUDGET, RESPONSE_TOO_LARGE, UpstreamFailure, byteCoding, classifyError, headerValue, headerValues, transferCoded, upstreamTimeouts, type UpstreamCall, type UpstreamClient, type UpstreamHeaders } from '../upstream/client.ts';
import type { Accepted, ClientRequest, ClientResponse, HeaderList, RequestSink } from './http-types.ts';
import { EMPTY_HOLD_QUOTAS, acquireAll, views, type QuotaHold, type Rejection } from './quota-hold.ts';
import { findRoute, type CompiledInstance, type CompiledProxy, type CompiledRoute, type QuotaSource, type Snapshot } from './snapshot.ts';
import type { QuotaStore } from '../quota/types.ts';
import { upstreamHeaders } from './forward-headers.ts';

const NO_QUOTAS: readonly PlannedQuota[] = Object.freeze([]);
/**
 * GET …/v1/models ('') or …/v1/models/<id> (the id, decoded): OpenAI's and Anthropic's model list and retrieve paths.
 * Google's list (`/v1beta/models`) is not one: Gemini routes proxy their own API.
 */
function modelsPath(path: string): string | undefined {
  if (path.endsWith('/v1/models') || path === '/models') return '';
  const i = path.indexOf('/v1/models/');
  // Gemini's v1 methods (`/v1/models/<m>:generateContent`) are calls, not model ids.
  if (i < 0 || surfaceForPath(path).startsWith('gemini-')) return undefined;
  // Ids may hold slashes (`meta-llama/llama-3.1-8b-instruct`), sent as they are or escaped (the openai SDK sends
  // `%2F`; a space comes as `%20`): the path's escapes are decoded once, as the list wrote the ids.
  const raw = path.slice(i + '/v1/models/'.length);
  if (raw === '') return undefined;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/** `created` of the models listed by GET …/models: when this process started, in seconds (the config says no more). */
const MODELS_CREATED = Math.floor((Date.now() - performance.now()) / 1000);
const EMPTY_BODY = Buffer.alloc(0);
/** Implausible upstream usage is logged at most once per this interval (each one is counted in a metric). */
const USAGE_LOG_EVERY_MS = 10_000;
/** Distinct (route, instance, failure kind) log rate limiters kept before they are all dropped. */
const MAX_FAILURE_LOG_KEYS = 4096;
/** Bytes of a cut-short answer counted per token it may be charged (few tokens span more), and at most this many. */
const CUT_BYTES_PER_TOKEN = 8;
const MAX_CUT_TEXT = 4 * 1024 * 1024;
/**
 * Upstream header bytes relayed to a client (UTF-8, at most 2 per latin1 character); headers past it are dropped.
 * A bound on what an upstream makes the gateway hold and send, and a head that fits, with Sluice's own headers,
 * in uWS's 16 KiB cork buffer (frontend/response.ts). nginx answers 502 to heads over its 4–8 KiB proxy buffer.
 */
const MAX_RELAYED_HEADER_BYTES = 8 * 1024;
/** Longest Retry-After a client SDK is left to wait out by itself (the openai SDK's own former cap). */
const SDK_RETRY_MAX_S = 60;
/** Retry-After of a rejection whose quotas are spent only by the reservations of running requests. */
const RESERVED_RETRY_MS = 1000;
/**
 * A stream whose client went (or that shutdown cut) while bytes of it waited unread reads on what its upstream sends,
 * unrelayed, until READ_ON_QUIET_MS pass without a byte or READ_ON_MS in all: an upstream that had finished while its
 * client was slow has its usage report, and its text, waiting unread in the socket, and that report is what it billed.
 */
const READ_ON_QUIET_MS = 50;
const READ_ON_MS = 1000;
/** After a stream's last event, how long its upstream may stay quiet (and, sending on, how long in all) before the
 *  answer is ended without the rest of its framing (the connection is then not reused). */
const COMPLETE_QUIET_MS = 1000;
const COMPLETE_READ_MS = 5000;

/** Upstream response headers that describe the hop or the body encoding, not the response. */
const HOP_HEADERS = new Set(['connection', 'keep-alive', 'transfer-encoding', 'content-length', 'proxy-connection', 'upgrade', 'te', 'trailer', 'content-encoding', 'date']);

type Resolve = (s: QuotaSource) => QuotaStore;

/** Adds a relayed header while `left` bytes of the budget cover it; returns what is left (below 0: all spent). */
function pushWithin(out: HeaderList, name: string, value: string, left: number): number {
  left -= name.length + 2 * value.length + 4;
  if (left >= 0) out.push([name, value]);
  return left;
}

/** A non-2xx answer kept for fallback: relayed if no later instance does better. */
interface Retry {
  readonly failure: FailureAnswer;
  readonly headers: UpstreamHeaders;
  /** Its body goes as the upstream coded it (relayed natively): its Content-Encoding goes too. */
  readonly native: boolean;
}

export interface GatewayDeps {
  readonly metrics: Metrics;
  readonly upstream: UpstreamClient;
  readonly pool: WorkerPool;
  /** A snapshot swapped out by a reload has no request left on it: what only it used may be closed. */
  readonly onSnapshotRetired?: (snapshot: Snapshot) => void;
}

/** A body this large is parsed on a worker thread even when its prompt is not counted (JSON.parse: ~40 µs/KB). */
const PARSE_OFFLOAD_BYTES = 256 * 1024;
/** Buffered answers at least this large are decoded on a worker thread (relayDecodedOffThread). */
const DECODE_OFFLOAD_BYTES = 1024 * 1024;

/** A buffered answer's body, read within `ms`: past it the call fails as a timeout and `onLate` gets what came. */
async function readWithin(up: UpstreamCall, ms: number, onLate: (got: Buffer) => void): Promise<Buffer> {
  const timer = setTimeout(() => {
    onLate(up.partial());
    up.timeOut(`upstream answer not complete within ${ms} ms`);
  }, ms);
  try {
    return await up.readAll(MAX_ANSWER_BYTES);
  } finally {
    clearTimeout(timer);
  }
}

function overBudget(): SluiceError {
  return new SluiceError('SLC_OVERLOADED', 'too many large upstream answers in flight; retry shortly', { headers: { 'retry-after': '1' } });
}

export class Gateway implements RequestSink {
  private snapshot: Snapshot;
  private readonly deps: GatewayDeps;
  private accepted = new WeakMap<CompiledRoute, Accepted>();
  /** Requests running, per snapshot. */
  private readonly users = new Map<Snapshot, number>();
  private readonly resolvers = new WeakMap<Snapshot, Resolve>();
  private readonly active = new LiveList<Exchange>();
  /** Set at shutdown: new requests get 503 SLC_SHUTTING_DOWN. */
  draining = false;
  private usageLoggedAt = 0;
  private readonly failureLogged = new Map<string, { at: number; suppressed: number }>();
  private usageLogSuppressed = 0;

  constructor(snapshot: Snapshot, deps: GatewayDeps) {
    this.snapshot = snapshot;
    this.deps = deps;
  }

  /** Requests running now. */
  get inFlight(): number {
    return this.active.size;
  }

  swap(snapshot: Snapshot): void {
    const old = this.snapshot;
    this.snapshot = snapshot;
    this.deps.upstream.setTimeouts(upstreamTimeouts(snapshot.config.limits));
    this.accepted = new WeakMap();
    if (!this.users.has(old)) this.deps.onSnapshotRetired?.(old);
  }

  /**
   * Shutdown, after the drain time: abort every running request. Streams end now and are settled from the
   * prompt and the text streamed so far; requests waiting for an upstream answer get 503 and are charged their
   * prompt when it was sent. Returns how many were cut; wait for inFlight to reach 0 before closing stores.
   */
  cutAll(): number {
    let n = 0;
    for (const ctx of this.active.entries()) {
      if (ctx.cut) continue;
      ctx.cut = true;
      n++;
      this.deps.metrics.shutdownCut.inc({ route: ctx.route.id });
      ctx.cutCall();
      // A stream parked on a slow client wakes up only when its response goes.
      if (ctx.res.started) ctx.res.destroy();
      else if (ctx.waiting) {
        // Waiting on its prompt count or a quota admission (a hung Redis answers within redis_timeout, which may
        // outlast the shutdown): answered now; what it holds goes back when the wait ends.
        this.answerError(ctx, new SluiceError('SLC_SHUTTING_DOWN'));
        ctx.answeredAtCut = true;
      }
    }
    return n;
  }

  get current(): Snapshot {
    return this.snapshot;
  }

  errorFormat(path: string): ErrorFormat | undefined {
    return surfaceSpec(errorSurfaceForPath(path))?.errorBody;
  }

  accept(req: ClientRequest): Accepted | SluiceError {
    if (this.draining) return new SluiceError('SLC_SHUTTING_DOWN');
    const found = findRoute(this.snapshot, req.method, req.path);
    if (found.kind === 'not_found') return new SluiceError('SLC_NOT_FOUND', `no route matches ${clipped(req.path)}`);
    if (found.kind === 'method_not_allowed') {
      return new SluiceError('SLC_METHOD_NOT_ALLOWED', `method ${clipped(req.method)} not allowed on ${clipped(req.path)}`, { headers: { allow: found.allow } });
    }
    const route = found.route;
    // An API Sluice does not serve is named, whatever the method (the SDKs list and fetch with GET).
    const unserved = unservedOpenAiPath(req.path);
    if (unserved !== undefined) {
      return new SluiceError('SLC_NOT_FOUND', `/v1/${clipped(unserved)} is not served: Sluice meters /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings and /v1/messages`);
    }
    const anthropic = unservedAnthropicPath(req.path);
    if (anthropic !== undefined) {
      return new SluiceError('SLC_NOT_FOUND', `${clipped(anthropic)} is not served: Sluice meters /v1/messages and passes /v1/messages/count_tokens through`);
    }
    // Every API Sluice meters takes a JSON body sent with POST; GET and HEAD serve the model list only.
    if (req.method !== 'POST' && req.method !== 'GET' && req.method !== 'HEAD' && modelsPath(req.path) !== undefined) {
      return new SluiceError('SLC_METHOD_NOT_ALLOWED', `method ${clipped(req.method)} not allowed on ${clipped(req.path)}: the model list is read with GET`, { headers: { allow: 'GET, HEAD' } });
    }
    if (req.method !== 'POST' && ((req.method !== 'GET' && req.method !== 'HEAD') || modelsPath(req.path) === undefined)) {
      return new SluiceError('SLC_METHOD_NOT_ALLOWED', `method ${clipped(req.method)} not allowed on ${clipped(req.path)}: this API takes a JSON body sent with POST`, { headers: { allow: 'POST' } });
    }
    // A key-auth route refuses a request without a valid key from its head: no body is read (nor held in the
    // body budget, which unauthenticated uploads could otherwise fill). The pipeline checks the key again.
    if (route.keyAuth !== undefined) {
      try {
        this.authenticate(this.snapshot, route, req);
      } catch (err) {
        if (!(err instanceof SluiceError)) throw err;
        this.deps.metrics.hot.route(route.id, '').answered(err.status, (performance.now() - req.startedAt) / 1000);
        return err;
      }
    }
    let a = this.accepted.get(route);
    if (a === undefined) {
      const snapshot = this.snapshot;
      a = { maxBodyBytes: snapshot.config.limits.max_body_bytes, run: (rq, rs, body) => this.run(snapshot, route, rq, rs, body) };
      this.accepted.set(route, a);
    }
    return a;
  }

  /** Quota stores as the given snapshot binds them: a request keeps its own snapshot's stores across reloads. */
  private resolver(snap: Snapshot): Resolve {
    let r = this.resolvers.get(snap);
    if (r === undefined) {
      r = (source) => {
        const s = snap.storeOf.get(source);
        if (s === undefined) throw new SluiceError('SLC_INTERNAL', 'quota plugin without a store');
        return s;
      };
      this.resolvers.set(snap, r);
    }
    return r;
  }

  /** Synchronous up to the request's one async frame (exchange): run's bookkeeping costs no frame of its own. */
  private run(accepted: Snapshot, acceptedRoute: CompiledRoute, req: ClientRequest, res: ClientResponse, body: Buffer): Promise<void> | undefined {
    let snap = accepted;
    let route = acceptedRoute;
    if (snap !== this.snapshot) {
      // Reloaded while the body was read: the request starts now, on the current snapshot.
      snap = this.snapshot;
      const r = findRoute(snap, req.method, req.path);
      if (r.kind !== 'found') { sendError(res, new SluiceError('SLC_NOT_FOUND', `no route matches ${clipped(req.path)}`)); return undefined; }
      route = r.route;
    }
    this.users.set(snap, (this.users.get(snap) ?? 0) + 1);
    const ctx = new Exchange(snap, this.resolver(snap), route, req, res);
    this.active.add(ctx);
    return this.exchange(snap, ctx, body);
  }

  /** A request failed: release what it holds and answer (or cut) it. */
  private failed(ctx: Exchange, err: unknown): void {
    ctx.releaseAll();
    const e = err instanceof SluiceError ? err : new SluiceError('SLC_INTERNAL', undefined, { cause: err });
    if (e.code === 'SLC_INTERNAL') log.error('request failed', { route: ctx.route.id, err });
    this.answerError(ctx, e);
  }

  /** A request ended, however: it leaves the active set and its snapshot. */
  private finished(snap: Snapshot, ctx: Exchange): void {
    this.active.delete(ctx);
    const left = (this.users.get(snap) ?? 1) - 1;
    if (left > 0) this.users.set(snap, left);
    else {
      this.users.delete(snap);
      if (snap !== this.snapshot) this.deps.onSnapshotRetired?.(snap);
    }
  }

  /** A wait on something other than the upstream (a prompt count, a quota admission): shutdown answers it at the cut. */
  private async waited<T>(ctx: Exchange, p: Promise<T>): Promise<T> {
    ctx.waiting = true;
    try {
      return await p;
    } finally {
      ctx.waiting = false;
    }
  }

  private answerError(ctx: Exchange, e: SluiceError): void {
    // Answered (and recorded) at the shutdown cut, while it waited.
    if (ctx.answeredAtCut) return;
    const res = ctx.res;
    if (res.started) res.destroy();
    else {
      // Sluice's own answers after an admission (a 502 for a broken answer, charged; a 504) report the quotas as a
      // relayed upstream error does; before one, there are none to report.
      const headers = errorHeaders(e);
      this.addQuotaHeaders(ctx, headers);
      res.send(e.status, headers, errorText(e, ctx.spec?.errorBody));
    }
    this.observe(ctx, e.status);
  }

  private authenticate(snap: Snapshot, route: CompiledRoute, req: ClientRequest): ConsumerConfig | undefined {
    const ka = route.keyAuth;
    if (ka === undefined) return undefined;
    // An empty key is no key: the next place is read (an empty apikey header hid a valid Bearer key).
    let key: string | undefined = req.headers[ka.header] || undefined;
    if (key === undefined) {
      const auth = req.headers.authorization;
      if (auth !== undefined && auth.length > 7 && auth.slice(0, 7).toLowerCase() === 'bearer ') key = auth.slice(7).trim() || undefined;
    }
    if (key === undefined && req.query !== '') key = new URLSearchParams(req.query).get(ka.query) || undefined;
    if (key === undefined || key === '') throw new SluiceError('SLC_UNAUTHORIZED', 'missing API key');
    const consumer = snap.consumersByKey.get(key);
    if (consumer === undefined) throw new SluiceError('SLC_UNAUTHORIZED', 'invalid API key');
    return consumer;
  }

  /** The request from key-auth to its answer, in one async frame: its errors are answered and its bookkeeping undone here. */
  private async exchange(snap: Snapshot, ctx: Exchange, body: Buffer): Promise<void> {
    try {
      const { route, req, res } = ctx;
      const consumer = this.authenticate(snap, route, req);
      ctx.consumer = consumer?.username ?? '';
      // APISIX precedence: an authenticated consumer's own ai-proxy(-multi) replaces the route's.
      if (consumer?.ai_proxy !== undefined) ctx.proxy = snap.consumerProxies.get(consumer.username) ?? route;
      if (req.method === 'GET' || req.method === 'HEAD') {
        const asked = modelsPath(req.path);
        if (asked !== undefined) { this.listModels(ctx, asked); return; }
      }
      // The client's API, from the path; its spec parses the body and formats every error it gets.
      const surface = surfaceForPath(req.path);
      const spec = surfaceSpec(surface);
      ctx.surface = surface;
      ctx.spec = spec;
      // Only a route that serves Gemini: elsewhere such a path (`/v1/models/x:y`, Vertex's `…:rawPredict`) is proxied as chat.
      const unserved = surface === 'openai-chat' && ctx.proxy.coverage.get('gemini-generate') !== 'none' ? unservedGeminiMethod(req.path) : undefined;
      if (unserved !== undefined) {
        ctx.spec = surfaceSpec('gemini-generate');
        throw new SluiceError('SLC_NOT_FOUND', `${unserved} is not served: Sluice meters generateContent, streamGenerateContent and countTokens on Gemini paths`);
      }
      if (spec === undefined || ctx.proxy.coverage.get(surface) === 'none') {
        throw new SluiceError('SLC_BAD_REQUEST', `${clipped(req.path)}: surface ${surface} is not supported by this route's instances`);
      }
      // count_tokens and the like produce no tokens: passed through, no reservation, no settlement.
      const metered = spec.metered;
      ctx.metered = metered;
      // The tokenizer is the costliest step of a request: only routes with quotas pay for it up front, and a
      // large body is tokenized on a worker thread so it never blocks the event loop serving everyone else.
      const count = route.quotas !== undefined && metered;
      // max_tokens / n are validated and the completion reservation capped per the route's instance models (src/tokens/limits.ts).
      const opts: ParseOptions = {
        surface, path: req.path, query: req.query, countPrompt: count, promptScale: ctx.proxy.promptScale,
        ...reservationPolicy(snap.config.tokens, ctx.proxy.instances),
      };
      ctx.parseOpts = opts;
      // Without a count, parsing alone blocks the loop on very large bodies (a 6 MB body: ~250 ms of JSON.parse).
      const prepared = body.length >= (count ? snap.config.tokens.offload_bytes : PARSE_OFFLOAD_BYTES)
        ? await this.waited(ctx, this.deps.pool.prepare(body, opts))
        : prepareCall(body, opts);
      if (ctx.cut) throw new SluiceError('SLC_SHUTTING_DOWN');
      if (!prepared.ok) throw new SluiceError(prepared.code, prepared.message, { param: prepared.param });
      if (res.aborted) { this.left(ctx); return; }
      ctx.prepared = prepared;
      ctx.body = body;
      const estimate: Usage = {
        prompt_tokens: prepared.promptTokens,
        completion_tokens: prepared.reserveCompletion,
        total_tokens: prepared.promptTokens + prepared.reserveCompletion,
      };
      ctx.estimate = estimate;

      let plan: RequestQuotaPlan | undefined;
      if (route.quotas !== undefined && metered) {
        const vars: RequestVars = { headers: req.headers, query: req.query, remoteAddr: ctx.peer, consumer: consumer?.username, routeId: route.id, uri: req.path, model: prepared.model };
        plan = planRequest(route.quotas, vars);
        // A fail-closed rule needs a variable this request lacks: refuse rather than serve it unmetered.
        if (plan.missing !== undefined) throw new SluiceError('SLC_RULE_KEY_MISSING', plan.missing.message, { status: plan.missing.status });
        if (plan.common.length > 0) {
          const r = acquireAll(plan.common, estimate, Date.now(), ctx.storeOf);
          const held = r instanceof Promise ? await this.waited(ctx, r) : r;
          if (held.ok) ctx.common = held;
          if (ctx.cut) throw new SluiceError('SLC_SHUTTING_DOWN');
          if (!held.ok) { this.reject(ctx, held, []); return; }
          if (res.aborted) { this.left(ctx); return; }
        }
      }

      let order = ctx.proxy.picker.order();
      // Instances whose provider cannot serve this surface are skipped, as if unavailable.
      if (ctx.proxy.coverage.get(surface) === 'some') order = order.filter((i) => i.provider.mode(surface) !== undefined);
      const denials: Rejection[] = [];
      const deniedInstances: CompiledInstance[] = [];
      let lastFailure: UpstreamFailure | undefined;
      let lastResponse: (Retry & { instance: CompiledInstance }) | undefined;
      for (let i = 0; i < order.length; i++) {
        if (ctx.cut) throw new SluiceError('SLC_SHUTTING_DOWN');
        const inst = order[i]!;
        const more = i < order.length - 1;
        // ${upstream_model} and model_limits: the model this instance sends. Throws SLC_RULE_KEY_MISSING when fail-closed.
        // The model: the instance's own when it sets one; else what its URL names, or the requested one.
        const iq = plan === undefined ? NO_QUOTAS
          : plan.perInstance(inst.name, inst.model ?? (inst.provider.quotaModel?.(surface, prepared.model) ?? prepared.model));
        if (iq.length > 0) {
          const r = acquireAll(iq, estimate, Date.now(), ctx.storeOf);
          const held = r instanceof Promise ? await this.waited(ctx, r) : r;
          if (ctx.cut) {
            if (held.ok) ctx.instance = held;
            throw new SluiceError('SLC_SHUTTING_DOWN');
          }
          if (!held.ok) {
            denials.push(held);
            deniedInstances.push(inst);
            if (!ctx.proxy.fallback.has('rate_limiting')) { this.reject(ctx, held, [inst]); return; }
            if (more) this.deps.metrics.fallbacks.inc({ route: route.id, from_instance: inst.name, reason: 'rate_limiting' });
            continue;
          }
          ctx.instance = held;
          ctx.shownInstance = held;
          if (res.aborted) { this.left(ctx); return; }
        }
        ctx.instanceName = inst.name;
        ctx.served = inst;
        const outcome = await this.attempt(ctx, inst, more);
        if (outcome === 'done') return;
        if (ctx.cut) {
          // Cut at shutdown before an answer came: an upstream that had the prompt charges it; one still being
          // connected to (or sent the request's bytes) never had it.
          if (ctx.call?.written === true) this.settle(ctx, await this.countedUsage(ctx, '', 0, 'shutdown'));
          throw new SluiceError('SLC_SHUTTING_DOWN');
        }
        ctx.releaseInstance();
        if (outcome instanceof UpstreamFailure) {
          lastFailure = outcome;
          // An earlier instance's 429 outranks a later one that could not be reached: the client keeps its Retry-After.
          if (lastResponse?.failure.status !== 429) lastResponse = undefined;
          if (more) this.deps.metrics.fallbacks.inc({ route: route.id, from_instance: inst.name, reason: outcome.kind });
        } else {
          lastResponse = { ...outcome, instance: inst };
          lastFailure = undefined;
          this.deps.metrics.fallbacks.inc({ route: route.id, from_instance: inst.name, reason: outcome.failure.retry ?? 'http_5xx' });
        }
        if (res.aborted) { this.left(ctx); return; }
      }
      ctx.releaseAll();
      if (denials.length === order.length) { this.reject(ctx, denials[0]!, deniedInstances, denials); return; }
      if (lastResponse !== undefined) {
        // Every instance answered with an error: relay the last one (in the client's surface).
        ctx.instanceName = lastResponse.instance.name;
        const f = lastResponse.failure;
        const out = withContentType(this.failureHeaders(lastResponse.headers, lastResponse.native), f.contentType);
        // The route's quotas are Sluice's to report (the common ones and the last instance's).
        if (route.quotas !== undefined && ctx.metered) stripRateLimitHeaders(out);
        this.addQuotaHeaders(ctx, out);
        res.send(f.status, out, f.body);
        this.observe(ctx, f.status);
        return;
      }
      if (lastFailure !== undefined) {
        if (lastFailure.kind === 'timeout') throw new SluiceError('SLC_UPSTREAM_TIMEOUT', 'upstream did not answer in time');
        // The last error answer was cut by the buffered-answer budget: the gateway is busy, not the upstream at fault.
        if (lastFailure.message === ANSWERS_OVER_BUDGET) throw overBudget();
        throw new SluiceError('SLC_UPSTREAM_ERROR', order.length > 1 ? `every upstream instance failed: ${lastFailure.message}` : lastFailure.message);
      }
      throw new SluiceError('SLC_UPSTREAM_UNAVAILABLE');
    } catch (err) {
      this.failed(ctx, err);
    } finally {
      this.finished(snap, ctx);
    }
  }

  /**
   * GET …/models (the openai SDK's `models.list()`, and the UIs that ask it first): the models this route's instances
   * (or the authenticated consumer's) are configured to send (`options.model`), in OpenAI's list shape, answered here:
   * nothing goes upstream and nothing is metered. An instance that passes the client's model on names none.
   */
  private listModels(ctx: Exchange, asked: string): void {
    const owners = new Map<string, string>();
    for (const inst of ctx.proxy.instances) if (inst.model !== undefined && !owners.has(inst.model)) owners.set(inst.model, inst.provider.id);
    // The Anthropic SDK asks the same path with its version header, and reads its own shape.
    const anthropic = ctx.req.headers['anthropic-version'] !== undefined;
    const created = new Date(MODELS_CREATED * 1000).toISOString();
    const one = (id: string, owner: string): Record<string, unknown> => (anthropic
      ? { type: 'model', id, display_name: id, created_at: created }
      : { id, object: 'model', created: MODELS_CREATED, owned_by: owner });
    if (asked !== '') {
      const owner = owners.get(asked);
      if (owner === undefined) {
        ctx.spec = anthropic ? surfaceSpec('anthropic-messages') : undefined;
        throw new SluiceError('SLC_NOT_FOUND', `model ${clipped(asked)} is not one this route's instances send`);
      }
      ctx.res.send(200, [['content-type', 'application/json']], JSON.stringify(one(asked, owner)));
    } else {
      const data = [...owners].map(([id, owner]) => one(id, owner));
      const body = anthropic
        ? { data, has_more: false, first_id: data.length > 0 ? data[0]!.id : null, last_id: data.length > 0 ? data[data.length - 1]!.id : null }
        : { object: 'list', data };
      ctx.res.send(200, [['content-type', 'application/json']], JSON.stringify(body));
    }
    this.observe(ctx, 200);
  }

  /** Builds and sends an attempt's request. A frame of its own: the upstream body and headers are not kept alive
   *  by attempt()'s suspended frame for as long as the answer streams. */
  private send(ctx: Exchange, inst: CompiledInstance): UpstreamCall {
    const prepared = ctx.prepared!;
    const provider = inst.provider;
    ctx.translated = provider.mode(prepared.surface) === 'translated';
    const members = prepared.clientFields === undefined ? undefined : bodyMembers(prepared.fieldKeys!, prepared.clientFields, inst.optionJson);
    const call = provider.request(prepared, inst.model ?? prepared.model, members);
    const headers = upstreamHeaders(ctx.req, inst.forward, ctx.route.keyAuth?.header, call.headers, inst.headers, ctx.snap.trustedProxies, ctx.peer);
    return this.deps.upstream.send(provider.origin, call.path, headers, call.body, inst.transport);
  }

  /** Each send lost to the keep-alive race and sent again is an attempt of its own, outcome 'resent'. */
  private countResends(route: string, instance: string, up: UpstreamCall): void {
    const slots = this.deps.metrics.hot.route(route, instance);
    for (let i = 0; i < up.resends; i++) slots.attempt('resent');
  }

  /** One upstream attempt. 'done' when the client got its answer; otherwise what failed, for fallback. */
  private async attempt(ctx: Exchange, inst: CompiledInstance, more: boolean): Promise<'done' | UpstreamFailure | Retry> {
    const { route, res } = ctx;
    // Cut while an instance quota was being acquired: nothing is sent.
    if (ctx.cut) return new UpstreamFailure('aborted', 'gateway is shutting down', undefined);
    const prepared = ctx.prepared!;
    const provider = inst.provider;
    const sentAt = performance.now();
    const up = this.send(ctx, inst);
    ctx.call = up;
    res.onAbort(ctx.abortUpstream);
    try {
      await up.head();
    } catch (err) {
      const f = classifyError(err);
      this.countResends(route.id, inst.name, up);
      this.deps.metrics.hot.route(route.id, inst.name).attempt(f.kind);
      if (ctx.cut) return f;
      if (f.kind !== 'aborted' && !res.aborted) this.attemptFailed(route.id, inst.name, f);
      if (f.kind === 'aborted' || res.aborted) {
        // The client went away while the upstream had its prompt: charged, or leaving would be free. Gone before
        // the request was written (a connection still opening, a deferred write), the upstream never saw it.
        if (up.written) await this.chargeCut(ctx, EMPTY_BODY, 'client_abort');
        else ctx.releaseAll();
        this.observe(ctx, 499);
        return 'done';
      }
      return f;
    }
    const slots = this.deps.metrics.hot.route(route.id, inst.name);
    if (up.resends > 0) this.countResends(route.id, inst.name, up);
    slots.firstByte((performance.now() - sentAt) / 1000);
    const status = up.status;
    if (status === 304) {
      // No answer to a POST (never conditional), and a client's 304 could carry none: the upstream is broken.
      up.abort();
      slots.attempt('protocol_error');
      const f = new UpstreamFailure('protocol_error', 'the upstream answered 304 Not Modified to a POST', undefined);
      this.attemptFailed(route.id, inst.name, f);
      return f;
    }
    const ok = status >= 200 && status < 300;
    slots.attempt(status === 429 ? 'http_429' : status >= 500 ? 'http_5xx' : 'ok');
    const coding = ok ? byteCoding(up.headers) : undefined;
    if (coding !== undefined) {
      // Asked with Accept-Encoding: identity: compressed bytes could be neither metered nor relayed (the coding
      // header is the hop's). The answer was produced upstream, so, as a 2xx that broke off, it is not sent to
      // another instance and the prompt is charged.
      up.abort();
      this.warnAbout('upstream answer compressed despite accept-encoding: identity', route.id, inst.name, { coding: coding.slice(0, 40) });
      await this.chargeCut(ctx, EMPTY_BODY, 'upstream_broken');
      this.answerError(ctx, new SluiceError('SLC_UPSTREAM_ERROR', 'the upstream answered with a content or transfer coding Sluice cannot meter (it asks for identity)'));
      return 'done';
    }
    if (ok && provider.isStream(prepared, headerValue(up.headers, 'content-type') ?? '')) {
      await this.relayStream(ctx, inst, up);
      return 'done';
    }
    let buf: Buffer;
    const bodyMs = ctx.snap.config.limits.upstream_body_timeout_ms;
    let late: Buffer | undefined;
    try {
      buf = up.bodyNow(MAX_ANSWER_BYTES) ?? await readWithin(up, bodyMs, (got) => { late = got; });
    } catch (err) {
      // Still coming after upstream_body_timeout_ms (an upstream trickling bytes, each within the idle time): 504,
      // charged the prompt plus the text received, as a broken 2xx answer is.
      if (late !== undefined && ok && !res.aborted && !ctx.cut) {
        this.warnAbout('upstream answer not complete in time', route.id, inst.name, { timeout_ms: bodyMs });
        await this.chargeCut(ctx, late, 'upstream_broken');
        this.answerError(ctx, new SluiceError('SLC_UPSTREAM_TIMEOUT', `the upstream answer did not complete within ${bodyMs} ms`));
        return 'done';
      }
      // An error answer is not billed: one cut short is released (a client abort) or falls back (a broken body).
      if (res.aborted && !ctx.cut) {
        if (ok) await this.chargeCut(ctx, up.partial(), 'client_abort');
        else ctx.releaseAll();
        this.observe(ctx, 499);
        return 'done';
      }
      // A body that breaks off after the headers is a protocol error, whatever broke it (as a timeout is not retried as one).
      const f = classifyError(err);
      const failure = f.kind === 'protocol_error' ? f : new UpstreamFailure('protocol_error', 'upstream body failed', err);
      if (!ok) return failure;
      // A 2xx answer cut short was produced (and billed) upstream: not sent again to another instance, and charged
      // like a broken stream, the prompt plus the text received; the client gets a 502 (503 at shutdown).
      if (ctx.cut) {
        await this.chargeCut(ctx, up.partial(), 'shutdown');
        throw new SluiceError('SLC_SHUTTING_DOWN');
      }
      if (f.message === ANSWERS_OVER_BUDGET) {
        // Every buffered answer in flight together reached limits.max_inflight_answer_bytes: this one is cut (503,
        // retry shortly), charged as a broken answer: produced upstream, so not sent to another instance.
        this.warnAbout('buffered answers in flight over limits.max_inflight_answer_bytes: answer cut', route.id, inst.name, {});
        await this.chargeCut(ctx, up.partial(), 'overloaded');
        this.answerError(ctx, overBudget());
        return 'done';
      }
      this.warnAbout('upstream answer broke off', route.id, inst.name, { err });
      await this.chargeCut(ctx, up.partial(), 'upstream_broken');
      // Silent past the idle timeout: a timeout (504), as one past the body timeout is, though charged as broken off.
      if (f.kind === 'timeout') {
        this.answerError(ctx, new SluiceError('SLC_UPSTREAM_TIMEOUT', 'the upstream answer stalled: no byte within the idle timeout'));
        return 'done';
      }
      this.answerError(ctx, new SluiceError('SLC_UPSTREAM_ERROR', f.message === RESPONSE_TOO_LARGE
        ? `the upstream answer is larger than ${MAX_ANSWER_BYTES} bytes, the most Sluice buffers` : 'the upstream answer broke off'));
      return 'done';
    }
    if (!ok) {
      // An error body in a coding Sluice asked not to get (Accept-Encoding: identity) is relayed natively with its
      // Content-Encoding, which the client can undo; a translated one is not read: its message would be the coded bytes.
      // A transfer coding (other than chunked) left on the body is undone by nobody: that body is not relayed either.
      const coded = byteCoding(up.headers) !== undefined;
      const native = !ctx.translated && !transferCoded(up.headers);
      const failure = provider.failure(prepared, status, coded && !native ? EMPTY_BODY : buf);
      const retryable = failure.retry !== undefined && ctx.proxy.fallback.has(failure.retry);
      if (retryable && more) return { failure, headers: up.headers, native };
      ctx.releaseAll();
      const out = withContentType(this.failureHeaders(up.headers, native), failure.contentType);
      this.addQuotaHeaders(ctx, out);
      res.send(failure.status, out, failure.body);
      this.observe(ctx, failure.status);
      return 'done';
    }
    const counting = this.relayBuffered(ctx, inst, status, up.headers, buf);
    if (counting !== undefined) await counting;
    return 'done';
  }

  /** Synchronous when the answer carries a usable usage (nearly always); a promise only when its text is counted. */
  private relayBuffered(ctx: Exchange, inst: CompiledInstance, status: number, upHeaders: UpstreamHeaders, buf: Buffer): Promise<void> | undefined {
    if (buf.length >= DECODE_OFFLOAD_BYTES) return this.relayDecodedOffThread(ctx, inst, status, upHeaders, buf);
    return this.relayDecoded(ctx, inst, status, upHeaders, buf, inst.provider.decode(ctx.prepared!, buf, ctx.snap.maxUsage));
  }

  /** A large answer is parsed on a worker thread: a 20 MB answer parsed here stalled every request of this thread
   *  for seconds. Decoded here as before when the pool cannot take it (closed, or its queue full). */
  private async relayDecodedOffThread(ctx: Exchange, inst: CompiledInstance, status: number, upHeaders: UpstreamHeaders, buf: Buffer): Promise<void> {
    let decoded: DecodedBody;
    try {
      decoded = await this.deps.pool.decode(inst.config, ctx.prepared!, buf, ctx.snap.maxUsage);
    } catch {
      decoded = inst.provider.decode(ctx.prepared!, buf, ctx.snap.maxUsage);
    }
    const counting = this.relayDecoded(ctx, inst, status, upHeaders, buf, decoded);
    if (counting !== undefined) await counting;
  }

  private relayDecoded(ctx: Exchange, inst: CompiledInstance, status: number, upHeaders: UpstreamHeaders, buf: Buffer, decoded: DecodedBody): Promise<void> | undefined {
    if (decoded.unusable !== undefined) return this.relayUnusable(ctx, inst, buf, decoded.unusable);
    const headers = withContentType(this.relayHeaders(upHeaders), decoded.contentType);
    if (ctx.metered) {
      const rejected = decoded.rejected;
      if (rejected !== undefined) this.usageRejected(ctx, rejected);
      if (decoded.usage === undefined) return this.relayCounted(ctx, status, headers, decoded);
      if (rejected === 'zero_completion') return this.relayZeroCompletion(ctx, status, headers, decoded, decoded.usage);
      if (decoded.verifyText !== undefined) return this.relayVerified(ctx, status, headers, decoded, decoded.usage, decoded.verifyText);
      this.settle(ctx, decoded.usage);
    } else {
      ctx.releaseAll();
    }
    this.sendBuffered(ctx, status, headers, decoded.body);
    return undefined;
  }

  /** A 2xx answer that cannot be translated: 502, charged as a 2xx that broke off (produced upstream, so not sent to
   *  another instance): the prompt plus its bytes counted, within the request's completion cap. */
  private async relayUnusable(ctx: Exchange, inst: CompiledInstance, buf: Buffer, why: string): Promise<void> {
    this.warnAbout('upstream 2xx answer unusable (not the provider\'s JSON, or an error object)', ctx.route.id, inst.name, { why: why.slice(0, 200) });
    await this.chargeCut(ctx, buf, 'upstream_broken');
    this.answerError(ctx, new SluiceError('SLC_UPSTREAM_ERROR', why));
  }

  private async relayCounted(ctx: Exchange, status: number, headers: HeaderList, decoded: DecodedBody): Promise<void> {
    const usage = await this.countedUsage(ctx, decoded.text, 0, decoded.rejected !== undefined ? 'usage_rejected' : 'no_usage');
    this.settle(ctx, usage);
    this.sendBuffered(ctx, status, headers, decoded.body);
  }

  /** A report whose completion of 0 sat beside generated text: the report stands with the text counted as its completion. */
  private async relayZeroCompletion(ctx: Exchange, status: number, headers: HeaderList, decoded: DecodedBody, reported: Usage): Promise<void> {
    const counted = await this.countedUsage(ctx, decoded.text, 0, 'usage_rejected');
    this.settle(ctx, withCountedCompletion(reported, counted));
    this.sendBuffered(ctx, status, headers, decoded.body);
  }

  /** A report whose completion looks small for the text beside it (completionBelowText): the text is counted and
   *  the larger completion charged, so the report can only be raised. */
  private async relayVerified(ctx: Exchange, status: number, headers: HeaderList, decoded: DecodedBody, reported: Usage, text: string): Promise<void> {
    const charged = verifiedUsage(reported, await this.countedUsage(ctx, text, 0, undefined));
    if (charged !== reported) {
      this.usageRejected(ctx, 'inconsistent');
      this.deps.metrics.usageEstimated.inc({ route: ctx.route.id, reason: 'usage_rejected' });
    }
    this.settle(ctx, charged);
    this.sendBuffered(ctx, status, headers, decoded.body);
  }

  private sendBuffered(ctx: Exchange, status: number, headers: HeaderList, body: DecodedBody['body']): void {
    this.addQuotaHeaders(ctx, headers);
    const res = ctx.res;
    res.send(status, headers, body);
    // A client reading slowly keeps the answer in memory until it has taken it: the answer budget counts it meanwhile
    // (ten clients reading a 65 MB answer a chunk every 2 s had held 1.2 GB outside any bound).
    if (res.unsent()) {
      const n = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
      const upstream = this.deps.upstream;
      if (upstream.holdUnsent(n)) res.onSent(() => upstream.releaseUnsent(n));
    }
    this.observe(ctx, status);
  }

  private async relayStream(ctx: Exchange, inst: CompiledInstance, up: UpstreamCall): Promise<void> {
    const { res } = ctx;
    const prepared = ctx.prepared!;
    const meter = inst.provider.stream(prepared, { maxUsage: ctx.snap.maxUsage });
    // Dropped once sent: the suspended frame would otherwise hold the header list for as long as the stream runs.
    let headers: HeaderList | undefined = this.relayHeaders(up.headers);
    if (ctx.translated) withContentType(headers, meter.contentType);
    if (!headers.some((h) => h[0] === 'cache-control')) headers.push(['cache-control', 'no-cache']);
    this.addQuotaHeaders(ctx, headers);
    // A chunk that came with the upstream's head leaves with ours, in one write; otherwise the head goes now.
    let first = up.takeQueued();
    if (first === undefined) { res.start(200, headers); headers = undefined; }
    // Text past the meter's bound is counted as it streams (one count in flight at a time) and dropped.
    let counted = 0;
    let counting: Promise<number> | undefined;
    let broken = false;
    let winding = false;
    // A body that opens with `{` is no event stream but one JSON answer (an upstream that ignored stream: true): kept
    // (up to MAX_CUT_TEXT) to be metered as the buffered answer it is; the meter finds no event in it.
    let looked = false;
    let plain: Buffer[] | undefined;
    let plainBytes = 0;
    ctx.streaming = true;
    if (res.aborted || ctx.cut) ctx.cutCall();
    try {
      // Chunks queued past a high-water mark while this waits on a slow client pause the upstream socket.
      // A chunk already queued is taken without an await (each await allocates its reaction and closures).
      // Once the client is gone, frames are read and metered but not written (the call winds down: cutCall).
      for (let chunk = first ?? await up.next(); chunk !== null; chunk = up.takeQueued() ?? await up.next()) {
        if (!looked) {
          const b = firstNonSpace(chunk);
          if (b >= 0) { looked = true; if (b === 0x7b) plain = []; }
        }
        if (plain !== undefined) {
          plainBytes += chunk.length;
          if (plainBytes <= MAX_CUT_TEXT) plain.push(chunk);
        }
        const out = meter.push(chunk);
        if (first !== undefined) {
          first = undefined;
          const sent = res.start(200, headers!, out);
          headers = undefined;
          if (!sent) await res.drain();
        } else if (out !== undefined && !res.write(out)) await res.drain();
        const piece = meter.takeCountable();
        // Past n × max_tokens (what a count may charge), further text changes nothing: dropped uncounted (bounded CPU).
        if (piece !== undefined && ctx.metered && counted < (this.ceilingOf(ctx) ?? Infinity)) {
          if (counting !== undefined) counted += await counting;
          counting = this.countCompletion(ctx, piece);
        }
        // The last event came: an upstream that holds its connection open after it is not waited on for long.
        if (meter.complete === true && !winding) { winding = true; up.windDown(COMPLETE_QUIET_MS, COMPLETE_READ_MS); }
      }
    } catch (err) {
      // Cut after its last event (the upstream kept the connection open, or broke it then): the answer is whole.
      broken = !res.aborted && !ctx.cut && meter.complete !== true;
      if (broken) this.warnAbout('upstream stream broke off', ctx.route.id, inst.name, { err });
    }
    // A client gone, or a stream cut here (the codec threw on bytes it cannot read): the upstream's rest is not read.
    if (res.aborted || broken) up.abort();
    // Decided before the response is touched: destroying it fires the abort handler (aborted becomes true),
    // and a stream the upstream broke is a 502, not a client abort.
    // A client that leaves after the last event (many close on [DONE]) had the whole answer.
    let status = ctx.cut ? 503 : res.aborted && meter.complete !== true ? 499 : broken ? 502 : 200;
    // A last event without its blank line still counts (and may carry the usage): parse it before settling.
    const last = status === 200 ? meter.end() : undefined;
    // Closed cleanly before its last event: broken off, though the client is told so in its own format (`last`).
    const truncated = status === 200 && meter.truncated === true;
    if (truncated) {
      broken = true;
      status = 502;
      this.warnAbout('upstream stream ended before its last event', ctx.route.id, inst.name, {});
    }
    if (ctx.metered && plain !== undefined) {
      await this.settlePlain(ctx, inst, plain, status === 200 && plainBytes <= MAX_CUT_TEXT);
    } else if (ctx.metered) {
      const rejected = meter.usageRejected;
      if (rejected !== undefined) this.usageRejected(ctx, rejected);
      let usage = meter.usage;
      // A completion of 0 after text streamed is not believed either: the text is counted (cutShortUsage below).
      const zeroCompletion = usage !== undefined && usage.completion_tokens === 0 && (counting !== undefined || meter.text !== '');
      if (zeroCompletion) this.usageRejected(ctx, 'zero_completion');
      // Text after the last usage report is not covered by it: counted as if the stream were cut there.
      const textAfter = usage !== undefined && meter.textAfterUsage;
      // A completion that looks small for the text streamed: the text is counted, and the larger one charged.
      const low = usage !== undefined && !zeroCompletion && completionBelowText(usage.completion_tokens, meter.textChars ?? 0);
      if (usage === undefined || rejected !== undefined || ctx.cut || res.aborted || zeroCompletion || textAfter || low) {
        // Text after a believed report is charged as a cut there (below), whether or not the report also looks low.
        const reason = ctx.cut ? 'shutdown' : res.aborted ? 'client_abort' : rejected !== undefined || zeroCompletion ? 'usage_rejected'
          : broken ? 'upstream_broken' : textAfter ? 'text_after_usage' : low ? 'usage_rejected' : 'no_usage';
        if (counting !== undefined) counted += await counting;
        const estimate = await this.countedUsage(ctx, meter.text, counted + meter.countMargin + (meter.hiddenCompletion ?? 0), undefined);
        // Cut after the upstream reported usage (its final report, or a running total): the report counts, and
        // only a usage that is (partly) the count is an estimate.
        // No believable final count: the prompt the upstream reported on the way (Anthropic's message_start, Gemini's
        // frames before the finish) still stands. After a lie, each part is the larger of what was believed and the
        // count, so a lie can only raise the charge.
        const early = usage === undefined || rejected !== undefined ? meter.promptReport : undefined;
        const believed = usage === undefined ? early : early === undefined ? usage : laterUsage(usage, early);
        // Flagged by the check alone (nothing else cut or unsettled the report): it stands unless the count is larger.
        const onlyLow = low && rejected === undefined && !ctx.cut && !res.aborted && !textAfter;
        const charged = believed === undefined ? estimate
          : rejected !== undefined ? largerUsage(believed, estimate)
          : usage === undefined ? cutShortUsage(believed, estimate)
          : zeroCompletion ? withCountedCompletion(usage, estimate)
          : onlyLow ? verifiedUsage(usage, estimate) : cutShortUsage(usage, estimate);
        if (onlyLow && charged !== usage) this.usageRejected(ctx, 'inconsistent');
        if (charged !== usage) this.deps.metrics.usageEstimated.inc({ route: ctx.route.id, reason });
        usage = charged;
      }
      this.settle(ctx, usage);
    } else {
      ctx.releaseAll();
    }
    if (!res.aborted) {
      if (truncated) res.end(last);
      else if (status !== 200) res.destroy();
      else res.end(joined(last, meter.closing?.(ctx.usage)));
    }
    this.observe(ctx, status);
  }

  /** A streamed answer that was one JSON object: charged its usage when it came whole and believable, else as a
   *  broken answer (the prompt plus its bytes counted, within the request's completion cap). */
  private async settlePlain(ctx: Exchange, inst: CompiledInstance, parts: Buffer[], whole: boolean): Promise<void> {
    const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    if (whole) {
      const d = inst.provider.decode(ctx.prepared!, body, ctx.snap.maxUsage);
      if (d.unusable === undefined && d.usage !== undefined && d.rejected === undefined && d.verifyText === undefined) {
        this.settle(ctx, d.usage);
        return;
      }
    }
    await this.chargeCut(ctx, body, 'upstream_broken');
  }

  /** Completion tokens of a piece of generated text; large pieces on a worker thread, inline if it cannot take them. */
  private async countCompletion(ctx: Exchange, text: string): Promise<number> {
    const model = ctx.prepared?.model;
    if (text.length === 0) return 0;
    const scale = ctx.served?.outputScale ?? 1;
    if (text.length >= ctx.snap.config.tokens.offload_bytes) {
      try {
        return Math.ceil(await this.deps.pool.countText(text, model) * scale);
      } catch {
        // An over-full or closing pool must not make the text free.
      }
    }
    return Math.ceil(countText(text, encodingForModel(model)) * scale);
  }

  /** Usage when the upstream gave none (or none believable): our prompt count plus the produced text, counted. */
  /** `reason`: the label of sluice_usage_estimated_total (undefined: the caller decides). `cap`: most completion charged. */
  private async countedUsage(ctx: Exchange, text: string, alreadyCounted: number, reason: string | undefined, cap = Infinity): Promise<Usage> {
    if (reason !== undefined) this.deps.metrics.usageEstimated.inc({ route: ctx.route.id, reason });
    let prepared = ctx.prepared!;
    if (!prepared.promptCounted) {
      const opts: ParseOptions = { ...ctx.parseOpts!, countPrompt: true, defaultMaxTokens: 0 };
      const again = ctx.body.length >= ctx.snap.config.tokens.offload_bytes ? await this.deps.pool.prepare(ctx.body, opts) : prepareCall(ctx.body, opts);
      if (again.ok) prepared = again;
    }
    // Capped at what the request let the upstream produce (n × max_tokens, when known: it bills no more), whatever the
    // provider: text past it is an upstream ignoring the request (a probe's 30 MB answer reporting 5 was charged 15 M
    // on an OpenAI instance, while the same lie through a translated provider's scaled count was capped).
    // No other cap for text that reached the client: every token relayed is charged, `tokens.max_usage` bounding
    // only what an upstream reports (`cap`: a buffered answer cut short, counted from a bounded prefix).
    const completion = Math.min(alreadyCounted + await this.countCompletion(ctx, text), this.ceilingOf(ctx) ?? Infinity, cap);
    return { prompt_tokens: prepared.promptTokens, completion_tokens: completion, total_tokens: prepared.promptTokens + completion };
  }

  /**
   * Settles a non-streamed request cut short after its prompt was sent: the prompt plus the answer bytes received,
   * counted, but no more completion than the served upstream was allowed (n × max_tokens, the instance's options
   * included) nor `tokens.max_usage`; only a prefix of the bytes that could reach that cap is counted, so a huge
   * broken body costs bounded CPU.
   */
  private async chargeCut(ctx: Exchange, partial: Buffer, reason: string): Promise<void> {
    if (!ctx.metered) { ctx.releaseAll(); return; }
    const cap = this.completionCap(ctx);
    const text = partial.toString('utf8', 0, Math.min(partial.length, cap * CUT_BYTES_PER_TOKEN, MAX_CUT_TEXT));
    this.settle(ctx, await this.countedUsage(ctx, text, 0, reason, cap));
  }

  /** Most completion tokens a count may charge: the served upstream's allowance, within `tokens.max_usage`. */
  private completionCap(ctx: Exchange): number {
    return Math.min(ctx.snap.maxUsage, this.ceilingOf(ctx) ?? Infinity);
  }

  /** Most completion the upstream that served (or is serving) this request was allowed to produce. */
  private ceilingOf(ctx: Exchange): number | undefined {
    // Embeddings produce no completion: the bytes of a broken answer are vectors, not text.
    if (ctx.surface === 'openai-embeddings') return 0;
    const asked = ctx.prepared!;
    return completionCeiling(asked.maxTokens, asked.n, ctx.served?.bodyOptions);
  }

  /** An upstream that could not be reached or answered in time (connect refused, timeout, reset): a 502/504 or a
   *  fallback, counted in sluice_upstream_attempts_total and logged at most once per interval per instance, kind. */
  private attemptFailed(route: string, instance: string, f: UpstreamFailure): void {
    this.warnAbout('upstream attempt failed', route, instance, { kind: f.kind, error: f.message.slice(0, 200) }, f.kind);
  }

  /** A warning about an instance's answers, at most once per interval per message, route, instance (and `sub`): an
   *  upstream that breaks answers every request the same way. The next line says how many were left out. */
  private warnAbout(msg: string, route: string, instance: string, fields: Record<string, unknown>, sub = ''): void {
    const key = `${msg}\0${route}\0${instance}\0${sub}`;
    const now = Date.now();
    const seen = this.failureLogged.get(key);
    if (seen !== undefined && now - seen.at < USAGE_LOG_EVERY_MS) { seen.suppressed++; return; }
    // Keys are bounded by the config (routes × instances × messages and kinds); a reload's old ones age out here.
    if (this.failureLogged.size >= MAX_FAILURE_LOG_KEYS) this.failureLogged.clear();
    log.warn(msg, { route, instance, ...fields, suppressed: seen?.suppressed ?? 0 });
    this.failureLogged.set(key, { at: now, suppressed: 0 });
  }

  /** An upstream usage object that is not believed: counted per reason, logged at most once per interval. */
  private usageRejected(ctx: Exchange, reason: UsageRejectReason): void {
    this.deps.metrics.usageRejected.inc({ route: ctx.route.id, reason });
    const now = Date.now();
    if (now - this.usageLoggedAt < USAGE_LOG_EVERY_MS) { this.usageLogSuppressed++; return; }
    log.warn('implausible upstream usage; charging the counted estimate', {
      route: ctx.route.id, instance: ctx.instanceName, reason, suppressed: this.usageLogSuppressed,
    });
    this.usageLoggedAt = now;
    this.usageLogSuppressed = 0;
  }

  /**
   * A reported prompt of 0 for a request whose prompt counted more is not believed (read as is, the prompt would be
   * free): the counted prompt replaces it. The completion is the one reported; a total that already holds the prompt
   * (an upstream that left only prompt_tokens out: OpenAI chat's reading had moved that excess into the completion)
   * is not added to again: the charge is the larger of that total and the counted prompt plus the completion.
   * Without the raw object, so cost expressions take their upper bound, as for any counted usage.
   */
  private believedPrompt(ctx: Exchange, usage: Usage): Usage {
    const p = ctx.prepared;
    if (usage.prompt_tokens !== 0 || p === undefined || !p.promptCounted || p.promptTokens <= 0) return usage;
    this.usageRejected(ctx, 'zero_prompt');
    this.deps.metrics.usageEstimated.inc({ route: ctx.route.id, reason: 'usage_rejected' });
    const said = reportedCompletion(usage);
    const total = Math.max(usage.total_tokens, p.promptTokens + said);
    const completion = total - p.promptTokens;
    return usage.reasoning_tokens === undefined
      ? { prompt_tokens: p.promptTokens, completion_tokens: completion, total_tokens: total }
      : { prompt_tokens: p.promptTokens, completion_tokens: completion, total_tokens: total, reasoning_tokens: Math.min(usage.reasoning_tokens, completion) };
  }

  private settle(ctx: Exchange, reported: Usage): void {
    const usage = this.believedPrompt(ctx, reported);
    const m = this.deps.metrics;
    const route = ctx.route.id;
    const instance = ctx.instanceName;
    const slots = m.hot.route(route, instance);
    const tokens = slots.tokens(ctx.consumer);
    tokens.add('prompt', usage.prompt_tokens);
    tokens.add('completion', usage.completion_tokens);
    // A total above its parts is charged whole (total_tokens quotas): the excess is its own kind, so the kinds sum to it.
    const other = usage.total_tokens - usage.prompt_tokens - usage.completion_tokens;
    if (other > 0) tokens.add('other', other);
    // Parts of prompt / completion, reported apart (never added to them); absent when the usage was counted.
    if (usage.cached_prompt_tokens !== undefined) tokens.add('cached_prompt', usage.cached_prompt_tokens);
    if (usage.cache_write_tokens !== undefined) tokens.add('cache_write', usage.cache_write_tokens);
    if (usage.reasoning_tokens !== undefined) tokens.add('reasoning', usage.reasoning_tokens);
    ctx.usage = usage;
    const est = ctx.estimate;
    if (est !== undefined && (ctx.common !== undefined || ctx.instance !== undefined)) {
      slots.estimateError(est.total_tokens - usage.total_tokens);
    }
    if (ctx.common !== undefined) settleHold(ctx.common, usage, slots, ctx.consumer);
    if (ctx.instance !== undefined) settleHold(ctx.instance, usage, slots, ctx.consumer);
  }

  private addQuotaHeaders(ctx: Exchange, headers: HeaderList): void {
    // Most requests hold one set of quotas: no merged copy.
    const c = ctx.common?.quotas ?? EMPTY_HOLD_QUOTAS;
    // After a failed attempt released its instance hold, the last instance tried still shows (a 504, a 502).
    const i = (ctx.instance ?? ctx.shownInstance)?.quotas ?? EMPTY_HOLD_QUOTAS;
    const quotas = i.length === 0 ? c : c.length === 0 ? i : [...c, ...i];
    if (quotas.length > 0) {
      stripRateLimitHeaders(headers);
      quotaHeaders(views(quotas, Date.now(), ctx.storeOf), { rejected: false }, headers);
    }
    // Set once settled: non-streaming answers only (a stream's headers leave before its usage is known). On every
    // answer of a route with quotas, also one that no quota charged (an instance without one, a rule key skipped).
    if (ctx.usage !== undefined && ctx.route.quotas !== undefined) headers.push([USAGE_HEADER, usageHeaderValue(ctx.usage)]);
  }

  private reject(ctx: Exchange, r: Rejection, instances: readonly CompiledInstance[], all?: readonly Rejection[]): void {
    ctx.releaseAll();
    const m = this.deps.metrics;
    const now = Date.now();
    const spent = new Set<PlannedQuota>();
    for (const d of all ?? [r]) for (const q of d.spent) spent.add(q);
    const shown: PlannedQuota[] = [];
    if (ctx.common !== undefined) shown.push(...ctx.common.quotas);
    for (const d of all ?? [r]) for (const q of d.spent) if (!shown.includes(q)) shown.push(q);
    const entries = views(shown, now, ctx.storeOf).map((e) => (spent.has(e.q) ? { ...e, spent: true } : { ...e, spent: false }));
    // The request is served again as soon as one denied instance has room (each denial's own wait covers every
    // quota it found spent). A denial whose quotas are spent only by the reservations of requests still running
    // has room as they settle, not at the window's end: the client is told to retry shortly.
    const viewOf = new Map(entries.map((e) => [e.q, e.view]));
    let retryAfterMs = Number.POSITIVE_INFINITY;
    for (const d of all ?? [r]) {
      const reservedOnly = d.spent.length > 0 && d.spent.every((sq) => { const v = viewOf.get(sq); return v !== undefined && v.consumed < v.limit; });
      retryAfterMs = Math.min(retryAfterMs, reservedOnly ? Math.min(d.retryAfterMs, RESERVED_RETRY_MS) : d.retryAfterMs);
    }
    const retryAfterS = Math.max(1, Math.ceil(retryAfterMs / 1000));
    const headers: HeaderList = [['content-type', 'application/json']];
    quotaHeaders(entries, { rejected: true, retryAfterS }, headers);
    headers.push(['retry-after', String(retryAfterS)]);
    // The openai and Anthropic SDKs retry a 429 after whatever Retry-After says, uncapped: a call would hang until
    // the window's end. A wait that long is for the caller to decide, so the SDK is told not to retry (it raises
    // its rate-limit error at once); shorter waits keep their retry.
    if (retryAfterS > SDK_RETRY_MAX_S) headers.push(['x-should-retry', 'false']);
    const q = r.quota;
    // `instances[i]` is the instance whose quota gave denial i (none for a route-wide quota).
    (all ?? [r]).forEach((d, i) => {
      m.rejected.inc({ route: ctx.route.id, instance: instances[i]?.name ?? '', rule: d.quota.metricRule, consumer: ctx.consumer });
    });
    const rate = ERRORS.SLC_RATE_LIMITED;
    const message = q.rejectedMsg ?? rate.message;
    const body = q.rejectedMsg !== undefined && looksJson(q.rejectedMsg) ? q.rejectedMsg
      : ctx.spec !== undefined ? ctx.spec.errorBody(q.rejectedCode, 'SLC_RATE_LIMITED', rate.type, message, undefined)
        : errorBody(message, rate.type, 'SLC_RATE_LIMITED');
    ctx.res.send(q.rejectedCode, headers, body);
    this.observe(ctx, q.rejectedCode);
  }

  /** An error answer's headers: relayed ones, plus its Content-Encoding when its body goes as the upstream coded it. */
  private failureHeaders(up: UpstreamHeaders, native: boolean): HeaderList {
    const out = this.relayHeaders(up);
    if (native) for (const v of headerValues(up, 'content-encoding')) out.push(['content-encoding', v]);
    return out;
  }

  private relayHeaders(up: UpstreamHeaders): HeaderList {
    const out: HeaderList = [];
    let left = MAX_RELAYED_HEADER_BYTES;
    let conn: string | undefined;
    for (let i = 0; i < up.length; i += 2) if (up[i] === 'connection') conn = conn === undefined ? up[i + 1] : `${conn},${up[i + 1]}`;
    // Content-Type describes the body Sluice relays (and metered as it): never dropped by an upstream's Connection.
    const hop = connectionListed(conn, 'content-type');
    for (let i = 0; i < up.length; i += 2) {
      const k = up[i]!;
      // X-Sluice-Usage describes this hop's settlement: an upstream's (a gateway's) never passes as ours. Headers the
      // upstream's Connection header names are for its hop only.
      if (!HOP_HEADERS.has(k) && k !== USAGE_HEADER && hop?.has(k) !== true) left = pushWithin(out, k, up[i + 1]!, left);
    }
    return out;
  }

  /** The client went away before anything was sent upstream: its holds go back, and it is recorded as a 499. */
  private left(ctx: Exchange): void {
    ctx.releaseAll();
    this.observe(ctx, 499);
  }

  private observe(ctx: Exchange, status: number): void {
    this.deps.metrics.hot.route(ctx.route.id, ctx.instanceName).answered(status, (performance.now() - ctx.req.startedAt) / 1000);
  }
}

/** Per-request state. Every field is set in the constructor so all exchanges share one shape. */
class Exchange implements LiveEntry<Exchange> {
  readonly snap: Snapshot;
  readonly storeOf: Resolve;
  readonly route: CompiledRoute;
  /** The route's ai-proxy, or the authenticated consumer's own. */
  proxy: CompiledProxy;
  readonly req: ClientRequest;
  readonly res: ClientResponse;
  /** The peer address in canonical text (uWS may print IPv6 in long form; ${remote_addr} keys must be stable). */
  readonly peer: string;
  consumer = '';
  instanceName = '';
  /** The instance of the current attempt (its outputScale and options size counted output). */
  served: CompiledInstance | undefined = undefined;
  prepared: PreparedCall | undefined = undefined;
  body: Buffer = EMPTY_BODY;
  /** The client's API (from the path) and its spec (undefined when no registered module defines it). */
  surface: SurfaceId = 'openai-chat';
  spec: SurfaceSpec | undefined = undefined;
  /** false for surfaces that produce no tokens: no reservation, no settlement. */
  metered = true;
  parseOpts: ParseOptions | undefined = undefined;
  /** The current attempt's provider translates between its wire format and the client's. */
  translated = false;
  estimate: Usage | undefined = undefined;
  /** The usage settled (X-Sluice-Usage on a non-streaming answer). */
  usage: Usage | undefined = undefined;
  common: QuotaHold | undefined = undefined;
  instance: QuotaHold | undefined = undefined;
  /** The last instance hold acquired, kept for the headers of an answer given after its attempt failed. */
  shownInstance: QuotaHold | undefined = undefined;
  /** The current attempt's upstream request. */
  call: UpstreamCall | undefined = undefined;
  /** The current attempt relays a stream: after its client goes, what the upstream already sent is still read. */
  streaming = false;
  /** The client went away: cut the current attempt (one closure per request, not per attempt); a stream's is wound
   *  down instead (its usage report may be waiting unread behind a slow client). */
  readonly abortUpstream = (): void => { this.cutCall(); };
  /** Cut at shutdown. */
  cut = false;
  /** Waiting on a prompt count or a quota admission (nothing sent upstream yet). */
  waiting = false;
  /** Answered 503 by the shutdown cut while it waited: the pipeline answers nothing more. */
  answeredAtCut = false;

  /** Cuts the current attempt; a stream with bytes waiting unread (its client was slow) is wound down instead, so what
   *  the upstream already sent is read. One whose client kept up is cut at once: its upstream stops generating. */
  cutCall(): void {
    const c = this.call;
    if (c === undefined) return;
    if (this.streaming && c.backlogged) c.windDown(READ_ON_QUIET_MS, READ_ON_MS);
    else c.abort();
  }

  liveOwner: object | undefined = undefined;
  livePrev: Exchange | undefined = undefined;
  liveNext: Exchange | undefined = undefined;

  constructor(snap: Snapshot, storeOf: Resolve, route: CompiledRoute, req: ClientRequest, res: ClientResponse) {
    this.snap = snap;
    this.storeOf = storeOf;
    this.route = route;
    this.proxy = route;
    this.req = req;
    this.res = res;
    this.peer = canonicalIp(req.remoteAddr) ?? req.remoteAddr;
  }

  releaseInstance(): void {
    this.instance?.release();
    this.instance = undefined;
  }

  releaseAll(): void {
    this.common?.release();
    this.instance?.release();
  }
}

/**
 * A report whose completion of 0 is not believed (text came with it), with the counted completion instead. A total that already
 * held the text (only the completion field said 0) is not added to again: the larger of it and prompt + counted.
 */
function withCountedCompletion(reported: Usage, counted: Usage): Usage {
  const c = Math.max(reported.completion_tokens, counted.completion_tokens);
  return {
    prompt_tokens: reported.prompt_tokens, completion_tokens: c, total_tokens: Math.max(reported.total_tokens, reported.prompt_tokens + c),
    ...(reported.cached_prompt_tokens === undefined ? {} : { cached_prompt_tokens: reported.cached_prompt_tokens }),
    ...(reported.cache_write_tokens === undefined ? {} : { cache_write_tokens: reported.cache_write_tokens }),
  };
}

/** The completion an upstream wrote, before OpenAI chat's reading added a total's excess to it (raw `completion_tokens`). */
function reportedCompletion(u: Usage): number {
  const raw = u.raw?.completion_tokens;
  return typeof raw === 'number' && Number.isSafeInteger(raw) && raw >= 0 && raw < u.completion_tokens ? raw : u.completion_tokens;
}

/** Charges a hold's quotas once (a hold already settled or released charges nothing) and counts what each charged. */
function settleHold(hold: QuotaHold, usage: Usage, slots: ReturnType<Metrics['hot']['route']>, consumer: string): void {
  if (!hold.open) return;
  const charged = hold.settle(usage);
  for (let i = 0; i < hold.quotas.length; i++) slots.charged(hold.quotas[i]!.metricRule, consumer, charged[i] ?? 0);
}

/** A stream's last bytes: what end() gave, then what the codec held for the charged usage. */
function joined(a: Buffer | undefined, b: Buffer | undefined): Buffer | undefined {
  return b === undefined ? a : a === undefined ? b : Buffer.concat([a, b]);
}

/** Replaces the content type when the provider gives one (a translated answer); otherwise the upstream's stays. */
function withContentType(headers: HeaderList, contentType: string | undefined): HeaderList {
  if (contentType === undefined) return headers;
  for (let i = headers.length - 1; i >= 0; i--) if (headers[i]![0] === 'content-type') headers.splice(i, 1);
  headers.push(['content-type', contentType]);
  return headers;
}

/**
 * An upstream's quota headers where Sluice writes its own: OpenAI's and the standard `x-ratelimit-*`, the IETF
 * pair, and the APISIX / Higress families (`x-ai-ratelimit-*`, `x-ai-<name>-ratelimit-*`, `x-tokenratelimit-*`),
 * so a client never reads two values for one name (an upstream that is itself a gateway sends them too).
 */
function stripRateLimitHeaders(headers: HeaderList): void {
  for (let i = headers.length - 1; i >= 0; i--) {
    const k = headers[i]![0];
    if (k.startsWith('x-ratelimit-') || k === 'ratelimit' || k === 'ratelimit-policy' || k.startsWith('x-tokenratelimit-')
      || (k.startsWith('x-ai-') && k.includes('ratelimit-'))) headers.splice(i, 1);
  }
}

function looksJson(s: string): boolean {
  const c = s.trimStart()[0];
  return c === '{' || c === '[';
}

/** A client's path or method in an error message: at most 200 characters of it, so an 8 KB path is not echoed whole. */
function clipped(p: string): string {
  return p.length <= 200 ? p : `${p.slice(0, 200)}… (${p.length} characters)`;
}
