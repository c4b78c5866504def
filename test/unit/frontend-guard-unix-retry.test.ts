// The HTTP/1.x guard relays to uWS over a unix socket. A unix socket whose accept queue is full refuses a connect
// at once (EAGAIN) where TCP would retry its SYN, so a burst of new client connections could lose requests. The
// guard keeps what it wrote until connected and connects again. The stand-in for uWS here is a child process
// listening with an accept queue of 2 whose event loop is blocked for 800 ms after it starts listening: every
// request of a 24-connection burst must still be answered (and, past its retries, the guard answers 503 itself).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Guard } from '../../src/frontend/http1-guard.ts';
import { GUARD_LIMITS } from '../helpers/guard-limits.ts';


const STAND_IN = `
const net = require('node:net');
const srv = net.createServer((s) => {
  let buf = '';
  s.on('error', () => {});
  s.on('data', (d) => {
    buf += d.toString('latin1');
    if (buf.includes('\\r\\n\\r\\n')) s.end('HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok');
  });
});
srv.listen({ path: process.argv[1], backlog: 2 }, () => {
  process.stdout.write('ready\\n');
  const t = Date.now();
  while (Date.now() - t < Number(process.argv[2])) { /* a busy loop: nothing is accepted meanwhile */ }
});
`;

async function standIn(path: string, blockMs: number): Promise<() => void> {
  const child = spawn(process.execPath, ['-e', STAND_IN, path, String(blockMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`stand-in exited ${code}`)));
  });
  return () => child.kill('SIGKILL');
}

function ask(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let text = '';
    const deadline = setTimeout(() => { s.destroy(); reject(new Error(`no answer in 30 s: ${JSON.stringify(text)}`)); }, 30_000);
    s.on('data', (d: Buffer) => { text += d.toString('latin1'); });
    s.on('error', () => { /* 'close' follows */ });
    s.on('close', () => { clearTimeout(deadline); resolve(text); });
    s.write('GET /x HTTP/1.1\r\nHost: gw\r\n\r\n');
  });
}

describe('the guard connects again when uWS\'s unix accept queue is full', () => {
  it('a burst of 24 connections to a stand-in that accepts nothing for 800 ms: all answered 200', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-retry-'));
    const path = join(dir, 'uws.sock');
    const stop = await standIn(path, 800);
    const guard = new Guard({ limits: GUARD_LIMITS, upstream: { path } });
    try {
      const port = await guard.listen('127.0.0.1', 0);
      const answers = await Promise.all(Array.from({ length: 24 }, () => ask(port)));
      const bad = answers.filter((a) => !/^HTTP\/1\.1 200 [\s\S]*\r\n\r\nok$/.test(a));
      assert.equal(bad.length, 0, `${bad.length} of 24 not answered 200, e.g. ${JSON.stringify(bad[0]?.slice(0, 120))}`);
    } finally {
      guard.close();
      stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a stand-in that accepts nothing for longer than the retries: the guard answers 503 itself, as JSON', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-retry-'));
    const path = join(dir, 'uws.sock');
    const stop = await standIn(path, 8000);
    const guard = new Guard({ limits: GUARD_LIMITS, upstream: { path } });
    try {
      const port = await guard.listen('127.0.0.1', 0);
      const answers = await Promise.all(Array.from({ length: 8 }, () => ask(port)));
      const refused = answers.filter((a) => a.startsWith('HTTP/1.1 503 '));
      assert.ok(refused.length >= 1, `no 503 among: ${answers.map((a) => a.slice(0, 40)).join(' | ')}`);
      for (const a of refused) assert.match(a, /"code":"SLC_OVERLOADED"/);
      for (const a of answers) assert.match(a, /^HTTP\/1\.1 (200|503) /, 'every client got an answer');
    } finally {
      guard.close();
      stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
