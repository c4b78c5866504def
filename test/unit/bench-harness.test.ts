// The gateway benchmark's harness (native-bench/gateway.bench.ts) must not rot between bench runs: its nginx
// config generator (checked by `nginx -t` when nginx is installed), its /proc parsers, its flags and its ratio
// table. No timing is asserted here: performance is measured by `npm run bench`, never in a test.
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childPids, parseStatPpid, parseStatTicks, parseVmRssKb, processCpuUs, processRssKb } from '../../native-bench/lib/cpu.ts';
import { findNginx, nginxConfig, parseNginxVersion, testNginxConfig, writeNginxConfig } from '../../native-bench/lib/nginx.ts';
import { parseArgs, ratioRows, threadsLines, verdict, type Cell } from '../../native-bench/gateway.bench.ts';
import { postRequest, ResponseParser } from '../../native-bench/lib/raw-http.ts';
import { slope } from '../../native-bench/lib/stats.ts';
import { scavenges } from '../../native-bench/gc-promotion.bench.ts';

describe('bench harness: nginx config', () => {
  const opts = { dir: '/tmp/x', port: 40001, upstreamPort: 40002, slowUpstreamPort: 40003 };

  it('proxies to a keep-alive upstream pool with one worker, unbuffered, on 127.0.0.1', () => {
    const conf = nginxConfig(opts);
    for (const line of [
      'daemon off;', 'worker_processes 1;', 'listen 127.0.0.1:40001', 'server 127.0.0.1:40002;', 'server 127.0.0.1:40003;',
      'keepalive 64;', 'proxy_http_version 1.1;', 'proxy_set_header Connection "";', 'proxy_buffering off;',
      'pid /tmp/x/nginx.pid;', 'error_log /tmp/x/error.log', 'proxy_temp_path /tmp/x/temp/proxy;', 'access_log off;',
    ]) assert.ok(conf.includes(line), `missing: ${line}`);
    // Both locations keep the upstream connection alive and stream unbuffered.
    assert.equal(conf.match(/proxy_buffering off;/g)?.length, 2);
    assert.equal(conf.match(/proxy_set_header Connection "";/g)?.length, 2);
    assert.ok(!conf.includes('user root;'));
    assert.ok(nginxConfig({ ...opts, asRoot: true, keepalive: 8 }).includes('user root;'));
    assert.ok(nginxConfig({ ...opts, keepalive: 8 }).includes('keepalive 8;'));
  });

  it('is accepted by `nginx -t` when nginx is installed', (t: TestContext) => {
    const found = findNginx(false, () => undefined);
    if (typeof found === 'string') { t.skip(found); return; }
    assert.match(found.version, /^\d+\.\d+/);
    const dir = mkdtempSync(join(tmpdir(), 'bench-nginx-'));
    try {
      const file = writeNginxConfig({ ...opts, dir, asRoot: process.getuid?.() === 0 });
      assert.equal(testNginxConfig(found.bin, dir, file), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads the version from `nginx -v`', () => {
    assert.equal(parseNginxVersion('nginx version: nginx/1.22.1\n'), '1.22.1');
    assert.equal(parseNginxVersion('something else'), undefined);
  });
});

describe('bench harness: /proc parsers', () => {
  it('parses utime+stime and ppid after the last parenthesis of the command name', () => {
    // Fields 3.. after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
    const line = '4242 (we ird) (name) S 17 4242 4242 0 -1 4194560 1200 0 3 0 250 75 0 0 20 0 11 0 900 1000000 2000 18446744073709551615\n';
    assert.equal(parseStatTicks(line), 325);
    assert.equal(parseStatPpid(line), 17);
    assert.throws(() => parseStatTicks('garbage'));
  });

  it('parses VmRSS from /proc/<pid>/status', () => {
    assert.equal(parseVmRssKb('Name:\tnode\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\nRssAnon:\t 50000 kB\n'), 81234);
    assert.ok(Number.isNaN(parseVmRssKb('Name:\tzombie\nState:\tZ (zombie)\n')));
  });

  it('reads this process and finds a child by its parent pid', async () => {
    assert.ok(processRssKb(process.pid) > 0);
    assert.ok(processCpuUs(process.pid) >= 0);
    assert.equal(parseStatPpid(readFileSync('/proc/self/stat', 'utf8')), process.ppid);
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
    try {
      await new Promise<void>((resolve, reject) => { child.once('spawn', resolve); child.once('error', reject); });
      assert.ok(childPids(process.pid).includes(child.pid!));
    } finally {
      child.kill('SIGKILL');
    }
    assert.ok(Number.isNaN(processCpuUs(0x7ffffff0)));
  });
});

describe('bench harness: raw HTTP/1.1 response parser of the slow-stream client', () => {
  const collect = () => {
    const out = { status: 0, body: '' };
    const parser = new ResponseParser({ head: (st) => { out.status = st; }, body: (b, s, e) => { out.body += b.toString('latin1', s, e); } });
    return { out, parser };
  };

  it('parses a chunked SSE answer fed one byte at a time, and stops at its end', () => {
    const { out, parser } = collect();
    const wire = 'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '8\r\ndata: a\n\r\n' + 'b\r\n\ndata: [DON\r\n' + '3;ext=1\r\nE]\n\r\n' + '1\r\n\n\r\n' + '0\r\n\r\nHTTP/1.1 next';
    const bytes = Buffer.from(wire, 'latin1');
    let done = false;
    for (let i = 0; i < bytes.length && !done; i++) done = parser.feed(bytes.subarray(i, i + 1));
    assert.ok(done);
    assert.equal(out.status, 200);
    assert.equal(out.body, 'data: a\n\ndata: [DONE]\n\n');
  });

  it('parses content-length and empty bodies, resets for the next answer, rejects garbage', () => {
    const { out, parser } = collect();
    assert.ok(parser.feed(Buffer.from('HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\n\r\nhello')));
    assert.deepEqual(out, { status: 429, body: 'hello' });
    parser.reset();
    assert.ok(parser.feed(Buffer.from('HTTP/1.1 204 No Content\r\n\r\n')));
    parser.reset();
    assert.throws(() => parser.feed(Buffer.from('SSH-2.0-nope\r\n\r\n')));
    parser.reset();
    assert.throws(() => parser.feed(Buffer.from('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n')));
  });

  it('writes a POST with its length', () => {
    const req = postRequest('127.0.0.1', 8080, '/v1/x', { authorization: 'Bearer k' }, '{"a":"é"}').toString('utf8');
    assert.match(req, /^POST \/v1\/x HTTP\/1\.1\r\nhost: 127\.0\.0\.1:8080\r\n/);
    assert.ok(req.includes('content-length: 10\r\n') && req.includes('authorization: Bearer k\r\n') && req.endsWith('\r\n\r\n{"a":"é"}'));
  });
});

describe('bench harness: flags and ratios', () => {
  it('bounds every flag and has a quick mode', () => {
    const full = parseArgs([]);
    const quick = parseArgs(['--quick', '--json']);
    assert.equal(full.slowStreams, 2000);
    assert.ok(quick.durationMs < full.durationMs && quick.reps <= full.reps && quick.json);
    assert.throws(() => parseArgs(['--slow-streams', '1000000']));
    assert.throws(() => parseArgs(['--duration', '-1']));
    assert.throws(() => parseArgs(['--sluice', 'docker']));
    assert.throws(() => parseArgs(['--bogus']));
    assert.equal(full.cpuProfDir, undefined);
    assert.equal(parseArgs(['--cpu-prof', '/tmp/p']).cpuProfDir, '/tmp/p');
    assert.throws(() => parseArgs(['--cpu-prof']));
    assert.throws(() => parseArgs(['--cpu-prof', '--quick']));
  });

  it('computes the issue-11 ratios with their verdicts, and says what was not measured', () => {
    const cell = (cpu: number, extra: Partial<Cell> = {}): Cell => ({
      cpu, rps: 1000, p50: 0.2, p99: 0.5, fps: 38_000, offeredFps: 40_000, rssPerStreamKb: 18, rssSlopeKb: 17, openStreams: 2000,
      foreignCores: 0, loadCores: 0.5, upstreamCores: 0.3, errors: 0, firstError: undefined, ...extra,
    });
    const cells: Record<string, Cell> = {
      'nginx/json64': cell(20), 'nginx/json1': cell(40, { p50: 0.1, p99: 0.4 }), 'nginx/stream': cell(10),
      'sluice/json64': cell(39), 'sluice/json1': cell(120), 'sluice/stream': cell(30),
      'sluiceQuota/json64': cell(42), 'sluiceQuota/json1': cell(126, { p50: 0.15, p99: 1.0 }), 'sluiceQuota/slow': cell(50, { fps: 30_000 }), 'sluiceQuota/rss': cell(1, { rssPerStreamKb: 25 }),
    };
    const rows = ratioRows((t, k) => cells[`${t}/${k}`]);
    const byName = (s: string) => rows.find((r) => r.name === s)!;
    assert.equal(verdict(byName('Sluice JSON CPU/req ÷ nginx, 64 conn')), 'PASS (stretch)');
    assert.equal(verdict(byName('Sluice JSON CPU/req ÷ nginx, 1 conn')), 'MISS');
    assert.equal(verdict(byName('latency added over nginx, p50 at 1 in flight (quota on)')), 'PASS');
    assert.equal(verdict(byName('latency added over nginx, p99 at 1 in flight (quota on)')), 'MISS');
    assert.equal(verdict(byName('Sluice streaming CPU/frame ÷ nginx (2 ms spacing)')), 'MISS');
    assert.equal(verdict(byName('Sluice + quota delivered ÷ offered frames/s, slow streams')), 'MISS');
    assert.equal(byName('Sluice + quota delivered ÷ offered frames/s, slow streams').value, 75);
    assert.equal(verdict(byName('Sluice + quota RSS per open stream (Δ÷N)')), 'MISS');
    assert.equal(verdict(byName('Sluice delivered ÷ offered frames/s, slow streams')), 'not measured');
    assert.equal(verdict(byName('bare hop JSON CPU/req ÷ nginx, 64 conn')), '(info)');
    assert.equal(slope([[0, 100], [10, 120], [20, 140], [30, 160]]), 2);
    assert.ok(Number.isNaN(slope([[5, 1], [5, 2], [5, 3]])));
  });

  it('threads run: the quota-on pair gives the verdict (≤ 1.10×), quota off and guard off are information', () => {
    assert.deepEqual(threadsLines({ skipped: '--threads not given' }, 2), ['threads run (1 vs 2 gateway threads, CPU/req must not rise > 10%): not measured: --threads not given']);
    const lines = threadsLines({ quota: { cpu1: 100, cpu2: 109 }, plain: { cpu1: 90, cpu2: 120 }, direct: { cpu1: 80, cpu2: 100 } }, 3);
    assert.match(lines[0]!, /medians of 3 interleaved pair/);
    assert.match(lines[1]!, /quota on: 100\.0 → 109\.0 µs\/req \(1\.09×\) PASS$/);
    assert.match(lines[2]!, /quota off \(info\): 90\.0 → 120\.0 µs\/req \(1\.33×\)$/);
    assert.match(lines[3]!, /http1_guard false \(info\): 80\.0 → 100\.0 µs\/req \(1\.25×\)$/);
    assert.match(threadsLines({ quota: { cpu1: 100, cpu2: 111 }, plain: { cpu1: 1, cpu2: 1 }, direct: { cpu1: 1, cpu2: 1 } }, 1)[1]!, /MISS$/);
    assert.match(lines[4]!, /nginx 1 vs 2 workers \(baseline\): not measured/);
    const withNginx = threadsLines({ quota: { cpu1: 100, cpu2: 125 }, plain: { cpu1: 1, cpu2: 1 }, direct: { cpu1: 1, cpu2: 1 }, nginx: { cpu1: 40, cpu2: 50 } }, 2);
    assert.match(withNginx[4]!, /nginx 1 vs 2 workers \(baseline, info\): 40\.0 → 50\.0 µs\/req \(1\.25×\); Sluice's rise over nginx's: 1\.00×$/);
  });

  it('gc-promotion reads the scavenges of --trace-gc-nvp output and nothing else', () => {
    const text = [
      '[1:0x1]     6474 ms: pause=3.2 mutator=53.8 gc=s reduce_memory=0 scavenge=3.19 allocated=11709440 promoted=1592368 new_space_survived=1545592 nodes_promoted=0',
      'some log line with gc=s inside words',
      '[1:0x1]     7000 ms: pause=12.0 mutator=1.0 gc=mc reduce_memory=0 promoted=5',
      '[1:0x1]     7100 ms: pause=0.9 mutator=70.1 gc=s reduce_memory=0 allocated=13479160 promoted=3184 new_space_survived=148312',
    ].join('\n');
    assert.deepEqual(scavenges(text), [
      { pause: 3.2, promoted: 1_592_368, survived: 1_545_592, allocated: 11_709_440 },
      { pause: 0.9, promoted: 3184, survived: 148_312, allocated: 13_479_160 },
    ]);
  });
});
