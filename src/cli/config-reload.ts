// Reloads read, parse and validate the config file on a thread of their own, so serving goes on meanwhile (a
// 5,000-route YAML file held the serving loop for 1.4–2 s). The config comes back by structured clone, as the
// serving threads receive it, and is frozen again here. SIGHUPs that arrive while one loads are folded into one
// more load after it: the file's newest content is what gets applied, once.
import { ConfigError, type ConfigIssue } from '../config/issues.ts';
import type { SluiceConfig } from '../config/types.ts';
import { freezeConfig } from '../config/validate.ts';
import { log } from '../core/log.ts';
import { siblingEntry, spawnModuleThread } from '../core/module-thread.ts';

export interface LoadRequest { readonly path: string; readonly env: NodeJS.ProcessEnv }
export type LoadReply =
  | { readonly ok: true; readonly config: SluiceConfig }
  | { readonly ok: false; readonly issues: ConfigIssue[] }
  | { readonly ok: false; readonly message: string };

const ENTRY = siblingEntry(import.meta.url, 'config-load-thread');
/** A load that takes longer is abandoned (its thread terminated). yaml parses ~50-100k values a second: a 5,000-route
 *  file takes ~1.5 s, a 2 MiB list of a million values ~20 s (and ~1 GB); a JSON file is read by JSON.parse. */
export const LOAD_TIMEOUT_MS = 120_000;
/** The loading thread's heap: a file that would need more fails the reload instead of the process. */
const LOAD_HEAP_MB = 2048;

/** The config file, loaded as loadConfigFile would (the same ConfigError on a bad file), on a thread of its own. */
export function loadConfigOffThread(path: string, env: NodeJS.ProcessEnv, timeoutMs = LOAD_TIMEOUT_MS): Promise<SluiceConfig> {
  return new Promise((resolve, reject) => {
    const request: LoadRequest = { path, env };
    const worker = spawnModuleThread(ENTRY, { workerData: request, name: 'sluice-config-load', resourceLimits: { maxOldGenerationSizeMb: LOAD_HEAP_MB } });
    let done = false;
    const finish = (err: Error | undefined, config?: SluiceConfig): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      void worker.terminate();
      if (err !== undefined) reject(err); else resolve(config!);
    };
    const timer = setTimeout(() => finish(new Error(`${path}: loading the config took over ${Math.round(timeoutMs / 1000)} s; abandoned`)), timeoutMs);
    worker.once('message', (reply: LoadReply) => {
      if (reply.ok) finish(undefined, freezeConfig(reply.config));
      else finish('issues' in reply ? new ConfigError(reply.issues) : new Error(`${path}: ${reply.message}`));
    });
    // Out of memory (ERR_WORKER_OUT_OF_MEMORY) or a crash while loading: the reload fails, the process goes on.
    worker.once('error', (err) => finish(new Error(`${path}: the config could not be loaded (${err.message})`)));
    worker.once('exit', (code) => finish(new Error(`${path}: the config loader stopped (exit ${code}) without an answer`)));
  });
}

/**
 * One reload at a time: `request()` starts a load, or, while one runs, asks for one more after it. `apply` gets
 * the loaded config or the error; `close()` drops what is loading and anything asked for.
 */
export class ConfigReloader {
  private loading = false;
  private again = false;
  private closed = false;

  constructor(
    private readonly path: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly apply: (result: SluiceConfig | Error) => void,
    private readonly timeoutMs = LOAD_TIMEOUT_MS,
  ) {}

  request(): void {
    if (this.closed) return;
    if (this.loading) { this.again = true; return; }
    this.loading = true;
    log.info('config reload: loading the file', { file: this.path });
    loadConfigOffThread(this.path, this.env, this.timeoutMs).then((c) => c, (err: unknown) => (err instanceof Error ? err : new Error(String(err)))).then((result) => {
      this.loading = false;
      if (this.closed) return;
      this.apply(result);
      if (this.again) { this.again = false; this.request(); }
    });
  }

  close(): void {
    this.closed = true;
  }
}
