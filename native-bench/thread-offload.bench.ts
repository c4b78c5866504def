// Where should request preparation (JSON parse + validation + prompt token count + re-serialisation) run?
// For each body size: prepareRequest inline on the main thread vs a WorkerPool round trip, one at a time and
// with 64 in flight. Reports µs per op, main-thread busy µs per op (event-loop utilisation), and the longest
// event-loop block seen by perf_hooks.monitorEventLoopDelay. The crossover justifies tokens.offload_bytes.
// Other processes may share the cores: modes alternate in rounds and each cell keeps its best round.
// Usage: node --import tsx native-bench/thread-offload.bench.ts [--threads 2] [--ms 300]
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseOptions, prepareRequest, type PrepareOptions } from '../test/helpers/prepare.ts';
import { warmTokenizers } from '../src/tokens/encoding.ts';
import { WorkerPool } from '../src/workers/pool.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number`);
  return v;
}

const THREADS = arg('--threads', 2);
/** Time budget per (size, mode, round); loops also stop at MAX_OPS. */
const ROUND_MS = arg('--ms', 300);
const MAX_OPS = 20_000;
const IN_FLIGHT = 64;
const SIZES = [512, 4096, 16384, 65536, 524288];
/** Sizes whose single ops last long enough that one round averages well (and ×64 takes seconds). */
const ONE_ROUND_FROM = 65536;
const ROUNDS = 3;
const OPTS: PrepareOptions = { kind: 'chat', defaultMaxTokens: 256 };
const VARIANTS = 8;

// Deterministic mixed text (prose, code, a little CJK and emoji) so the tokenizer's caches see some variety.
let seed = 42;
function rand(n: number): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed % n;
}
const WORDS = ('the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were '
  + 'gateway token quota stream upstream request response latency window reserve settle function const return await '
  + 'if else for while import export interface class new throw catch 東京 数据 résumé naïve 😀 {"k":1} x=y+z; 0x1f 3.14 '
  + 'README.md /v1/chat/completions Authorization: Bearer').split(' ');

function text(chars: number): string {
  let s = '';
  while (s.length < chars) s += WORDS[rand(WORDS.length)] + (rand(12) === 0 ? '.\n' : ' ');
  return s;
}

const NONCE = '00000000';

/**
 * A streaming chat request body of at most `size` bytes, within a few bytes of it. The user text starts with
 * an 8-digit nonce that stamp() rewrites before each op, so no op hits the prompt-count cache.
 */
function body(size: number): Buffer {
  const make = (user: string): Buffer => Buffer.from(JSON.stringify({
    model: 'gpt-4o', stream: true, max_tokens: 256,
    messages: [{ role: 'system', content: 'You are a helpful assistant. Answer concisely.' }, { role: 'user', content: NONCE + ' ' + user }],
  }));
  let user = text(size);
  let b = make(user);
  while (b.length > size) {
    user = user.slice(0, user.length - Math.max(1, Math.floor((b.length - size) / 2)));
    b = make(user);
  }
  return b;
}

let stamps = 0;
const USER_CONTENT = '"content":"';

/** Makes the body's user text unique (the prompt-count cache then misses, as for a new message). */
function stamp(b: Buffer): Buffer {
  const at = b.indexOf(USER_CONTENT, b.indexOf('"role":"user"')) + USER_CONTENT.length;
  b.write(String(++stamps % 1e8).padStart(8, '0'), at, 'latin1');
  return b;
}

interface Result { ops: number; usPerOp: number; mainBusyUsPerOp: number; maxBlockMs: number }

const yieldLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

async function measure(run: (deadline: number) => Promise<number>): Promise<Result> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  await yieldLoop();
  const elu0 = performance.eventLoopUtilization();
  h.enable();
  const t0 = performance.now();
  const ops = await run(t0 + ROUND_MS);
  const wall = performance.now() - t0;
  h.disable();
  const elu = performance.eventLoopUtilization(elu0);
  return { ops, usPerOp: (wall * 1000) / ops, mainBusyUsPerOp: (elu.active * 1000) / ops, maxBlockMs: h.max / 1e6 };
}

function inline(bodies: Buffer[], fresh = true): Promise<Result> {
  let work = 0;
  return measure(async (deadline) => {
    let ops = 0;
    while (ops < MAX_OPS && (ops < 2 || performance.now() < deadline)) {
      const b = fresh ? stamp(bodies[ops % VARIANTS]!) : bodies[ops % VARIANTS]!;
      const t = performance.now();
      const res = prepareRequest(b, OPTS);
      work += performance.now() - t;
      if (!res.ok) throw new Error(res.message);
      ops++;
      // Let the loop turn between requests, as it does in the server, so a blocking op shows as loop delay.
      await yieldLoop();
    }
    return ops;
  }).then((r) => ({ ...r, usPerOp: (work * 1000) / r.ops })); // the work itself, without the loop turns
}

function pooled(pool: WorkerPool, bodies: Buffer[], inFlight: number): Promise<Result> {
  return measure(async (deadline) => {
    let started = 0;
    let done = 0;
    const lane = async (): Promise<void> => {
      while (started < MAX_OPS && (started < 2 || performance.now() < deadline)) {
        const r = await pool.prepare(stamp(bodies[started++ % VARIANTS]!), parseOptions(OPTS));
        if (!r.ok) throw new Error(r.message);
        done++;
      }
    };
    await Promise.all(Array.from({ length: inFlight }, lane));
    return done;
  });
}

/** The fixed cost of a hop: a task that does nothing (counting ''). */
async function floor(pool: WorkerPool): Promise<Result> {
  return measure(async (deadline) => {
    let ops = 0;
    while (ops < MAX_OPS && performance.now() < deadline) {
      await pool.countText('', undefined);
      ops++;
    }
    return ops;
  });
}

function best(rs: Result[]): Result {
  return {
    ops: rs.reduce((s, r) => s + r.ops, 0),
    usPerOp: Math.min(...rs.map((r) => r.usPerOp)),
    mainBusyUsPerOp: Math.min(...rs.map((r) => r.mainBusyUsPerOp)),
    maxBlockMs: Math.min(...rs.map((r) => r.maxBlockMs)),
  };
}

function kib(n: number): string {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

async function main(): Promise<void> {
  const started = performance.now();
  warmTokenizers(['o200k_base']);
  const pool = new WorkerPool({ threads: THREADS });
  try {
    // Thread start-up (and the workers' own tokenizer load) is not what is measured.
    const warm = body(512);
    await Promise.all(Array.from({ length: THREADS * 4 }, () => pool.prepare(warm, parseOptions(OPTS))));
    const hop = best([await floor(pool), await floor(pool), await floor(pool)]);

    const rows: string[][] = [];
    for (const size of SIZES) {
      const bodies = Array.from({ length: VARIANTS }, () => body(size));
      const tokens = (prepareRequest(bodies[0]!, OPTS) as { promptTokens: number }).promptTokens;
      for (let i = 0; i < VARIANTS; i++) { prepareRequest(bodies[i]!, OPTS); await pool.prepare(bodies[i]!, parseOptions(OPTS)); }
      const h: Result[] = [];
      const a: Result[] = [];
      const s: Result[] = [];
      const c: Result[] = [];
      const rounds = size >= ONE_ROUND_FROM ? 1 : ROUNDS;
      for (let r = 0; r < rounds; r++) {
        h.push(await inline(bodies, false));
        a.push(await inline(bodies));
        s.push(await pooled(pool, bodies, 1));
        c.push(await pooled(pool, bodies, IN_FLIGHT));
      }
      const H = best(h);
      const A = best(a);
      const S = best(s);
      const C = best(c);
      rows.push([
        kib(bodies[0]!.length), String(tokens),
        fmt(H.usPerOp), fmt(A.usPerOp), fmt(S.usPerOp), fmt(C.usPerOp),
        `${(S.usPerOp / A.usPerOp).toFixed(2)}x`, `${(C.usPerOp / A.usPerOp).toFixed(2)}x`,
        fmt(A.mainBusyUsPerOp), fmt(S.mainBusyUsPerOp), fmt(C.mainBusyUsPerOp),
        A.maxBlockMs.toFixed(1), S.maxBlockMs.toFixed(1), C.maxBlockMs.toFixed(1),
      ]);
      process.stderr.write(`  ${kib(size)}: ${A.ops}/${S.ops}/${C.ops} ops\n`);
    }

    const head = ['body', 'tokens', 'inline cached µs/op', 'inline µs/op', 'pool seq µs/op', `pool ×${IN_FLIGHT} µs/op`, 'seq/inline', `×${IN_FLIGHT}/inline`,
      'main busy µs/op: inline', 'pool seq', `pool ×${IN_FLIGHT}`, 'max loop block ms: inline', 'pool seq', `pool ×${IN_FLIGHT}`];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]): string => '| ' + cells.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join(' | ') + ' |';
    console.log(`thread-offload: prepareRequest inline vs WorkerPool (${THREADS} threads), node ${process.version}, best of ${ROUNDS} rounds × ${ROUND_MS} ms (1 round from ${kib(ONE_ROUND_FROM)})`);
    console.log(`empty-task hop (countText ''): ${fmt(hop.usPerOp)} µs round trip, ${fmt(hop.mainBusyUsPerOp)} µs main-thread busy`);
    console.log(line(head));
    console.log('|' + widths.map((w, i) => (i === 0 ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|') + '|');
    for (const r of rows) console.log(line(r));
    console.log('inline µs/op: the prepareRequest call itself, on a new user message; "cached": the same body again (prompt-count cache hit).');
    console.log('pool µs/op: wall / ops (for ×64, inverse throughput); ratios compare with uncached inline.');
    console.log('main busy: event-loop utilisation × wall / ops, the main-thread time each op costs.');
    console.log('max loop block: longest event-loop delay (monitorEventLoopDelay, 1 ms resolution); inline, it is the largest single op.');
    console.log(`total ${((performance.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    await pool.close();
  }
}

await main();
