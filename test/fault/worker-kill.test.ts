/**
 * Faults on the test bed: the worker process is SIGKILLed at every phase boundary (before a
 * step, or after its work with the completion lost) and while the Jobs run, and new workers
 * finish the run with nothing lost or done twice; a run terminated while the policies are
 * relaxed is swept back by the Schedule; the Temporal server restarts with the window open and
 * the run goes on.
 */
import { ownershipJobName } from '../../src/core/job.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BatchV1Api, Watch } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RelaxationAnnotation } from '../../src/core/policy.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { connectClient, sweeperScheduleId } from '../../src/app/worker.js';
import { workflowBundlePath } from '../../src/app/workflow-bundle.js';
import {
  Gatekeeper,
  hostRunnerRun,
  ItrsDatabases,
  seedItrsFixture,
  waitForFixtureReady,
} from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { abortSignal, type MigrationReport } from '../../src/workflows/messages.js';
import { restartTemporal } from '../../testbed/bed.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import type { KillPoint } from '../support/fault-interceptors.js';
import { policyState } from '../support/policy-state.js';
import { namespaceSnapshot, removeFixtures } from '../support/snapshot.js';
import { spawnWorkerProcess, startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const batch = kc.makeApiClient(BatchV1Api);
const faultWorker = fileURLToPath(new URL('../support/fault-worker.ts', import.meta.url));
const namespaces: string[] = [];
const children: ChildProcess[] = [];
const queues = new Set<string>();
let client: Awaited<ReturnType<typeof connectClient>>;

/** A worker in its own process, as in production: `runas-migrate worker`. */
function workerProcess(taskQueue: string): ChildProcess {
  queues.add(taskQueue);
  const child = spawnWorkerProcess(taskQueue);
  children.push(child);
  return child;
}

/** A worker process that SIGKILLs itself at `at` (see test/support/fault-worker.ts). */
function faultWorkerProcess(taskQueue: string, at?: KillPoint): ChildProcess {
  queues.add(taskQueue);
  const child = spawn(process.execPath, ['--import', 'tsx', faultWorker, taskQueue, ...(at ? [at] : [])], {
    env: {
      ...process.env,
      KUBECONFIG: bed().kubeconfig,
      TEMPORAL_ADDRESS: bed().temporal.address,
    },
    stdio: 'ignore',
    detached: true,
  });
  children.push(child);
  return child;
}

/**
 * Watches what must never happen twice during a run: Job creations (distinct uids per name)
 * and the namespace's entries in every constraint's excludedNamespaces.
 */
async function watchForDuplicates(namespace: string) {
  const watch = new Watch(kc);
  const jobUids = new Map<string, Set<string>>();
  let maxEntries = 0;
  const stops = [
    await watch.watch(
      `/apis/batch/v1/namespaces/${namespace}/jobs`,
      {},
      (type, job: { metadata: { name: string; uid: string } }) => {
        if (type !== 'ADDED') return;
        const uids = jobUids.get(job.metadata.name) ?? new Set<string>();
        jobUids.set(job.metadata.name, uids.add(job.metadata.uid));
      },
      () => undefined,
    ),
    ...(await Promise.all(
      Gatekeeper.kinds.map((k) =>
        watch.watch(
          `/apis/${Gatekeeper.group}/${Gatekeeper.version}/${k.plural}`,
          {},
          (_type, c: { spec?: { match?: { excludedNamespaces?: string[] } } }) => {
            const n = (c.spec?.match?.excludedNamespaces ?? []).filter((x) => x === namespace).length;
            maxEntries = Math.max(maxEntries, n);
          },
          () => undefined,
        ),
      ),
    )),
  ];
  return {
    jobUids,
    maxEntries: () => maxEntries,
    stop: () => stops.forEach((s) => s.abort()),
  };
}

async function fixture(filesPerVolume: number): Promise<string> {
  const namespace = uniqueName('fault');
  namespaces.push(namespace);
  await seedItrsFixture(kc, { namespace, pvRoot: bed().pvRoot, filesPerVolume });
  await waitForFixtureReady(kc, namespace);
  return namespace;
}

const inputFor = hostRunnerRun;

/**
 * Starts a run whose Jobs' pods can never be scheduled, so the window stays open, and waits
 * until the policies are relaxed.
 */
async function startRelaxedRun(worker: TestWorker, namespace: string, taskQueue: string) {
  const stuck = {
    ...inputFor(namespace, 'job-duration'),
    job: { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } },
  };
  const { handle } = await startRun(worker.w.client, stuck, { taskQueue });
  await waitFor(
    'policies relaxed',
    async () => (await queryStatus(client, namespace)).policies.state === 'relaxed',
    60_000,
    100,
  );
  return handle;
}

beforeAll(async () => {
  client = await connectClient({ address: bed().temporal.address });
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  // Worker processes create their queue's sweeper Schedule; the killed ones cannot delete it.
  for (const q of queues)
    await client.schedule
      .getHandle(sweeperScheduleId(q))
      .delete()
      .catch(() => undefined);
  await client.connection.close();
  await removeFixtures(kc, namespaces);
});

describe('fault: the worker is killed', () => {
  it(
    'SIGKILL while the Jobs run: a new worker finishes, nothing lost or done twice',
    { timeout: 240_000 },
    async () => {
      const namespace = await fixture(20_000);
      const taskQueue = uniqueName('fault-kill');
      const before = await policyState(kc, namespace);
      const first = workerProcess(taskQueue);
      const { handle } = await startRun(client, inputFor(namespace, 'job-duration'), { taskQueue });
      await waitFor(
        'Jobs created',
        async () => (await queryStatus(client, namespace)).jobs.some((j) => j.state === 'created'),
        60_000,
        100,
      );
      process.kill(-first.pid!, 'SIGKILL');
      const killedAt = Date.now();
      workerProcess(taskQueue);

      const report = (await handle.result()) as MigrationReport;
      const recovery = (Date.now() - killedAt) / 1000;
      expect(recovery).toBeGreaterThan(0);
      // one Job per replica, each run once (no duplicate from the retried activity)
      expect(report.jobs.map((j) => j.name).sort()).toEqual([
        ownershipJobName('pgplatform', 0),
        ownershipJobName('timescale', 0),
        ownershipJobName('timescale', 1),
      ]);
      expect(report.jobs.every((j) => j.attempts === 1)).toBe(true);
      expect(report.windows).toHaveLength(1);
      // policies exactly as before: no duplicate excludedNamespaces entry survived
      expect(await policyState(kc, namespace)).toEqual(before);
      expect((await batch.listNamespacedJob({ namespace })).items).toEqual([]);
      expect(report.volumes).toHaveLength(
        ItrsDatabases.reduce((n, d) => n + d.replicas * d.claims.length, 0),
      );
    },
  );
});

describe('fault: the worker is killed at every phase boundary', () => {
  // Before a step, or after its work with its completion lost (the step then runs again).
  const killPoints: KillPoint[] = [
    'before:acquireNamespaceLock',
    'after:planMigration',
    'after:scaleDown',
    'after:patchPodIds',
    'after:relaxPolicies',
    'after:createOwnershipJobs',
    'before:restorePolicies',
    'after:restorePolicies',
    'after:waitForJobs',
    'after:deleteOwnershipJobs',
    'after:scaleUp',
    'before:verifyDatabases',
    'after:releaseNamespaceLock',
  ];

  it(
    `${killPoints.length} workers SIGKILLed one after the other: the run completes, nothing lost or done twice`,
    { timeout: 600_000 },
    async () => {
      const namespace = await fixture(2_000);
      const taskQueue = uniqueName('fault-chain');
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      const watched = await watchForDuplicates(namespace);
      workflowBundlePath(); // npm run build made it: each new worker starts in about a second
      try {
        const { handle } = await startRun(
          client,
          { ...inputFor(namespace, 'admission'), heartbeatTimeout: '5s' },
          { taskQueue },
        );
        const deaths: string[] = [];
        for (const at of killPoints) {
          const w = faultWorkerProcess(taskQueue, at);
          const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
            w.once('exit', (_code, sig) => resolve(sig)),
          );
          deaths.push(`${at} ${signal}`);
        }
        expect(deaths).toEqual(killPoints.map((at) => `${at} SIGKILL`));
        faultWorkerProcess(taskQueue);
        const report = (await handle.result()) as MigrationReport;

        // nothing done twice: one window, each Job created once and run once, one entry per list
        expect(report.windows).toHaveLength(1);
        expect([...watched.jobUids.keys()].sort()).toEqual([
          ownershipJobName('pgplatform', 0),
          ownershipJobName('timescale', 0),
          ownershipJobName('timescale', 1),
        ]);
        expect([...watched.jobUids.values()].map((u) => u.size)).toEqual([1, 1, 1]);
        expect(report.jobs.every((j) => j.attempts === 1)).toBe(true);
        expect(watched.maxEntries()).toBe(1);
        // nothing lost: every file migrated, policies exactly as before, replicas back, no Job left
        const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
        expect(after.policies).toEqual(before.policies);
        expect(new Set(Object.values(after.owners))).toEqual(new Set(['5000:5000']));
        expect(after.statefulSets.map((s) => [s.name, s.replicas])).toEqual(
          before.statefulSets.map((s) => [s.name, s.replicas]),
        );
        expect(after.jobs).toEqual([]);
        expect(report.volumes).toHaveLength(
          ItrsDatabases.reduce((n, d) => n + d.replicas * d.claims.length, 0),
        );
      } finally {
        watched.stop();
      }
    },
  );
});

describe('fault: the run is terminated while the policies are relaxed', () => {
  it('the sweeper Schedule restores them from the namespace record', { timeout: 180_000 }, async () => {
    const namespace = await fixture(10);
    const taskQueue = uniqueName('fault-term');
    const before = await policyState(kc, namespace);
    const worker = await startTestWorker(taskQueue);
    try {
      const handle = await startRelaxedRun(worker, namespace, taskQueue);
      await handle.terminate('operator terminated the run');
      const relaxed = await policyState(kc, namespace);
      expect(relaxed.annotations[RelaxationAnnotation]).toBeDefined();

      await worker.w.client.schedule.getHandle(sweeperScheduleId(taskQueue)).trigger();
      await waitFor(
        'swept',
        async () => (await policyState(kc, namespace)).annotations[RelaxationAnnotation] === undefined,
        60_000,
        300,
      );
      expect(await policyState(kc, namespace)).toEqual(before);
    } finally {
      await worker.stop();
    }
  });
});

describe('fault: the Temporal server restarts while the window is open', () => {
  it(
    'the run survives on the persisted history, and an abort still restores everything',
    { timeout: 180_000 },
    async () => {
      const namespace = await fixture(10);
      const taskQueue = uniqueName('fault-temporal');
      const before = await policyState(kc, namespace);
      const worker = await startTestWorker(taskQueue);
      try {
        const handle = await startRelaxedRun(worker, namespace, taskQueue);

        await restartTemporal(bed());
        const after = await waitFor('run answers again', () => queryStatus(client, namespace), 60_000, 500);
        expect(after.policies.state).toBe('relaxed');
        expect(after.phase).toBe('migrating-ownership');

        await handle.signal(abortSignal, { reason: 'maintenance window over', by: 'test' });
        await expect(handle.result()).rejects.toThrow();
        const end = await queryStatus(client, namespace);
        expect(end.phase).toBe('aborted');
        // Its Jobs' pods were never scheduled, so no file changed: everything back as it was.
        expect(end.endState).toBe('unchanged');
        expect(end.compensations.slice(0, 2)).toEqual([
          're-enforce the policies',
          'see which ownership Jobs have pods',
        ]);
        expect(end.compensations).toContain('restore securityContext of pgplatform');
        expect(end.compensations.indexOf('restore securityContext of timescale')).toBeLessThan(
          end.compensations.indexOf('scale timescale back to 2'),
        );
        expect(await policyState(kc, namespace)).toEqual(before);
        expect((await batch.listNamespacedJob({ namespace })).items).toEqual([]);
      } finally {
        await worker.stop();
      }
    },
  );
});
