// The prompt count cache's hit path, per message text of every metered request: src/tokens/count.ts CountCache
// against a plain Map lookup (the floor) and an exact LRU (delete + set on every hit, what it replaced), each key
// a fresh string from JSON.parse as in a request. And a 20-message chat counted through the cache.
// Usage: node --import tsx native-bench/count-cache.bench.ts [--n 500000] [--reps 5]
import { CountCache, countChatPrompt } from '../src/tokens/count.ts';
import { numArg } from './lib/args.ts';
import { median } from './lib/stats.ts';

function flag(name: string, fallback: number, min: number, max: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? numArg(name, process.argv[i + 1], min, max) : fallback;
}

const N = flag('--n', 500_000, 10_000, 10_000_000);
const REPS = flag('--reps', 5, 1, 20);

/** What the cache replaced: every hit moves the entry to the back of the Map. */
class ExactLru {
  private readonly map = new Map<string, number>();
  get(text: string): number | undefined {
    const n = this.map.get(text);
    if (n !== undefined) { this.map.delete(text); this.map.set(text, n); }
    return n;
  }
  set(text: string, n: number): void { this.map.set(text, n); }
}

const TEXT = 'You are a helpful assistant. Answer briefly and cite your sources.';
const JSON_TEXT = JSON.stringify({ t: TEXT });
const caches: Record<string, { get(t: string): number | undefined; set(t: string, n: number): void }> = {
  'plain Map.get (floor)': new Map<string, number>(),
  'exact LRU (before)': new ExactLru(),
  'CountCache (now)': new CountCache(),
};
for (const c of Object.values(caches)) c.set(TEXT, 14);

/** ns per lookup of a fresh key, parse included (the parse alone is measured and subtracted). */
function lookup(get: ((t: string) => number | undefined) | undefined): number {
  let sink = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const key = (JSON.parse(JSON_TEXT) as { t: string }).t;
    sink += get === undefined ? key.length : (get(key) ?? 0);
  }
  const ns = Number(process.hrtime.bigint() - t0) / N;
  if (sink === -1) console.log(sink);
  return ns;
}

const rows = new Map<string, number[]>();
for (let r = 0; r < REPS; r++) {
  const parse = lookup(undefined);
  for (const [name, c] of Object.entries(caches)) {
    const list = rows.get(name) ?? [];
    list.push(lookup((t) => c.get(t)) - parse);
    rows.set(name, list);
  }
}
const floor = median(rows.get('plain Map.get (floor)')!);
console.log(`prompt count cache, hit of a fresh ${TEXT.length}-char key, ns per lookup (median of ${REPS}, JSON.parse subtracted):`);
for (const [name, list] of rows) console.log(`  ${name.padEnd(24)} ${median(list).toFixed(0).padStart(6)} ns   ÷ floor ${(median(list) / floor).toFixed(2)}`);

const chat = Array.from({ length: 20 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: `Turn ${i}: ${TEXT}` }));
const wire = JSON.stringify(chat);
countChatPrompt(JSON.parse(wire) as unknown[], 'o200k_base');
const times: number[] = [];
for (let r = 0; r < REPS; r++) {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N / 100; i++) countChatPrompt(JSON.parse(wire) as unknown[], 'o200k_base');
  times.push(Number(process.hrtime.bigint() - t0) / (N / 100) / 1000);
}
console.log(`a 20-message chat counted through the cache (every text a hit), parse included: ${median(times).toFixed(2)} µs`);
