// The piscina task of uws-threads.bench.ts case (c): a trivial JSON.parse of the request body, standing in for
// "hand every request to a worker thread". What it returns is deliberately tiny, so the cost measured is the
// thread hop (clone the body in, wake the thread, post the answer back), not the work.
const decoder = new TextDecoder();

export default function parseBody(body: Uint8Array): number {
  const v = JSON.parse(decoder.decode(body)) as { messages?: unknown };
  return Array.isArray(v.messages) ? v.messages.length : -1;
}
