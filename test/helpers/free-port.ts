// Free loopback ports for test servers. The kernel picks them (listen on port 0); every port of one call is
// held open until all are chosen, so a single call never returns the same port twice.
import { createServer, type AddressInfo, type Server } from 'node:net';

const MAX_PORTS = 256;

function listenEphemeral(): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => resolve(server));
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** `n` distinct free ports on 127.0.0.1. */
export async function freePorts(n: number): Promise<number[]> {
  if (!Number.isInteger(n) || n < 0 || n > MAX_PORTS) throw new RangeError(`freePorts: n must be an integer in 0..${MAX_PORTS}`);
  const servers: Server[] = [];
  try {
    for (let i = 0; i < n; i++) servers.push(await listenEphemeral());
    return servers.map((s) => (s.address() as AddressInfo).port);
  } finally {
    await Promise.all(servers.map(close));
  }
}

/** One free port on 127.0.0.1 (bind port 0, read it, close). */
export async function freePort(): Promise<number> {
  const [port] = await freePorts(1);
  return port!;
}
