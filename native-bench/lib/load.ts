// Closed-loop HTTP load generator, run as a child process (see run-load.ts) so its CPU is its own.
// `connections` loops each keep one request in flight over a keep-alive undici Pool. After the warm-up, the
// measured window lasts `durationMs` or until `maxRequests` requests completed, whichever comes first.
// CPU of the watched pids is read from /proc at the exact start and end of that window, here, so the sample
// and the window cannot drift apart.
import { Pool } from 'undici';
import { postRequest, RawConnection } from './raw-http.ts';
import { processRssKb, sampleCpu, type CpuSample } from './cpu.ts';
import { median, percentile } from './stats.ts';

export interface LoadSpec {
  /** Origin, e.g. http://127.0.0.1:8080. */
  readonly origin: string;
  readonly path: string;
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly connections: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** Upper bound on requests completed inside the measured window. */
  readonly maxRequests: number;
  /** SSE answers: count frames and the time to the first body chunk. */
  readonly stream: boolean;
  /** Processes whose CPU is sampled over the measured window. */
  readonly watchPids: readonly number[];
  /** Slow streams: cut every request still in flight when the window ends instead of letting it finish. */
  readonly abortAtEnd?: boolean;
  /** Connection loops start spread over this many ms (so slow streams do not tick in lock-step). */
  readonly rampMs?: number;
  /** Slow streams: a bare net.Socket client (raw-http.ts) instead of undici, so the client costs little per frame. */
  readonly raw?: boolean;
  /** Sample the watched pids' RSS over 1 s before the first request and every 200 ms inside the window. */
  readonly sampleRss?: boolean;
}

export interface LoadResult {
  readonly requests: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly elapsedMs: number;
  readonly rps: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** SSE frames (blank-line-terminated events) received inside the window; 0 unless streaming. */
  readonly frames: number;
  readonly framesPerSec: number;
  readonly ttffP50Ms: number;
  readonly ttffP99Ms: number;
  /** µs of CPU per watched pid over the window (NaN when a process vanished). */
  readonly cpuUs: readonly number[];
  /** µs of busy CPU of the whole box over the window. */
  readonly boxBusyUs: number;
  /** This load generator's own CPU over the window, µs. */
  readonly selfCpuUs: number;
  /** With sampleRss: KiB per watched pid before the first request, and the median of the window's samples. */
  readonly rssBeforeKb?: readonly number[];
  readonly rssWindowKb?: readonly number[];
  /** With sampleRss: median number of responses open (headers in, body not ended) at the RSS samples. */
  readonly openStreams?: number;
  /** With sampleRss: [open responses, KiB of the first watched pid] every 100 ms from the first request on. */
  readonly rssSeries?: readonly (readonly [number, number])[];
}

type Phase = 'warmup' | 'measure' | 'done';

export async function runLoadHere(spec: LoadSpec): Promise<LoadResult> {
  const pool = new Pool(spec.origin, { connections: spec.connections, pipelining: 1 });
  const payload = Buffer.from(spec.body);
  const headers = { ...spec.headers, 'content-type': 'application/json' };
  const latencies = new Float64Array(spec.maxRequests);
  const ttffs = new Float64Array(spec.stream ? spec.maxRequests : 0);
  let phase: Phase = 'warmup';
  let requests = 0;
  let ttffCount = 0;
  let errors = 0;
  let firstError: string | undefined;
  let frames = 0;
  let startSample: CpuSample | undefined;
  let endSample: CpuSample | undefined;
  let selfStart = process.cpuUsage();
  let selfUs = 0;
  let endTimer: NodeJS.Timeout | undefined;
  let rssTimer: NodeJS.Timeout | undefined;
  let open = 0;
  const series: [number, number][] = [];
  let seriesTimer: NodeJS.Timeout | undefined;
  let rssBefore: number[] | undefined;
  if (spec.sampleRss === true) {
    // The median of a few samples: the server may still be returning memory from the previous run.
    const before: number[][] = spec.watchPids.map(() => []);
    for (let k = 0; k < 5; k++) {
      spec.watchPids.forEach((pid, i) => before[i]!.push(processRssKb(pid)));
      await new Promise((r) => setTimeout(r, 200));
    }
    rssBefore = before.map((v) => median(v));
    seriesTimer = setInterval(() => { if (series.length < 2000) series.push([open, processRssKb(spec.watchPids[0]!)]); }, 100);
  }
  const rssSamples: number[][] = spec.watchPids.map(() => []);
  const openSamples: number[] = [];
  const sampleRss = () => {
    spec.watchPids.forEach((pid, i) => rssSamples[i]!.push(processRssKb(pid)));
    openSamples.push(open);
  };

  const endMeasure = () => {
    if (phase !== 'measure') return;
    endSample = sampleCpu(spec.watchPids);
    const d = process.cpuUsage(selfStart);
    selfUs = d.user + d.system;
    phase = 'done';
    clearTimeout(endTimer);
    clearInterval(rssTimer);
    clearInterval(seriesTimer);
    if (spec.abortAtEnd === true) {
      void pool.destroy().catch(() => undefined);
      for (const c of raws) c.destroy();
    }
  };
  const startTimer = setTimeout(() => {
    startSample = sampleCpu(spec.watchPids);
    selfStart = process.cpuUsage();
    phase = 'measure';
    endTimer = setTimeout(endMeasure, spec.durationMs);
    if (rssBefore !== undefined) rssTimer = setInterval(sampleRss, 200);
  }, spec.warmupMs);

  const fail = (msg: string) => {
    if (phase === 'measure') errors++;
    firstError ??= msg;
  };

  const raws: RawConnection[] = [];
  const origin = new URL(spec.origin);
  const rawBytes = spec.raw === true ? postRequest(origin.hostname, Number(origin.port), spec.path, spec.headers, spec.body) : Buffer.alloc(0);
  const rawLoop = async (i: number): Promise<void> => {
    const ramp = spec.rampMs ?? 0;
    if (ramp > 0) await new Promise((r) => setTimeout(r, (i * ramp) / spec.connections));
    let t0 = 0;
    let first = true;
    let last = 0;
    let isOpen = false;
    const conn = new RawConnection(origin.hostname, Number(origin.port), {
      head: () => { open++; isOpen = true; first = true; last = 0; },
      body: (b, start, end) => {
        if (start === end) return;
        if (first) {
          first = false;
          if (phase === 'measure' && ttffCount < ttffs.length) ttffs[ttffCount++] = performance.now() - t0;
        }
        if (phase === 'measure') {
          for (let k = b.indexOf(10, start); k !== -1 && k < end; k = b.indexOf(10, k + 1)) {
            if ((k === start ? last : b[k - 1]) === 10) frames++;
          }
        }
        last = b[end - 1]!;
      },
    });
    raws.push(conn);
    while (phase !== 'done') {
      t0 = performance.now();
      try {
        const status = await conn.request(rawBytes);
        if (isOpen) { open--; isOpen = false; }
        if (status < 200 || status >= 300) { fail(`HTTP ${status}`); continue; }
        if (phase !== 'measure') continue;
        latencies[requests++] = performance.now() - t0;
        if (requests >= spec.maxRequests) endMeasure();
      } catch (err) {
        if (isOpen) { open--; isOpen = false; }
        if ((phase as Phase) === 'done' && spec.abortAtEnd === true) break;
        fail((err as Error).message);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    conn.destroy();
  };

  const loop = async (i: number): Promise<void> => {
    const ramp = spec.rampMs ?? 0;
    if (ramp > 0) await new Promise((r) => setTimeout(r, (i * ramp) / spec.connections));
    while (phase !== 'done') {
      const t0 = performance.now();
      let isOpen = false;
      try {
        const res = await pool.request({ path: spec.path, method: 'POST', headers, body: payload });
        open++;
        isOpen = true;
        let first = true;
        // Last byte of the previous chunk, so a "\n\n" split across two chunks still counts as one event end.
        let last = 0;
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          if (!spec.stream) continue;
          if (first) {
            first = false;
            if (phase === 'measure' && ttffCount < ttffs.length) ttffs[ttffCount++] = performance.now() - t0;
          }
          if (phase === 'measure') {
            for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) {
              if ((i === 0 ? last : chunk[i - 1]) === 10) frames++;
            }
          }
          last = chunk[chunk.length - 1]!;
        }
        open--;
        isOpen = false;
        if (res.statusCode < 200 || res.statusCode >= 300) { fail(`HTTP ${res.statusCode}`); continue; }
        if (phase !== 'measure') continue;
        latencies[requests++] = performance.now() - t0;
        if (requests >= spec.maxRequests) endMeasure();
      } catch (err) {
        if (isOpen) open--;
        // A request cut at the end of the window is the plan, not an error.
        if ((phase as Phase) === 'done' && spec.abortAtEnd === true) break;
        fail((err as Error).message);
        // Never spin hot on a refused connection.
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };

  // The generator must not outlive its window by much, whatever the server does.
  const hardStop = setTimeout(() => { process.stderr.write('load: hard timeout\n'); process.exit(3); }, spec.warmupMs + spec.durationMs + 20_000);
  await Promise.all(Array.from({ length: spec.connections }, (_, i) => (spec.raw === true ? rawLoop(i) : loop(i))));
  clearTimeout(hardStop);
  clearTimeout(startTimer);
  if (!pool.destroyed) await pool.destroy();

  if (startSample === undefined || endSample === undefined) throw new Error('measured window never ran');
  const elapsedMs = endSample.atMs - startSample.atMs;
  const s0 = startSample;
  return {
    requests,
    errors,
    firstError,
    elapsedMs,
    rps: (requests * 1000) / elapsedMs,
    p50Ms: percentile(latencies, requests, 0.5),
    p99Ms: percentile(latencies, requests, 0.99),
    frames,
    framesPerSec: (frames * 1000) / elapsedMs,
    ttffP50Ms: percentile(ttffs, ttffCount, 0.5),
    ttffP99Ms: percentile(ttffs, ttffCount, 0.99),
    cpuUs: endSample.pids.map((v, i) => v - s0.pids[i]!),
    boxBusyUs: endSample.box - s0.box,
    selfCpuUs: selfUs,
    ...(rssBefore === undefined ? {} : {
      rssBeforeKb: rssBefore,
      rssWindowKb: rssSamples.map((v) => median(v)),
      openStreams: median(openSamples),
      rssSeries: series,
    }),
  };
}

// As a forked child: specs in over IPC one at a time, a result out for each; the parent stops the process.
if (process.send !== undefined && process.argv.includes('--child')) {
  process.on('message', (spec: LoadSpec) => {
    runLoadHere(spec).then(
      (result) => process.send!({ ok: true, result }),
      (err: unknown) => process.send!({ ok: false, error: (err as Error).stack ?? String(err) }),
    );
  });
  process.once('disconnect', () => process.exit(0));
  // Tell the parent the listener is in place: a spec sent earlier could be lost while tsx is still loading.
  process.send({ ready: true });
}
