import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { runValidateCommand, type CommandOutput } from '../../src/config/validate-command.ts';

const root = new URL('../../', import.meta.url).pathname;
const fixtures = join(root, 'test/fixtures/config/command');

function run(argv: string[], env: NodeJS.ProcessEnv = {}): { code: number; out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  const io: CommandOutput = { out: (l) => out.push(l), err: (l) => err.push(l) };
  return { code: runValidateCommand(argv, io, env), out, err };
}

const BROKEN = [
  'workers: must be "auto" or an integer from 1 to 256',
  'routes[0].plugins.rate-limit: unknown plugin',
  'routes[0].plugins.ai-proxy-multi.instances[0].weight: must be an integer',
  'routes[0].plugins.ai-rate-limiting.limit: must be a positive integer',
  "routes[0].plugins.ai-rate-limiting.instances[0].name: does not name an instance of this route's ai-proxy-multi or ai-proxy",
];

describe('sluice validate', () => {
  it('prints ok and returns 0 for a valid file', () => {
    assert.deepEqual(run(['--config', join(fixtures, 'valid.json')]), { code: 0, out: ['ok'], err: [] });
    assert.deepEqual(run([`--config=${join(fixtures, 'valid.json')}`]), { code: 0, out: ['ok'], err: [] });
    const embedded = run(['--config', join(root, 'examples/embedded.yaml')], { SLUICE_MOCK_ENDPOINT: 'http://127.0.0.1:1/v1/chat/completions', SLUICE_MOCK_ORIGIN: 'http://127.0.0.1:1' });
    assert.deepEqual(embedded, { code: 0, out: ['ok'], err: [] });
  });

  it('--embedded checks what start --embedded runs, the mock\'s addresses set as it sets them; without it the file says how', () => {
    const io = (): { out: string[]; err: string[]; io: CommandOutput } => {
      const out: string[] = [];
      const err: string[] = [];
      return { out, err, io: { out: (l) => out.push(l), err: (l) => err.push(l) } };
    };
    const a = io();
    assert.equal(runValidateCommand(['--embedded'], a.io, {}, join(root, 'examples/embedded.yaml')), 0);
    assert.deepEqual([a.out, a.err], [['ok'], []]);
    const b = io();
    assert.equal(runValidateCommand(['--embedded', '--config', join(fixtures, 'broken.yaml')], b.io, {}, join(root, 'examples/embedded.yaml')), 2);
    assert.deepEqual(b.err, BROKEN);
    const plain = run(['--config', join(root, 'examples/embedded.yaml')]);
    assert.equal(plain.code, 2);
    assert.match(plain.err[0]!, /SLUICE_MOCK_ENDPOINT is not set \(start --embedded sets it .*sluice validate --embedded --config <file>/);
    assert.deepEqual(run(['--embedded']).err[0], 'sluice validate: --embedded has no built-in config here');
  });

  it('prints every issue of a broken file as path: message and returns 2', () => {
    assert.deepEqual(run(['--config', join(fixtures, 'broken.yaml')]), { code: 2, out: [], err: BROKEN });
  });

  it('returns 2 saying what is wrong with the arguments, and with the file name when it cannot be read', () => {
    const usage = (why: string) => ({ code: 2, out: [], err: [`sluice validate: ${why}`, 'usage: sluice validate --config <file> | --embedded [--config <file>]'] });
    assert.deepEqual(run([]), usage('--config <file> is required'));
    assert.deepEqual(run(['--config']), usage('--config needs a file'));
    assert.deepEqual(run(['--config=']), usage('--config <file> is required'));
    assert.deepEqual(run(['--config', 'a.yaml', 'extra']), usage('unknown argument "extra"'));
    assert.deepEqual(run(['--confg', 'a.yaml']), usage('unknown argument "--confg"'));
    assert.deepEqual(run(['--config', 'a.yaml', '-c', 'b.yaml']), usage('--config is given twice'));
    const missing = join(fixtures, 'no-such-file.yaml');
    assert.deepEqual(run(['--config', missing]), { code: 2, out: [], err: [`${missing}: cannot read the file (ENOENT)`] });
  });

  it('writes ok to stdout and issues to stderr by default', () => {
    const script = "import { runValidateCommand } from './src/config/validate-command.ts'; process.exitCode = runValidateCommand(process.argv.slice(1));";
    const exec = (file: string) => spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', '--config', file], {
      cwd: root, encoding: 'utf8', timeout: 30_000,
    });
    const ok = exec(join(fixtures, 'valid.json'));
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout, 'ok\n');
    const bad = exec(join(fixtures, 'broken.yaml'));
    assert.equal(bad.status, 2);
    assert.equal(bad.stdout, '');
    assert.equal(bad.stderr, BROKEN.map((l) => `${l}\n`).join(''));
  });
});
