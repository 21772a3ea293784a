/**
 * The Lease calls of the Kubernetes client against the test bed's API server: each typed like
 * every other call — a missing Lease `KubeNotFound`, a stale resourceVersion or a second create
 * a retryable `KubeConflict` — and counted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isKubeError, Kube, type KubeError } from '../../src/cluster/kube.js';
import { FailureType } from '../../src/core/failures.js';
import { createNamespace, kubeConfig, uniqueName } from '../support/bed.js';

const kube = new Kube(kubeConfig());
const namespace = uniqueName('lease');
let cleanup: () => Promise<void>;

const errorOf = (p: Promise<unknown>): Promise<KubeError> =>
  p.then(
    () => {
      throw new Error('expected a KubeError');
    },
    (err: unknown) => {
      if (!isKubeError(err)) throw err;
      return err;
    },
  );

beforeAll(async () => {
  cleanup = await createNamespace(kubeConfig(), namespace);
});
afterAll(async () => {
  await cleanup();
});

describe('Lease calls', () => {
  it('create, read, replace under its resourceVersion, delete under its resourceVersion', async () => {
    const missing = await errorOf(kube.readLease(namespace, 'lock'));
    expect(missing.type).toBe(FailureType.KubeNotFound);
    expect(missing.retryable).toBe(false);
    expect(missing.message).toBe(
      `Lease "${namespace}/lock" not found while trying to get it (HTTP 404). Fix: check its name and namespace`,
    );

    const writes = kube.counts.writes;
    const created = await kube.createLease(namespace, {
      metadata: { name: 'lock', annotations: { 'runas-migrate.dev/run-id': 'a' } },
      spec: { holderIdentity: 'run-a' },
    });
    const again = await errorOf(kube.createLease(namespace, { metadata: { name: 'lock' }, spec: {} }));
    expect(again.type).toBe(FailureType.KubeConflict);
    expect(again.retryable).toBe(true);

    const read = await kube.readLease(namespace, 'lock');
    expect(read.spec?.holderIdentity).toBe('run-a');
    expect(read.metadata?.resourceVersion).toBe(created.metadata?.resourceVersion);

    const replaced = await kube.replaceLease(namespace, 'lock', {
      ...read,
      spec: { ...read.spec, holderIdentity: 'run-b' },
    });
    expect(replaced.spec?.holderIdentity).toBe('run-b');
    // the version read before the replace is stale now
    const stale = await errorOf(
      kube.replaceLease(namespace, 'lock', { ...read, spec: { ...read.spec, holderIdentity: 'run-c' } }),
    );
    expect(stale.type).toBe(FailureType.KubeConflict);
    expect(stale.retryable).toBe(true);
    expect(stale.message).toMatch(
      new RegExp(`^Lease "${namespace}/lock" changed while trying to replace it \\(HTTP 409\\)`),
    );
    await expect(
      kube.replaceLease(namespace, 'lock', { metadata: { name: 'lock' }, spec: {} }),
    ).rejects.toThrow(/resourceVersion is required/);

    const staleDelete = await errorOf(kube.deleteLease(namespace, 'lock', read.metadata!.resourceVersion));
    expect(staleDelete.type).toBe(FailureType.KubeConflict);
    await kube.deleteLease(namespace, 'lock', replaced.metadata!.resourceVersion);
    expect((await errorOf(kube.readLease(namespace, 'lock'))).type).toBe(FailureType.KubeNotFound);
    expect((await errorOf(kube.deleteLease(namespace, 'lock'))).type).toBe(FailureType.KubeNotFound);
    expect(kube.counts.writes - writes).toBe(7);
  });
});
