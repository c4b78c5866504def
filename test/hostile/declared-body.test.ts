// Request bodies framed by Content-Length, guard on and off. A declared length reserves nothing of the body budget
// until its bytes come: before, each such request reserved a first slice of 256 KiB at once, and a probe's 260 idle
// uploads (a byte each, the next one 50 s later) held the whole default budget: every request with a body got 503
// for as long as they stayed. A large declared body's buffer grows as its bytes come; its bytes reach the upstream
// unchanged whatever pieces they arrive in.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { startGateway, chatRoute, post, type TestGateway } from '../helpers/gateway.ts';
import { startScriptedUpstream, chatAnswer, type ScriptedUpstream } from '../helpers/scripted-upstream.ts';

const IDLE = 300;

async function bodyBytesInFlight(gw: TestGateway): Promise<number> {
  return Number(/^sluice_request_body_bytes_in_flight (\d+)$/m.exec(await (await fetch(`${gw.adminUrl}/metrics`)).text())?.[1]);
}

for (const guard of [true, false]) {
  describe(`Content-Length request bodies (http1_guard ${guard})`, () => {
    let up: ScriptedUpstream;
    let gw: TestGateway;
    before(async () => {
      up = await startScriptedUpstream((_req, s) => { s.write(chatAnswer('ok')); });
      // The default body budget (64 MiB) and body limit (8 MiB).
      gw = await startGateway({
        listen: { host: '127.0.0.1', port: 0, http1_guard: guard },
        routes: [chatRoute('u', up.url)],
      });
    });
    after(async () => {
      await gw?.close();
      await up?.close();
    });

    it(`${IDLE} idle uploads declaring 8 MB each hold a page apiece; a small request still gets through`, async () => {
      const socks: Socket[] = [];
      try {
        for (let i = 0; i < IDLE; i++) {
          const s = connect(gw.handle.port, '127.0.0.1');
          s.on('error', () => undefined);
          socks.push(s);
          s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{`);
        }
        const deadline = Date.now() + 60_000;
        while ((await bodyBytesInFlight(gw)) !== IDLE * 4096) {
          assert.ok(Date.now() < deadline, `body bytes in flight ${await bodyBytesInFlight(gw)}, want ${IDLE * 4096}`);
          await sleep(50);
        }
        const r = await post(`${gw.url}/v1/chat/completions`, { model: 'm', messages: [{ role: 'user', content: 'hi' }] });
        assert.equal(r.status, 200, r.text);
      } finally {
        for (const s of socks) s.destroy();
      }
      const deadline = Date.now() + 60_000;
      while ((await bodyBytesInFlight(gw)) !== 0) {
        assert.ok(Date.now() < deadline, 'the budget is released when the uploads go');
        await sleep(50);
      }
    });

    it('a 3 MB body sent in uneven pieces reaches the upstream byte for byte', async () => {
      const content = Array.from({ length: 60_000 }, (_, i) => `w${(i * 7919) % 100_003}`).join(' ');
      const body = Buffer.from(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: content.repeat(5) }] }));
      const seen = up.requests.length;
      const answer = await new Promise<string>((resolve, reject) => {
        const s = connect(gw.handle.port, '127.0.0.1');
        let got = '';
        s.setTimeout(60_000, () => s.destroy(new Error('no answer in 60 s')));
        s.on('data', (d: Buffer) => {
          got += d.toString('latin1');
          if (/\r\n\r\n[\s\S]*"usage"/.test(got)) { s.end(); resolve(got); }
        });
        s.on('error', reject);
        s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
        // Pieces of 1 byte to 200 KB, with pauses, so the body arrives in many reads of every size.
        const sizes = [1, 3, 70_000, 1, 200_000, 13, 65_536, 65_537];
        let off = 0;
        let k = 0;
        const pump = (): void => {
          if (off >= body.length) return;
          const n = Math.min(sizes[k++ % sizes.length]!, body.length - off);
          s.write(body.subarray(off, off + n));
          off += n;
          setTimeout(pump, k % 5 === 0 ? 5 : 0);
        };
        pump();
      });
      assert.match(answer, /^HTTP\/1\.1 200 /);
      const got = up.requests.slice(seen).find((r) => r.body.length > 1_000_000);
      assert.ok(got !== undefined, 'the upstream received the request');
      const sent = JSON.parse(body.toString()) as { messages: { content: string }[] };
      const relayed = JSON.parse(got.body.toString()) as { messages: { content: string }[] };
      assert.equal(relayed.messages[0]!.content, sent.messages[0]!.content);
    });
  });
}
