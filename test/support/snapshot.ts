/**
 * The full before/after picture of a fixture namespace that the invariants are checked against:
 * its policies (labels, annotations, every constraint's spec), StatefulSets (annotations,
 * replicas, pod template), claims, Jobs, and the owner of every file on its volumes.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { AppsV1Api, BatchV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import {
  ItrsDatabases,
  pvDirectory,
  removeFixture,
  seedItrsFixture,
  waitForFixtureReady,
} from '../../testbed/fixture.js';
import { policyState, type PolicyState } from './policy-state.js';

/** What a run could change in a namespace, in comparable form. */
export interface NamespaceSnapshot {
  policies: PolicyState;
  statefulSets: {
    name?: string;
    annotations: Record<string, string>;
    replicas?: number;
    template: unknown;
  }[];
  claims: [string | undefined, string | undefined][];
  jobs: (string | undefined)[];
  /**
   * The owners (`uid:gid`, sorted, comma-separated) of the entries of each fixture volume, by
   * the volume's host folder. Per volume, not per file: the databases are real servers that
   * add and remove files of their own (WAL, statistics, lock files) whenever they run.
   */
  owners: Record<string, string>;
}

/** Owners of every entry of a fixture namespace's volumes, except mount points of nested volumes. */
export function ownersOnDisk(pvRoot: string, namespace: string): Record<string, string> {
  const owners: Record<string, string> = {};
  // A running PostgreSQL removes files of its own (pg_internal.init, temporary files) between
  // the listing of a folder and the lstat of its entries: an entry gone by then has no owner.
  const owner = (p: string) => {
    const s = lstatSync(p, { throwIfNoEntry: false });
    return s && `${s.uid}:${s.gid}`;
  };
  const entries = (dir: string) => {
    try {
      return readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  };
  for (const db of ItrsDatabases) {
    const mounts = db.claims.map((c) => c.mountPath);
    for (let i = 0; i < db.replicas; i++) {
      for (const c of db.claims) {
        const root = pvDirectory(pvRoot, namespace, `${c.claim}-${db.statefulSet}-${i}`);
        // Mount points created inside this volume for the volumes mounted below it.
        const hidden = new Set(
          mounts
            .filter((m) => m !== c.mountPath && m.startsWith(`${c.mountPath}/`))
            .map((m) => join(root, m.slice(c.mountPath.length))),
        );
        const record = (p: string) => {
          const o = owner(p);
          if (o) owners[p] = o;
        };
        const walk = (dir: string) => {
          record(dir);
          for (const e of entries(dir)) {
            const p = join(dir, e.name);
            if (hidden.has(p)) continue;
            if (e.isDirectory()) walk(p);
            else record(p);
          }
        };
        walk(root);
      }
    }
  }
  return owners;
}

/** The owners of the entries of each fixture volume (see {@link NamespaceSnapshot.owners}). */
export function ownersByVolume(pvRoot: string, namespace: string): Record<string, string> {
  const byVolume = new Map<string, Set<string>>();
  const volumes = ItrsDatabases.flatMap((db) =>
    Array.from({ length: db.replicas }, (_, i) =>
      db.claims.map((c) => pvDirectory(pvRoot, namespace, `${c.claim}-${db.statefulSet}-${i}`)),
    ).flat(),
  );
  for (const [path, owner] of Object.entries(ownersOnDisk(pvRoot, namespace))) {
    const volume = volumes.find((v) => path === v || path.startsWith(`${v}/`))!;
    byVolume.set(volume, (byVolume.get(volume) ?? new Set()).add(owner));
  }
  return Object.fromEntries([...byVolume].map(([v, o]) => [v, [...o].sort().join(',')]));
}

/** Takes the full snapshot of a fixture namespace. */
export async function namespaceSnapshot(
  kc: KubeConfig,
  namespace: string,
  pvRoot: string,
): Promise<NamespaceSnapshot> {
  const apps = kc.makeApiClient(AppsV1Api);
  const core = kc.makeApiClient(CoreV1Api);
  const batch = kc.makeApiClient(BatchV1Api);
  const statefulSets = (await apps.listNamespacedStatefulSet({ namespace })).items.map((s) => ({
    name: s.metadata?.name,
    annotations: s.metadata?.annotations ?? {},
    replicas: s.spec?.replicas,
    template: s.spec?.template,
  }));
  const claims = (await core.listNamespacedPersistentVolumeClaim({ namespace })).items.map(
    (p) => [p.metadata?.name, p.status?.phase] as [string | undefined, string | undefined],
  );
  const jobs = (await batch.listNamespacedJob({ namespace })).items.map((j) => j.metadata?.name);
  return {
    policies: await policyState(kc, namespace),
    statefulSets,
    claims,
    jobs,
    owners: ownersByVolume(pvRoot, namespace),
  };
}

/** Seeds a fixture namespace and waits until its databases are Ready. */
export async function readyFixture(
  kc: KubeConfig,
  namespace: string,
  pvRoot: string,
  filesPerVolume?: number,
): Promise<void> {
  await seedItrsFixture(kc, { namespace, pvRoot, ...(filesPerVolume ? { filesPerVolume } : {}) });
  await waitForFixtureReady(kc, namespace);
}

/**
 * Seeds fixture namespaces with kwok's databases (for tests of what is above the data path), each
 * Ready, and records each one's policies in `into`.
 */
export function seedSimulatedFixtures(
  kc: KubeConfig,
  pvRoot: string,
  names: readonly string[],
  into: Map<string, PolicyState>,
  filesPerVolume = 20,
): Promise<void[]> {
  return Promise.all(
    names.map(async (namespace) => {
      await seedItrsFixture(kc, { namespace, pvRoot, filesPerVolume, databases: 'simulated' });
      await waitForFixtureReady(kc, namespace, 120_000);
      into.set(namespace, await policyState(kc, namespace));
    }),
  );
}

/** Deletes fixture namespaces and their PersistentVolumes. */
export async function removeFixtures(kc: KubeConfig, namespaces: readonly string[]): Promise<void> {
  for (const name of namespaces) await removeFixture(kc, name);
}
