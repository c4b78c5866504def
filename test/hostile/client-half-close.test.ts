// Hostile input: a client that sends a streaming request, reads the first frame and closes its side of the
// connection. The gateway treats the end of the client's input while its answer is still coming as an abort
// (as nginx does, 499): the upstream request is aborted at once instead of after writes to a dead socket,
// and the request is charged the prompt plus the text that was streamed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { startMockUpstream, type MockUpstream } from '../../src/mock/server.ts';
import { startGateway, mockInstance, type TestGateway } from '../helpers/gateway.ts';
import { metric, eventually } from '../helpers/metrics.ts';

const BODY = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Count to a hundred please' }], stream: true, max_tokens: 400 });

describe('a client that half-closes its connection mid-stream', () => {
  let mock: MockUpstream;
  let gw: TestGateway;
  before(async () => {
    mock = await startMockUpstream({});
    gw = await startGateway({ routes: [{ id: 'h', uri: '/v1/chat/completions', plugins: {
      'ai-proxy-multi': { instances: [mockInstance('a', mock.url)] },
      'ai-rate-limiting': { limit: 1_000_000, time_window: 3600 },
    } }] });
  });
  after(async () => {
    await gw?.close();
    await mock?.close();
  });

  it('aborts the upstream stream long before it would have ended, records 499 and charges what was sent', async () => {
    const port = Number(new URL(gw.url).port);
    // Frames 12 s apart: without the half-close check the gateway would learn of the abort only from failed
    // writes of the next frames (12 s and 24 s away); with it, at once (the deadline below is 8 s).
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
    sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n` +
      `x-mock-chunks: 5\r\nx-mock-chunk-delay-ms: 12000\r\nContent-Length: ${Buffer.byteLength(BODY)}\r\n\r\n${BODY}`);
    let raw = '';
    await new Promise<void>((resolve) => {
      sock.on('data', (d) => { raw += d.toString('latin1'); if (raw.includes('data: ')) resolve(); });
    });
    assert.match(raw, /^HTTP\/1\.1 200/);
    sock.on('error', () => {});
    sock.end();
    await eventually('the request is recorded as a client abort', async () =>
      (await metric(gw, /^sluice_http_requests_total\{route="h",instance="a",status="499"\}/)) === 1, 8_000);
    await eventually('the aborted stream is charged', async () =>
      (await metric(gw, /^sluice_usage_estimated_total\{route="h",reason="client_abort"\}/)) === 1);
    assert.ok(await metric(gw, /^sluice_quota_tokens_charged_total\{route="h"/) > 0);
    sock.destroy();
  });
});
