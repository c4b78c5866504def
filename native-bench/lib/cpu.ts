// CPU accounting from /proc, read by whoever owns the measured interval. /proc/<pid>/stat's utime+stime cover
// every thread of the process (worker threads included), which is what "the gateway's CPU" must mean.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

function clockTicks(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
}

/** Microseconds per clock tick (10,000 on the usual CLK_TCK of 100). */
export const US_PER_TICK = 1e6 / clockTicks();

/** utime+stime of a process in µs, or NaN when it is gone. */
export function processCpuUs(pid: number): number {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return Number.NaN;
  }
  // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so utime (field 14) is fields[11] and stime (field 15) is fields[12].
  return (Number(fields[11]) + Number(fields[12])) * US_PER_TICK;
}

/** Whole-box busy CPU (all cores, everything but idle and iowait) in µs, from the first line of /proc/stat. */
export function boxBusyUs(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user).
  const busy = v[0]! + v[1]! + v[2]! + v[5]! + v[6]! + v[7]!;
  return busy * US_PER_TICK;
}

export interface CpuSample {
  readonly atMs: number;
  readonly box: number;
  /** µs of CPU per watched pid, in the order given. */
  readonly pids: readonly number[];
}

export function sampleCpu(pids: readonly number[]): CpuSample {
  return { atMs: performance.now(), box: boxBusyUs(), pids: pids.map(processCpuUs) };
}

/** Busy cores of the whole box over a short window: used to wait for a quiet box before a run. */
export async function boxBusyCores(windowMs: number): Promise<number> {
  const t0 = performance.now();
  const b0 = boxBusyUs();
  await new Promise((r) => setTimeout(r, windowMs));
  return (boxBusyUs() - b0) / ((performance.now() - t0) * 1000);
}
