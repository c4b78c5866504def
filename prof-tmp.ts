import { WorkerPool } from './src/workers/pool.ts';
const pool = new WorkerPool({ threads: 1 });
for (let i = 0; i < 100; i++) await pool.countText('', undefined);
const e0 = performance.eventLoopUtilization(); const t = performance.now();
for (let i = 0; i < 5000; i++) await pool.countText('', undefined);
console.log('rt', (performance.now() - t) / 5, 'busy', performance.eventLoopUtilization(e0).active / 5);
await pool.close();
