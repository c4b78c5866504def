// The reload loader (src/cli/config-reload.ts): the config file read, parsed and validated on a thread of its
// own gives what loadConfigFile gives on this one (config, or the same ConfigError), frozen; SIGHUPs that come
// while one loads fold into one more load; close() drops what is loading.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigReloader, loadConfigOffThread } from '../../src/cli/config-reload.ts';
import { loadConfigFile } from '../../src/config/load.ts';
import { ConfigError } from '../../src/config/issues.ts';
import type { SluiceConfig } from '../../src/config/types.ts';
import '../../src/providers/registry.ts';

function routesYaml(ids: string[], limit = 100): string {
  let y = 'routes:\n';
  for (const id of ids) {
    y += `  - id: ${id}\n    uri: /${id}/*\n    plugins:\n      ai-proxy:\n        provider: openai\n        auth: { header: { Authorization: "Bearer $ENV://TEST_UPSTREAM_KEY" } }\n` +
      `        override: { endpoint: "http://127.0.0.1:9/v1/chat/completions" }\n      ai-rate-limiting:\n        limit: ${limit}\n        time_window: 60\n`;
  }
  return y;
}

function isDeepFrozen(v: unknown): boolean {
  if (typeof v !== 'object' || v === null) return true;
  return Object.isFrozen(v) && Object.values(v).every(isDeepFrozen);
}

describe('config reload off the serving thread', () => {
  let dir: string;
  const env = { TEST_UPSTREAM_KEY: 'sk-upstream-secret' };
  before(() => { dir = mkdtempSync(join(tmpdir(), 'sluice-reload-')); });
  after(() => { rmSync(dir, { recursive: true, force: true }); });

  it('loads what loadConfigFile loads, env references resolved, frozen again', async () => {
    const file = join(dir, 'a.yaml');
    writeFileSync(file, routesYaml(['a', 'b', 'c']));
    const off = await loadConfigOffThread(file, env);
    assert.deepEqual(off, loadConfigFile(file, env));
    assert.ok(isDeepFrozen(off), 'the cloned config is frozen like a validated one');
  });

  it('a bad file fails with the ConfigError loadConfigFile throws: every issue with its path', async () => {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, routesYaml(['a']).replace('limit: 100', 'limit: -5'));
    const expected = (() => { try { loadConfigFile(file, env); } catch (err) { return err; } return undefined; })();
    assert.ok(expected instanceof ConfigError);
    await assert.rejects(loadConfigOffThread(file, env), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.deepEqual(err.issues, expected.issues);
      assert.match(err.message, /routes\[0\]\.plugins\.ai-rate-limiting\.limit/);
      return true;
    });
    await assert.rejects(loadConfigOffThread(join(dir, 'missing.yaml'), env), /cannot read the file \(ENOENT\)/);
    writeFileSync(join(dir, 'syntax.yaml'), 'routes: [ {');
    await assert.rejects(loadConfigOffThread(join(dir, 'syntax.yaml'), env), (err: unknown) => err instanceof ConfigError && /syntax\.yaml/.test(err.message));
  });

  it('a load past its time is abandoned with a clear error', async () => {
    const file = join(dir, 'slow.yaml');
    writeFileSync(file, routesYaml(['a']));
    // 1 ms: the thread cannot even start in that time.
    await assert.rejects(loadConfigOffThread(file, env, 1), /loading the config took over 0 s; abandoned/);
  });

  it('SIGHUPs during a load fold into one more load of the newest file; close() drops what is loading', async () => {
    const file = join(dir, 'fold.yaml');
    writeFileSync(file, routesYaml(['first']));
    const applied: (SluiceConfig | Error)[] = [];
    let wake: (() => void) | undefined;
    const reloader = new ConfigReloader(file, env, (r) => { applied.push(r); wake?.(); });
    const next = () => new Promise<void>((resolve) => { wake = resolve; });
    let done = next();
    reloader.request();
    // Asked for three more times while the first load runs; the file changes in between.
    reloader.request();
    writeFileSync(file, routesYaml(['second']));
    reloader.request();
    reloader.request();
    await done;
    done = next();
    await done;
    assert.equal(applied.length, 2, 'one load, then one more for everything asked meanwhile');
    // The first load may have read the file before or after it changed; the one after it reads the newest.
    assert.equal((applied[1] as SluiceConfig).routes[0]!.id, 'second');
    // A load still running when the reloader closes is never applied.
    reloader.request();
    reloader.close();
    reloader.request();
    await new Promise((r) => setTimeout(r, 300));
    await loadConfigOffThread(file, env); // a load's time has passed: the dropped one has finished too
    assert.equal(applied.length, 2);
  });
});
