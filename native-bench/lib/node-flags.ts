// The node flags Sluice is deployed with: those between `node` and `bin/sluice.mjs` in package.json's `start`
// script, which the container image's ENTRYPOINT repeats (test/packaging/node-flags.test.ts checks both). The
// benches run every Node proxy under test (Sluice, the bare hop, the floor) with them, so they measure what runs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** Flags of a command line `node <flags> <script> …`: the words from after `node` up to the first that is not a flag. */
export function flagsOf(words: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = words.indexOf('node') + 1; i > 0 && i < words.length && words[i]!.startsWith('--'); i++) out.push(words[i]!);
  return out;
}

export function deployedNodeFlags(root: string): string[] {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
  const start = pkg.scripts?.start;
  if (start === undefined) throw new Error('package.json has no start script');
  return flagsOf(start.trim().split(/\s+/));
}
