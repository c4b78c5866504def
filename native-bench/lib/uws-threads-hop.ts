// Case (b) of uws-threads.bench.ts: the unchanged bare hop (bare-hop.ts) in N worker threads of one process.
// Each thread runs its own uWS.App() on the same port (uWS listens with SO_REUSEPORT, so the kernel spreads new
// connections over the listeners by a hash of the 4-tuple) and its own undici Pool. The main thread only starts
// them and waits.
// Usage: node --import tsx native-bench/lib/uws-threads-hop.ts --upstream http://127.0.0.1:<port> [--threads 2] [--port 0]
// Prints `uws-threads-hop listening on http://127.0.0.1:<port> (<n> threads)`.
import { createServer } from 'node:net';
import { Worker } from 'node:worker_threads';

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) { process.stderr.write(`uws-threads-hop: ${name} is required\n`); process.exit(2); }
  return v;
}

const upstream = arg('--upstream');
const threads = Number(arg('--threads', '2'));
const firstPort = Number(arg('--port', '0'));
if (!Number.isInteger(threads) || threads < 1 || threads > 16) { process.stderr.write('uws-threads-hop: --threads must be 1..16\n'); process.exit(2); }

const HOP = new URL('./bare-hop.ts', import.meta.url).href;
const TSX_API = import.meta.resolve('tsx/esm/api');
// A worker's entry module is loaded before an inherited `--import tsx` has its hooks in place on that thread
// (a .ts entry fails with ERR_UNKNOWN_FILE_EXTENSION), so the thread starts without it and registers tsx first.
const BOOT = `import(${JSON.stringify(TSX_API)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(HOP)}); })`;
const READY = /bare-hop listening on http:\/\/127\.0\.0\.1:(\d+)/;

function startThread(port: number): Promise<number> {
  const worker = new Worker(BOOT, {
    eval: true, execArgv: [], argv: ['--upstream', upstream, '--port', String(port)], stdout: true, stderr: true,
  });
  return new Promise((resolve, reject) => {
    let out = '';
    let ready = false;
    worker.stdout.setEncoding('utf8');
    worker.stdout.on('data', (s: string) => {
      if (ready) return;
      out += s;
      const m = READY.exec(out);
      if (m === null) return;
      ready = true;
      resolve(Number(m[1]));
    });
    worker.stderr.pipe(process.stderr);
    worker.once('error', (err) => { if (!ready) reject(err); else process.stderr.write(`uws-threads-hop: thread failed: ${err.message}\n`); });
    // A hop thread that ends after start-up leaves fewer listeners than asked: fail loudly, not quietly slower.
    worker.once('exit', (code) => {
      if (!ready) reject(new Error(`hop thread exited with code ${code} before listening`));
      else { process.stderr.write(`uws-threads-hop: a hop thread exited (code ${code})\n`); process.exit(1); }
    });
  });
}

/** A port free right now on 127.0.0.1 (the OS picks it; a race with another process is possible but unlikely). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

try {
  // uWS sets SO_REUSEPORT only on a non-zero port (a port-0 listener is exclusive, so a second App could not
  // join it): pick a free port first, then every thread listens on it.
  const port = await startThread(firstPort === 0 ? await freePort() : firstPort);
  for (let i = 1; i < threads; i++) {
    const p = await startThread(port);
    if (p !== port) throw new Error(`hop thread ${i + 1} listened on ${p}, not ${port}`);
  }
  process.stdout.write(`uws-threads-hop listening on http://127.0.0.1:${port} (${threads} threads)\n`);
} catch (err) {
  process.stderr.write(`uws-threads-hop: ${(err as Error).message}\n`);
  process.exit(1);
}
// Signals reach the main thread only; exiting the process ends every hop thread and closes its sockets.
process.once('SIGTERM', () => process.exit(0));
process.once('SIGINT', () => process.exit(0));
