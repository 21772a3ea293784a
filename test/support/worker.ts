/**
 * A runas-migrate worker against the test bed, on its own task queue, for e2e tests.
 */
import { createWorker, sweeperScheduleId, type RunningWorker, type WorkerOptions } from '../../src/worker.js';
import { bed } from './bed.js';

/** A running worker and how to stop it (its sweeper Schedule is deleted too). */
export interface TestWorker {
  w: RunningWorker;
  stop(): Promise<void>;
}

/** Starts a worker polling `taskQueue`; its sweeper Schedule fires only when triggered. */
export async function startTestWorker(
  taskQueue: string,
  extra: Pick<WorkerOptions, 'interceptors'> = {},
): Promise<TestWorker> {
  const w = await createWorker({
    address: bed().temporal.address,
    kubeconfig: bed().kubeconfig,
    taskQueue,
    sweepEvery: '1 hour',
    log: () => undefined,
    ...extra,
  });
  const running = w.worker.run();
  return {
    w,
    async stop() {
      await w.client.schedule
        .getHandle(sweeperScheduleId(taskQueue))
        .delete()
        .catch(() => undefined);
      w.worker.shutdown();
      await running;
      await w.close();
    },
  };
}
