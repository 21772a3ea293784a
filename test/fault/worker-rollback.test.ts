/**
 * A worker rolled back under a running run, on the test bed's Temporal server: the run was
 * started by the current workflow code and waits at its plan gate; its worker is replaced by one
 * whose `migrateOwnership` differs (a step the current code does not have, as an older release
 * would). Replaying the run's history there fails the workflow task as non-deterministic; the
 * run is not failed, nothing in the cluster changes, and once the current worker is back the run
 * completes with the policies as before. (README: Interfaces, upgrade workers first.)
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { temporal } from '@temporalio/proto';
import { bundleWorkflowCode } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { waitFor } from '../../testbed/process.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { approveSignal, type MigrationReport } from '../../src/workflows/messages.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { policyState } from '../support/policy-state.js';
import { readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const namespace = uniqueName('rollback');
const taskQueue = uniqueName('rollback');
const root = fileURLToPath(new URL('../..', import.meta.url));
const workers: TestWorker[] = [];
let scratch: string;
let olderBundle: string;

/**
 * The built workflows with `migrateOwnership` starting with a timer: another release's code for
 * the same workflow type. Written under the repository, so the bundler finds its packages.
 */
async function bundleOfOtherCode(): Promise<string> {
  mkdirSync(join(root, 'test-artifacts'), { recursive: true });
  scratch = mkdtempSync(join(root, 'test-artifacts', 'older-workflows-'));
  const current = relative(scratch, join(root, 'dist', 'src', 'workflows', 'index.js'));
  const source = join(scratch, 'index.js');
  writeFileSync(
    source,
    [
      `import { sleep } from '@temporalio/workflow';`,
      `import { migrateOwnership as current } from ${JSON.stringify(current)};`,
      `export * from ${JSON.stringify(current)};`,
      `export async function migrateOwnership(input) {`,
      `  await sleep(1);`,
      `  return current(input);`,
      `}`,
    ].join('\n'),
  );
  const { code } = await bundleWorkflowCode({ workflowsPath: source, logger: quietLogger });
  const out = join(scratch, 'bundle.js');
  writeFileSync(out, code);
  return out;
}

const quietLogger = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** A worker on the run's task queue; a replaced run's next task goes to any worker after 1 s. */
async function worker(workflowBundlePath?: string): Promise<TestWorker> {
  const w = await startTestWorker(taskQueue, {
    stickyQueueScheduleToStartTimeout: '1s',
    ...(workflowBundlePath ? { workflowBundlePath } : {}),
  });
  workers.push(w);
  return w;
}

beforeAll(async () => {
  [olderBundle] = await Promise.all([bundleOfOtherCode(), readyFixture(kc, namespace, bed().pvRoot, 5)]);
}, 180_000);

afterAll(async () => {
  for (const w of workers) await w.stop().catch(() => undefined);
  await removeFixtures(kc, [namespace]);
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

describe('a worker rolled back under a running run', () => {
  it(
    'fails the workflow task, not the run, changes nothing, and the run completes on the current worker',
    { timeout: 240_000 },
    async () => {
      const before = await policyState(kc, namespace);
      const current = await worker();
      const { handle } = await startRun(
        current.w.client,
        { ...hostRunnerRun(namespace), approvals: ['plan'] },
        { taskQueue },
      );
      await waitFor(
        'the plan gate',
        async () => (await queryStatus(current.w.client, namespace)).gates.some((g) => g.state === 'waiting'),
        120_000,
        200,
      );
      await current.stop();

      const older = await worker(olderBundle);
      // The stopped worker's client is closed with it: the run through the next one's.
      const run = older.w.client.workflow.getHandle(handle.workflowId);
      await run.signal(approveSignal, { gate: 'plan', by: 'rollback test' });
      const nonDeterministic =
        temporal.api.enums.v1.WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR;
      await waitFor(
        'a workflow task failed as non-deterministic',
        async () =>
          ((await run.fetchHistory()).events ?? []).some(
            (e) => e.workflowTaskFailedEventAttributes?.cause === nonDeterministic,
          ),
        90_000,
        250,
      );
      expect((await run.describe()).status.name).toBe('RUNNING');
      // The run went no further than its gate under the other code.
      const scheduled = ((await run.fetchHistory()).events ?? []).flatMap(
        (e) => e.activityTaskScheduledEventAttributes?.activityType?.name ?? [],
      );
      expect(scheduled).not.toContain('relaxPolicies');
      expect(await policyState(kc, namespace)).toEqual(before);
      await older.stop();

      const back = await worker();
      const report = (await back.w.client.workflow.getHandle(handle.workflowId).result()) as MigrationReport;
      expect(report.endState).toBe('completed');
      expect(await policyState(kc, namespace)).toEqual(before);
    },
  );
});
