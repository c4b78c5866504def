import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamMeter } from '../../src/streaming/usage-meter.ts';
import { extractUsage, parseUsage } from '../../src/streaming/usage.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { scanDeltaText } from '../../src/streaming/delta-scan.ts';

function chunk(obj: unknown): string {
  return `data: ${JSON.stringify(obj)}\n\n`;
}

const base = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o' };
const USAGE = { prompt_tokens: 12, completion_tokens: 9, total_tokens: 21 };
// A recorded-style OpenAI stream with include_usage: usage:null on every content chunk, a tool call, a
// reasoning delta, multi-byte text, a keep-alive comment, then the usage-only chunk and [DONE].
const BEFORE = [
  chunk({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }], usage: null }),
  ': keep-alive\n\n',
  chunk({ ...base, choices: [{ index: 0, delta: { reasoning_content: 'thinking… ' }, finish_reason: null }], usage: null }),
  chunk({ ...base, choices: [{ index: 0, delta: { content: 'Bonjour, ' }, finish_reason: null }], usage: null }),
  chunk({ ...base, choices: [{ index: 0, delta: { content: 'le monde 🌍 日本' }, finish_reason: null }], usage: null }),
  chunk({ ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: 'c1', type: 'function', function: { name: 'lookup', arguments: '{"q":' } }] }, finish_reason: null }], usage: null }),
  chunk({ ...base, choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '"x"}' } }] }, finish_reason: 'stop' }], usage: null }),
].join('');
const USAGE_EVENT = chunk({ ...base, choices: [], usage: USAGE });
const AFTER = 'data: [DONE]\n\n';
const STREAM = BEFORE + USAGE_EVENT + AFTER;
const TEXT = 'thinking… Bonjour, le monde 🌍 日本lookup{"q":"x"}';

interface Run { out: Buffer; usage: unknown; text: string; sawDone: boolean; frames: number; identity: boolean }

function run(pieces: Buffer[], stripUsage: boolean): Run {
  const m = new StreamMeter({ stripUsage });
  const outs: Buffer[] = [];
  let identity = true;
  for (const p of pieces) {
    const o = m.push(p);
    if (o !== undefined) outs.push(o);
    if (o !== p && p.length > 0) identity = false;
  }
  const tail = m.end();
  if (tail !== undefined) outs.push(tail);
  return { out: Buffer.concat(outs), usage: m.usage, text: m.text, sawDone: m.sawDone, frames: m.frames, identity };
}

for (const [name, term] of [['LF', '\n'], ['CRLF', '\r\n']] as const) {
  const bytes = Buffer.from(STREAM.replaceAll('\n', term));
  const stripped = Buffer.from((BEFORE + AFTER).replaceAll('\n', term));

  test(`${name}: pass-through forwards every chunk itself and meters the same at every split`, () => {
    for (let i = 0; i <= bytes.length; i++) {
      const r = run([bytes.subarray(0, i), bytes.subarray(i)], false);
      assert.ok(r.identity, `split ${i}: forwarded a copy`);
      assert.deepEqual(r.out, bytes);
      assert.deepEqual(r.usage, USAGE, `split ${i}`);
      assert.equal(r.text, TEXT, `split ${i}`);
      assert.equal(r.sawDone, true);
      assert.equal(r.frames, 7);
    }
  });

  test(`${name}: strip mode removes exactly the usage frame at every split`, () => {
    for (let i = 0; i <= bytes.length; i++) {
      const r = run([bytes.subarray(0, i), bytes.subarray(i)], true);
      assert.equal(r.out.toString(), stripped.toString(), `split ${i}`);
      assert.deepEqual(r.usage, USAGE, `split ${i}`);
      assert.equal(r.text, TEXT);
      assert.equal(r.sawDone, true);
    }
    const single = run(Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1)), true);
    assert.equal(single.out.toString(), stripped.toString());
    assert.deepEqual(single.usage, USAGE);
  });
}

test('strip mode forwards whole-event chunks without copying and stays event-aligned', () => {
  const m = new StreamMeter({ stripUsage: true });
  const a = Buffer.from(BEFORE);
  assert.equal(m.push(a), a);
  // A partial event is held back until it completes.
  const first = Buffer.from('data: {"choices":[{"delta":{"content":"x"}}]}\n');
  assert.equal(m.push(first), undefined);
  const rest = Buffer.from('\ndata: {"choices":[{"delta":{"content":"y"}}]}\n\ndata: {"cho');
  assert.equal(m.push(rest)?.toString(), 'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: {"choices":[{"delta":{"content":"y"}}]}\n\n');
  // The usage event in the middle of a chunk: the pieces around it are forwarded.
  assert.equal(m.push(Buffer.from('ices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n' + AFTER))?.toString(), AFTER);
  assert.equal(m.end(), undefined);
  assert.deepEqual(m.usage, { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 });
});

test('strip mode: a chunk that splits into many pieces around usage-only events, then ordinary chunks again', () => {
  const m = new StreamMeter({ stripUsage: true });
  const content = (i: number) => chunk({ ...base, choices: [{ index: 0, delta: { content: `w${i} ` }, finish_reason: null }], usage: null });
  let many = '';
  let kept = '';
  for (let i = 0; i < 40; i++) { many += content(i) + USAGE_EVENT; kept += content(i); }
  assert.equal(m.push(Buffer.from(many))?.toString(), kept, '40 pieces joined, every usage-only event removed');
  for (let round = 0; round < 3; round++) {
    const one = Buffer.from(content(100 + round));
    assert.equal(m.push(one), one, 'a whole kept chunk is forwarded as it is');
    assert.equal(m.push(Buffer.from(content(200 + round) + USAGE_EVENT + content(300 + round)))?.toString(), content(200 + round) + content(300 + round));
  }
  assert.equal(m.push(Buffer.from(AFTER))?.toString(), AFTER);
  assert.equal(m.end(), undefined);
  assert.deepEqual(m.usage, USAGE);
});

test('usage on a chunk that also carries choices is recorded but never stripped', () => {
  const s = chunk({ ...base, choices: [{ index: 0, delta: { content: 'hi' }, finish_reason: 'stop' }], usage: USAGE }) + AFTER;
  const r = run([Buffer.from(s)], true);
  assert.equal(r.out.toString(), s);
  assert.deepEqual(r.usage, USAGE);
  assert.equal(r.text, 'hi');
});

test('a data frame that is not JSON reached the client: its text is counted', () => {
  const s = chunk({ ...base, choices: [{ index: 0, delta: { content: 'ok' } }] }) + 'data: plain words here\n\n' + 'data: [DONE]\n\n';
  for (const strip of [false, true]) assert.equal(run([Buffer.from(s)], strip).text, 'okplain words here');
});

test('a stream cut before [DONE] or without usage still yields its text', () => {
  const s = chunk({ ...base, choices: [{ index: 0, delta: { content: 'partial' } }] }) + 'data: {"choices":[{"delta":{"content":" answ';
  for (const strip of [false, true]) {
    const r = run([Buffer.from(s)], strip);
    assert.equal(r.usage, undefined);
    assert.equal(r.sawDone, false);
    assert.equal(r.text, 'partial');
    // The truncated tail is still forwarded: the client sees what the upstream sent.
    assert.equal(r.out.toString(), s);
  }
  // The usage chunk arriving without its final blank line is still read (and stripped) at end().
  const cut = BEFORE + USAGE_EVENT.trimEnd();
  const r = run([Buffer.from(cut)], true);
  assert.deepEqual(r.usage, USAGE);
  assert.equal(r.out.toString(), BEFORE);
});

test('completions streams: choices[].text is collected', () => {
  const s = chunk({ object: 'text_completion', choices: [{ index: 0, text: 'Once' }] }) + chunk({ choices: [{ index: 0, text: ' upon' }] })
    + chunk({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } }) + AFTER;
  const r = run([Buffer.from(s)], true);
  assert.equal(r.text, 'Once upon');
  assert.deepEqual(r.usage, { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 });
});

test('malformed frames never throw and never fake usage', () => {
  const s = [
    'data: {not json\n\n',
    'data: 123\n\n',
    'data: null\n\n',
    'data: "str"\n\n',
    'data: {"choices":"x"}\n\n',
    'data: {"choices":[null, 5, {"delta":5}, {"delta":{"content":7,"tool_calls":[null,{"function":null},{"function":{"arguments":3}}]}}]}\n\n',
    'data: {"choices":[],"usage":{"prompt_tokens":"x","completion_tokens":1}}\n\n',
    'data: {"choices":[],"usage":{"prompt_tokens":-1,"completion_tokens":1}}\n\n',
    'data: {"choices":[],"usage":{}}\n\n',
    'data: {"choices":[],"usage":[]}\n\n',
    'nonsense line without colon\n\n',
    'data: [DONE]\n\n',
  ].join('');
  for (const strip of [false, true]) {
    const r = run([Buffer.from(s)], strip);
    assert.equal(r.usage, undefined);
    // Data that is not JSON reached the client: counted as text (no relayed byte is free); the rest holds none.
    assert.equal(r.text, '{not json');
    assert.equal(r.sawDone, true);
    assert.equal(r.frames, 10);
  }
});

test('a usage report not believed after a believed one keeps the believed one as a floor, and says why', () => {
  const s = chunk({ choices: [{ delta: { content: 'hello there' } }] })
    + chunk({ choices: [], usage: USAGE })
    + chunk({ choices: [], usage: { prompt_tokens: 12, completion_tokens: -4, total_tokens: 8 } });
  const m = new StreamMeter({ stripUsage: false });
  m.push(Buffer.from(s));
  m.end();
  assert.deepEqual(m.usage, USAGE);
  assert.equal(m.usageRejected, 'negative');
  const fixed = new StreamMeter({ stripUsage: false });
  fixed.push(Buffer.from(s + chunk({ choices: [], usage: { ...USAGE, completion_tokens: 10, total_tokens: 22 } })));
  assert.equal(fixed.usageRejected, undefined, 'a later believed report clears the rejection');
  assert.equal(fixed.usage?.completion_tokens, 10);
});

test('an oversized upstream event fails the stream with SLC_UPSTREAM_ERROR', () => {
  for (const stripUsage of [false, true]) {
    const m = new StreamMeter({ stripUsage, maxEventBytes: 1024 });
    assert.ok(m.push(Buffer.from(chunk({ choices: [{ delta: { content: 'ok' } }] }))));
    assert.throws(() => m.push(Buffer.from('data: ' + 'x'.repeat(2000))), (err: unknown) => err instanceof SluiceError && err.code === 'SLC_UPSTREAM_ERROR');
  }
});

test('extractUsage reads non-streaming bodies and tolerates a missing total', () => {
  assert.deepEqual(extractUsage({ id: 'x', choices: [], usage: USAGE }), USAGE);
  assert.deepEqual(extractUsage({ usage: { prompt_tokens: 5, completion_tokens: 7 } }), { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 });
  assert.deepEqual(extractUsage({ usage: { prompt_tokens: 5 } }), { prompt_tokens: 5, completion_tokens: 0, total_tokens: 5 });
  assert.deepEqual(extractUsage({ usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 9, prompt_tokens_details: { cached_tokens: 1 } } }), { prompt_tokens: 5, completion_tokens: 2, total_tokens: 9 });
  assert.equal(parseUsage({ prompt_tokens: 2.9, completion_tokens: 1 }), undefined, 'a fractional count is implausible');
  for (const bad of [undefined, null, 5, 'x', [], {}, { usage: null }, { usage: {} }, { usage: { total_tokens: 4 } }, { usage: { prompt_tokens: 'a' } }, { usage: { prompt_tokens: Infinity } }, { usage: { prompt_tokens: 1, completion_tokens: -2 } }]) {
    assert.equal(extractUsage(bad), undefined, JSON.stringify(bad));
  }
});

test('the delta scan fast path yields exactly what a full parse yields', () => {
  const frames: unknown[] = [
    { choices: [{ index: 0, delta: { role: 'assistant', content: '' } }], usage: null },
    { choices: [{ index: 0, delta: { content: 'quote " backslash \\ both \\" tab \t nl \n uni \u00e9 \u2028 emoji 🎌' } }] },
    { choices: [{ index: 0, delta: { content: 'ends with backslash \\' } }] },
    { choices: [{ index: 0, delta: { content: '\\\\"' } }] },
    { choices: [{ index: 0, delta: { content: null, reasoning_content: 'reason "x"' } }] },
    { choices: [{ index: 0, delta: { content: 'both', reasoning_content: 'kinds' } }] },
    { choices: [{ index: 0, delta: { content: 'a' } }, { index: 1, delta: { content: 'b' } }] },
    { choices: [{ index: 0, text: 'completion text' }] },
    { choices: [{ index: 0, delta: { content: 'with logprobs' }, logprobs: { content: [{ token: 'x', logprob: -0.1 }] } }] },
    { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { name: 'f', arguments: '{"content":"not text"}' } }] } }] },
    { choices: [{ index: 0, delta: { role: 'assistant', content: 'r0', refusal: null } }] },
    { choices: [{ index: 0, delta: { refusal: 'I cannot help' } }] },
    { choices: [{ index: 0, delta: { function_call: { name: 'legacy', arguments: '{"a":' } } }] },
    { choices: [{ index: 0, delta: { reasoning: 'openrouter thinks', reasoning_content: '' } }] },
    { choices: [{ index: 0, delta: { audio: { id: 'a1', transcript: 'spoken words' } } }] },
    { choices: [{ index: 0, delta: { content: [{ type: 'text', text: 'part one' }, { type: 'refusal', refusal: ' part two' }] } }] },
    { choices: [{ index: 0, delta: { content: 'last' }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } },
    { choices: [], usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 } },
  ];
  // Compact JSON, and the spaced form some servers emit (which the scan declines and hands to JSON.parse).
  const compact = frames.map((f) => `data: ${JSON.stringify(f)}\n\n`).join('');
  const spaced = frames.map((f) => `data: ${JSON.stringify(f, null, 1).replaceAll('\n', '')}\n\n`).join('');
  for (const s of [compact, spaced, compact + 'data: {"choices":[{"delta":{"content":"unterminated\n\n']) {
    for (const stripUsage of [false, true]) {
      const fast = new StreamMeter({ stripUsage });
      const slow = new StreamMeter({ stripUsage, parseEveryFrame: true });
      const b = Buffer.from(s);
      const outFast = fast.push(b);
      const outSlow = slow.push(b);
      assert.deepEqual(outFast, outSlow);
      assert.equal(fast.end(), slow.end());
      assert.equal(fast.text, slow.text);
      assert.deepEqual(fast.usage, slow.usage);
      assert.equal(fast.frames, slow.frames);
    }
  }
  const m = new StreamMeter({ stripUsage: false });
  m.push(Buffer.from(compact));
  assert.equal(m.text, ['', 'quote " backslash \\ both \\" tab \t nl \n uni \u00e9 \u2028 emoji 🎌', 'ends with backslash \\', '\\\\"', 'reason "x"',
    'both', 'kinds', 'a', 'b', 'completion text', 'with logprobs', 'f', '{"content":"not text"}', 'r0', 'I cannot help', 'legacy', '{"a":',
    'openrouter thinks', 'spoken words', 'part one', ' part two', 'last'].join(''));
  assert.deepEqual(m.usage, { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 });
});

test('scanDeltaText takes plain content frames and declines everything else', () => {
  assert.equal(scanDeltaText('{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}'), 'hi');
  assert.equal(scanDeltaText('{"choices":[{"delta":{"content":"a\\"b\\\\"}}]}'), 'a"b\\');
  assert.equal(scanDeltaText('{"choices":[{"delta":{"content":null,"reasoning_content":"r"}}]}'), 'r');
  assert.equal(scanDeltaText('{"choices":[{"index":0,"text":"t"}]}'), 't');
  assert.equal(scanDeltaText('{"choices":[{"delta":{"role":"assistant"}}]}'), '');
  assert.equal(scanDeltaText('{"choices":[{"delta":{"content":"c","refusal":null}}]}'), 'c');
  assert.equal(scanDeltaText('{"choices":[{"delta":{"role":"assistant"}}],"usage":null}'), '');
  for (const declined of [
    '{"choices":[],"usage":{"prompt_tokens":1}}',
    '{"choices":[{"delta":{"content":"x"}}],"usage":{"total_tokens":1}}',
    '{"choices":[{"delta":{"tool_calls":[]}}]}',
    '{"choices":[{"delta":{"content": "spaced"}}]}',
    '{"choices":[{"delta":{"content":"a","reasoning_content":"b"}}]}',
    '{"choices":[{"delta":{"content":5}}]}',
    // What a full parse reads differently: not JSON, keys spelt with escapes, a second choices member.
    '{not json at all',
    '{"choices":[{"index":0,"delta":{"content":"a","refus\\u0061l":"r"}}]}',
    '{"choices":[{"index":0,"delta":{"content":"a","tool\\u005fcalls":[]}}]}',
    '{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[]}',
    // Text under keys the scan does not read: a refusal, reasoning (OpenRouter), an audio transcript.
    '{"choices":[{"delta":{"refusal":"no"}}]}',
    '{"choices":[{"delta":{"reasoning":"r"}}]}',
    '{"choices":[{"delta":{"audio":{"transcript":"t"}}}]}',
    '{"choices":[{"logprobs":{"content":[]}}]}',
    '{"choices":[{"delta":{"content":"unterminated',
    // Text keys outside choices[0].delta / choices[0]: a full parse does not read them.
    '{"content":" ","choices":[{"index":0,"delta":{}}]}',
    '{"choices":[{"index":0,"delta":{"content":"a"}}],"text":"b"}',
    '{"x":{"choices":[{"delta":{"content":"nested"}}]}}',
    '{"choices":[{"index":0,"delta":{},"message":{"content":"m"}}]}',
  ]) {
    assert.equal(scanDeltaText(declined), null, declined);
  }
});

test('frames of one learned shape: text kept as bytes yields what a full parse yields, at every split and past the bound', () => {
  const shape = (content: string) => chunk({ ...base, choices: [{ index: 0, delta: { content }, logprobs: null, finish_reason: null }], usage: null });
  const texts = [' Hello', ' wörld', ' 日本', ' 🌍', '', ' say "hi"', ' back\\slash', ' usage', ' plain', ' tok', ' tok', 'é'];
  const frames = [
    chunk({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }], usage: null }),
    ...texts.map(shape),
    chunk({ ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }], usage: null }),
  ];
  const body = frames.join('');
  const full = texts.join('');
  for (const usage of [true, false]) {
    const s = Buffer.from(body + (usage ? USAGE_EVENT : '') + AFTER);
    for (let i = 0; i <= s.length; i += 7) {
      for (const stripUsage of [false, true]) {
        const fast = new StreamMeter({ stripUsage });
        const slow = new StreamMeter({ stripUsage, parseEveryFrame: true });
        const outs = [fast.push(s.subarray(0, i)), fast.push(s.subarray(i)), fast.end()];
        const slowOuts = [slow.push(s.subarray(0, i)), slow.push(s.subarray(i)), slow.end()];
        assert.equal(Buffer.concat(outs.filter((o) => o !== undefined)).toString(), Buffer.concat(slowOuts.filter((o) => o !== undefined)).toString(), `split ${i}`);
        assert.equal(fast.text, full, `split ${i}`);
        assert.equal(slow.text, full);
        assert.deepEqual(fast.usage, usage ? USAGE : undefined);
        assert.equal(fast.frames, slow.frames);
      }
    }
  }
  // A stream cut mid-way (no usage, no [DONE]): the text kept so far is all there.
  const cut = new StreamMeter({ stripUsage: true });
  cut.push(Buffer.from(frames.slice(0, 5).join('')));
  assert.equal(cut.text, texts.slice(0, 4).join(''));
  // Past the bound, pieces are handed out to count; pieces + rest are the whole text, in order.
  const long = Array.from({ length: 400 }, (_, i) => ` w${i}${i % 9 === 0 ? ' 日本' : ''}`);
  const m = new StreamMeter({ stripUsage: true, textBound: 64 });
  let got = '';
  for (const t of long) {
    m.push(Buffer.from(shape(t)));
    for (let p = m.takeCountable(); p !== undefined; p = m.takeCountable()) got += p;
    assert.ok(m.heldChars <= 2 * 64 + 16, `held ${m.heldChars}`);
  }
  assert.equal(got + m.text, long.join(''));
  assert.ok(m.countMargin > 0);
});

test('learned-shape frames whose text bytes are not whole UTF-8 characters decode as a full parse does', () => {
  const pre = Buffer.from(`data: {"id":"x","choices":[{"index":0,"delta":{"content":"`);
  const suf = Buffer.from(`"},"finish_reason":null}],"usage":null}\n\n`);
  const frame = (bytes: number[]) => Buffer.concat([pre, Buffer.from(bytes), suf]);
  // 'ab', then the first two bytes of '€' (E2 82 AC), then its last byte alone, then a stray continuation byte.
  const pieces = [frame([0x61, 0x62]), frame([0x20, 0xe2, 0x82]), frame([0xac, 0x63]), frame([0x80]), frame([0x64, 0xf0, 0x9f, 0x8c, 0x8d])];
  const fast = new StreamMeter({ stripUsage: false });
  const slow = new StreamMeter({ stripUsage: false, parseEveryFrame: true });
  for (const p of pieces) { fast.push(p); slow.push(p); }
  assert.equal(fast.text, slow.text);
  assert.equal(fast.text, 'ab \ufffd\ufffdc\ufffdd🌍');
});

test('strip mode: an event trickled a byte per read is held in one buffer, not a Buffer per read', async () => {
  const { setFlagsFromString } = await import('node:v8');
  const { runInNewContext } = await import('node:vm');
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const text = 'word '.repeat(100_000);
  const event = Buffer.from(chunk({ ...base, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] }));
  const m = new StreamMeter({ stripUsage: true });
  const bytes = (): number => { gc(); const u = process.memoryUsage(); return u.heapUsed + u.external + u.arrayBuffers; };
  const before = bytes();
  // Held until its blank line: all but the last two bytes, one read each.
  for (let i = 0; i < event.length - 2; i++) assert.equal(m.push(event.subarray(i, i + 1)), undefined);
  const held = bytes() - before;
  assert.ok(held < 8 * event.length, `holding a ${event.length}-byte event took ${held} bytes`);
  const out = m.push(event.subarray(event.length - 2));
  assert.ok(out !== undefined && out.equals(event), 'the event goes out whole, as it came');
  assert.equal(m.text, text);
});
