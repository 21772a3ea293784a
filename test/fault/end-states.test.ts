/**
 * How runs end on the test bed, with real files on the host runner: an abort during a real
 * `chown` of a large tree rolls forward (the Jobs finish, the databases start as the new IDs) or
 * back (the Jobs stopped and their pods gone, reverse Jobs, the old template); and a second run
 * with another workflow ID is refused by the namespace's lock with nothing changed.
 */
import { CoordinationV1Api } from '@kubernetes/client-node';
import { abortSignal } from '../../src/workflows/messages.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NamespaceLockName } from '../../src/services/namespace-lock.js';
import { OriginalReplicasAnnotation } from '../../src/core/plan.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { FailureType } from '../../src/core/failures.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { failureOf } from '../support/failures.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const taskQueue = uniqueName('end-states');
const namespaces: string[] = [];
let worker: TestWorker;

async function fixture(files: number): Promise<string> {
  const namespace = uniqueName('ends');
  namespaces.push(namespace);
  await readyFixture(kc, namespace, bed().pvRoot, files);
  return namespace;
}

beforeAll(async () => {
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await worker?.stop();
  await removeFixtures(kc, namespaces);
});

/** Starts a run and aborts it once every ownership pod was admitted: their chown is under way. */
async function abortDuringChown(namespace: string, recovery: 'roll-forward' | 'roll-back') {
  const { handle } = await startRun(
    worker.w.client,
    { ...hostRunnerRun(namespace), recovery },
    { taskQueue },
  );
  await waitFor(
    'ownership pods admitted',
    async () => {
      const { jobs } = await queryStatus(worker.w.client, namespace);
      return jobs.length > 0 && jobs.every((j) => j.state === 'admitted');
    },
    120_000,
    50,
  );
  await handle.signal(abortSignal, { reason: 'change window closed', by: 'test' });
  const failure = await failureOf(handle.result());
  expect(failure.type).toBe(FailureType.Aborted);
  const s = await queryStatus(worker.w.client, namespace);
  if (process.env.DEBUG_STATUS) console.log(JSON.stringify({ ...s, plan: null }, null, 1));
  return s;
}

describe('end states after an abort during a real chown', () => {
  it(
    'roll-forward: the running Jobs finish, then the databases start as the new IDs',
    { timeout: 300_000 },
    async () => {
      const namespace = await fixture(40_000);
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const status = await abortDuringChown(namespace, 'roll-forward');
      expect(status.endState).toBe('rolled-forward');
      expect(status.leftToDo).toEqual([]);
      expect(status.jobs.every((j) => j.state === 'succeeded' && j.summary?.ok)).toBe(true);

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

  it(
    'roll-back: the Jobs stop and their pods are gone, reverse Jobs give every file back, then the old template starts',
    { timeout: 300_000 },
    async () => {
      const namespace = await fixture(40_000);
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const status = await abortDuringChown(namespace, 'roll-back');
      expect(status.endState).toBe('rolled-back');
      expect(status.leftToDo).toEqual([]);
      expect(status.rollbackJobs.every((j) => j.state === 'succeeded' && j.summary?.uid === 1000)).toBe(true);
      // the forward window and one per reverse round, each closed
      expect(status.windows.length).toBeGreaterThanOrEqual(2);
      expect(status.windows.every((w) => w.closedAt)).toBe(true);

      // Exactly as before: had a forward chown outlived its deletion, some files would be 5000.
      const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      expect(after.policies).toEqual(before.policies);
      expect(after.statefulSets).toEqual(before.statefulSets);
      expect(after.jobs).toEqual([]);
      expect(after.owners).toEqual(before.owners);
    },
  );
});

describe('one run per namespace', () => {
  it(
    'refuses a run with another workflow ID while the first holds the namespace, changing nothing',
    { timeout: 180_000 },
    async () => {
      const namespace = await fixture(10);
      const first = await startRun(
        worker.w.client,
        { ...hostRunnerRun(namespace), approvals: ['plan'] },
        { taskQueue },
      );
      await waitFor(
        'first run at its plan gate',
        async () => (await queryStatus(worker.w.client, namespace)).gates[0]?.state === 'waiting',
        60_000,
        100,
      );
      const lease = await kc
        .makeApiClient(CoordinationV1Api)
        .readNamespacedLease({ name: NamespaceLockName, namespace });
      const { runId } = await first.handle.describe();
      expect(lease.spec?.holderIdentity).toBe(`${first.handle.workflowId}/${runId}`);

      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const second = await worker.w.client.workflow.start('migrateOwnership', {
        taskQueue,
        workflowId: `other-${namespace}`,
        args: [hostRunnerRun(namespace)],
      });
      const failure = await failureOf(second.result());
      expect(failure.type).toBe('NamespaceLocked');
      expect(failure.message).toContain(
        `namespace ${namespace} is being migrated by run ${first.handle.workflowId}`,
      );
      expect(await namespaceSnapshot(kc, namespace, bed().pvRoot)).toEqual(before);

      await first.handle.signal(abortSignal, { reason: 'done testing', by: 'test' });
      await failureOf(first.handle.result());
      await expect(
        kc.makeApiClient(CoordinationV1Api).readNamespacedLease({ name: NamespaceLockName, namespace }),
      ).rejects.toMatchObject({ code: 404 });
    },
  );
});
