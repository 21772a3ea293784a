/**
 * A `runas-migrate` worker process that SIGKILLs itself at a chosen step (fault matrix):
 * `node --import tsx test/support/fault-worker.ts <task queue> [before|after:<activity>]`,
 * with KUBECONFIG and TEMPORAL_ADDRESS of the test bed.
 */
import { createWorker } from '../../src/app/worker.js';
import { killAt, type KillPoint } from './fault-interceptors.js';

const [taskQueue, at] = process.argv.slice(2);
if (!taskQueue) throw new Error('usage: fault-worker.ts <task queue> [before|after:<activity>]');
const w = await createWorker({
  taskQueue,
  sweepEvery: '1 hour',
  log: () => undefined,
  // A killed worker's sticky queue would hold the run's next task for the default 10 s.
  stickyQueueScheduleToStartTimeout: '1s',
  ...(at ? { interceptors: killAt(at as KillPoint) } : {}),
});
await w.worker.run();
