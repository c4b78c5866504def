// Per-call cost of the answer path's pure pieces, on the compiled modules (`dist/`, what production runs: tsx's
// output measured the head parser below slower than its predecessor, compiled it is 2.2× faster), each beside a
// baseline measured in the same process, rounds alternated:
//   - usage of a buffered answer read from its end (streaming/json-tail.ts, via decodeChat) vs JSON.parse of the
//     whole answer, the way it was read before;
//   - an upstream response head parsed (upstream/h1-head.ts) vs its latin1 decode alone;
//   - an upstream connection's timeout moved three times and cleared (core/deadlines.ts) vs the setTimeout /
//     clearTimeout pairs it replaced;
//   - a streamed content frame through the usage meter (streaming/usage-meter.ts), in streams of 100 frames whose
//     first teaches it the frames' shape, vs decoding the frame to a string, which the learned shape skips.
//   npm run build && node --import tsx native-bench/answer-path.bench.ts [--rounds 12] [--calls 100000]
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { flag } from './lib/args.ts';
import { median } from './lib/stats.ts';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));

/** The mock's answer to the bench request (32 tokens): what gateway.bench relays. */
const ANSWER = Buffer.from('{"id":"chatcmpl-mock-1","object":"chat.completion","created":1796072527,"model":"gpt-4o-mini",'
  + '"system_fingerprint":"fp_mock","choices":[{"index":0,"message":{"role":"assistant","content":"'
  + Array.from({ length: 32 }, () => 'tok').join(' ') + '","refusal":null},"logprobs":null,"finish_reason":"length"}],'
  + '"usage":{"prompt_tokens":16,"completion_tokens":32,"total_tokens":48}}');
/** A content frame of the mock's streams, as the upstream client hands it over. */
const FRAME = Buffer.from('data: {"id":"chatcmpl-mock-1","object":"chat.completion.chunk","created":1796072527,"model":"gpt-4o-mini",'
  + '"system_fingerprint":"fp_mock","choices":[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}\n\n');
const FRAMES_PER_STREAM = 100;
const HEAD = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 312\r\nx-request-id: req_abc123def456\r\n'
  + 'openai-processing-ms: 12\r\ndate: Mon, 30 Nov 2026 20:00:00 GMT\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\n');

interface Case {
  readonly name: string;
  readonly run: () => number;
  readonly baseline: string;
  readonly base: () => number;
}

function timed(calls: number, f: () => number): number {
  let sink = 0;
  const t = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) sink += f();
  const ns = Number(process.hrtime.bigint() - t) / calls;
  if (sink === -1) console.log(sink);
  return ns;
}

async function main(): Promise<void> {
  if (!existsSync(`${DIST}providers/openai/chat.js`)) {
    console.error('native-bench/answer-path.bench.ts measures the compiled modules: run `npm run build` first');
    process.exit(2);
  }
  const load = async <T>(rel: string): Promise<T> => (await import(pathToFileURL(`${DIST}${rel}`).href)) as T;
  const { decodeChat } = await load<{ decodeChat: (c: unknown, b: Buffer, max: number) => { usage?: { total_tokens: number } } }>('providers/openai/chat.js');
  const { parseResponseHead } = await load<{ parseResponseHead: (s: string) => { status: number } | string }>('upstream/h1-head.js');
  const { Deadlines } = await load<{ Deadlines: new () => { set(x: object, ms: number): void; clear(x: object): void } }>('core/deadlines.js');
  type Meter = { push(b: Buffer): Buffer | undefined; takeCountable(): string | undefined; readonly frames: number };
  const { StreamMeter } = await load<{ StreamMeter: new (o: { stripUsage: boolean }) => Meter }>('streaming/usage-meter.js');
  // Bounded: at most 50 rounds of 1M calls per piece.
  const rounds = flag('--rounds', 12, 2, 50);
  const calls = flag('--calls', 100_000, 1_000, 1_000_000);
  const headEnd = HEAD.indexOf('\r\n\r\n');
  const deadlines = new Deadlines();
  const entry = { deadline: 0, liveOwner: undefined, livePrev: undefined, liveNext: undefined, onDeadline: () => undefined };
  const noop = (): void => undefined;
  let meter = new StreamMeter({ stripUsage: false });
  const frame = (): number => {
    if (meter.frames >= FRAMES_PER_STREAM) meter = new StreamMeter({ stripUsage: false });
    const out = meter.push(FRAME);
    meter.takeCountable();
    return out === undefined ? 0 : out.length;
  };
  const cases: Case[] = [
    {
      name: 'usage of a 446-byte answer (json-tail)', run: () => decodeChat(undefined, ANSWER, 1e9).usage!.total_tokens,
      baseline: 'JSON.parse of the whole answer', base: () => (JSON.parse(ANSWER.toString('utf8')) as { usage: { total_tokens: number } }).usage.total_tokens,
    },
    {
      name: 'upstream head, 8 fields (h1-head)', run: () => { const h = parseResponseHead(HEAD.toString('latin1', 0, headEnd)); return typeof h === 'string' ? 0 : h.status; },
      baseline: 'its latin1 decode alone', base: () => HEAD.toString('latin1', 0, headEnd).length,
    },
    {
      name: 'one connection\'s timeouts per request (deadlines)', run: () => { deadlines.set(entry, 60_000); deadlines.set(entry, 60_000); deadlines.set(entry, 30_000); deadlines.clear(entry); return 1; },
      baseline: 'three setTimeout + clearTimeout pairs', base: () => {
        for (let i = 0; i < 3; i++) clearTimeout(setTimeout(noop, 60_000));
        return 1;
      },
    },
    {
      name: `a ${FRAME.length}-byte content frame through the usage meter`, run: frame,
      baseline: 'the frame decoded to a string', base: () => FRAME.toString('utf8').length,
    },
  ];
  const res = cases.map(() => ({ run: [] as number[], base: [] as number[] }));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < cases.length; i++) {
      const c = cases[i]!;
      const first = r % 2 === 0;
      if (first) res[i]!.run.push(timed(calls, c.run));
      res[i]!.base.push(timed(calls, c.base));
      if (!first) res[i]!.run.push(timed(calls, c.run));
    }
  }
  console.log(`answer-path microbenchmarks, compiled dist/, node ${process.version}, ${rounds} rounds × ${calls.toLocaleString('en-US')} calls (medians)`);
  console.log('| piece | ns/call | baseline | ns/call | ratio |\n|---|--:|---|--:|--:|');
  for (let i = 0; i < cases.length; i++) {
    const a = median(res[i]!.run);
    const b = median(res[i]!.base);
    console.log(`| ${cases[i]!.name} | ${a.toFixed(0)} | ${cases[i]!.baseline} | ${b.toFixed(0)} | ${(a / b).toFixed(2)} |`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
