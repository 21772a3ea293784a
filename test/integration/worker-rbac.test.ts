/**
 * The shipped worker's rights, on the real API server: deploy/worker.yaml's RBAC is applied as
 * written (its target namespace `itrs` becomes this file's fixture namespaces, its own namespace a
 * fresh one, its cluster-wide names get a suffix so other test files can run beside this one), and
 * a worker that holds nothing but a token of its ServiceAccount completes a migration, has a
 * terminated run's relaxation swept back, and `runas-migrate restore` does the same by hand —
 * each ending with the policies as before. What the manifest does not grant is refused (403).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
  PatchStrategy,
  setHeaderOptions,
  type KubernetesObject,
  type V1Deployment,
  type V1PolicyRule,
  type RbacV1Subject,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { GatekeeperConstraintGroup, PodSecurityLabel, RelaxationAnnotation } from '../../src/core/policy.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { sweeperScheduleId } from '../../src/app/worker.js';
import { hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import type { MigrationReport } from '../../src/workflows/messages.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { namespacePolicies } from '../support/policy-state.js';
import { protectedRecord } from '../support/records.js';
import { ownersOnDisk, readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, sweepOnce, type TestWorker } from '../support/worker.js';

/** A manifest object with the fields of the kinds deploy/worker.yaml holds. */
type ManifestObject = KubernetesObject & {
  metadata: { name: string; namespace?: string };
  rules?: V1PolicyRule[];
  roleRef?: { name: string };
  subjects?: RbacV1Subject[];
};

/** The names deploy/worker.yaml is written for. */
const Shipped = { workerNamespace: 'runas-migrate', target: 'itrs' } as const;
const RbacKinds = new Set(['Role', 'RoleBinding', 'ClusterRole', 'ClusterRoleBinding']);

const manifest = parseAllDocuments(
  readFileSync(fileURLToPath(new URL('../../deploy/worker.yaml', import.meta.url)), 'utf8'),
).map((d) => d.toJS() as ManifestObject);

/**
 * deploy/worker.yaml as an operator would apply it for `targets`, from `workerNamespace`: the
 * target's Role and RoleBinding once per target, its name in `resourceNames` replaced by all of
 * them, and every RBAC name suffixed (the ClusterRole, its binding and the Role in `default` are
 * shared with other test files). The Deployment is left out: the test's worker runs here, with
 * the ServiceAccount's token. `rule` edits each rule, as an operator's review might.
 */
function manifestFor(
  workerNamespace: string,
  targets: readonly string[],
  suffix: string,
  rule: (r: V1PolicyRule) => V1PolicyRule = (r) => r,
): ManifestObject[] {
  const ns = (n: string | undefined) => (n === Shipped.workerNamespace ? workerNamespace : n);
  return manifest.flatMap((doc): ManifestObject[] => {
    if (doc.kind === 'Deployment') return [];
    const o = structuredClone(doc);
    if (o.kind === 'Namespace') o.metadata.name = ns(o.metadata.name)!;
    else if (o.metadata.namespace) o.metadata.namespace = ns(o.metadata.namespace);
    if (RbacKinds.has(o.kind!)) o.metadata.name += suffix;
    if (o.roleRef) o.roleRef.name += suffix;
    for (const s of o.subjects ?? []) s.namespace = ns(s.namespace);
    if (o.rules) o.rules = o.rules.map(rule);
    for (const r of o.rules ?? []) {
      if (r.resourceNames)
        r.resourceNames = r.resourceNames.flatMap((n) => (n === Shipped.target ? [...targets] : [n]));
    }
    if (o.metadata.namespace !== Shipped.target) return [o];
    return targets.map((t) => ({ ...o, metadata: { ...o.metadata, namespace: t } }));
  });
}

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const objects = KubernetesObjectApi.makeApiClient(kc);
const suffix = `-${uniqueName('rbac').slice('rbac-'.length)}`;
const workerNamespace = uniqueName('runas-migrate-rbac');
const migrated = uniqueName('rbac-run');
const swept = uniqueName('rbac-swept');
const restored = uniqueName('rbac-restored');
const taskQueue = uniqueName('worker-rbac');
const applied: ManifestObject[] = [];
const scratch = mkdtempSync(join(tmpdir(), 'worker-rbac-'));
let tokenKubeconfig: string;
let worker: TestWorker;

/** A kubeconfig file holding only a bearer token of the shipped ServiceAccount. */
async function serviceAccountKubeconfig(namespace = workerNamespace): Promise<string> {
  const sa = manifest.find((o) => o.kind === 'ServiceAccount')!;
  const token = await core.createNamespacedServiceAccountToken({
    name: sa.metadata.name,
    namespace,
    body: { spec: { audiences: [], expirationSeconds: 3600 } },
  });
  const cluster = kc.getCurrentCluster()!;
  const limited = new KubeConfig();
  limited.loadFromOptions({
    clusters: [cluster],
    users: [{ name: sa.metadata.name, token: token.status!.token }],
    contexts: [{ name: sa.metadata.name, cluster: cluster.name, user: sa.metadata.name }],
    currentContext: sa.metadata.name,
  });
  const file = join(scratch, `kubeconfig-${namespace}`);
  writeFileSync(file, limited.exportConfig(), { mode: 0o600 });
  return file;
}

const policies = (namespace: string) => namespacePolicies(kc, namespace);

/** A run whose Jobs can never be scheduled, so its window stays open; resolves once it relaxed. */
async function relaxedRun(namespace: string) {
  const stuck = {
    ...hostRunnerRun(namespace, 'job-duration'),
    job: { nodeSelector: { 'runas-migrate.dev/no-such-node': 'true' } },
  };
  const { handle } = await startRun(worker.w.client, stuck, { taskQueue });
  await waitFor(
    'policies relaxed',
    async () => (await queryStatus(worker.w.client, namespace)).policies.state === 'relaxed',
    60_000,
    200,
  );
  return handle;
}

const sweep = () => sweepOnce(worker.w, taskQueue);

/** Settles a call into its HTTP status: 200 when it succeeded. */
const statusOf = (call: Promise<unknown>): Promise<number> =>
  call.then(
    () => 200,
    (err: { code?: number }) => err.code ?? 0,
  );

beforeAll(async () => {
  await Promise.all([migrated, swept, restored].map((ns) => readyFixture(kc, ns, bed().pvRoot, 5)));
  for (const o of manifestFor(workerNamespace, [migrated, swept, restored], suffix)) {
    await objects.create(o);
    applied.push(o);
  }
  tokenKubeconfig = await serviceAccountKubeconfig();
  worker = await startTestWorker(taskQueue, {
    kubeconfig: tokenKubeconfig,
    recordsNamespace: workerNamespace,
  });
});

afterAll(async () => {
  await worker?.stop();
  for (const o of applied.reverse()) await objects.delete(o).catch(() => undefined);
  await removeFixtures(kc, [migrated, swept, restored]);
  rmSync(scratch, { recursive: true, force: true });
});

describe('the shipped worker, with only its ServiceAccount token', () => {
  it('is refused what deploy/worker.yaml does not grant (403), and granted what it does', async () => {
    const as = new KubeConfig();
    as.loadFromFile(tokenKubeconfig);
    const tokenCore = as.makeApiClient(CoreV1Api);
    const tokenApps = as.makeApiClient(AppsV1Api);
    const tokenBatch = as.makeApiClient(BatchV1Api);
    // Dry runs: authorised exactly like the write, and nothing changes should one be let through.
    const label = (name: string) =>
      tokenCore.patchNamespace(
        { name, body: { metadata: { labels: { [PodSecurityLabel.Enforce]: 'privileged' } } }, dryRun: 'All' },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    const job = (namespace: string) =>
      tokenBatch.createNamespacedJob({
        namespace,
        dryRun: 'All',
        body: {
          metadata: { name: 'rbac-probe' },
          spec: {
            template: {
              spec: { restartPolicy: 'Never', containers: [{ name: 'probe', image: 'busybox' }] },
            },
          },
        },
      });

    expect(await statusOf(label(migrated))).toBe(200);
    expect(await statusOf(label('kube-system'))).toBe(403);
    expect(await statusOf(label(workerNamespace))).toBe(403);
    expect(await statusOf(job(migrated))).toBe(200);
    expect(await statusOf(job('default'))).toBe(403);
    // A StatefulSet the profile does not name: refused before the API server looks for it.
    expect(
      await statusOf(
        tokenApps.patchNamespacedStatefulSet(
          { name: 'not-a-database', namespace: migrated, body: { spec: { replicas: 0 } }, dryRun: 'All' },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        ),
      ),
    ).toBe(403);
    expect(await statusOf(tokenCore.listNamespacedSecret({ namespace: migrated }))).toBe(403);
    expect(
      await statusOf(
        tokenCore.createNamespacedConfigMap({
          namespace: migrated,
          dryRun: 'All',
          body: { metadata: { name: 'relaxation-forged' } },
        }),
      ),
    ).toBe(403);
  });

  it('completes a migration, the policies as before', { timeout: 180_000 }, async () => {
    const before = await policies(migrated);
    const { handle } = await startRun(worker.w.client, hostRunnerRun(migrated), { taskQueue });
    const report = (await handle.result()) as MigrationReport;

    expect(report.endState).toBe('completed');
    expect(report.windows).toHaveLength(1);
    expect(await policies(migrated)).toEqual(before);
    expect(await protectedRecord(kc, migrated, workerNamespace)).toBeUndefined();
    expect(new Set(Object.values(ownersOnDisk(bed().pvRoot, migrated)))).toEqual(new Set(['5000:5000']));
    expect((await kc.makeApiClient(BatchV1Api).listNamespacedJob({ namespace: migrated })).items).toEqual([]);
  });

  it(
    "has a terminated run's relaxation swept back by its sweeper, the policies as before",
    { timeout: 180_000 },
    async () => {
      const before = await policies(swept);
      const handle = await relaxedRun(swept);
      const relaxed = await policies(swept);
      expect(relaxed.labels[PodSecurityLabel.Enforce]).toBe('baseline');
      expect(relaxed.excludedBy.length).toBeGreaterThan(0);
      expect(await protectedRecord(kc, swept, workerNamespace)).toBeDefined();
      await handle.terminate('operator terminated the run');

      const report = await sweep();

      expect(report.namespaces.find((n) => n.namespace === swept)).toMatchObject({
        outcome: 'restored',
        alarms: [],
      });
      expect(await policies(swept)).toEqual(before);
      expect(await protectedRecord(kc, swept, workerNamespace)).toBeUndefined();
    },
  );

  it(
    "has `runas-migrate restore` put a terminated run's relaxation back, the policies as before",
    { timeout: 180_000 },
    async () => {
      // The Schedule's own hourly sweep must not do it first.
      await worker.w.client.schedule.getHandle(sweeperScheduleId(taskQueue)).pause('restore by hand');
      const before = await policies(restored);
      const handle = await relaxedRun(restored);
      expect((await policies(restored)).annotations[RelaxationAnnotation]).toBeDefined();
      await handle.terminate('operator terminated the run');

      const r = await runasMigrate(
        ['restore', '--namespace', restored, '--records-namespace', workerNamespace],
        { KUBECONFIG: tokenKubeconfig },
      );

      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`${restored}: policies restored and verified from the protected record`);
      expect(r.stdout).not.toContain('ALARM');
      expect(await policies(restored)).toEqual(before);
      expect(await protectedRecord(kc, restored, workerNamespace)).toBeUndefined();
    },
  );
});

describe('the shipped worker after an RBAC review took out every `watch`', () => {
  const noWatchNamespace = uniqueName('runas-migrate-nowatch');
  const target = uniqueName('rbac-nowatch');
  const noWatchQueue = uniqueName('worker-nowatch');
  const noWatchSuffix = `-${uniqueName('nowatch').slice('nowatch-'.length)}`;
  const granted: ManifestObject[] = [];
  let noWatchKubeconfig: string;
  let noWatchWorker: TestWorker | undefined;
  const withoutWatch = (r: V1PolicyRule): V1PolicyRule => ({
    ...r,
    verbs: r.verbs.filter((v) => v !== 'watch'),
  });

  beforeAll(async () => {
    await readyFixture(kc, target, bed().pvRoot, 5);
    for (const o of manifestFor(noWatchNamespace, [target], noWatchSuffix, withoutWatch)) {
      await objects.create(o);
      granted.push(o);
    }
    noWatchKubeconfig = await serviceAccountKubeconfig(noWatchNamespace);
    noWatchWorker = await startTestWorker(noWatchQueue, {
      kubeconfig: noWatchKubeconfig,
      recordsNamespace: noWatchNamespace,
      waits: 'watch',
    });
  });

  afterAll(async () => {
    await noWatchWorker?.stop();
    for (const o of granted.reverse()) await objects.delete(o).catch(() => undefined);
    await removeFixtures(kc, [target]);
  });

  it(
    'is refused the watches its waits ask for, and completes a migration polling: audit clean, the policies as before',
    { timeout: 180_000 },
    async () => {
      const before = await policies(target);
      const { handle } = await startRun(noWatchWorker!.w.client, hostRunnerRun(target), {
        taskQueue: noWatchQueue,
      });
      const report = (await handle.result()) as MigrationReport;

      expect(report.endState).toBe('completed');
      expect(report.windows).toHaveLength(1);
      expect(report.gatekeeperAudit?.state).toBe('clean');
      expect(await policies(target)).toEqual(before);
      expect(await protectedRecord(kc, target, noWatchNamespace)).toBeUndefined();
      expect(new Set(Object.values(ownersOnDisk(bed().pvRoot, target)))).toEqual(new Set(['5000:5000']));

      // What the run waited on, its worker could not watch: the waits polled.
      const as = new KubeConfig();
      as.loadFromFile(noWatchKubeconfig);
      const [kind] = report.gatekeeperAudit!.constraints[0]!.constraint.split('/');
      const watchOnce = { watch: true, timeoutSeconds: 1 };
      expect(
        await statusOf(as.makeApiClient(CoreV1Api).listNamespacedPod({ namespace: target, ...watchOnce })),
      ).toBe(403);
      expect(
        await statusOf(
          as.makeApiClient(CustomObjectsApi).listClusterCustomObject({
            group: GatekeeperConstraintGroup,
            version: 'v1beta1',
            plural: kind!.toLowerCase(),
            ...watchOnce,
          }),
        ),
      ).toBe(403);
    },
  );
});

describe('the shipped Deployment', () => {
  const deployment = manifest.find((o) => o.kind === 'Deployment') as unknown as V1Deployment;
  const pod = deployment.spec!.template.spec!;
  const container = pod.containers[0]!;
  const emptyDirAt = (path: string | undefined) =>
    container.volumeMounts?.some(
      (m) => m.mountPath === path && pod.volumes?.find((v) => v.name === m.name)?.emptyDir !== undefined,
    ) ?? false;

  it('keeps a read-only root: the workflow bundle comes built with the image, /tmp is an emptyDir', () => {
    expect(container.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(container.env?.map((e) => e.name)).not.toContain('RUNAS_MIGRATE_CACHE');
    expect(pod.volumes?.map((v) => v.name)).toEqual(['tmp']);
    expect(emptyDirAt('/tmp')).toBe(true);
  });

  it('is accepted by the API server in the worker namespace (server-side dry run)', async () => {
    const o = structuredClone(deployment);
    o.metadata!.namespace = workerNamespace;
    await objects.create(o, undefined, 'All');
  });
});
