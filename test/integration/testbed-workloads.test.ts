/**
 * The simulated cluster runs the controllers the runbook relies on: Jobs complete, StatefulSets
 * scale up to Ready pods and down to none, and the fixture's claims are Bound.
 */
import { AppsV1Api, BatchV1Api, CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FixtureNamespace } from '../../testbed/bed.js';
import { ItrsDatabases } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const namespace = uniqueName('workloads');
let cleanup: () => Promise<void>;

beforeAll(async () => {
  // Plain workloads with no securityContext: what kwok does with them, not what the policies say.
  cleanup = await createNamespace(kc, namespace, OutsideGatekeeper);
});
afterAll(async () => cleanup());

describe('workloads on the simulated cluster', () => {
  it('runs a Job to Complete on a simulated node', async () => {
    await batch.createNamespacedJob({
      namespace,
      body: {
        metadata: { name: 'simulated' },
        spec: {
          backoffLimit: 0,
          template: {
            spec: {
              restartPolicy: 'Never',
              containers: [{ name: 'c', image: 'busybox', command: ['true'] }],
            },
          },
        },
      },
    });
    const job = await waitFor(
      'Job Complete',
      async () => {
        const j = await batch.readNamespacedJob({ name: 'simulated', namespace });
        return j.status?.conditions?.some((c) => c.type === 'Complete' && c.status === 'True')
          ? j
          : undefined;
      },
      60_000,
    );
    expect(job.status?.succeeded).toBe(1);
  });

  it('scales a StatefulSet to 2 Ready pods and back to none', async () => {
    await apps.createNamespacedStatefulSet({
      namespace,
      body: {
        metadata: { name: 'db' },
        spec: {
          replicas: 0,
          serviceName: 'db',
          podManagementPolicy: 'Parallel',
          selector: { matchLabels: { app: 'db' } },
          template: {
            metadata: { labels: { app: 'db' } },
            spec: { containers: [{ name: 'db', image: 'postgres' }] },
          },
        },
      },
    });
    const scale = (replicas: number) =>
      apps.patchNamespacedStatefulSetScale(
        { name: 'db', namespace, body: { spec: { replicas } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    const podsOf = async () => (await core.listNamespacedPod({ namespace, labelSelector: 'app=db' })).items;

    await scale(2);
    await waitFor(
      '2 ready replicas',
      async () =>
        (await apps.readNamespacedStatefulSet({ name: 'db', namespace })).status?.readyReplicas === 2,
      60_000,
    );
    const pods = await podsOf();
    expect(pods.map((p) => p.metadata?.name).sort()).toEqual(['db-0', 'db-1']);
    expect(
      pods.every((p) => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')),
    ).toBe(true);

    await scale(0);
    await waitFor('pods gone', async () => (await podsOf()).length === 0, 60_000);
    expect(await podsOf()).toHaveLength(0);
  });

  it('binds every claim of every replica of the fixture', async () => {
    const pvcs = (await core.listNamespacedPersistentVolumeClaim({ namespace: FixtureNamespace })).items;
    const expected = ItrsDatabases.flatMap((db) =>
      Array.from({ length: db.replicas }, (_, i) =>
        db.claims.map((c) => `${c.claim}-${db.statefulSet}-${i}`),
      ).flat(),
    );
    expect(pvcs.map((p) => p.metadata?.name).sort()).toEqual(expected.sort());
    expect(pvcs.every((p) => p.status?.phase === 'Bound')).toBe(true);
  });
});
