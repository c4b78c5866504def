#!/usr/bin/env node
// Runs the compiled CLI in this process: no loader, no child process; signals reach the gateway directly.
// `npm run build` writes dist/ with tsc, then bundles dist/cli/main.js into dist/bundle/sluice.cjs (one file to
// load instead of ~290: scripts/bundle.mjs), which runs here. In a source checkout, a bundle older than the tsc
// output (tsc run alone after an edit) would run stale code, so dist/cli/main.js runs instead, at the unbundled
// start-up cost. Installed packages and images have no src/ (and npm does not keep build times): the bundle runs.
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// Until the CLI installs its own handler (start reads the config only after that), a SIGHUP's default action
// would kill the process while its modules load: it is ignored instead, losing nothing.
process.on('SIGHUP', () => {});

const main = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));
const bundle = fileURLToPath(new URL('../dist/bundle/sluice.cjs', import.meta.url));
if (!existsSync(main)) {
  console.error(`sluice: ${main} is missing: build it with \`npm run build\` in ${fileURLToPath(new URL('..', import.meta.url))} (npm install does it too)`);
  process.exit(1);
}
const hasBundle = existsSync(bundle);
const stale = hasBundle && existsSync(fileURLToPath(new URL('../src', import.meta.url))) && statSync(bundle).mtimeMs < statSync(main).mtimeMs;
if (hasBundle && !stale) {
  createRequire(import.meta.url)(bundle);
} else {
  if (stale) console.error('sluice: dist/bundle/sluice.cjs is older than dist/ (tsc ran alone?): running the unbundled build; `npm run build` rebuilds both');
  await import(new URL('../dist/cli/main.js', import.meta.url).href);
}
