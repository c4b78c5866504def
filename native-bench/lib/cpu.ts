// CPU accounting from /proc, read by whoever owns the measured interval. /proc/<pid>/stat's utime+stime cover
// every thread of the process (worker threads included), which is what "the gateway's CPU" must mean.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

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

// The command name (field 2) may contain spaces and parentheses: fields are read after the last ')'.
// There fields[0] is field 3 (state), so ppid (field 4) is fields[1], utime (14) fields[11], stime (15) fields[12].
function statFields(text: string): string[] {
  const close = text.lastIndexOf(')');
  if (close === -1) throw new Error('not a /proc/<pid>/stat line');
  return text.slice(close + 2).trim().split(' ');
}

/** utime+stime in clock ticks from the text of /proc/<pid>/stat. */
export function parseStatTicks(text: string): number {
  const f = statFields(text);
  const ticks = Number(f[11]) + Number(f[12]);
  if (!Number.isFinite(ticks)) throw new Error('no utime/stime in /proc/<pid>/stat');
  return ticks;
}

/** The parent pid from the text of /proc/<pid>/stat. */
export function parseStatPpid(text: string): number {
  return Number(statFields(text)[1]);
}

/** VmRSS in KiB from the text of /proc/<pid>/status; NaN when absent (a zombie has none). */
export function parseVmRssKb(text: string): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(text);
  return m === null ? Number.NaN : Number(m[1]);
}

/** utime+stime of a process in µs, or NaN when it is gone. */
export function processCpuUs(pid: number): number {
  try {
    return parseStatTicks(readFileSync(`/proc/${pid}/stat`, 'utf8')) * US_PER_TICK;
  } catch {
    return Number.NaN;
  }
}

/** Resident set of a process in KiB, or NaN when it is gone. */
export function processRssKb(pid: number): number {
  try {
    return parseVmRssKb(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return Number.NaN;
  }
}

/** Pids whose parent is `ppid` (a scan of /proc: works without CONFIG_PROC_CHILDREN). */
export function childPids(ppid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (parseStatPpid(readFileSync(`/proc/${name}/stat`, 'utf8')) === ppid) out.push(Number(name));
    } catch { /* exited meanwhile */ }
  }
  return out;
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
