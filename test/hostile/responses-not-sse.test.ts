// A Responses stream whose upstream answers `text/event-stream` with a body that is not SSE (no field lines, or a
// data event that is not JSON and too large to hold) is cut at 64 KiB of such a line or 256 KiB of such an event,
// not relayed unread without bound; it is charged as a stream that broke off (502). A data event that is not JSON
// but small is relayed and its text counted.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedUpstream, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startGateway, surfaceRoutes, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { eventually } from '../helpers/sluice-process.ts';

const JUNK = 'hello '.repeat(700_000);

describe('Responses streams that are not SSE', () => {
  let up: ScriptedUpstream;
  let gw: TestGateway;

  before(async () => {
    up = await startScriptedUpstream((req, s) => {
      const body = req.body.toString('utf8');
      const payload = body.includes('case junk') ? JUNK : body.includes('case big_data') ? `data: ${JUNK}` : 'data: plain words, not JSON\n\n';
      s.write('HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n');
      s.write(`${Buffer.byteLength(payload).toString(16)}\r\n${payload}\r\n0\r\n\r\n`);
    });
    gw = await startGateway({ routes: surfaceRoutes(up.url) });
  });

  after(async () => {
    await gw?.close();
    await up?.close();
  });

  const charged = (): Promise<number> => metric(gw, /^sluice_quota_tokens_charged_total\{route="o"/);

  async function read(input: string): Promise<{ bytes: number; error: boolean }> {
    const res = await fetch(`${gw.url}/o/v1/responses`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', input, stream: true }),
    });
    assert.equal(res.status, 200);
    let bytes = 0;
    try {
      for await (const c of res.body!) bytes += (c as Uint8Array).byteLength;
      return { bytes, error: false };
    } catch {
      return { bytes, error: true };
    }
  }

  for (const [name, bound] of [['junk', 64 * 1024], ['big_data', 256 * 1024]] as const) {
    it(`${name}: cut after at most ${bound / 1024} KiB (of ${JUNK.length} sent), charged as broken off`, { timeout: 60_000 }, async () => {
      const before = await charged();
      const estimated = await metric(gw, /^sluice_usage_estimated_total\{route="o",reason="upstream_broken"\}/);
      const r = await read(`case ${name}`);
      assert.equal(r.error, true, 'the client sees the stream cut, not a clean end');
      assert.ok(r.bytes < bound + 64 * 1024, `relayed ${r.bytes} bytes`);
      await eventually('settled', async () => (await charged()) > before, 30_000);
      assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="o",reason="upstream_broken"\}/), estimated + 1);
    });
  }

  it('a small data event that is not JSON is relayed, and its text counted', { timeout: 60_000 }, async () => {
    const before = await charged();
    const completion = await metric(gw, /^sluice_tokens_total\{route="o".*kind="completion"/);
    const r = await read('case plain');
    assert.equal(r.error, false);
    await eventually('settled', async () => (await charged()) > before, 30_000);
    assert.ok((await metric(gw, /^sluice_tokens_total\{route="o".*kind="completion"/)) - completion >= 5, 'the words are counted');
  });
});
