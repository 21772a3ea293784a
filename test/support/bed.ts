/**
 * Helpers for tests that run against the test bed: its state, a kube client, and a fresh
 * namespace per test file (isolation by name).
 */
import { randomBytes } from 'node:crypto';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { inject } from 'vitest';
import { kubeConfigOf, type BedState } from '../../testbed/bed.js';
import { GatekeeperWebhook } from '../../testbed/gatekeeper.js';
import { waitFor } from '../../testbed/process.js';

/** The running test bed. */
export function bed(): BedState {
  return inject('bed');
}

/** A KubeConfig pointed at the test bed's API server. */
export function kubeConfig(): KubeConfig {
  return kubeConfigOf(bed());
}

/** A namespace name unique to this run: `<prefix>-<random>`. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}

/** Creates a namespace with the given labels; returns a function that deletes it. */
/**
 * Labels that keep a namespace out of Gatekeeper's webhook (its chart's exemption): for the
 * data-path tests that create root pods themselves; the policies are tested through the guard.
 */
export const OutsideGatekeeper = { [GatekeeperWebhook.ignoreLabel]: 'data-path-test' } as const;

export async function createNamespace(
  kc: KubeConfig,
  name: string,
  labels: Record<string, string> = {},
): Promise<() => Promise<void>> {
  const core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name, labels } } });
  // Pods are refused until the namespace's default ServiceAccount exists.
  await waitFor(
    `ServiceAccount default in ${name}`,
    () => core.readNamespacedServiceAccount({ name: 'default', namespace: name }),
    30_000,
  );
  return async () => {
    await core.deleteNamespace({ name }).catch(() => undefined);
  };
}
