/**
 * The ITRS-like fixture of the test bed: a namespace under PSA `restricted`, the `pgplatform`
 * and `timescale` StatefulSets with every volume of every replica bound to a static hostPath
 * PersistentVolume whose files belong to the old UID, the `IaxPlatform` resource, and the
 * Gatekeeper constraint CRDs with two constraints.
 */
import { execFileSync } from 'node:child_process';
import {
  chownSync,
  existsSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ApiextensionsV1Api,
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubernetesObjectApi,
  PatchStrategy,
  StorageV1Api,
  setHeaderOptions,
  type KubeConfig,
  type KubernetesObject,
  type V1Container,
  type V1CustomResourceDefinition,
  type V1StatefulSet,
} from '@kubernetes/client-node';
import type { MigrationInputRaw } from '../src/core/input.js';
import { enforcementOf, type EnforcementView } from '../src/core/enforcement.js';
import { DefaultRecordsNamespace } from '../src/core/records.js';
import { HostRunnerPlacement } from './host-runner/runner.js';
import { copyTemplateVolume, databaseTemplate, postgresContainer } from './postgres.js';
import { waitFor } from './process.js';

/** Storage class of the fixture's static PersistentVolumes (no provisioner). */
export const StaticStorageClass = 'testbed-static';

/** Annotation that hands a node to kwok (all other nodes are left alone). */
export const FakeNodeAnnotation = { key: 'kwok.x-k8s.io/node', value: 'fake' } as const;

/** The IaxPlatform custom resource of the fixture. */
export const IaxPlatform = {
  group: 'iax.itrsgroup.com',
  version: 'v1',
  plural: 'iaxplatforms',
  kind: 'IaxPlatform',
  name: 'iax-iax-platform',
} as const;

/**
 * Gatekeeper's constraint API group and the constraint kinds of the bed's ConstraintTemplates
 * (testbed/gatekeeper/); Gatekeeper's template controller creates their CRDs.
 */
export const Gatekeeper = {
  group: 'constraints.gatekeeper.sh',
  version: 'v1beta1',
  kinds: [
    { kind: 'K8sPSPCapabilities', plural: 'k8spspcapabilities' },
    { kind: 'K8sPSPAllowedUsers', plural: 'k8spspallowedusers' },
    { kind: 'K8sPSPPrivilegedContainer', plural: 'k8spspprivilegedcontainer' },
  ],
} as const;

/** One claim template of a fixture StatefulSet. */
interface ClaimSpec {
  claim: string;
  mountPath: string;
  /** Sub-folders and files to create, relative to the volume root. */
  seed: 'pgdata' | 'wal' | 'tablespace';
}

interface DatabaseSpec {
  statefulSet: string;
  container: string;
  image: string;
  replicas: number;
  claims: ClaimSpec[];
}

/** The two databases of an ITRS Analytics install, as the seed procedure describes them. */
export const ItrsDatabases: readonly DatabaseSpec[] = [
  {
    statefulSet: 'pgplatform',
    container: 'postgres',
    image: 'docker.itrsgroup.com/iax/postgres:2.17.0',
    replicas: 1,
    claims: [{ claim: 'data', mountPath: '/var/lib/postgresql', seed: 'pgdata' }],
  },
  {
    statefulSet: 'timescale',
    container: 'timescale',
    image: 'docker.itrsgroup.com/iax/timescale:2.17.0',
    replicas: 2,
    claims: [
      { claim: 'timescale-ha-data', mountPath: '/var/lib/postgresql', seed: 'pgdata' },
      { claim: 'timescale-ha-wal', mountPath: '/var/lib/postgresql/wal', seed: 'wal' },
      {
        claim: 'timescale-ha-tablespace-data-1',
        mountPath: '/var/lib/postgresql/tablespaces/timeseries_tablespace_1',
        seed: 'tablespace',
      },
      {
        claim: 'timescale-ha-tablespace-data-2',
        mountPath: '/var/lib/postgresql/tablespaces/timeseries_tablespace_2',
        seed: 'tablespace',
      },
    ],
  },
];

/** What to seed. */
export interface FixtureOptions {
  namespace: string;
  /** Host folder under which each PV gets its directory. */
  pvRoot: string;
  /** Owner of the seeded files. @default 1000 */
  oldUid?: number;
  /** Files per data volume. @default 20 */
  filesPerVolume?: number;
  /** Whether to create the `drop-all` and `allowed-user-ranges` constraints. @default true */
  constraints?: boolean;
  /**
   * How the databases run: real PostgreSQL servers on the host runner's node, on real cluster
   * files (`postgres`), or pods kwok simulates on files shaped like a cluster's (`simulated`,
   * for scale: they are Ready whatever owns their files).
   * @default "postgres"
   */
  databases?: 'postgres' | 'simulated';
  /**
   * Install the StatefulSets as a Helm release of the bed's chart (testbed/charts/iax-databases)
   * instead of creating them: `helm` is the binary, `release` the release name.
   */
  helmRelease?: { helm: string; release: string };
}

/** The bed's chart of the databases: their IDs under the vendor procedure's values keys. */
export const DatabasesChart = join(dirname(fileURLToPath(import.meta.url)), 'charts', 'iax-databases');

/**
 * The chart's values for these StatefulSets: the pod-level IDs under `securityContext.pod`,
 * everything else of each StatefulSet as the chart takes it.
 */
export function chartValues(sets: readonly V1StatefulSet[]) {
  const sc = sets[0]?.spec?.template.spec?.securityContext ?? {};
  return {
    securityContext: {
      pod: {
        runAsUser: sc.runAsUser,
        runAsGroup: sc.runAsGroup,
        supplementalGroups: sc.supplementalGroups,
        fsGroup: sc.fsGroup,
        fsGroupChangePolicy: sc.fsGroupChangePolicy,
      },
    },
    databases: sets.map((sts) => {
      const { securityContext: _ids, ...podSpec } = sts.spec!.template.spec!;
      return {
        name: sts.metadata!.name,
        replicas: sts.spec!.replicas,
        podSpec,
        volumeClaimTemplates: sts.spec!.volumeClaimTemplates,
      };
    }),
  };
}

/** `helm install` of the bed's chart with these StatefulSets, as the bed's administrator. */
function installRelease(
  kc: KubeConfig,
  namespace: string,
  sets: V1StatefulSet[],
  o: { helm: string; release: string },
) {
  const dir = mkdtempSync(join(tmpdir(), 'runas-migrate-fixture-'));
  try {
    const kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(kubeconfig, kc.exportConfig(), { mode: 0o600 });
    const values = join(dir, 'values.json');
    writeFileSync(values, JSON.stringify(chartValues(sets)));
    execFileSync(
      o.helm,
      [
        'install',
        o.release,
        DatabasesChart,
        '--namespace',
        namespace,
        '--values',
        values,
        '--kubeconfig',
        kubeconfig,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 },
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const isConflict = (err: unknown) => (err as { code?: number }).code === 409;

async function createIfMissing(fn: () => Promise<unknown>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (!isConflict(err)) throw err;
  }
}

/** Host directory of one PV of the fixture. */
export function pvDirectory(pvRoot: string, namespace: string, claimName: string): string {
  return join(pvRoot, namespace, claimName);
}

/** Extra files, beside PostgreSQL's own, in a folder PostgreSQL does not read. */
function seedExtraFiles(dir: string, uid: number, files: number): void {
  if (files <= 0) return;
  const extra = join(dir, 'seed-files');
  mkdirSync(extra, { recursive: true, mode: 0o700 });
  for (let i = 0; i < files; i++) writeFileSync(join(extra, String(i)), `file ${i}\n`, { mode: 0o600 });
  execFileSync('chown', ['-R', `${uid}:${uid}`, '--', extra]);
}

function seedVolume(dir: string, kind: ClaimSpec['seed'], uid: number, files: number): void {
  mkdirSync(dir, { recursive: true });
  const own = (p: string) => chownSync(p, uid, uid);
  const mk = (p: string) => {
    mkdirSync(p, { recursive: true, mode: 0o700 });
    own(p);
  };
  const file = (p: string, content: string) => {
    writeFileSync(p, content, { mode: 0o600 });
    own(p);
  };
  own(dir);
  if (kind === 'pgdata') {
    const pgdata = join(dir, 'data');
    mk(join(pgdata, 'base', '1'));
    mk(join(pgdata, 'global'));
    mk(join(pgdata, 'pg_wal'));
    own(join(pgdata, 'base'));
    file(join(pgdata, 'PG_VERSION'), '15\n');
    file(join(pgdata, 'postgresql.auto.conf'), '# fixture\n');
    for (let i = 0; i < files; i++) file(join(pgdata, 'base', '1', String(16384 + i)), `relation ${i}\n`);
    file(join(pgdata, 'global', 'pg_control'), 'control\n');
    file(join(pgdata, 'pg_wal', '000000010000000000000001'), 'wal\n');
  } else if (kind === 'wal') {
    mk(join(dir, 'pg_wal'));
    for (let i = 0; i < Math.max(1, files / 4); i++) {
      file(join(dir, 'pg_wal', `0000000100000000000000${String(i + 1).padStart(2, '0')}`), 'wal\n');
    }
  } else {
    const ts = join(dir, 'data');
    mk(join(ts, 'PG_15_202209061', '16384'));
    own(join(ts, 'PG_15_202209061'));
    for (let i = 0; i < files; i++)
      file(join(ts, 'PG_15_202209061', '16384', String(20000 + i)), `chunk ${i}\n`);
    const link = join(ts, 'latest');
    if (!existsSync(link)) symlinkSync(join('PG_15_202209061', '16384'), link);
  }
  // Everything, symlinks included, belongs to the old owner, as after years of running.
  const walk = (p: string): void => {
    lchownSync(p, uid, uid);
    if (lstatSync(p).isDirectory()) for (const e of readdirSync(p)) walk(join(p, e));
  };
  walk(dir);
}

function iaxPlatformCrd(): V1CustomResourceDefinition {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${IaxPlatform.plural}.${IaxPlatform.group}` },
    spec: {
      group: IaxPlatform.group,
      scope: 'Namespaced',
      names: {
        kind: IaxPlatform.kind,
        plural: IaxPlatform.plural,
        singular: 'iaxplatform',
        listKind: 'IaxPlatformList',
      },
      versions: [
        {
          name: IaxPlatform.version,
          served: true,
          storage: true,
          subresources: { status: {} },
          schema: { openAPIV3Schema: { type: 'object', x_kubernetes_preserve_unknown_fields: true } },
        },
      ],
    },
  };
}

/**
 * Creates the worker's own namespace, where it keeps the protected relaxation records (as
 * deploy/worker.yaml does in a cluster). Safe to call again.
 */
export async function ensureRecordsNamespace(kc: KubeConfig, name = DefaultRecordsNamespace): Promise<void> {
  const core = kc.makeApiClient(CoreV1Api);
  await createIfMissing(() =>
    core.createNamespace({
      body: { metadata: { name, labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } } },
    }),
  );
}

/** Installs what the fixture needs once per cluster: records namespace, storage class, CRDs, constraints. */
export async function installClusterFixture(
  kc: KubeConfig,
  opts: { constraints?: boolean; gatekeeper?: boolean } = {},
): Promise<void> {
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const storage = kc.makeApiClient(StorageV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  await ensureRecordsNamespace(kc);
  await createIfMissing(() =>
    storage.createStorageClass({
      body: {
        metadata: { name: StaticStorageClass },
        provisioner: 'kubernetes.io/no-provisioner',
        volumeBindingMode: 'Immediate',
        reclaimPolicy: 'Retain',
      },
    }),
  );
  const crd = iaxPlatformCrd();
  await createIfMissing(() => ext.createCustomResourceDefinition({ body: crd }));
  // A cluster without Gatekeeper has none of its constraint kinds to wait for.
  const names = [
    crd.metadata!.name!,
    ...(opts.gatekeeper === false ? [] : Gatekeeper.kinds.map((k) => `${k.plural}.${Gatekeeper.group}`)),
  ];
  for (const name of names) {
    await waitFor(
      `CRD ${name} established (constraint kinds come from Gatekeeper's templates: is it running?)`,
      async () => {
        const c = await ext.readCustomResourceDefinition({ name });
        return c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True');
      },
      30_000,
    );
  }
  if (opts.constraints === false) return;
  const podKinds = [{ apiGroups: [''], kinds: ['Pod'] }];
  await createIfMissing(() =>
    custom.createClusterCustomObject({
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural: 'k8spspcapabilities',
      body: {
        apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
        kind: 'K8sPSPCapabilities',
        metadata: { name: 'drop-all' },
        spec: {
          enforcementAction: 'deny',
          match: { kinds: podKinds, excludedNamespaces: ['kube-system', 'gatekeeper-system'] },
          parameters: { requiredDropCapabilities: ['ALL'], allowedCapabilities: [] },
        },
      },
    }),
  );
  await createIfMissing(() =>
    custom.createClusterCustomObject({
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural: 'k8spspallowedusers',
      body: {
        apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
        kind: 'K8sPSPAllowedUsers',
        metadata: { name: 'allowed-user-ranges' },
        spec: {
          enforcementAction: 'deny',
          match: { kinds: podKinds },
          parameters: {
            runAsUser: { rule: 'MustRunAs', ranges: [{ min: 1000, max: 65535 }] },
            runAsGroup: { rule: 'MustRunAs', ranges: [{ min: 1000, max: 65535 }] },
            fsGroup: { rule: 'MustRunAs', ranges: [{ min: 1000, max: 65535 }] },
            supplementalGroups: { rule: 'MustRunAs', ranges: [{ min: 1000, max: 65535 }] },
          },
        },
      },
    }),
  );
  for (const [plural, name] of [
    ['k8spspcapabilities', 'drop-all'],
    ['k8spspallowedusers', 'allowed-user-ranges'],
  ] as const) {
    await waitFor(
      `Gatekeeper enforcing constraint ${name}`,
      async () => {
        const c = (await custom.getClusterCustomObject({
          group: Gatekeeper.group,
          version: Gatekeeper.version,
          plural,
          name,
        })) as EnforcementView;
        return enforcementOf(c, c.metadata.generation ?? 1).state === 'enforced';
      },
      60_000,
      200,
    );
  }
}

function statefulSet(
  namespace: string,
  db: DatabaseSpec,
  uid: number,
  databases: 'postgres' | 'simulated',
): V1StatefulSet {
  const simulated: V1Container = {
    name: db.container,
    image: db.image,
    command: ['docker-entrypoint.sh', 'postgres'],
    env: [{ name: 'PGDATA', value: '/var/lib/postgresql/data' }],
    securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
    volumeMounts: db.claims.map((c) => ({ name: c.claim, mountPath: c.mountPath })),
  };
  const real = databases === 'postgres' ? postgresContainer(simulated, db.claims) : undefined;
  return {
    apiVersion: 'apps/v1',
    kind: 'StatefulSet',
    metadata: {
      name: db.statefulSet,
      namespace,
      labels: { app: db.statefulSet, 'app.kubernetes.io/part-of': 'iax' },
    },
    spec: {
      serviceName: db.statefulSet,
      replicas: db.replicas,
      podManagementPolicy: 'Parallel',
      selector: { matchLabels: { app: db.statefulSet } },
      template: {
        metadata: { labels: { app: db.statefulSet } },
        spec: {
          securityContext: {
            runAsNonRoot: true,
            runAsUser: uid,
            runAsGroup: uid,
            fsGroup: uid,
            supplementalGroups: [uid],
            fsGroupChangePolicy: 'OnRootMismatch',
            seccompProfile: { type: 'RuntimeDefault' },
          },
          containers: [real?.container ?? simulated],
          ...(real ? { volumes: real.volumes, ...HostRunnerPlacement } : {}),
        },
      },
      volumeClaimTemplates: db.claims.map((c) => ({
        metadata: { name: c.claim },
        spec: {
          accessModes: ['ReadWriteOnce'],
          storageClassName: StaticStorageClass,
          resources: { requests: { storage: '1Gi' } },
        },
      })),
    },
  };
}

/**
 * Seeds one ITRS-like namespace. Safe to call again: existing objects are kept.
 *
 * @returns the claim names it bound, per StatefulSet.
 */
export async function seedItrsFixture(
  kc: KubeConfig,
  opts: FixtureOptions,
): Promise<Record<string, string[]>> {
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const uid = opts.oldUid ?? 1000;
  const databases = opts.databases ?? 'postgres';
  await installClusterFixture(kc, { constraints: opts.constraints, gatekeeper: opts.constraints !== false });
  await createIfMissing(() =>
    core.createNamespace({
      body: {
        metadata: { name: opts.namespace, labels: { 'pod-security.kubernetes.io/enforce': 'restricted' } },
      },
    }),
  );
  const claims: Record<string, string[]> = {};
  const released: V1StatefulSet[] = [];
  for (const db of ItrsDatabases) {
    claims[db.statefulSet] = [];
    const template = databases === 'postgres' ? databaseTemplate(db.claims) : undefined;
    for (let i = 0; i < db.replicas; i++) {
      for (const c of db.claims) {
        const claimName = `${c.claim}-${db.statefulSet}-${i}`;
        claims[db.statefulSet]!.push(claimName);
        const dir = pvDirectory(opts.pvRoot, opts.namespace, claimName);
        if (!existsSync(dir)) {
          if (template) {
            copyTemplateVolume(template, c.claim, dir, uid);
            seedExtraFiles(dir, uid, opts.filesPerVolume ?? 0);
          } else seedVolume(dir, c.seed, uid, opts.filesPerVolume ?? 20);
          // The mount points the running database left for the volumes mounted below this one
          // (its runtime creates them inside this volume), owned like everything else after years
          // under the old IDs: a Job that mounts the same paths finds them in place.
          for (const other of db.claims)
            if (other.mountPath.startsWith(`${c.mountPath}/`))
              for (let p = other.mountPath; p !== c.mountPath; p = posix.dirname(p)) {
                const onDisk = join(dir, posix.relative(c.mountPath, p));
                mkdirSync(onDisk, { recursive: true, mode: 0o755 });
                lchownSync(onDisk, uid, uid);
              }
        }
        await createIfMissing(() =>
          core.createPersistentVolume({
            body: {
              metadata: {
                name: `${opts.namespace}-${claimName}`,
                labels: { 'runas-migrate.dev/fixture': opts.namespace },
              },
              spec: {
                capacity: { storage: '1Gi' },
                accessModes: ['ReadWriteOnce'],
                persistentVolumeReclaimPolicy: 'Retain',
                storageClassName: StaticStorageClass,
                hostPath: { path: dir, type: 'Directory' },
                claimRef: { namespace: opts.namespace, name: claimName },
              },
            },
          }),
        );
      }
    }
    const sts = statefulSet(opts.namespace, db, uid, databases);
    if (opts.helmRelease) released.push(sts);
    else
      await createIfMissing(() => apps.createNamespacedStatefulSet({ namespace: opts.namespace, body: sts }));
  }
  if (released.length) installRelease(kc, opts.namespace, released, opts.helmRelease!);
  await createIfMissing(() =>
    custom.createNamespacedCustomObject({
      group: IaxPlatform.group,
      version: IaxPlatform.version,
      namespace: opts.namespace,
      plural: IaxPlatform.plural,
      body: {
        apiVersion: `${IaxPlatform.group}/${IaxPlatform.version}`,
        kind: IaxPlatform.kind,
        metadata: { name: IaxPlatform.name },
        spec: { version: '2.17.0' },
      },
    }),
  );
  await custom.patchNamespacedCustomObjectStatus(
    {
      group: IaxPlatform.group,
      version: IaxPlatform.version,
      namespace: opts.namespace,
      plural: IaxPlatform.plural,
      name: IaxPlatform.name,
      body: { status: { status: 'DEPLOYED' } },
    },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
  return claims;
}

/** Waits until every fixture StatefulSet of the namespace has all its replicas Ready and PVCs Bound. */
export async function waitForFixtureReady(
  kc: KubeConfig,
  namespace: string,
  timeoutMs = 60_000,
): Promise<void> {
  const apps = kc.makeApiClient(AppsV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  for (const db of ItrsDatabases) {
    await waitFor(
      `${namespace}/${db.statefulSet} ready`,
      async () => {
        const s = await apps.readNamespacedStatefulSet({ name: db.statefulSet, namespace });
        return (s.status?.readyReplicas ?? 0) === (s.spec?.replicas ?? 0) ? true : undefined;
      },
      timeoutMs,
    );
  }
  await waitFor(
    `PVCs of ${namespace} bound`,
    async () => {
      const pvcs = await core.listNamespacedPersistentVolumeClaim({ namespace });
      return pvcs.items.length > 0 && pvcs.items.every((p) => p.status?.phase === 'Bound');
    },
    timeoutMs,
  );
}

/** Creates nodes that kwok simulates (Ready, pods Running, Job pods Succeeded). */
export async function createFakeNodes(kc: KubeConfig, count: number): Promise<void> {
  const objects = KubernetesObjectApi.makeApiClient(kc);
  for (let i = 0; i < count; i++) {
    const node: KubernetesObject & Record<string, unknown> = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name: `kwok-node-${i}`,
        annotations: {
          [FakeNodeAnnotation.key]: FakeNodeAnnotation.value,
          'node.alpha.kubernetes.io/ttl': '0',
        },
        labels: { 'kubernetes.io/hostname': `kwok-node-${i}`, 'kubernetes.io/os': 'linux', type: 'kwok' },
      },
      status: {
        allocatable: { cpu: '32', memory: '256Gi', pods: '110' },
        capacity: { cpu: '32', memory: '256Gi', pods: '110' },
      },
    };
    await createIfMissing(() => objects.create(node));
  }
}

/**
 * Deletes a fixture namespace and its PersistentVolumes, and with `pvRoot` also the volumes'
 * host folders.
 */
export async function removeFixture(kc: KubeConfig, namespace: string, pvRoot?: string): Promise<void> {
  const core = kc.makeApiClient(CoreV1Api);
  await core.deleteNamespace({ name: namespace }).catch(() => undefined);
  const pvs = await core.listPersistentVolume({ labelSelector: `runas-migrate.dev/fixture=${namespace}` });
  for (const pv of pvs.items)
    await core.deletePersistentVolume({ name: pv.metadata!.name! }).catch(() => undefined);
  if (pvRoot) rmSync(join(pvRoot, namespace), { recursive: true, force: true });
}

/**
 * The input of a run that migrates a fixture namespace to 5000:5000 with no approvals, its Jobs
 * on the host runner (so they change real files), in the given window mode.
 */
export function hostRunnerRun(
  namespace: string,
  mode: 'admission' | 'job-duration' = 'admission',
): MigrationInputRaw {
  return {
    namespace,
    uid: 5000,
    gid: 5000,
    securityContext: { apply: 'patch' },
    approvals: [],
    window: { mode },
    job: { ...HostRunnerPlacement },
  };
}
