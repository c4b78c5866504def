// Shared settings for the property suites. Every run is seeded: fast-check prints the seed and the
// counterexample path on failure, and SLUICE_FC_SEED=<seed> replays a run (add SLUICE_FC_PATH=<path> to go
// straight to the shrunk case). Each property has a bounded number of runs and stops starting new ones after
// a time budget, so a loaded 2-core machine makes the suite do fewer runs, never hang or fail.
import fc from 'fast-check';

function envInt(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer`);
  return n;
}

export const SEED: number = envInt('SLUICE_FC_SEED') ?? (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;
const PATH = process.env.SLUICE_FC_PATH;
/** Multiplies every run count (SLUICE_FC_RUNS_SCALE=10 for a long soak). */
const SCALE = envInt('SLUICE_FC_RUNS_SCALE') ?? 1;

/** Time budget of one property, after which no new run starts (the property still passes). */
const PROPERTY_BUDGET_MS = 3000;
/** Budget of one test file (one process): five files stay near 30 s even when other work loads the machine. */
const FILE_BUDGET_MS = 6000;
/** Every property gets at least this long, so a late property still runs a few cases. */
const MIN_BUDGET_MS = 300;
let fileDeadline: number | undefined;

/** `examples`: cases run before the random ones on every run (regressions found earlier). */
export function check<Ts extends [unknown, ...unknown[]]>(property: fc.IProperty<Ts>, numRuns: number, examples: Ts[] = []): void {
  const now = performance.now();
  fileDeadline ??= now + FILE_BUDGET_MS * SCALE;
  const budget = Math.max(MIN_BUDGET_MS, Math.min(PROPERTY_BUDGET_MS * SCALE, fileDeadline - now));
  fc.assert(property, {
    seed: SEED,
    ...(PATH === undefined ? {} : { path: PATH }),
    numRuns: numRuns * SCALE,
    // The assertion message in the report itself: the test runner does not print an error's cause.
    includeErrorInReport: true,
    plugins: [fc.interruptAfterTimeLimit(budget)],
    examples,
  });
}

/**
 * Runs `fn` and fails when it took longer than `seconds`: a guard against super-linear behaviour on
 * pathological inputs, set far above what a linear implementation needs on a loaded machine.
 */
export function within<T>(seconds: number, what: string, fn: () => T): T {
  const start = performance.now();
  const out = fn();
  const took = (performance.now() - start) / 1000;
  if (took > seconds) throw new Error(`${what} took ${took.toFixed(2)} s (deadline ${seconds} s): super-linear?`);
  return out;
}

/** Describes a thrown value for assertion messages. */
export function describeThrown(err: unknown): string {
  if (err instanceof Error) return `${err.constructor.name}: ${err.message.slice(0, 300)}`;
  return `non-Error thrown: ${String(err)}`;
}
