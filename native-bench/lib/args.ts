// Command-line numbers for the benchmarks: every flag is bounded, so a typo cannot start an unbounded run.
export function numArg(flag: string, v: string | undefined, min: number, max: number): number {
  const n = Number(v);
  if (v === undefined || !Number.isFinite(n) || n < min || n > max) throw new Error(`${flag} must be a number in ${min}..${max}`);
  return n;
}

/** `--name <number>` from the command line, bounded; `fallback` when absent. */
export function flag(name: string, fallback: number, min: number, max: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? numArg(name, process.argv[i + 1], min, max) : fallback;
}
