// Checks the real-Redis harness itself: each topology starts, serves reads and writes, survives the failure it
// is meant to simulate, and cleans up. Startup and failover times are reported as test diagnostics.
import { after, before, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { Cluster, Redis } from 'ioredis';
import { freePort, freePorts } from '../helpers/free-port.ts';
import {
  liveServerPids, parseInfo, redisCall, redisCli, RespClient, RespError, startCluster, startRedis, startSentinel, stopAll,
  type ClusterHandle, type HostPort, type SentinelHandle,
} from '../helpers/redis-topology.ts';
import { startFaultServer } from '../helpers/resp-fault-server.ts';

after(stopAll);

async function timed<T>(t: TestContext, label: string, run: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const value = await run();
  t.diagnostic(`${label}: ${(performance.now() - t0).toFixed(0)} ms`);
  return value;
}

/** Resolve within `ms` or fail with `what` (keeps a stuck client from eating the file's time budget). */
function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms); });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

async function role(node: HostPort, password?: string): Promise<Record<string, string>> {
  return parseInfo(await redisCall(node, ['INFO', 'replication'], { password }));
}

describe('free ports', () => {
  test('freePorts returns distinct loopback ports that can be bound', async () => {
    const ports = await freePorts(12);
    assert.equal(new Set(ports).size, 12);
    const port = await freePort();
    const server = createServer();
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', resolve); });
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await assert.rejects(freePorts(-1), RangeError);
  });
});

describe('standalone', () => {
  test('SET/GET, SIGKILL, restart on the same port, pause, stop', async (t) => {
    const r = await timed(t, 'standalone startup', () => startRedis({ extraArgs: ['--maxmemory', '12345678'] }));
    assert.equal(r.host, '127.0.0.1');
    assert.equal(await redisCli(r, ['SET', 'k', 'v']), 'OK');
    assert.equal(await redisCall(r, ['GET', 'k']), 'v');
    assert.deepEqual(await redisCall(r, ['CONFIG', 'GET', 'maxmemory']), ['maxmemory', '12345678']);

    await timed(t, 'standalone SIGKILL', () => r.kill());
    assert.equal(r.running, false);
    await assert.rejects(redisCall(r, ['PING']), /ECONNREFUSED/);
    await timed(t, 'standalone restart', () => r.restart());
    assert.equal(await redisCall(r, ['PING']), 'PONG');
    assert.equal(await redisCall(r, ['GET', 'k']), null, 'no persistence: data is gone after a kill');

    await r.kill();
    const squatter = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => { squatter.once('error', reject); squatter.listen(r.port, '127.0.0.1', resolve); });
    try {
      await assert.rejects(r.restart(), new RegExp(`port ${r.port} is in use`));
    } finally {
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
    await r.restart();

    r.pause();
    await assert.rejects(redisCall(r, ['PING'], { timeoutMs: 200 }), /timed out/);
    r.resume();
    assert.equal(await redisCall(r, ['PING']), 'PONG');

    await r.stop();
    await r.stop();
    assert.equal(r.running, false);
    assert.equal(existsSync(r.dir), false);
  });

  test('password and ACL user', async () => {
    const password = 'pw with "quotes" and \\ spaces';
    const r = await startRedis({ password });
    await assert.rejects(redisCall(r, ['PING']), /NOAUTH/);
    assert.equal(await redisCall(r, ['PING'], { password }), 'PONG');
    assert.equal(await redisCli(r, ['SET', 'a', '1'], { password }), 'OK');
    assert.equal(await redisCli(r, ['GET', 'a'], { password }), '1');
    await r.stop();

    const u = await startRedis({ username: 'sluice', password: 'upw' });
    assert.equal(await redisCall(u, ['PING'], { username: 'sluice', password: 'upw' }), 'PONG');
    await assert.rejects(redisCall(u, ['PING'], { password: 'upw' }), /WRONGPASS|NOAUTH/, 'the default user is disabled');
    assert.equal(await redisCli(u, ['SET', 'b', '2'], { username: 'sluice', password: 'upw' }), 'OK');
    await u.stop();
  });

  test('a server that cannot start fails with its log tail and without the password', async () => {
    const password = 'never-in-messages-4711';
    const err = await startRedis({ password, extraArgs: ['--no-such-directive', 'x'] }).then(() => undefined, (e: unknown) => e as Error);
    assert.ok(err instanceof Error);
    assert.match(err.message, /exited during startup/);
    assert.match(err.message, /no-such-directive/i);
    assert.equal(err.message.includes(password), false);
  });
});

describe('cluster', () => {
  const password = 'cluster-pw';
  let cluster: ClusterHandle;
  let client: Cluster;

  before(async () => {
    const t0 = performance.now();
    cluster = await startCluster({ password });
    console.log(`# cluster startup: ${(performance.now() - t0).toFixed(0)} ms`);
    client = new Cluster(cluster.nodes, { redisOptions: { password }, retryDelayOnFailover: 100, retryDelayOnClusterDown: 100, maxRedirections: 32 });
    client.on('error', () => { /* connection errors to the killed node are expected */ });
  });
  after(async () => {
    client?.disconnect();
    await cluster?.stop();
  });

  test('3 masters + 3 replicas, SET/GET through ioredis and redis-cli -c', async () => {
    assert.equal(cluster.nodes.length, 6);
    const masters = await cluster.masters();
    assert.equal(masters.length, 3);
    const view = await cluster.view();
    assert.equal(view.filter((n) => n.masterId !== null).length, 3);
    for (const key of ['a', 'b', 'c', 'user:{t1}']) await client.set(key, `v-${key}`);
    for (const key of ['a', 'b', 'c', 'user:{t1}']) assert.equal(await client.get(key), `v-${key}`);
    assert.equal(await redisCli(cluster.nodes[0]!, ['GET', 'b'], { password, cluster: true }), 'v-b');
  });

  test('slot migration half-way gives ASK, finished gives MOVED', async (t) => {
    const slot = await cluster.slotOf('{mig}');
    await client.set('{mig}a', '1');
    await client.set('{mig}b', '2');
    const migration = await cluster.beginSlotMigration(slot);
    await migration.moveKeys(['{mig}a']);
    const auth = { password };
    await assert.rejects(redisCall(migration.source, ['GET', '{mig}a'], auth), (e: unknown) => e instanceof RespError && e.message === `ASK ${slot} 127.0.0.1:${migration.target.port}`);
    assert.equal(await redisCall(migration.source, ['GET', '{mig}b'], auth), '2', 'keys not moved yet are still served by the source');
    await assert.rejects(redisCall(migration.target, ['GET', '{mig}a'], auth), (e: unknown) => e instanceof RespError && e.message === `MOVED ${slot} 127.0.0.1:${migration.source.port}`);
    const asking = await RespClient.connect(migration.target, auth);
    try {
      assert.equal(await asking.call('ASKING'), 'OK');
      assert.equal(await asking.call('GET', '{mig}a'), '1');
    } finally {
      asking.close();
    }
    assert.equal(await client.get('{mig}a'), '1', 'ioredis follows ASK');

    await timed(t, 'slot migration finish', () => migration.finish());
    assert.deepEqual(await cluster.ownerOfSlot(slot), migration.target);
    await assert.rejects(redisCall(migration.source, ['GET', '{mig}b'], auth), (e: unknown) => e instanceof RespError && e.message === `MOVED ${slot} 127.0.0.1:${migration.target.port}`);
    assert.equal(await client.get('{mig}b'), '2');

    await cluster.migrateSlot(slot, migration.source);
    assert.deepEqual(await cluster.ownerOfSlot(slot), migration.source);
    assert.equal(await client.get('{mig}a'), '1');
  });

  test('killing a master promotes its replica; the restarted node rejoins as a replica', async (t) => {
    await client.set('user:{t1}', 'before-failover');
    const before = await cluster.ownerOfSlot(await cluster.slotOf('user:{t1}'));
    const killed = await timed(t, 'cluster killMaster -> promotion', () => cluster.killMaster('user:{t1}'));
    assert.equal(killed.port, before.port);
    assert.notEqual(killed.promoted.port, killed.port);
    const masters = await cluster.masters();
    assert.equal(masters.length, 3);
    assert.ok(masters.some((m) => m.port === killed.promoted.port));
    assert.ok(!masters.some((m) => m.port === killed.port));
    assert.equal(await redisCall(killed.promoted, ['GET', 'user:{t1}'], { password }), 'before-failover', 'synced write survives');
    assert.equal(await within(15_000, 'ioredis GET after failover', client.get('user:{t1}')), 'before-failover');

    await timed(t, 'cluster restartNode', () => cluster.restartNode(killed));
    const info = await role(killed, password);
    assert.equal(info.role, 'slave');
    assert.equal(info.master_link_status, 'up');
    assert.equal(Number(info.master_port), killed.promoted.port);
    await assert.rejects(cluster.restartNode(killed), /already running/);
  });
});

describe('sentinel', () => {
  const password = 'data-pw';
  const sentinelPassword = 'sentinel-pw';
  let topo: SentinelHandle;
  let client: Redis;

  before(async () => {
    const t0 = performance.now();
    topo = await startSentinel({ password, sentinelPassword });
    console.log(`# sentinel startup: ${(performance.now() - t0).toFixed(0)} ms`);
    client = new Redis({
      sentinels: topo.sentinels, name: topo.masterName, password, sentinelPassword,
      maxRetriesPerRequest: null, retryStrategy: () => 100, sentinelRetryStrategy: () => 100,
    });
    client.on('error', () => { /* connection errors to the killed master are expected */ });
  });
  after(async () => {
    client?.disconnect();
    await topo?.stop();
  });

  test('master + replica + 3 sentinels; ioredis reads and writes through the sentinels', async () => {
    assert.equal(topo.sentinels.length, 3);
    assert.deepEqual(await topo.master(), topo.nodes[0]);
    assert.equal((await role(topo.nodes[1]!, password)).role, 'slave');
    await assert.rejects(redisCall(topo.sentinels[0]!, ['PING']), /NOAUTH/);
    await client.set('s', '1');
    assert.equal(await client.get('s'), '1');
  });

  test('failover promotes the replica; the old master comes back as a replica', async (t) => {
    await client.set('s', 'before-failover');
    const old = await topo.master();
    const promoted = await timed(t, 'sentinel failover', () => topo.failover());
    assert.deepEqual(promoted, topo.nodes[1]);
    assert.deepEqual(await topo.master(), promoted);
    assert.equal((await role(promoted, password)).role, 'master');
    assert.equal(await redisCall(promoted, ['GET', 's'], { password }), 'before-failover');
    await within(15_000, 'ioredis SET after failover', client.set('s', 'after-failover'));
    assert.equal(await redisCall(promoted, ['GET', 's'], { password }), 'after-failover', 'ioredis writes to the new master');

    await timed(t, 'sentinel restartNode', () => topo.restartNode(old));
    const info = await role(old, password);
    assert.equal(info.role, 'slave');
    assert.equal(Number(info.master_port), promoted.port);
    assert.deepEqual(await topo.master(), promoted);
  });
});

describe('fault server', () => {
  test('error, hang and close modes, switchable at runtime', async () => {
    const fault = await startFaultServer('error');
    const target = { host: '127.0.0.1', port: fault.port };
    try {
      await assert.rejects(redisCall(target, ['PING']), (e: unknown) => e instanceof RespError && e.message === 'ERR fault injected');
      assert.equal(fault.connections, 1);
      assert.equal(fault.commands, 1);

      fault.mode = 'hang';
      await assert.rejects(redisCall(target, ['PING'], { timeoutMs: 200 }), /PING timed out/);
      assert.equal(fault.commands, 2);

      // Commands swallowed while hanging are answered once the mode flips to 'error', in order.
      const conn = await RespClient.connect(target, { timeoutMs: 5_000 });
      const pending = [conn.call('GET', 'x'), conn.call('SET', 'x', '1')];
      await within(2_000, 'hang mode to receive both commands', (async () => { while (fault.commands < 4) await new Promise((r) => setTimeout(r, 5)); })());
      fault.mode = 'error';
      for (const p of pending) await assert.rejects(p, /ERR fault injected/);

      fault.mode = 'close';
      await assert.rejects(conn.call('PING'), /closed/, 'switching to close drops open connections');
      conn.close();
      const before = fault.connections;
      await assert.rejects(redisCall(target, ['PING']), /closed|ECONNRESET/);
      assert.equal(fault.connections, before + 1);

      fault.mode = 'error';
      const ioredis = new Redis({ host: target.host, port: target.port, lazyConnect: true, enableReadyCheck: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
      ioredis.on('error', () => { /* surfaced through the command below */ });
      try {
        await ioredis.connect().catch(() => undefined);
        await assert.rejects(ioredis.get('k'), /fault injected|Connection is closed|max retries/i);
      } finally {
        ioredis.disconnect();
      }
    } finally {
      await fault.close();
    }
  });
});

test('stopAll leaves no server running', async () => {
  await stopAll();
  assert.deepEqual(liveServerPids(), []);
});
