// The mock upstream in a process of its own, so its CPU is never counted as the hop's or the gateway's.
// Same output as `sluice mock-upstream`, without loading the gateway's modules.
// Usage: node --import tsx native-bench/lib/mock-process.ts [--port 0] [--chunks 32] [--chunk-delay-ms 2]
import { parseMockUpstreamArgs } from '../../src/mock/command.ts';
import { startMockUpstream } from '../../src/mock/server.ts';

const mock = await startMockUpstream(parseMockUpstreamArgs(process.argv.slice(2)));
process.stdout.write(`mock-upstream listening on ${mock.url}\n`);
const stop = (): void => { void mock.close().then(() => process.exit(0)); };
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
