// Hostile input: an upstream that lies about usage (1e300, negative, fractional, strings, totals below
// prompt + completion, numbers past tokens.max_usage), buffered and streamed. The lie is replaced by the
// counted estimate (prompt counted at admission + the response text counted), counted in
// sluice_usage_rejected_total{reason}, and the route keeps admitting, on local and Redis policies.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { startGateway, post, type TestGateway } from '../helpers/gateway.ts';
import { metric } from '../helpers/metrics.ts';
import { startRedis, type RedisServerHandle } from '../helpers/redis-topology.ts';
import { redisTotals } from '../helpers/redis-totals.ts';
import { prepareRequest } from '../helpers/prepare.ts';
import { countText } from '../../src/tokens/count.ts';

const TEXT = 'The answer is two, because one plus one makes two in ordinary arithmetic.';
const MODEL = 'gpt-4o-mini';
const LIMIT = 20_000;

/** Usage JSON as the lying upstream writes it (raw text: 1e300 and strings survive as written). */
const LIES: Record<string, [string, string]> = {
  huge: ['{"prompt_tokens":1e300,"completion_tokens":5,"total_tokens":1e300}', 'too_large'],
  past_max: ['{"prompt_tokens":900000000000000,"completion_tokens":5,"total_tokens":900000000000005}', 'too_large'],
  negative: ['{"prompt_tokens":-500000,"completion_tokens":5,"total_tokens":-499995}', 'negative'],
  fractional: ['{"prompt_tokens":12.5,"completion_tokens":5,"total_tokens":17.5}', 'fractional'],
  string: ['{"prompt_tokens":"12","completion_tokens":"5","total_tokens":"17"}', 'not_a_number'],
  inconsistent: ['{"prompt_tokens":12,"completion_tokens":500000,"total_tokens":3}', 'inconsistent'],
};

/** Zeros where the gateway counted more: a prompt of 0 is replaced by the counted prompt; a completion of 0 beside
 *  generated text by the counted text. */
const ZEROS: Record<string, string> = {
  all_zero: '{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}',
  zero_prompt: '{"prompt_tokens":-0,"completion_tokens":7,"total_tokens":7}',
  // Only the prompt field left out: the total holds it (1,000 here, more than the counted prompt).
  total_has_prompt: '{"prompt_tokens":0,"completion_tokens":7,"total_tokens":1007}',
  // A completion of 0 beside text, with a prompt reported: the prompt stands, the text is counted.
  zero_completion: '{"prompt_tokens":500,"completion_tokens":0,"total_tokens":500}',
};

/** Plausible reports a stream sends before a lie: each part the larger of the report and the count is charged. */
const BEFORE_LIE: Record<string, string> = {
  believed_then_negative: '{"prompt_tokens":900,"completion_tokens":800,"total_tokens":1700}',
  tiny_then_negative: '{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}',
};

async function lyingUpstream(): Promise<Server> {
  const s = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as { stream?: boolean };
      const lie = String(req.headers['x-lie']);
      const before = BEFORE_LIE[lie];
      const usage = before !== undefined ? LIES.negative![0] : LIES[lie]?.[0] ?? ZEROS[lie]!;
      if (body.stream !== true) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{"id":"x","object":"chat.completion","model":"${MODEL}","choices":[{"index":0,"message":{"role":"assistant","content":${JSON.stringify(TEXT)}},"finish_reason":"stop"}],"usage":${usage}}`);
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const w of TEXT.split(/(?= )/)) res.write(`data: {"choices":[{"index":0,"delta":{"content":${JSON.stringify(w)}}}],"usage":null}\n\n`);
      if (before !== undefined) res.write(`data: {"choices":[],"usage":${before}}\n\n`);
      res.write(`data: {"choices":[],"usage":${usage}}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}

function config(upstreamUrl: string, rl: Record<string, unknown>) {
  return {
    routes: [{
      id: 'lies', uri: '/v1/chat/completions',
      plugins: {
        'ai-proxy-multi': { instances: [{
          name: 'liar', provider: 'openai-compatible', override: { endpoint: `${upstreamUrl}/v1/chat/completions` }, forward_headers: ['x-lie'],
        }] },
        'ai-rate-limiting': { limit: LIMIT, time_window: 3600, ...rl },
      },
    }],
  };
}

const REQUEST = { model: MODEL, messages: [{ role: 'user', content: 'What is one plus one?' }], max_tokens: 50 };

/** What the gateway charges when it does not believe the upstream: its own prompt count plus the text, counted. */
function countedEstimate(): number {
  return countedPrompt() + countText(TEXT, 'o200k_base');
}

function countedPrompt(): number {
  const p = prepareRequest(Buffer.from(JSON.stringify(REQUEST)), { kind: 'chat', defaultMaxTokens: 256, countPrompt: true } as Parameters<typeof prepareRequest>[1]);
  assert.ok(p.ok);
  return p.promptTokens;
}

async function streamed(gw: TestGateway, lie: string): Promise<string> {
  const r = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-lie': lie },
    body: JSON.stringify({ ...REQUEST, stream: true }),
  });
  assert.equal(r.status, 200);
  return r.text();
}

/** Every lie, buffered then streamed; each is charged the counted estimate. Returns the total charged. */
async function sendEveryLie(gw: TestGateway): Promise<number> {
  const each = countedEstimate();
  let charged = 0;
  for (const lie of Object.keys(LIES)) {
    const r = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': lie });
    assert.equal(r.status, 200, `buffered ${lie}: ${r.text}`);
    charged += each;
    // A buffered answer is settled before its headers go out: Remaining already includes it.
    assert.equal(r.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - charged), `Remaining after buffered ${lie}`);
    const text = await streamed(gw, lie);
    assert.match(text, /\[DONE\]/);
    charged += each;
  }
  // The route still admits, and Remaining shows exactly the counted estimates.
  const after = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': 'huge' });
  assert.equal(after.status, 200);
  charged += each;
  assert.equal(after.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - charged));
  for (const [lie, [, reason]] of Object.entries(LIES)) {
    const n = await metric(gw, new RegExp(`^sluice_usage_rejected_total\\{route="lies",reason="${reason}"\\}`));
    assert.ok(n >= 2, `${lie}: sluice_usage_rejected_total{reason="${reason}"} = ${n}`);
  }
  assert.equal(await metric(gw, /^sluice_usage_estimated_total\{route="lies",reason="usage_rejected"\}/), 2 * Object.keys(LIES).length + 1);
  assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="lies"/), charged);
  return charged;
}

describe('a lying upstream cannot poison quotas', () => {
  let upstream: Server;
  let url: string;
  before(async () => {
    upstream = await lyingUpstream();
    url = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
  });
  after(async () => { await new Promise<void>((r) => upstream.close(() => r())); });

  it('policy local: every lie is charged the counted estimate and Remaining stays sane', async () => {
    const gw = await startGateway({ tokens: { max_usage: 1_000_000 }, ...config(url, {}) });
    try {
      await sendEveryLie(gw);
    } finally { await gw.close(); }
  });

  it('a usage of 0 where the gateway counted more is not believed: the counted prompt, and a streamed completion counted', async () => {
    const gw = await startGateway({ tokens: { max_usage: 1_000_000 }, ...config(url, {}) });
    try {
      const prompt = countedPrompt();
      const text = countText(TEXT, 'o200k_base');
      assert.ok(prompt > 0 && text > 0);
      let charged = 0;
      const buffered = async (lie: string, expect: number): Promise<void> => {
        const r = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': lie });
        assert.equal(r.status, 200, r.text);
        charged += expect;
        assert.equal(r.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - charged), `Remaining after buffered ${lie}`);
        assert.match(r.headers.get('x-sluice-usage') ?? '', new RegExp(`^prompt=${prompt}, completion=${expect - prompt}, `));
      };
      const stream = async (lie: string, expect: number): Promise<void> => {
        assert.match(await streamed(gw, lie), /\[DONE\]/);
        charged += expect;
        // Settled after the stream's last byte: the next answer's Remaining shows it.
        const probe = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': 'zero_prompt' });
        charged += prompt + 7;
        assert.equal(probe.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - charged), `Remaining after streamed ${lie}`);
      };
      await buffered('all_zero', prompt + text);
      await buffered('zero_prompt', prompt + 7);
      // The total already holds a prompt: charged that total, not the counted prompt on top of it.
      await buffered('total_has_prompt', 1007);
      // The reported prompt stands (500, not the counted one), the text is counted as the completion.
      charged += 500 + text;
      {
        const r = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': 'zero_completion' });
        assert.equal(r.status, 200);
        assert.equal(r.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - charged), 'Remaining after buffered zero_completion');
      }
      await stream('all_zero', prompt + text);
      await stream('zero_prompt', prompt + 7);
      assert.ok(await metric(gw, /^sluice_usage_rejected_total\{route="lies",reason="zero_prompt"\}/) >= 4);
      assert.equal(await metric(gw, /^sluice_usage_rejected_total\{route="lies",reason="zero_completion"\}/), 3);
      assert.equal(await metric(gw, /^sluice_quota_tokens_charged_total\{route="lies"/), charged);
    } finally { await gw.close(); }
  });

  it('a lie after a believed report in a stream: the believed report is charged, not the smaller count', async () => {
    const gw = await startGateway({ tokens: { max_usage: 1_000_000 }, ...config(url, {}) });
    try {
      assert.ok(countedEstimate() < 1700);
      assert.match(await streamed(gw, 'believed_then_negative'), /\[DONE\]/);
      const probe = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': 'zero_prompt' });
      assert.equal(probe.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - 1700 - (countedPrompt() + 7)));
      assert.equal(await metric(gw, /^sluice_usage_rejected_total\{route="lies",reason="negative"\}/), 1);
      // A tiny report before the lie cannot lower the charge below the count.
      assert.match(await streamed(gw, 'tiny_then_negative'), /\[DONE\]/);
      const after = await post(`${gw.url}/v1/chat/completions`, REQUEST, { 'x-lie': 'zero_prompt' });
      assert.equal(after.headers.get('x-ai-ratelimit-remaining-liar'), String(LIMIT - 1700 - 2 * (countedPrompt() + 7) - countedEstimate()));
    } finally { await gw.close(); }
  });

  describe('policy redis', () => {
    let redis: RedisServerHandle;
    before(async () => { redis = await startRedis(); });
    after(async () => { await redis?.stop(); });

    it('Redis totals equal the counted estimates, with nothing left reserved', async () => {
      const gw = await startGateway({ tokens: { max_usage: 1_000_000 }, ...config(url, { policy: 'redis', redis_host: '127.0.0.1', redis_port: redis.port }) });
      let charged: number;
      try {
        charged = await sendEveryLie(gw);
      } finally { await gw.close(); }
      const totals = await redisTotals(redis, 'r/lies/');
      assert.equal(totals.consumed, charged);
      assert.equal(totals.reserved, 0);
    });
  });
});
