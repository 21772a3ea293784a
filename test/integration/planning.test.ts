/**
 * Planning against the test bed's API server: what the input names must exist, the plan covers
 * every claim of every replica, and preflight refuses IDs the restored policies would refuse —
 * each with a clear message, nothing changed.
 */
import { typedFailureOf } from '../support/failures.js';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AppsV1Api, CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMigrationInput, type MigrationInputRaw } from '../../src/core/input.js';
import { ownershipJobName } from '../../src/core/job.js';
import { Kube } from '../../src/cluster/kube.js';
import { Planner } from '../../src/services/planner.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { removeFixture, seedItrsFixture, waitForFixtureReady } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { namespaceSnapshot } from '../support/snapshot.js';

const exec = promisify(execFile);
const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
/** Every call planning makes, as `<verb> <object>`. */
const calls: string[] = [];
class RecordingKube extends Kube {
  override call<T>(verb: string, object: string, mutating: boolean, fn: () => Promise<T>): Promise<T> {
    calls.push(`${verb} ${object}${mutating ? ' (write)' : ''}`);
    return super.call(verb, object, mutating, fn);
  }
}
const kube = new RecordingKube(kc);
const planner = new Planner({ kube, policyGuard: new PolicyGuard({ kube }) });
const namespace = uniqueName('plan');
const owner = { workflowId: 'plan-test', runId: 'r' };
const cli = fileURLToPath(new URL('../../bin/runas-migrate.js', import.meta.url));

/**
 * What planning could change in the namespace. Constraints are cluster-wide, and other test files
 * sharing the bed relax them for their own namespaces meanwhile: only this namespace's entry in them counts.
 */
async function local(): Promise<unknown> {
  const s = await namespaceSnapshot(kc, namespace, bed().pvRoot);
  const mentions = Object.entries(s.policies.constraints)
    .filter(([, spec]) => JSON.stringify(spec).includes(`"${namespace}"`))
    .map(([name]) => name);
  return { ...s, policies: { ...s.policies, constraints: mentions } };
}

const plan = (raw: Partial<MigrationInputRaw>) =>
  planner.planMigration({ run: parseMigrationInput({ namespace, uid: 5000, gid: 5000, ...raw }), owner });

beforeAll(async () => {
  await seedItrsFixture(kc, { namespace, pvRoot: bed().pvRoot, filesPerVolume: 2 });
  await waitForFixtureReady(kc, namespace);
});

afterAll(async () => {
  await removeFixture(kc, namespace);
});

describe('planMigration on the test bed', () => {
  it('plans every volume of every replica of the profile, with images from the StatefulSets', async () => {
    const p = await plan({});
    expect(p.databases.map((d) => [d.statefulSet, d.replicas, d.image, d.jobs.length])).toEqual([
      ['pgplatform', 1, 'docker.itrsgroup.com/iax/postgres:2.17.0', 1],
      ['timescale', 2, 'docker.itrsgroup.com/iax/timescale:2.17.0', 2],
    ]);
    expect(p.databases[1]!.jobs[1]!.volumes.map((v) => v.claimName)).toEqual([
      'timescale-ha-data-timescale-1',
      'timescale-ha-wal-timescale-1',
      'timescale-ha-tablespace-data-1-timescale-1',
      'timescale-ha-tablespace-data-2-timescale-1',
    ]);
    expect(p.platform?.status).toBe('DEPLOYED');
    expect(p.policies.plan.podSecurityEnforce).toBe('baseline');
    expect(p.preflight).toEqual([]);
  });

  it('refuses IDs outside the K8sPSPAllowedUsers ranges, naming constraint and range', async () => {
    const p = await plan({ uid: 500, gid: 500 });
    expect(p.preflight).toContain(
      'K8sPSPAllowedUsers/allowed-user-ranges: runAsUser 500 is outside the allowed ranges 1000-65535: the databases would be refused at scale-up; choose IDs inside them or change the constraint',
    );
    const before = await local();
    const r = await exec(process.execPath, [cli, 'plan', '-n', namespace, '--uid', '500', '--gid', '500'], {
      env: { ...process.env, KUBECONFIG: bed().kubeconfig },
    }).catch((e: { code: number; stdout: string }) => e);
    expect('code' in r && r.code).toBe(3);
    expect(r.stdout).toContain('PREFLIGHT FAILED');
    expect(r.stdout).toMatch(
      new RegExp(`${ownershipJobName('timescale', 1)} .*timescale-ha-wal-timescale-1`, 's'),
    );
    expect(await local()).toEqual(before);
  });

  it('tries every write of the run with a server-side dry run: admitted in a restricted namespace, nothing written', async () => {
    calls.length = 0;
    const before = await local();
    const p = await plan({ securityContext: { apply: 'patch' } });
    expect(p.preflight).toEqual([]);
    // PSA judges pods, not Jobs: the root Job passes its dry run under restricted (a warning only)
    expect(p.policies.snapshot.podSecurity['pod-security.kubernetes.io/enforce']).toBe('restricted');
    expect(calls.filter((c) => c.includes('(dry run)')).sort()).toEqual(
      [
        ...['pgplatform', 'timescale'].map((s) => `patch StatefulSet "${namespace}/${s}" (dry run)`),
        // The databases' pods with the new IDs, put to PSA and Gatekeeper as they are enforced now.
        ...['pgplatform', 'timescale'].map((s) => `create Pod "${namespace}/${s}-…" (dry run)`),
        ...[
          ['pgplatform', 0],
          ['timescale', 0],
          ['timescale', 1],
        ].map(
          ([s, i]) => `create Job "${namespace}/${ownershipJobName(s as string, i as number)}" (dry run)`,
        ),
        // The Jobs' pods, put to the admission chain as it is enforced now.
        ...[
          ['pgplatform', 0],
          ['timescale', 0],
          ['timescale', 1],
        ].map(
          ([s, i]) => `create Pod "${namespace}/${ownershipJobName(s as string, i as number)}-…" (dry run)`,
        ),
      ].sort(),
    );
    expect(calls.filter((c) => c.endsWith('(write)'))).toEqual([]);
    expect(p.databasePodsAdmission).toBe('admitted');
    // PSA restricted refuses the Jobs' pods first, hiding Gatekeeper's verdict until it is relaxed.
    expect(p.jobPodsAdmission?.state).toBe('refused');
    expect(p.jobPodsAdmission?.refusals).toEqual([
      expect.stringMatching(/^pod-security: pods is forbidden: violates PodSecurity "restricted:latest"/),
    ]);
    expect(p.jobPodsAdmission?.relaxation).toEqual([
      'Pod Security Admission: enforce restricted → baseline (it refuses the Job pods)',
      expect.stringMatching(
        /^Gatekeeper: asked again once PSA admits the Job pods .*K8sPSPCapabilities\/drop-all/,
      ),
    ]);
    expect(await local()).toEqual(before);
  });

  const refused: [string, MigrationInputRaw['job'], RegExp][] = [
    [
      'a pod label value',
      { podLabels: { team: 'data platform!' } },
      /^job\.podLabels: Invalid value: "data platform!": a valid label must be .*: fix the input$/,
    ],
    [
      'a pod annotation key',
      { podAnnotations: { 'not a key': 'x' } },
      /^job\.podAnnotations: Invalid value: "not a key": .*: fix the input$/,
    ],
    [
      'a resource quantity',
      { resources: { limits: { cpu: 'lots' } } },
      /^job\.resources: .*: fix the input$/,
    ],
    [
      'a nodeSelector value',
      { nodeSelector: { pool: 'db pool' } },
      /^job\.nodeSelector: Invalid value: "db pool": .*: fix the input$/,
    ],
  ];
  for (const [what, job, message] of refused) {
    it(`refuses ${what} in preflight, before any change, naming the input field`, async () => {
      const before = await local();
      const p = await plan({ job, securityContext: { apply: 'patch' } });
      expect(p.preflight).toHaveLength(1);
      expect(p.preflight[0]).toMatch(message);
      expect(await local()).toEqual(before);
    });
  }

  const missing: [string, Partial<MigrationInputRaw>, RegExp][] = [
    [
      'a StatefulSet',
      { profile: undefined, databases: [{ statefulSet: 'mysql', container: 'db' }] },
      /StatefulSet mysql not found in namespace/,
    ],
    [
      'a container',
      { profile: undefined, databases: [{ statefulSet: 'pgplatform', container: 'pg' }] },
      /StatefulSet pgplatform has no container "pg" \(it has: postgres\)/,
    ],
    [
      'a volume',
      {
        profile: undefined,
        databases: [{ statefulSet: 'pgplatform', container: 'postgres', volumes: ['wal'] }],
      },
      /mounts no claim template "wal" \(it mounts: data\)/,
    ],
  ];
  for (const [what, raw, message] of missing) {
    it(`names what is missing (${what}): PlanningFailed, not retryable`, async () => {
      const f = await typedFailureOf(plan(raw));
      expect(f.type).toBe('PlanningFailed');
      expect(f.retryable).toBe(false);
      expect(f.message).toMatch(message);
    });
  }

  it('refuses a StatefulSet whose claims a scale-down would delete (whenScaled: Delete): PlanningFailed, nothing changed', async () => {
    const retention = (whenScaled: 'Delete' | 'Retain') =>
      apps.patchNamespacedStatefulSet(
        {
          name: 'pgplatform',
          namespace,
          body: { spec: { persistentVolumeClaimRetentionPolicy: { whenScaled, whenDeleted: 'Retain' } } },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    await retention('Delete');
    try {
      const before = await local();
      const f = await typedFailureOf(plan({ securityContext: { apply: 'patch' } }));
      expect(f.type).toBe('PlanningFailed');
      expect(f.retryable).toBe(false);
      expect(f.message).toMatch(
        /StatefulSet pgplatform has persistentVolumeClaimRetentionPolicy\.whenScaled: Delete: .*set whenScaled to Retain/,
      );
      expect(await local()).toEqual(before);
    } finally {
      await retention('Retain');
    }
  });

  it('names a replica whose claim is gone', async () => {
    // the claim can go only once no pod uses it
    await apps.patchNamespacedStatefulSet(
      { name: 'timescale', namespace, body: { spec: { replicas: 1 } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    await core.deleteNamespacedPersistentVolumeClaim({ name: 'timescale-ha-wal-timescale-1', namespace });
    await waitFor(
      'claim gone',
      () =>
        core.readNamespacedPersistentVolumeClaim({ name: 'timescale-ha-wal-timescale-1', namespace }).then(
          () => false,
          () => true,
        ),
      60_000,
    );
    const f = await typedFailureOf(plan({}));
    expect(f.type).toBe('PlanningFailed');
    expect(f.message).toMatch(
      /replica 1 of StatefulSet timescale has no PersistentVolumeClaim timescale-ha-wal-timescale-1/,
    );
  });

  it('names a namespace that does not exist', async () => {
    const f = await typedFailureOf(
      planner.planMigration({
        run: parseMigrationInput({ namespace: 'no-such-ns', uid: 5000, gid: 5000 }),
        owner,
      }),
    );
    expect(f.type).toBe('KubeNotFound');
    expect(f.message).toContain('namespace "no-such-ns" not found');
  });
});
