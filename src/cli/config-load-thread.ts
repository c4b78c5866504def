// The thread a reload reads, parses and validates its config file in (config-reload.ts): a 5,000-route YAML file
// takes ~1.5 s in the yaml parser, which on the serving thread held every request for that long.
import { parentPort, workerData } from 'node:worker_threads';
import { loadConfigFile } from '../config/load.ts';
import { ConfigError } from '../config/issues.ts';
import type { LoadReply, LoadRequest } from './config-reload.ts';
// Provider modules register their names and instance checks with config validation.
import '../providers/registry.ts';

const { path, env } = workerData as LoadRequest;
let reply: LoadReply;
try {
  reply = { ok: true, config: loadConfigFile(path, env) };
} catch (err) {
  reply = err instanceof ConfigError ? { ok: false, issues: err.issues } : { ok: false, message: err instanceof Error ? err.message : String(err) };
}
parentPort!.postMessage(reply);
