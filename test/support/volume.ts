/**
 * Real volumes for tests on the test bed: a host directory as a static PersistentVolume, bound
 * to a claim of a given name, and the owners of the files under it.
 */
import { execFileSync } from 'node:child_process';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { StaticStorageClass } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';

/**
 * Creates a PersistentVolume over `dir` pre-bound to claim `claim` of `namespace`, and the claim;
 * waits until it is Bound.
 *
 * @returns a function that deletes the PersistentVolume (the claim goes with its namespace).
 */
export async function boundVolume(
  kc: KubeConfig,
  namespace: string,
  claim: string,
  dir: string,
): Promise<() => Promise<void>> {
  const core = kc.makeApiClient(CoreV1Api);
  const pv = `${namespace}-${claim}`;
  await core.createPersistentVolume({
    body: {
      metadata: { name: pv },
      spec: {
        capacity: { storage: '1Gi' },
        accessModes: ['ReadWriteOnce'],
        storageClassName: StaticStorageClass,
        hostPath: { path: dir, type: 'Directory' },
        claimRef: { namespace, name: claim },
      },
    },
  });
  await core.createNamespacedPersistentVolumeClaim({
    namespace,
    body: {
      metadata: { name: claim },
      spec: {
        accessModes: ['ReadWriteOnce'],
        storageClassName: StaticStorageClass,
        resources: { requests: { storage: '1Gi' } },
      },
    },
  });
  await waitFor(
    `claim ${claim} bound`,
    async () =>
      (await core.readNamespacedPersistentVolumeClaim({ name: claim, namespace })).status?.phase === 'Bound',
    30_000,
  );
  return async () => {
    await core.deletePersistentVolume({ name: pv }).catch(() => undefined);
  };
}

/** `uid:gid` → how many entries under `dir` (itself included) have it. */
export function ownerCounts(dir: string): Record<string, number> {
  const out = execFileSync('find', [dir, '-printf', '%U:%G\n'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const counts: Record<string, number> = {};
  for (const line of out.split('\n')) if (line) counts[line] = (counts[line] ?? 0) + 1;
  return counts;
}
