// A buffered answer sent whole to a client that reads slowly stays in memory until the client has taken it. Before,
// limits.max_inflight_answer_bytes counted an answer only while it arrived: ten clients reading a 65 MB answer a chunk
// every 2 s held 1.2 GB outside any bound (a probe). The budget now counts an answer's bytes until the transport has
// handed them all to the kernel, or the client is gone. Guard on and off (the guard's sockets and uWS's own buffer).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startGateway, chatRoute, type TestGateway } from '../helpers/gateway.ts';
import { startScriptedUpstream, chatAnswer, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';

const MB = 1_000_000;
// Larger than what loopback's socket buffers can take while the client reads nothing (4 MB to send, up to 32 MB
// to receive here: net.ipv4.tcp_wmem, tcp_rmem), within the 64 MiB a buffered answer may have.
const TEXT = 'x'.repeat(60 * MB);

async function answerBytesInFlight(gw: TestGateway): Promise<number> {
  return Number(/^sluice_upstream_answer_bytes_in_flight (\d+)$/m.exec(await (await fetch(`${gw.adminUrl}/metrics`)).text())?.[1]);
}

/** Answers recorded (they are recorded when sent): the bytes counted after that are the sent answer's, not the
 *  arriving one's (a 60 MB answer is also counted while it arrives, then decoded on a worker thread). */
async function answered(gw: TestGateway): Promise<number> {
  return Number(/^sluice_http_requests_total\{route="chat",instance="u",status="200"\} (\d+)$/m.exec(await (await fetch(`${gw.adminUrl}/metrics`)).text())?.[1] ?? 0);
}

async function until(what: string, cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!(await cond())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(50);
  }
}

for (const guard of [true, false]) {
  describe(`a whole answer a client does not read (http1_guard ${guard})`, () => {
    let up: ScriptedUpstream;
    let gw: TestGateway;
    before(async () => {
      up = await startScriptedUpstream((req, s) => {
        const small = req.body.toString().includes('small');
        s.write(chatAnswer(small ? 'y'.repeat(6_000) : TEXT, { prompt_tokens: 5, completion_tokens: 100, total_tokens: 105 }));
      });
      gw = await startGateway({
        listen: { host: '127.0.0.1', port: 0, http1_guard: guard },
        routes: [chatRoute('u', up.url)],
      });
    });
    after(async () => {
      await gw?.close();
      await up?.close();
    });

    it('counts in the answer budget until the client takes it or goes', async () => {
      const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
      let s: Socket | undefined;
      const before = await answered(gw);
      try {
        s = connect(gw.handle.port, '127.0.0.1');
        s.on('error', () => undefined);
        s.pause();
        s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
        // The kernel's socket buffers take up to ~36 MB of the 60 MB answer; the rest waits in the gateway.
        await until('the answer to be sent', async () => (await answered(gw)) > before);
        await until('the unread answer to be counted', async () => (await answerBytesInFlight(gw)) >= 16 * MB);
        await sleep(200);
        assert.ok((await answerBytesInFlight(gw)) >= 16 * MB, 'still counted while the client reads nothing');
      } finally {
        s?.destroy();
      }
      await until('the budget to be released when the client goes', async () => (await answerBytesInFlight(gw)) === 0);
    });

    // The guard's own socket writes (uWS holds a small answer in its own buffer, outside the budget, per connection).
    if (guard) it('small answers a client reads late hold nothing once read, on a connection still open', async () => {
      // A socket buffer under its high-water mark emits no 'drain': such answers must not wait for one (a review:
      // 727 pipelined answers of 6 KB, all read, left 12,414 bytes held until the connection closed).
      const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'small' }] });
      const N = 200;
      const s = connect(gw.handle.port, '127.0.0.1');
      try {
        s.on('error', () => undefined);
        s.pause();
        const one = `POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
        s.write(one.repeat(N));
        await sleep(500);
        let got = '';
        s.on('data', (d: Buffer) => { got += d.toString('latin1'); });
        s.resume();
        await until('every answer read', async () => (got.match(/HTTP\/1\.1 200 /g) ?? []).length === N);
        await until('nothing held for them', async () => (await answerBytesInFlight(gw)) === 0);
      } finally {
        s.destroy();
      }
    });

    it('a client that reads it all releases it', async () => {
      const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
      const got = await new Promise<number>((resolve, reject) => {
        const s = connect(gw.handle.port, '127.0.0.1');
        let n = 0;
        s.setTimeout(60_000, () => s.destroy(new Error('no answer in 60 s')));
        s.on('data', (d: Buffer) => {
          n += d.length;
          if (n > TEXT.length) { s.destroy(); resolve(n); }
        });
        s.on('error', reject);
        s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      });
      assert.ok(got > TEXT.length);
      await until('the budget to be released', async () => (await answerBytesInFlight(gw)) === 0);
    });
  });
}
