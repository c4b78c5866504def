// Two gateways on one port: the second must fail to start (exclusive bind, no silent SO_REUSEPORT sharing),
// with a message naming the address, and `sluice start` must exit non-zero.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ListenError, startSluice } from '../../src/app.ts';
import { validateConfig } from '../../src/config/validate.ts';
import { startGateway, type TestGateway } from '../helpers/gateway.ts';
import { freePort } from '../helpers/free-port.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** `sluice start` that is expected to exit by itself: its exit code and everything it printed. */
async function startCli(config: string, port: number, adminPort: number): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'start', '--config', config, '--port', String(port), '--admin-port', String(adminPort)], {
    cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearTimeout(killer);
  return { code, output };
}

describe('a taken listen or admin port is a startup error', () => {
  let first: TestGateway;
  let dir: string;

  before(async () => {
    first = await startGateway({ routes: [] });
    dir = mkdtempSync(join(tmpdir(), 'sluice-port-'));
  });

  after(async () => {
    await first?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('startSluice rejects with ListenError (EADDRINUSE) for a taken listen port, and for a taken admin port', async () => {
    const config = validateConfig({ routes: [] }, {});
    const cases: [string, { port: number; adminPort: number }, number][] = [
      ['listen', { port: first.handle.port, adminPort: 0 }, first.handle.port],
      ['admin', { port: 0, adminPort: first.handle.adminPort }, first.handle.adminPort],
    ];
    for (const [what, ports, taken] of cases) {
      await assert.rejects(startSluice(config, { ...ports, defaultMetrics: false }), (err: unknown) => {
        assert.ok(err instanceof ListenError, String(err));
        assert.equal(err.code, 'EADDRINUSE');
        assert.match(err.message, new RegExp(`^${what} 127\\.0\\.0\\.1:${taken}: address already in use`));
        return true;
      });
    }
  });

  it('`sluice start` on a taken port exits non-zero with the message; the first gateway keeps serving', async () => {
    const adminPort = await freePort();
    const config = join(dir, 'sluice.yaml');
    writeFileSync(config, 'routes: []\n');
    const { code, output } = await startCli(config, first.handle.port, adminPort);
    assert.notEqual(code, 0, output);
    assert.notEqual(code, null, 'exited by itself');
    assert.match(output, new RegExp(`127\\.0\\.0\\.1:${first.handle.port}: address already in use`));
    const r = await fetch(`${first.url}/nope`);
    assert.equal(r.status, 404);
  });

  it('`sluice start --port P --admin-port P`: one clear line and exit 2, not "address already in use"', async () => {
    const port = await freePort();
    const config = join(dir, 'same-port.yaml');
    writeFileSync(config, 'routes: []\n');
    const { code, output } = await startCli(config, port, port);
    assert.equal(code, 2, output);
    assert.match(output, new RegExp(`the metrics port ${port} is the listen port`));
    assert.doesNotMatch(output, /already in use/);
  });
});
