// An upstream that breaks every answer the same way must not write a log line per request: before, an HTML 200
// gave one warning per request (a probe: 400 requests with HTML or gzip answers, 400 lines). Each kind of
// warning now comes at most once per interval per route and instance, the next one saying how many were left out.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setLogLevel } from '../../src/core/log.ts';
import { startGateway, mockInstance, post, type TestGateway } from '../helpers/gateway.ts';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';

const N = 30;

describe('warnings about a broken upstream', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;
  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      if (req.headers['x-mode'] === 'gzip') {
        const body = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]);
        s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: ${body.length}\r\n\r\n`);
        s.write(body);
        return;
      }
      const html = '<html><body>maintenance</body></html>';
      s.write(`HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: ${html.length}\r\n\r\n${html}`);
    });
    gw = await startGateway({
      routes: [{
        id: 'chat', uri: '/v1/chat/completions',
        plugins: { 'ai-proxy-multi': { instances: [mockInstance('u', up.url)] } },
      }],
    });
  });
  after(async () => {
    await gw?.close();
    await up?.close();
  });

  it(`${N} broken answers of each kind give one warning of each`, async () => {
    const lines: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
      lines.push(String(chunk));
      return (write as (c: string | Uint8Array, ...r: unknown[]) => boolean)(chunk, ...rest);
    }) as typeof process.stderr.write;
    const statuses: number[] = [];
    // The suite runs with SLUICE_LOG=silent.
    setLogLevel('warn');
    const started = Date.now();
    try {
      for (const mode of ['html', 'gzip']) {
        for (let i = 0; i < N; i++) {
          const r = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, { 'x-mode': mode });
          statuses.push(r.status);
        }
      }
    } finally {
      process.stderr.write = write;
      setLogLevel('silent');
    }
    // One line per message per 10 s interval: a machine slow enough to take longer gets one more per interval.
    const allowed = 1 + Math.floor((Date.now() - started) / 10_000);
    assert.deepEqual([...new Set(statuses)], [502], 'each broken answer is a 502');
    const perMessage = new Map<string, number>();
    for (const l of lines.join('').split('\n')) {
      if (!l.includes('"level":"warn"')) continue;
      const msg = (JSON.parse(l) as { msg: string }).msg;
      perMessage.set(msg, (perMessage.get(msg) ?? 0) + 1);
    }
    const unusable = perMessage.get('upstream 2xx answer unusable (not the provider\'s JSON, or an error object)') ?? 0;
    assert.ok(unusable >= 1 && unusable <= allowed, lines.join(''));
    for (const [msg, n] of perMessage) assert.ok(n <= allowed, `"${msg}" logged ${n} times`);
  });
});
