// Minimal structured logger: one JSON line per event on stderr. SLUICE_LOG sets the level
// (debug, info, warn, error, silent). Callers pass fields, never secrets: no API keys, no Redis passwords.
type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level | 'silent', number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

function threshold(): number {
  const v = (process.env.SLUICE_LOG ?? 'info') as Level | 'silent';
  return ORDER[v] ?? ORDER.info;
}

let min = threshold();

export function setLogLevel(level: Level | 'silent'): void {
  min = ORDER[level];
}

function emit(level: Level, msg: string, fields?: Record<string, unknown>): void {
  if (ORDER[level] < min) return;
  const line: Record<string, unknown> = { t: new Date().toISOString(), level, msg };
  if (fields !== undefined) {
    for (const k of Object.keys(fields)) {
      const v = fields[k];
      line[k] = v instanceof Error ? { name: v.name, message: v.message, code: (v as { code?: unknown }).code } : v;
    }
  }
  process.stderr.write(JSON.stringify(line) + '\n');
}

export const log = {
  debug: (msg: string, fields?: Record<string, unknown>) => emit('debug', msg, fields),
  info: (msg: string, fields?: Record<string, unknown>) => emit('info', msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>) => emit('warn', msg, fields),
  error: (msg: string, fields?: Record<string, unknown>) => emit('error', msg, fields),
};
