/**
 * A runas-migrate worker against the test bed, on its own task queue, for e2e tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  createWorker,
  sweeperScheduleId,
  type RunningWorker,
  type WorkerOptions,
} from '../../src/app/worker.js';
import { workflowIdOf } from '../../src/app/runs.js';
import { waitFor } from '../../testbed/process.js';
import type { SweepReport } from '../../src/workflows/sweeper.js';
import { bed } from './bed.js';

/** A running worker and how to stop it (its sweeper Schedule is deleted too). */
export interface TestWorker {
  w: RunningWorker;
  stop(): Promise<void>;
}

/**
 * Starts a worker polling `taskQueue`; its sweeper Schedule fires only when triggered. It acts
 * as the bed's administrator unless `extra.kubeconfig` names another identity.
 */
export async function startTestWorker(
  taskQueue: string,
  extra: Pick<
    WorkerOptions,
    | 'interceptors'
    | 'kubeconfig'
    | 'recordsNamespace'
    | 'guardrailsFile'
    | 'helm'
    | 'waits'
    | 'workflowBundlePath'
    | 'stickyQueueScheduleToStartTimeout'
  > = {},
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

let lastTrigger = 0;

/** Triggers the sweeper Schedule of `taskQueue` once and returns that sweep's report. */
export async function sweepOnce(w: RunningWorker, taskQueue: string): Promise<SweepReport> {
  // A Schedule names each run after the second it starts in: a second trigger within the same
  // second would collide with the first.
  await new Promise((r) => setTimeout(r, Math.max(0, lastTrigger + 1_100 - Date.now())));
  lastTrigger = Date.now();
  const schedule = w.client.schedule.getHandle(sweeperScheduleId(taskQueue));
  const started = async () =>
    (await schedule.describe()).info.recentActions.map((a) => a.action.workflow.workflowId);
  const seen = new Set(await started());
  await schedule.trigger();
  const id = await waitFor(
    'sweep started',
    async () => (await started()).find((x) => !seen.has(x)),
    30_000,
    200,
  );
  return (await w.client.workflow.getHandle(id).result()) as SweepReport;
}

/**
 * After a test whose worker ran as a process of its own: deletes that worker's sweeper Schedule
 * and terminates the run of `namespace` if the test failed before it ended.
 */
export async function cleanUpAfterProcessWorker(
  client: RunningWorker['client'],
  o: { taskQueue: string; namespace: string; test: string },
): Promise<void> {
  await client.schedule
    .getHandle(sweeperScheduleId(o.taskQueue))
    .delete()
    .catch(() => undefined);
  await client.workflow
    .getHandle(workflowIdOf(o.namespace))
    .terminate(`${o.test} test cleanup`)
    .catch(() => undefined);
}

const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));

/**
 * A worker in its own process against the bed, as in production: `runas-migrate worker` on
 * `taskQueue`, in a process group of its own so that a test can SIGKILL it whole.
 */
export function spawnWorkerProcess(taskQueue: string): ChildProcess {
  return spawn(process.execPath, [cli, 'worker', '--task-queue', taskQueue], {
    env: { ...process.env, KUBECONFIG: bed().kubeconfig, TEMPORAL_ADDRESS: bed().temporal.address },
    stdio: 'ignore',
    detached: true,
  });
}
