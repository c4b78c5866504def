#!/usr/bin/env node
// Runs the compiled CLI (dist/) in this process: no loader, no child process; signals reach the gateway directly.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  console.error(`sluice: ${fileURLToPath(main)} is missing: build it with \`npm run build\` in ${fileURLToPath(new URL('..', import.meta.url))} (npm install does it too)`);
  process.exit(1);
}
await import(main.href);
