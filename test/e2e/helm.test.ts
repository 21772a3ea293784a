/**
 * `securityContext.apply: helm` for real: the databases are a Helm release of the bed's chart
 * (installed from testbed/charts/iax-databases with the vendor's values keys), the run upgrades it
 * from a chart repository as an operator's worker host would (`helm repo add`), and its
 * compensation is `helm rollback` to the revision it recorded. Real PostgreSQL servers start on
 * the files afterwards, so a template left at the wrong IDs shows as a database that does not
 * come back.
 */
import { AppsV1Api } from '@kubernetes/client-node';
import { WorkflowFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MigrationInputRaw } from '../../src/core/input.js';
import { abortSignal, statusQuery, type MigrationReport } from '../../src/workflows/messages.js';
import { seedItrsFixture, waitForFixtureReady } from '../../testbed/fixture.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import { ensureTool, ToolName } from '../../testbed/tools.js';
import { admissionPolicy } from '../support/admission-policy.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import {
  releaseHistory,
  releaseValues,
  serveChartRepository,
  type ChartRepository,
} from '../support/helm.js';
import { namespaceSnapshot, removeFixtures, type NamespaceSnapshot } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const apps = kc.makeApiClient(AppsV1Api);
const taskQueue = uniqueName('helm');
const release = 'iax';
const namespaces: string[] = [];
let helm: string;
let repo: ChartRepository;
let worker: TestWorker;

beforeAll(async () => {
  helm = await ensureTool(ToolName.Helm);
  repo = await serveChartRepository(helm);
  // The worker's helm finds the repository the way an operator's would: helm's environment.
  Object.assign(process.env, repo.env);
  worker = await startTestWorker(taskQueue, { helm });
});

afterAll(async () => {
  await worker?.stop();
  await repo?.close();
  await removeFixtures(kc, namespaces);
});

/** A fixture namespace whose databases are a Helm release at revision 1, Ready. */
async function releasedFixture(prefix: string): Promise<string> {
  const namespace = uniqueName(prefix);
  namespaces.push(namespace);
  await seedItrsFixture(kc, { namespace, pvRoot: bed().pvRoot, helmRelease: { helm, release } });
  await waitForFixtureReady(kc, namespace);
  return namespace;
}

const inputFor = (namespace: string, extra: Partial<MigrationInputRaw> = {}): MigrationInputRaw => ({
  namespace,
  uid: 5000,
  gid: 5000,
  profile: 'itrs-analytics',
  securityContext: { apply: 'helm', helm: { release, chart: `${repo.name}/iax-databases` } },
  job: { ...HostRunnerPlacement },
  approvals: [],
  ...extra,
});

const start = (input: MigrationInputRaw) =>
  worker.w.client.workflow.start('migrateOwnership', {
    taskQueue,
    workflowId: `runas-migrate-${input.namespace}`,
    args: [input],
  });

/** Each StatefulSet's template IDs, as `runAsUser:runAsGroup:fsGroup`. */
async function templateIds(namespace: string): Promise<Record<string, string>> {
  const sets = (await apps.listNamespacedStatefulSet({ namespace })).items;
  return Object.fromEntries(
    sets.map((s) => {
      const sc = s.spec?.template.spec?.securityContext;
      return [s.metadata!.name!, `${sc?.runAsUser}:${sc?.runAsGroup}:${sc?.fsGroup}`];
    }),
  );
}

/** The messages of an error and its causes, joined. */
const causes = (e: Error | undefined): string =>
  e ? `${e.message} <- ${causes((e as { cause?: Error }).cause)}` : '';

const history = (namespace: string) => releaseHistory(helm, bed().kubeconfig, namespace, release);
const unchanged = { pgplatform: '1000:1000:1000', timescale: '1000:1000:1000' };

/**
 * The release rolled back as revision 3 after `upgrade` (revision 2's status), both templates
 * and every file as before, the policies exact, and the databases up again.
 */
async function expectPutBack(
  namespace: string,
  before: NamespaceSnapshot,
  upgrade: 'failed' | 'superseded',
): Promise<void> {
  expect((await history(namespace)).map((r) => [r.revision, r.status])).toEqual([
    [1, 'superseded'],
    [2, upgrade],
    [3, 'deployed'],
  ]);
  expect(await templateIds(namespace)).toEqual(unchanged);
  await waitForFixtureReady(kc, namespace);
  const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
  expect(after.owners).toEqual(before.owners);
  expect(after.policies).toEqual(before.policies);
}

describe('securityContext.apply helm', () => {
  it('upgrades the release with a values file of the new IDs, keeping the rest of its values and its chart version', async () => {
    const namespace = await releasedFixture('helm-ok');
    const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
    // The vendor has released a newer chart meanwhile: the run must not take it.
    await repo.publish('9.9.9');
    const report = (await (await start(inputFor(namespace))).result()) as MigrationReport;

    expect(report.endState).toBe('completed');
    expect(report.helm).toMatchObject({ release, revisionBefore: 1, upgradedTo: 2, rolledBackTo: null });
    expect(report.helm?.values).toMatch(/runAsUser: 5000/);
    expect((await history(namespace)).map((r) => [r.revision, r.status, r.chart])).toEqual([
      [1, 'superseded', 'iax-databases-0.1.0'],
      [2, 'deployed', 'iax-databases-0.1.0'],
    ]);
    const values = await releaseValues(helm, bed().kubeconfig, namespace, release);
    expect(values.securityContext.pod).toEqual({
      runAsUser: 5000,
      runAsGroup: 5000,
      supplementalGroups: [5000],
      fsGroup: 5000,
      // --reuse-values: what the run does not set stays as the operator had it.
      fsGroupChangePolicy: 'OnRootMismatch',
    });
    expect(values.databases).toHaveLength(2);
    expect(await templateIds(namespace)).toEqual({
      pgplatform: '5000:5000:5000',
      timescale: '5000:5000:5000',
    });
    await waitForFixtureReady(kc, namespace);
    const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
    expect(Object.values(after.owners).every((o) => o === '5000:5000')).toBe(true);
    expect(after.policies).toEqual(before.policies);
  });

  it('rolls the release back when the upgrade fails half-way (one StatefulSet refused)', async () => {
    const namespace = await releasedFixture('helm-fail');
    const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
    // A change freeze on timescale's IDs: helm updates pgplatform, is refused on timescale, and
    // marks the revision failed — a release half upgraded, as a real refusal leaves it.
    const removePolicy = await admissionPolicy(
      kc,
      uniqueName('freeze-timescale'),
      namespace,
      { apiGroups: ['apps'], apiVersions: ['v1'], operations: ['UPDATE'], resources: ['statefulsets'] },
      "object.metadata.name != 'timescale' || object.spec.template.spec.securityContext.runAsUser == oldObject.spec.template.spec.securityContext.runAsUser",
      'timescale is under a change freeze',
    );
    try {
      const handle = await start(inputFor(namespace));
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect(causes(err)).toMatch(/helm upgrade of iax failed: .*change freeze/);
      const status = await handle.query(statusQuery);
      expect(status.endState).toBe('unchanged');
      expect(status.helm).toMatchObject({ revisionBefore: 1, upgradedTo: null, rolledBackTo: 3 });
      expect(status.compensations).toContain(`roll back helm release ${release} to revision 1`);
      await expectPutBack(namespace, before, 'failed');
    } finally {
      await removePolicy();
    }
  });

  it('rolls the release back when aborted after the upgrade, before any file changed', async () => {
    const namespace = await releasedFixture('helm-abort');
    const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
    const handle = await start(inputFor(namespace, { approvals: ['relax'] }));
    await waitFor(
      'the relax gate waiting',
      async () =>
        (await handle.query(statusQuery)).gates.find((g) => g.gate === 'relax')?.state === 'waiting',
      120_000,
      300,
    );
    expect(await templateIds(namespace)).toEqual({
      pgplatform: '5000:5000:5000',
      timescale: '5000:5000:5000',
    });
    await handle.signal(abortSignal, { reason: 'change window closed', by: 'test' });
    await expect(handle.result()).rejects.toThrow();
    const status = await handle.query(statusQuery);
    expect(status.phase).toBe('aborted');
    expect(status.endState).toBe('unchanged');
    expect(status.helm).toMatchObject({ revisionBefore: 1, upgradedTo: 2, rolledBackTo: 3 });
    await expectPutBack(namespace, before, 'superseded');
  });
});
