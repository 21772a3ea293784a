/**
 * End to end on the test bed, driven through the real `temporal` CLI as an operator would:
 * start `migrateOwnership` with --input-file, approve each gate with `workflow signal`, watch
 * it with `workflow query`, and check the cluster and the files afterwards. Also: a second run
 * on the same namespace is refused, and a dry run changes nothing.
 */
import { ownershipJobName } from '../../src/core/job.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppsV1Api, BatchV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { JobLabel, ManagedBy } from '../../src/core/job.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';
import { IaxPlatform, ItrsDatabases, seedItrsFixture, waitForFixtureReady } from '../../testbed/fixture.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import type { MigrationReport, MigrationStatus } from '../../src/workflows/messages.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { namespaceSnapshot, removeFixtures } from '../support/snapshot.js';
import { runasMigrate } from '../support/cli.js';
import { fixtureReplicas, rowDigest, writeRows } from '../support/postgres.js';
import { Kube } from '../../src/cluster/kube.js';
import { approveWithCli, startMigrationWithCli, temporalCli } from '../support/temporal.js';

const kc = kubeConfig();
const kube = new Kube(kc);
const apps = kc.makeApiClient(AppsV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const custom = kc.makeApiClient(CustomObjectsApi);
const namespace = uniqueName('itrs-e2e');
const workflowId = `runas-migrate-${namespace}`;
const taskQueue = uniqueName('e2e');
let worker: TestWorker;

const input: MigrationInputRaw = {
  namespace,
  uid: 5000,
  gid: 5000,
  profile: 'itrs-analytics',
  securityContext: { apply: 'patch' },
  approvals: ['plan', 'relax'],
  job: { ...HostRunnerPlacement },
};

const snapshot = () => namespaceSnapshot(kc, namespace, bed().pvRoot);

async function status(): Promise<MigrationStatus> {
  const out = JSON.parse(
    await temporalCli(['workflow', 'query', '-w', workflowId, '--type', 'status', '-o', 'json']),
  ) as {
    queryResult: [MigrationStatus];
  };
  return out.queryResult[0];
}

const waitingAt = (gate: string) =>
  waitFor(
    `gate ${gate} waiting`,
    async () => (await status()).gates.find((g) => g.gate === gate)?.state === 'waiting',
    60_000,
    300,
  );

beforeAll(async () => {
  await seedItrsFixture(kc, { namespace, pvRoot: bed().pvRoot });
  await waitForFixtureReady(kc, namespace);
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await worker.stop();
  await removeFixtures(kc, [namespace]);
});

describe('migrateOwnership end to end', () => {
  it('a dry run changes nothing', async () => {
    const before = await snapshot();
    const r = await runasMigrate([
      'start',
      '--input',
      JSON.stringify({ ...input, approvals: [] }),
      '--dry-run',
      '--follow',
      '--task-queue',
      taskQueue,
    ]);
    expect(r.stdout).toContain(`dry run of ${namespace}: nothing was changed`);
    // Piped, --follow prints one timestamped line per event, each once, then the report.
    const events = r.stdout
      .split('\n')
      .filter((l) => /^\d{4}-\d\d-\d\dT[\d:.]+Z /.test(l))
      .map((l) => l.slice(l.indexOf(' ') + 1));
    // A poll a second: a phase shorter than that may not be seen, the end always is.
    expect(events[0]).toMatch(new RegExp(`^phase [a-z-]+ \\(${namespace}\\)$`));
    expect(events.filter((e) => e.startsWith('phase completed'))).toHaveLength(1);
    expect(events.at(-1)).toMatch(/^ended: /);
    expect(new Set(events).size).toBe(events.length);
    expect(r.stdout).toContain(ownershipJobName('timescale', 1));
    expect(r.stdout).toMatch(/timescale-ha-tablespace-data-2-timescale-1/);
    expect(await snapshot()).toEqual(before);
  });

  it('migrates every volume of every replica through the temporal CLI, and puts everything back', async () => {
    // Rows written just before the run, and the digest of every row of every replica.
    const rowsBefore: Record<string, string> = {};
    for (const r of fixtureReplicas) {
      await writeRows(kube, namespace, r.pod, r.container, 500, 'written before the migration');
      rowsBefore[r.pod] = await rowDigest(kube, namespace, r.pod, r.container);
    }
    const before = await snapshot();
    expect(new Set(Object.values(before.owners))).toEqual(new Set(['1000:1000']));
    const dir = mkdtempSync(join(tmpdir(), 'run-'));
    writeFileSync(join(dir, 'run.json'), JSON.stringify(input));

    await startMigrationWithCli(taskQueue, workflowId, { inputFile: join(dir, 'run.json') });
    await waitingAt('plan');

    const second = await runasMigrate(['start', '--input', JSON.stringify(input), '--task-queue', taskQueue]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(
      `a run is already in progress for namespace ${namespace} (workflow ${workflowId})`,
    );

    await approveWithCli(workflowId, { gate: 'plan', by: 'alice' });
    await waitingAt('relax');
    const beforeRelax = await status();
    expect(beforeRelax.phase).toBe('applying-security-context');
    expect((await apps.readNamespacedStatefulSet({ name: 'timescale', namespace })).spec?.replicas).toBe(0);
    await approveWithCli(workflowId, { gate: 'relax', by: 'bob' });

    const result = JSON.parse(await temporalCli(['workflow', 'result', '-w', workflowId, '-o', 'json'])) as {
      status: string;
      result: MigrationReport;
    };
    expect(result.status).toBe('COMPLETED');
    const report = result.result;

    // every entry of every volume now belongs to the target IDs (the servers, back as 5000, have
    // since added and removed files of their own: lock files, WAL, statistics)
    const after = await snapshot();
    expect(new Set(Object.values(after.owners))).toEqual(new Set(['5000:5000']));
    // every row is back on every replica, and the servers run as the new IDs
    for (const r of fixtureReplicas) {
      expect(await rowDigest(kube, namespace, r.pod, r.container)).toBe(rowsBefore[r.pod]);
      expect(rowsBefore[r.pod]).toMatch(/^events 2500 [0-9a-f]{32}$/m);
    }
    expect(report.databaseChecks.map((c) => `${c.pod} ${c.check} ${c.ok}`)).toEqual(
      fixtureReplicas.flatMap((r) =>
        ['ownership', 'identity', 'sql', 'logs', 'deep'].map((check) => `${r.pod} ${check} true`),
      ),
    );
    for (const c of report.databaseChecks.filter((c) => c.check === 'identity'))
      expect(c.output).toMatch(/^uid=5000 gid=5000 groups=5000\b/);
    // the report names every volume of every replica
    expect(report.volumes.map((v) => `${v.job} ${v.path}`).sort()).toEqual(
      ItrsDatabases.flatMap((db) =>
        Array.from({ length: db.replicas }, (_, i) =>
          db.claims.map((c) => `${ownershipJobName(db.statefulSet, i)} ${c.mountPath}`),
        ).flat(),
      ).sort(),
    );
    expect(report.volumes.every((v) => v.changed > 0 && v.changed === v.scanned)).toBe(true);
    expect(report.approvals.filter((a) => a.required).map((a) => a.by)).toEqual(['alice', 'bob']);
    expect(report.windows).toHaveLength(1);
    // relaxed as far as the admission chain refused the Jobs' pods: PSA first, then what Gatekeeper named
    const asked = report.windows[0]!.admission!;
    expect(asked.refusals.map((r) => r.split(':')[0])).toEqual(['pod-security', 'gatekeeper']);
    expect(asked.relaxed.sort()).toEqual([
      'K8sPSPAllowedUsers/allowed-user-ranges',
      'K8sPSPCapabilities/drop-all',
    ]);
    expect(asked.admittedAt).not.toBeNull();
    // policies exactly as before, replicas and platform back, template carries the new IDs, no Job left
    expect(after.policies).toEqual(before.policies);
    for (const db of ItrsDatabases) {
      const s = await apps.readNamespacedStatefulSet({ name: db.statefulSet, namespace });
      expect(s.status?.readyReplicas).toBe(db.replicas);
      expect(s.metadata?.annotations?.['runas-migrate.dev/original-replicas']).toBeUndefined();
      expect(s.spec?.template.spec?.securityContext).toMatchObject({
        runAsUser: 5000,
        runAsGroup: 5000,
        fsGroup: 5000,
        supplementalGroups: [5000],
      });
    }
    const platform = (await custom.getNamespacedCustomObject({
      group: IaxPlatform.group,
      version: IaxPlatform.version,
      namespace,
      plural: IaxPlatform.plural,
      name: IaxPlatform.name,
    })) as {
      status: { status: string };
    };
    expect(platform.status.status).toBe('DEPLOYED');
    await waitFor(
      'Jobs deleted',
      async () =>
        (await batch.listNamespacedJob({ namespace, labelSelector: `${JobLabel.ManagedBy}=${ManagedBy}` }))
          .items.length === 0,
      30_000,
    );

    const history = JSON.parse(await temporalCli(['workflow', 'show', '-w', workflowId, '-o', 'json'])) as {
      events: {
        activityTaskScheduledEventAttributes?: { activityType: { name: string } };
        userMetadata?: unknown;
      }[];
    };
    const activities = history.events.flatMap((e) =>
      e.activityTaskScheduledEventAttributes
        ? [e.activityTaskScheduledEventAttributes.activityType.name]
        : [],
    );
    for (const a of [
      'planMigration',
      'patchPodIds',
      'scaleDown',
      'relaxPolicies',
      'createOwnershipJobs',
      'waitForPodsAdmitted',
      'restorePolicies',
      'waitForJobs',
      'scaleUp',
      'waitForPlatform',
      'verifyDatabases',
      'checkDatabases',
    ]) {
      expect(activities).toContain(a);
    }
    // every activity carries a summary for the Web UI
    expect(
      history.events
        .filter((e) => e.activityTaskScheduledEventAttributes)
        .every((e) => e.userMetadata !== undefined),
    ).toBe(true);
  });
});
