#!/usr/bin/env node
// Bundles the compiled CLI (dist/cli/main.js, written by tsc; run after it) and its pure-JS dependencies into
// one CommonJS file, dist/bundle/sluice.cjs, which bin/sluice.mjs runs. Start-up CPU is mostly per-file work
// (resolving, reading, compiling ~290 ES and CommonJS module files); one file loaded by require() skips it. The
// modules the CLI imports lazily (the mock upstream, the worker pool, app.ts) stay lazy: esbuild evaluates a
// bundled module on its first import().
//
// `import.meta.url` in every bundled module becomes the URL of that module's own tsc output in dist/ (relative to
// the bundle, so the tarball and the image work wherever they are installed): what a module resolves against its
// own location (rank tables dist/tokens/ranks/*.bin, the worker-thread entry dist/workers/entry.js,
// examples/embedded.yaml, createRequire) is what it is unbundled. Thread entries are not bundled: a
// `new Worker(new URL('./x.js', import.meta.url))` runs the tsc output dist/…/x.js with its own module graph.
//
// A dependency is bundled only when BUNDLED lists it (pure JS, no paths resolved from __dirname). The rest loads
// from node_modules as before: uWebSockets.js (a native addon), piscina (starts workers from its own files),
// msgpackr (optional native extension), and what src/ loads through createRequire (ioredis, re2js,
// gpt-tokenizer's tables), which esbuild leaves alone, except in REQUIRE_BUNDLED files (see below).
import { build } from 'esbuild';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const outdir = `${dist}bundle`;
// Their code is strict-mode safe (ES modules, CommonJS that says "use strict" or is compiled from TypeScript
// modules): the bundle is strict. prom-client's tdigest and bintrees are not: they load from node_modules.
const BUNDLED = ['yaml', 'prom-client', '@opentelemetry/api', 'gpt-tokenizer'];
// Files whose module-level `createRequire(import.meta.url)` is dropped in the bundle, so their require() calls
// (literal specifiers of BUNDLED packages) are bundled, and evaluated on the call as before: yaml (loaded by the
// config loader for YAML files only).
const REQUIRE_BUNDLED = ['config/load.js'];
const CREATE_REQUIRE = 'const require = createRequire(import.meta.url);';

function packageOf(spec) {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** Keeps `import.meta.url` meaning "this module's file in dist/" inside the bundle. */
const ownModuleUrl = {
  name: 'own-module-url',
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, async (args) => {
      if (!args.path.startsWith(dist)) return undefined;
      let code = await readFile(args.path, 'utf8');
      const rel = relative(dist, args.path).split('\\').join('/');
      if (REQUIRE_BUNDLED.includes(rel)) {
        if (!code.includes(CREATE_REQUIRE)) throw new Error(`scripts/bundle.mjs: dist/${rel} no longer has \`${CREATE_REQUIRE}\`; update REQUIRE_BUNDLED`);
        code = code.replace(CREATE_REQUIRE, '');
      } else if (!code.includes('import.meta')) {
        return undefined;
      }
      const fromBundle = relative(outdir, args.path).split('\\').join('/');
      return {
        // import.meta.resolve (ES module resolution, which require.resolve does not reproduce) is used only on
        // paths taken when running from sources; in the bundle it throws. Any other import.meta fails the build.
        contents: code
          .replaceAll('import.meta.url', `new URL(${JSON.stringify(fromBundle)}, __sluiceBundleUrl).href`)
          .replaceAll('import.meta.resolve(', '__sluiceNoResolve('),
        loader: 'js',
        resolveDir: dirname(args.path),
      };
    });
  },
};

/** Bare imports stay external unless their package is in BUNDLED. */
const externals = {
  name: 'externals',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:') || !BUNDLED.includes(packageOf(args.path))) return { path: args.path, external: true };
      return undefined;
    });
  },
};

await rm(outdir, { recursive: true, force: true });
const result = await build({
  metafile: true,
  entryPoints: { sluice: `${dist}cli/main.js` },
  outdir,
  outExtension: { '.js': '.cjs' },
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // Less to read and scan at every start; identifiers (and so function and class names) are kept.
  minifyWhitespace: true,
  minifySyntax: true,
  sourcemap: 'linked',
  legalComments: 'eof',
  logLevel: 'warning',
  plugins: [externals, ownModuleUrl],
  banner: {
    // The bundled modules were ES modules: strict mode, which the directive gives only as the file's first line.
    js: '"use strict";\nconst __sluiceBundleUrl = require("node:url").pathToFileURL(__filename).href;\n' +
      'const __sluiceNoResolve = (s) => { throw new Error(`import.meta.resolve(${s}) is not available in dist/bundle/sluice.cjs`); };',
  },
});
if (result.warnings.length > 0) process.exitCode = 1;
if (process.env.SLUICE_BUNDLE_META) await writeFile(process.env.SLUICE_BUNDLE_META, JSON.stringify(result.metafile));
