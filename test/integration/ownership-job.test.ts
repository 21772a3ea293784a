/**
 * The ownership Job exactly as runas-migrate submits it, admitted under PSA `baseline`
 * (docs/architecture.md, invariant 6) and run on the host runner over real volumes: 100k+ files; a Job left by an
 * earlier run that is never taken for this run's work; a Job that completes without a summary
 * (on a kwok node) that is not a success; a claim mounted twice with subPaths, changed only there.
 */
import { typedFailureOf } from '../support/failures.js';
import { OwnershipScript } from '../../src/services/ownership-script.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AppsV1Api, BatchV1Api, CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMigrationInput, type MigrationInputRaw } from '../../src/core/input.js';
import {
  buildOwnershipJob,
  ownershipJobName,
  parseJobSummary,
  type JobProgress,
  type JobTarget,
} from '../../src/core/job.js';
import { runInStep } from '../../src/services/step.js';
import { Kube } from '../../src/cluster/kube.js';
import { OwnershipJobs } from '../../src/services/ownership-jobs.js';
import { Planner } from '../../src/services/planner.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { makeTree } from '../support/tree.js';
import { boundVolume, ownerCounts } from '../support/volume.js';
import { execFileSync } from 'node:child_process';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const kube = new Kube(kc);
const ownershipJobs = new OwnershipJobs({ kube, pollMs: 200 });
const planner = new Planner({ kube, policyGuard: new PolicyGuard({ kube }) });
const namespace = uniqueName('job');
const cleanups: (() => Promise<void>)[] = [];
const earlier = { workflowId: 'runas-migrate-earlier', runId: '11111111-1111-4111-8111-111111111111' };
const later = { workflowId: 'runas-migrate-later', runId: '22222222-2222-4222-8222-222222222222' };

/** The part of a run's input that createOwnershipJobs takes, to uid:uid. */
const runTo = (uid: number, job: MigrationInputRaw['job'] = { ...HostRunnerPlacement }) => {
  const input = parseMigrationInput({ namespace, uid, gid: uid, job });
  return { namespace, uid, gid: uid, job: input.job };
};

/** A host directory of the bed's PV root, bound to `claim`. */
async function volume(claim: string, fill: (dir: string) => void): Promise<string> {
  const dir = join(bed().dir, 'pv', namespace, claim);
  fill(dir);
  cleanups.push(await boundVolume(kc, namespace, claim, dir));
  return dir;
}

const target = (statefulSet: string, ordinal: number, claimName: string): JobTarget => ({
  statefulSet,
  ordinal,
  image: 'postgres:15',
  volumes: [{ volume: 'data', claimName, mountPath: '/var/lib/postgresql' }],
});

beforeAll(async () => {
  cleanups.push(
    await createNamespace(kc, namespace, {
      'pod-security.kubernetes.io/enforce': 'baseline',
      ...OutsideGatekeeper,
    }),
  );
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

describe('the ownership Job on the host runner', () => {
  it(
    'is admitted under baseline and migrates 100k+ files of a bound volume',
    { timeout: 180_000 },
    async () => {
      let entries = 0;
      const dir = await volume('data-pg-0', (d) => (entries = makeTree(d, 100, 1001)));
      const job = buildOwnershipJob(runTo(5000), target('pg', 0, 'data-pg-0'), earlier, OwnershipScript);
      const created = await batch.createNamespacedJob({ namespace, body: job });
      // The Job wait, as a step: what it heartbeats while the Job walks its 100k files.
      const beats: { jobs?: Record<string, JobProgress> }[] = [];
      const step = {
        progress: (d: unknown) => beats.push(d as never),
        cancelled: new AbortController().signal,
      };
      const [outcome] = await runInStep(step, () =>
        new OwnershipJobs({ kube, pollMs: 100, progressEveryMs: 100 }).waitForJobs({
          namespace,
          jobs: [{ name: created.metadata!.name!, uid: created.metadata!.uid! }],
          uid: 5000,
          gid: 5000,
          timeoutSeconds: 150,
        }),
      );
      expect(outcome).toMatchObject({ succeeded: true });
      const seen = beats.flatMap((b) => Object.values(b.jobs ?? {}));
      expect(seen.map((p) => p.stage)).toContain('changing');
      expect(seen.find((p) => p.stage === 'changing')).toMatchObject({
        volume: 1,
        volumes: 1,
        path: '/var/lib/postgresql',
        toChange: entries - 1002,
      });
      // Finished Jobs leave the heartbeat: only running ones are shown with progress.
      expect(beats.at(-1)?.jobs).toEqual({});

      const pod = await waitFor(
        'Job pod finished',
        async () => {
          const p = (
            await core.listNamespacedPod({ namespace, labelSelector: `job-name=${job.metadata!.name}` })
          ).items[0];
          return p && ['Succeeded', 'Failed'].includes(p.status?.phase ?? '') ? p : undefined;
        },
        150_000,
        500,
      );
      expect(pod.spec?.nodeName).toBe('host-runner');
      expect(pod.status?.phase).toBe('Succeeded');
      expect(pod.metadata?.labels).toMatchObject({
        'runas-migrate.dev/run': earlier.runId,
        'runas-migrate.dev/uid': '5000',
        'runas-migrate.dev/gid': '5000',
      });
      const summary = parseJobSummary(pod.status?.containerStatuses?.[0]?.state?.terminated?.message);
      expect(summary).toMatchObject({ ok: true, scanned: entries, changed: entries - 1002 });
      const log = await core.readNamespacedPodLog({ name: pod.metadata!.name!, namespace });
      expect(log).toContain(`/var/lib/postgresql: ${entries} entries, ${entries - 1002} changed`);
      const left = execFileSync(
        'find',
        [dir, '(', '!', '-uid', '5000', '-o', '!', '-gid', '5000', ')', '-print'],
        { encoding: 'utf8' },
      ).trim();
      expect(left).toBe('');
    },
  );
});

describe('Job identity: a run counts only its own Jobs', () => {
  it(
    'a completed Job left by an earlier run to 5000:5000 is not success for a run to 6000:6000: its own Job runs and changes the files',
    { timeout: 180_000 },
    async () => {
      let entries = 0;
      const dir = await volume('data-pg-1', (d) => (entries = makeTree(d, 4, 50)));
      const t = target('pg', 1, 'data-pg-1');

      const [first] = await ownershipJobs.createOwnershipJobs({
        run: runTo(5000),
        targets: [t],
        owner: earlier,
      });
      const [done] = await ownershipJobs.waitForJobs({
        namespace,
        jobs: [first!],
        uid: 5000,
        gid: 5000,
        timeoutSeconds: 120,
      });
      expect(done).toMatchObject({ succeeded: true, summary: { uid: 5000, gid: 5000 } });
      expect(ownerCounts(dir)).toEqual({ '5000:5000': entries });
      // a retry of the earlier run's own step adopts its Job instead of running it again
      expect(
        await ownershipJobs.createOwnershipJobs({ run: runTo(5000), targets: [t], owner: earlier }),
      ).toEqual([first]);

      const [second] = await ownershipJobs.createOwnershipJobs({
        run: runTo(6000),
        targets: [t],
        owner: later,
      });
      expect(second!.name).toBe(ownershipJobName('pg', 1));
      expect(second!.uid).not.toBe(first!.uid);
      const job = await batch.readNamespacedJob({ name: second!.name, namespace });
      expect(job.metadata?.labels).toMatchObject({
        'runas-migrate.dev/run': later.runId,
        'runas-migrate.dev/uid': '6000',
      });
      // the earlier Job's pod went with it
      expect(
        (
          await core.listNamespacedPod({
            namespace,
            labelSelector: `batch.kubernetes.io/controller-uid=${first!.uid}`,
          })
        ).items,
      ).toEqual([]);
      const [outcome] = await ownershipJobs.waitForJobs({
        namespace,
        jobs: [second!],
        uid: 6000,
        gid: 6000,
        timeoutSeconds: 120,
      });
      expect(outcome).toMatchObject({
        succeeded: true,
        summary: { ok: true, uid: 6000, gid: 6000, scanned: entries, changed: entries },
      });
      expect(ownerCounts(dir)).toEqual({ '6000:6000': entries });
    },
  );

  it('a Job of another run that still runs is left alone: the step fails, naming it, its run and its IDs', async () => {
    // no node matches: the Job stays active, its pod Pending
    const nowhere = runTo(5000, { nodeSelector: { 'runas-migrate.dev/nowhere': 'true' } });
    const t = target('pending', 0, 'data-pending-0');
    const [ref] = await ownershipJobs.createOwnershipJobs({ run: nowhere, targets: [t], owner: earlier });

    const f = await typedFailureOf(
      ownershipJobs.createOwnershipJobs({
        run: { ...nowhere, uid: 6000, gid: 6000 },
        targets: [t],
        owner: later,
      }),
    );
    expect(f.type).toBe('JobOfAnotherRun');
    expect(f.retryable).toBe(false);
    expect(f.message).toBe(
      `Job ${namespace}/${ref!.name} of run ${earlier.runId} (workflow ${earlier.workflowId}) to 5000:5000 is still running: wait for it to finish or delete it (kubectl delete job -n ${namespace} ${ref!.name} --cascade=foreground), then run again`,
    );
    // the same run to other IDs is refused as well; the Job is untouched
    expect(
      (
        await typedFailureOf(
          ownershipJobs.createOwnershipJobs({
            run: { ...nowhere, uid: 6000, gid: 6000 },
            targets: [t],
            owner: earlier,
          }),
        )
      ).type,
    ).toBe('JobOfAnotherRun');
    expect((await batch.readNamespacedJob({ name: ref!.name, namespace })).metadata?.uid).toBe(ref!.uid);

    await ownershipJobs.deleteOwnershipJobs({
      namespace,
      owner: earlier,
      names: [ref!.name],
      timeoutSeconds: 60,
    });
    await expect(batch.readNamespacedJob({ name: ref!.name, namespace })).rejects.toMatchObject({
      code: 404,
    });
  });

  it('a Job that completes without a summary (its pod on a kwok node) is not a success', async () => {
    await volume('data-nosummary-0', (d) => mkdirSync(d, { recursive: true }));
    const onKwok = runTo(5000, { nodeSelector: { type: 'kwok' } });
    const [ref] = await ownershipJobs.createOwnershipJobs({
      run: onKwok,
      targets: [target('nosummary', 0, 'data-nosummary-0')],
      owner: earlier,
    });
    await waitFor(
      'Job complete',
      async () =>
        (await batch.readNamespacedJob({ name: ref!.name, namespace })).status?.conditions?.some(
          (c) => c.type === 'Complete' && c.status === 'True',
        ),
      60_000,
    );
    const [outcome] = await ownershipJobs.waitForJobs({
      namespace,
      jobs: [ref!],
      uid: 5000,
      gid: 5000,
      timeoutSeconds: 60,
    });
    expect(outcome).toEqual({
      name: ref!.name,
      succeeded: false,
      summary: null,
      message:
        'completed without a summary in its termination message: nothing proves its volumes changed hands',
    });
  });
});

describe('a claim mounted twice with subPaths', () => {
  it(
    'is planned and migrated mount by mount: inside the subPaths the files change, outside they keep their owner',
    { timeout: 180_000 },
    async () => {
      const dir = await volume('data-pgsub-0', (d) => {
        for (const sub of ['pgdata/base/1', 'wal/pg_wal', 'other'])
          mkdirSync(join(d, sub), { recursive: true });
        for (const f of ['pgdata/PG_VERSION', 'pgdata/base/1/1', 'wal/pg_wal/0001', 'other/keep', 'top'])
          writeFileSync(join(d, f), 'x');
        execFileSync('chown', ['-R', '1000:1000', d]);
      });
      await apps.createNamespacedStatefulSet({
        namespace,
        body: {
          metadata: { name: 'pgsub' },
          spec: {
            replicas: 0,
            serviceName: 'pgsub',
            selector: { matchLabels: { app: 'pgsub' } },
            template: {
              metadata: { labels: { app: 'pgsub' } },
              spec: {
                containers: [
                  {
                    name: 'postgres',
                    image: 'postgres:15',
                    volumeMounts: [
                      { name: 'data', mountPath: '/var/lib/postgresql/data', subPath: 'pgdata' },
                      { name: 'data', mountPath: '/var/lib/postgresql/wal', subPath: 'wal' },
                    ],
                  },
                ],
              },
            },
            volumeClaimTemplates: [
              {
                metadata: { name: 'data' },
                spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
              },
            ],
          },
        },
      });
      const run = parseMigrationInput({
        namespace,
        uid: 5000,
        gid: 5000,
        databases: [{ statefulSet: 'pgsub', container: 'postgres' }],
        job: { ...HostRunnerPlacement },
      });
      const plan = await planner.planMigration({ run, owner: later });
      expect(plan.preflight).toEqual([]);
      const targets = plan.databases[0]!.jobs;
      expect(targets.map((j) => j.volumes)).toEqual([
        [
          {
            volume: 'data',
            claimName: 'data-pgsub-0',
            mountPath: '/var/lib/postgresql/data',
            subPath: 'pgdata',
          },
          { volume: 'data', claimName: 'data-pgsub-0', mountPath: '/var/lib/postgresql/wal', subPath: 'wal' },
        ],
      ]);

      const refs = await ownershipJobs.createOwnershipJobs({ run, targets, owner: later });
      const [outcome] = await ownershipJobs.waitForJobs({
        namespace,
        jobs: refs,
        uid: 5000,
        gid: 5000,
        timeoutSeconds: 120,
      });
      expect(outcome).toMatchObject({
        succeeded: true,
        summary: { ok: true, scanned: 5 + 3, changed: 5 + 3 },
      });
      expect(ownerCounts(join(dir, 'pgdata'))).toEqual({ '5000:5000': 5 });
      expect(ownerCounts(join(dir, 'wal'))).toEqual({ '5000:5000': 3 });
      expect(ownerCounts(join(dir, 'other'))).toEqual({ '1000:1000': 2 });
      expect(execFileSync('stat', ['-c', '%u:%g', dir, join(dir, 'top')], { encoding: 'utf8' })).toBe(
        '1000:1000\n1000:1000\n',
      );
    },
  );
});
