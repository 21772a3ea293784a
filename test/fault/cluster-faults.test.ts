/**
 * Faults of the cluster under a run on the test bed: a migration Job that fails for real on the
 * host runner (a file root cannot chown: immutable), retried under a fresh window and then stopping
 * the run with the databases scaled to 0 until the cause is fixed and the run started again; and kube-apiserver restarted while the policies are relaxed.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ownershipJobName } from '../../src/core/job.js';
import { OriginalReplicasAnnotation } from '../../src/core/plan.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { restartApiserver } from '../../testbed/bed.js';
import { hostRunnerRun, pvDirectory } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import type { MigrationReport } from '../../src/workflows/messages.js';
import { FailureType } from '../../src/core/failures.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { failureOf } from '../support/failures.js';
import { namespaceSnapshot, ownersOnDisk, readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const taskQueue = uniqueName('fault-cluster');
const namespaces: string[] = [];
const immutable: string[] = [];
let worker: TestWorker;

const inputFor = hostRunnerRun;

async function fixture(files: number): Promise<string> {
  const namespace = uniqueName('fault');
  namespaces.push(namespace);
  await readyFixture(kc, namespace, bed().pvRoot, files);
  return namespace;
}

beforeAll(async () => {
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  for (const f of immutable) execFileSync('chattr', ['-i', f]);
  await worker?.stop();
  await removeFixtures(kc, namespaces);
});

describe('fault: a migration Job fails', () => {
  it(
    'is retried under a fresh window, then the run stops with the databases at 0 and says how to finish; after the fix a second run completes',
    { timeout: 300_000 },
    async () => {
      const namespace = await fixture(50);
      // root with CAP_CHOWN still gets EPERM on an immutable file: a real failure of the real script
      const stuck = join(
        pvDirectory(bed().pvRoot, namespace, 'timescale-ha-data-timescale-1'),
        'data',
        'PG_VERSION',
      );
      execFileSync('chattr', ['+i', stuck]);
      immutable.push(stuck);
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);

      const { handle } = await startRun(worker.w.client, inputFor(namespace, 'admission'), { taskQueue });
      const failure = await failureOf(handle.result());
      expect(failure.type).toBe(FailureType.OwnershipJobFailed);
      expect(failure.message).toContain('ownership Jobs failed after 2 attempts');
      const failedJob = ownershipJobName('timescale', 1);
      expect(failure.message).toContain(failedJob);

      // the report of a failed run is its status: each Job's outcome, both windows, what was done
      const status = await queryStatus(worker.w.client, namespace);
      expect(status.phase).toBe('failed');
      expect(status.endState).toBe('stopped-scaled-down');
      expect(status.windows).toHaveLength(2);
      expect(status.windows.every((w) => w.closedAt)).toBe(true);
      const jobs = Object.fromEntries(status.jobs.map((j) => [j.name, j]));
      expect(jobs[failedJob]).toMatchObject({ state: 'failed', attempts: 2 });
      expect(jobs[failedJob]!.summary?.ok).toBe(false);
      expect(jobs[ownershipJobName('pgplatform', 0)]).toMatchObject({ state: 'succeeded', attempts: 1 });
      expect(status.leftToDo.join(' ')).toContain('start the run again with the same input');
      expect(status.compensations).not.toContain('scale timescale back to 2');

      // Nothing started on files it cannot use: every database stays at 0, its replicas recorded;
      // the policies are exactly as before and no Job is left.
      const stopped = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      expect(stopped.policies).toEqual(before.policies);
      expect(stopped.jobs).toEqual([]);
      expect(
        stopped.statefulSets.map((s) => [s.name, s.replicas, s.annotations[OriginalReplicasAnnotation]]),
      ).toEqual(before.statefulSets.map((s) => [s.name, 0, String(s.replicas)]));
      expect(ownersOnDisk(bed().pvRoot, namespace)[stuck]).toBe('1000:1000');

      // What leftToDo says: fix the cause, run again with the same input.
      execFileSync('chattr', ['-i', stuck]);
      const again = await startRun(worker.w.client, inputFor(namespace, 'admission'), { taskQueue });
      const report = (await again.handle.result()) as MigrationReport;
      expect(report.endState).toBe('completed');
      const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      expect(after.policies).toEqual(before.policies);
      expect(after.statefulSets.map((s) => [s.name, s.replicas])).toEqual(
        before.statefulSets.map((s) => [s.name, s.replicas]),
      );
      expect(new Set(Object.values(after.owners))).toEqual(new Set(['5000:5000']));
    },
  );
});

describe('fault: kube-apiserver restarts mid-run', () => {
  it(
    'with the policies relaxed: the run retries through the outage and completes with everything in place',
    { timeout: 240_000 },
    async () => {
      const namespace = await fixture(20_000);
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const { handle } = await startRun(worker.w.client, inputFor(namespace, 'job-duration'), { taskQueue });
      await waitFor(
        'policies relaxed',
        async () => (await queryStatus(worker.w.client, namespace)).policies.state === 'relaxed',
        60_000,
        100,
      );
      const outageMs = await restartApiserver(bed());
      expect(outageMs).toBeGreaterThan(0);

      const report = (await handle.result()) as MigrationReport;
      expect(report.windows).toHaveLength(1);
      expect(report.jobs.every((j) => j.attempts === 1)).toBe(true);
      const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      expect(after.policies).toEqual(before.policies);
      expect(after.jobs).toEqual([]);
      expect(after.statefulSets.map((s) => [s.name, s.replicas])).toEqual(
        before.statefulSets.map((s) => [s.name, s.replicas]),
      );
      expect(after.statefulSets.every((s) => !(OriginalReplicasAnnotation in s.annotations))).toBe(true);
      expect(new Set(Object.values(after.owners))).toEqual(new Set(['5000:5000']));
    },
  );
});
