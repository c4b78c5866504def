// One listening socket served by every thread of the process. Node 20 can neither hand a socket to a worker
// thread, nor duplicate a descriptor, nor bind with SO_REUSEPORT. So the first serving thread binds the public port
// (exclusively: a second process is refused) and every other thread gets its own descriptor of that socket from a
// short-lived helper process: the helper inherits the socket and sends it back over its IPC channel (SCM_RIGHTS),
// where it arrives as a new descriptor owned by the thread that spawned the helper. All threads then accept from
// the one socket (the kernel wakes the idle ones: the busiest thread takes the fewest connections, as with nginx's
// shared listeners), and each closing its own descriptor leaves the others listening.
import { spawn } from 'node:child_process';
import type { Server } from 'node:net';

/** The helper: wraps descriptor 3 without reading from it and sends its handle to the parent, then exits. */
const HELPER = "const s=new (require('node:net').Socket)({fd:3,readable:false,writable:false});"
  + "process.send('listener',s._handle,()=>process.exit(0));";

/** A listening socket's handle in the receiving thread; `net.Server.listen()` takes it. */
export interface SharedListener {
  readonly fd: number;
}

/** The descriptor of a node:net server's listening socket (libuv's handle exposes it; not part of the typings). */
export function listenerFd(server: Server): number {
  const fd = (server as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('the listening socket has no descriptor to share');
  return fd;
}

/** Closes a shared listener that was never listened on; resolves once its descriptor is closed. */
export function closeListener(h: SharedListener): Promise<void> {
  const handle = h as unknown as { close?(cb: () => void): void };
  return new Promise((resolve) => { if (handle.close === undefined) resolve(); else handle.close(resolve); });
}

/**
 * A new descriptor of the listening socket `fd` (open in this process), owned by the calling thread. Resolves once
 * the helper has exited too, so no other process holds the socket after start-up.
 */
export function shareListener(fd: number, timeoutMs = 15_000): Promise<SharedListener> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, ['-e', HELPER], { stdio: ['ignore', 'ignore', 'pipe', fd, 'ipc'], env });
    let err = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (s: string) => { err = (err + s).slice(-2048); });
    let got: SharedListener | undefined;
    let done = false;
    const fail = (why: string): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      // A descriptor kept open here would hold the port after shutdown.
      if (got !== undefined) void closeListener(got);
      reject(new Error(`cannot share the listening socket with a serving thread: ${why}${err.trim() === '' ? '' : ` (${err.trim()})`}`));
    };
    const timer = setTimeout(() => fail(`the helper process did not finish within ${timeoutMs} ms`), timeoutMs);
    child.once('error', (e) => fail(e.message));
    child.on('message', (_m: unknown, handle: unknown) => {
      const h = handle as Partial<SharedListener> | undefined;
      if (done || got !== undefined) { if (h?.fd !== undefined) void closeListener(h as SharedListener); return; }
      if (h === undefined || h === null || typeof h.fd !== 'number' || h.fd < 0) { fail('the helper process sent no socket'); return; }
      got = h as SharedListener;
    });
    // 'close', not 'exit': a message still in the IPC channel is delivered before it.
    child.once('close', (code, signal) => {
      if (got === undefined) { fail(`the helper process exited (code ${code}, signal ${signal}) without sending it`); return; }
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(got);
    });
  });
}
