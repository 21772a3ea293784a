/**
 * Cancellation waits for the step it cancels, with real cancellation and a real slow step: the
 * relax is slowed after its first constraint by another writer changing the second one (its
 * guarded patches retry), the run is aborted meanwhile, and the restore must not start before
 * the relax has really stopped — else the relax's late write leaves the namespace excluded.
 */
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { queryStatus, startRun } from '../../src/app/runs.js';
import { Gatekeeper, hostRunnerRun } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { abortSignal } from '../../src/workflows/messages.js';
import { FailureType } from '../../src/core/failures.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { bed, kubeConfig, uniqueName } from '../support/bed.js';
import { failureOf } from '../support/failures.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';

const kc = kubeConfig();
const custom = kc.makeApiClient(CustomObjectsApi);
const taskQueue = uniqueName('cancel');
const namespaces: string[] = [];
let worker: TestWorker;

beforeAll(async () => {
  worker = await startTestWorker(taskQueue);
});

afterAll(async () => {
  await worker?.stop();
  await removeFixtures(kc, namespaces);
});

const pluralOf = (kind: string) => Gatekeeper.kinds.find((k) => k.kind === kind)!.plural;
const excluded = async (kind: string, name: string) =>
  (
    (await custom.getClusterCustomObject({
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural: pluralOf(kind),
      name,
    })) as { spec?: { match?: { excludedNamespaces?: string[] } } }
  ).spec?.match?.excludedNamespaces ?? [];

describe('cancellation waits for the step it cancels', () => {
  it(
    'abort during a relax slowed after its first constraint: the restore starts only once the relax stopped',
    { timeout: 240_000 },
    async () => {
      const namespace = uniqueName('cancel');
      namespaces.push(namespace);
      await readyFixture(kc, namespace, bed().pvRoot, 10);
      const before = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      // The order the relax takes the constraints in, from the guard's own (read-only) snapshot.
      const { plan } = await new PolicyGuard({ kube: new Kube(kc) }).snapshotPolicies({
        namespace,
        owner: { workflowId: 'order', runId: 'order' },
      });
      expect(plan.constraints.length).toBeGreaterThanOrEqual(2);
      const [first, second] = plan.constraints.map((c) => c.ref);

      // Another writer keeps changing the second constraint: each guarded patch of the relax finds
      // a new resourceVersion and tries again after a backoff.
      let contending = true;
      let writes = 0;
      const contention = (async () => {
        while (contending) {
          await custom
            .patchClusterCustomObject(
              {
                group: Gatekeeper.group,
                version: Gatekeeper.version,
                plural: pluralOf(second!.kind),
                name: second!.name,
                body: {
                  metadata: { annotations: { 'test.runas-migrate.dev/contention': String(writes++) } },
                },
              },
              setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
            )
            .catch(() => undefined);
        }
      })();
      try {
        const { handle } = await startRun(worker.w.client, hostRunnerRun(namespace), { taskQueue });
        await waitFor(
          'the first constraint relaxed',
          async () => (await excluded(first!.kind, first!.name)).includes(namespace),
          60_000,
          20,
        );
        await handle.signal(abortSignal, { reason: 'abort during a slow relax', by: 'test' });
        await waitFor(
          'the abort seen',
          async () => (await queryStatus(worker.w.client, namespace)).error !== null,
          30_000,
          20,
        );
      } finally {
        contending = false;
        await contention;
      }
      const failure = await failureOf(
        worker.w.client.workflow.getHandle(`runas-migrate-${namespace}`).result(),
      );
      expect(failure.type).toBe(FailureType.Aborted);
      const status = await queryStatus(worker.w.client, namespace);
      expect(status.endState).toBe('unchanged');
      expect(writes).toBeGreaterThan(0);

      expect(await excluded(second!.kind, second!.name)).not.toContain(namespace);
      const after = await namespaceSnapshot(kc, namespace, bed().pvRoot);
      expect(after.policies).toEqual(before.policies);
      expect(after.statefulSets).toEqual(before.statefulSets);
    },
  );
});
