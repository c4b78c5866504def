// Starting a worker thread on one of Sluice's own modules, from dist/ (production) or from the TypeScript sources
// (tests and benches run under tsx). A worker's entry does not go through the loader hooks `--import tsx`
// installs (Node 20), so from the sources the thread registers tsx itself before importing its entry.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** The sibling module `name` (without extension) of the module at `base` (its import.meta.url). */
export function siblingEntry(base: string, name: string): URL {
  return new URL(`./${name}${base.endsWith('.ts') ? '.ts' : '.js'}`, base);
}

export function spawnModuleThread(entry: URL, options: WorkerOptions): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, options);
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  const code = `import(${api}).then((t) => { t.register(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(code, { ...options, eval: true });
}
