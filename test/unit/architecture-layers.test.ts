// The layer table of docs/architecture.md §1, enforced: every folder of src/ is in it, every import of a module in
// src/ goes to its own layer or a lower one, each heavy dependency is imported from one folder only (the list below
// repeats the document's), and every package src/ loads is a runtime dependency. The layer table is read from the
// document itself, so the two cannot drift apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SRC = join(ROOT, 'src');

/** Folder → layer, from the table: `layer N  folder/ …` and continuation rows `         folder/ …`. */
function layersFromDoc(): Map<string, number> {
  const doc = readFileSync(join(ROOT, 'docs/architecture.md'), 'utf8');
  const from = doc.indexOf('## 1. Layers');
  const open = doc.indexOf('```\n', from);
  const close = doc.indexOf('```\n', open + 4);
  assert.ok(from >= 0 && open > from && close > open, 'docs/architecture.md has its layer table');
  const layers = new Map<string, number>();
  let layer = -1;
  for (const line of doc.slice(open + 4, close).split('\n')) {
    const head = /^layer (\d+) +([a-z]+)\/ /.exec(line);
    const more = /^ {9}([a-z]+)\/ /.exec(line);
    if (head !== null) layer = Number(head[1]);
    const folder = head?.[2] ?? more?.[1];
    if (folder !== undefined) layers.set(folder, layer);
  }
  return layers;
}

function sources(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) sources(p, out);
    else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** The top folder of a path under src/ ('app.ts' for the composition root, which sits with cli/). */
function folderOf(file: string): string {
  const rel = relative(SRC, file).split('/');
  return rel.length === 1 ? 'cli' : rel[0]!;
}

/** Every module specifier a file imports or re-exports (static, dynamic, require). */
function specifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/\b(?:import|export)\b[^'";]*?\bfrom\s+'([^']+)'|\bimport\(\s*'([^']+)'\s*\)|\brequire\(\s*'([^']+)'\s*\)|^import\s+'([^']+)'/gm)) {
    out.push((m[1] ?? m[2] ?? m[3] ?? m[4])!);
  }
  return out;
}

const HEAVY: Record<string, string> = {
  'uWebSockets.js': 'frontend', ioredis: 'quota/redis', piscina: 'workers', msgpackr: 'workers',
  'prom-client': 'metrics', 'gpt-tokenizer': 'tokens', re2js: 'rules/regex.ts',
};

/** Packages production may load: package.json's dependencies (a dev dependency is missing from an installed image). */
function runtimeDependencies(): Set<string> {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  return new Set(Object.keys(pkg.dependencies ?? {}));
}

test('every folder of src/ has a layer in docs/architecture.md', () => {
  const layers = layersFromDoc();
  assert.ok(layers.size >= 10, `table read: ${[...layers.keys()].join(', ')}`);
  const folders = readdirSync(SRC).filter((n) => statSync(join(SRC, n)).isDirectory());
  for (const f of folders) assert.ok(layers.has(f), `src/${f}/ is not in the layer table`);
});

test('imports go down the layers (or stay in one), heavy dependencies stay in their folder, packages are runtime dependencies', () => {
  const layers = layersFromDoc();
  const deps = runtimeDependencies();
  const up: string[] = [];
  const heavy: string[] = [];
  const undeclared: string[] = [];
  let imports = 0;
  for (const file of sources(SRC)) {
    const from = folderOf(file);
    const rel = relative(SRC, file);
    for (const spec of specifiers(readFileSync(file, 'utf8'))) {
      imports++;
      if (spec.startsWith('.')) {
        const to = folderOf(resolve(dirname(file), spec));
        if (to !== from && layers.get(to)! > layers.get(from)!) up.push(`${rel} (layer ${layers.get(from)}) → ${spec} (layer ${layers.get(to)})`);
        continue;
      }
      if (spec.startsWith('node:')) continue;
      const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
      if (!deps.has(pkg)) undeclared.push(`${rel} imports ${pkg}`);
      const home = HEAVY[pkg];
      if (home !== undefined && rel !== home && !rel.startsWith(home + '/')) heavy.push(`${rel} imports ${pkg} (its place: ${home})`);
    }
  }
  assert.ok(imports > 500, `imports read: ${imports}`);
  assert.deepEqual(up, [], 'imports that go up a layer');
  assert.deepEqual(heavy, [], 'heavy dependencies imported outside their folder');
  assert.deepEqual(undeclared, [], 'packages that are not runtime dependencies in package.json');
});
