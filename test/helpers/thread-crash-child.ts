// A real gateway process (workers > 1, default failure handling), run by crash-child.ts: prints
// "listening <port>", then makes serving thread 0 crash when a line arrives on stdin.
import { startSluice } from '../../src/app.ts';
import { validateConfig } from '../../src/config/validate.ts';

const handle = await startSluice(validateConfig(JSON.parse(process.argv[2]!) as Record<string, unknown>, {}));
process.stdout.write(`listening ${handle.port}\n`);
process.stdin.once('data', () => handle.threads!.crash(0));
