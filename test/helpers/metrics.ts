// Reading the gateway's charged totals from /metrics, and polling them (generously: the machine is shared).
import assert from 'node:assert/strict';
import type { MockUpstream } from '../../src/mock/server.ts';
import type { TestGateway } from './gateway.ts';

/** sluice_quota_tokens_charged_total summed over every series of `route`. */
export async function charged(gw: TestGateway, route: string): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`sluice_quota_tokens_charged_total{route="${route}"`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Waits until the charged total has moved by `expected` from `before`, then asserts it. */
export async function expectCharged(gw: TestGateway, route: string, before: number, expected: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  let now = await charged(gw, route);
  while (now - before !== expected && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    now = await charged(gw, route);
  }
  assert.equal(now - before, expected, `charged ${now - before}, expected ${expected}`);
}

/** The charged total once it moved from `before` (an aborted stream settles after the client saw the cut). */
export async function waitMoved(gw: TestGateway, route: string, before: number): Promise<number> {
  const deadline = Date.now() + 15_000;
  let now = await charged(gw, route);
  while (now === before && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    now = await charged(gw, route);
  }
  return now;
}

/** Tokens the mock has reported in usage so far, every surface. */
export function mockTotal(mock: MockUpstream): number {
  return mock.stats().usage.total_tokens;
}

/** The sum of every /metrics sample whose line matches `re`. */
export async function metric(gw: TestGateway, re: RegExp): Promise<number> {
  const text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (re.test(line)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

/** Polls `check` until it holds; throws `timed out: <what>` after `ms`. */
export async function eventually(what: string, check: () => Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
