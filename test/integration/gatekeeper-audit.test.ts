/**
 * Gatekeeper's audit counted by the cluster's clock, against the test bed's API server and
 * Gatekeeper: a run's clock (Temporal's) that is behind or ahead of the cluster's must neither
 * count a pass that started before the new database pods existed (a clean audit that never saw
 * them) nor wait for a pass that the cluster's clock will not reach in time. The database here
 * breaks the bed's K8sPSPAllowedUsers constraint (no runAsGroup, fsGroup, supplementalGroups)
 * and its namespace is outside Gatekeeper's webhook, so only a pass that saw its pod finds it.
 */
import { AppsV1Api, CoreV1Api, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { GatekeeperAudit, type NamespaceAudit } from '../../src/services/gatekeeper-audit.js';
import { waitFor } from '../../testbed/process.js';
import { createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { restrictedPodSpec } from '../support/pods.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const audit = new GatekeeperAudit({ kube: new Kube(kc) });
const namespace = uniqueName('audit-clock');
const database = 'db';
const HourMs = 3_600_000;
let cleanup: () => Promise<void>;

/** Scales the database to `replicas` and returns its pods once they all exist. */
async function scaleTo(replicas: number): Promise<V1Pod[]> {
  await apps.patchNamespacedStatefulSet(
    { name: database, namespace, body: { spec: { replicas } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
  let pods: V1Pod[] = [];
  await waitFor(
    `${replicas} pods of ${database}`,
    async () => {
      pods = (await core.listNamespacedPod({ namespace, labelSelector: `app=${database}` })).items;
      return pods.length === replicas && pods.every((p) => !p.metadata?.deletionTimestamp);
    },
    60_000,
    200,
  );
  return pods;
}

/** The pods the counted passes found breaking a constraint. */
const violatorsOf = (found: NamespaceAudit) => [
  ...new Set(
    found.constraints.flatMap((c) => c.violations.filter((v) => v.kind === 'Pod').map((v) => v.name)),
  ),
];

const newestCreation = (pods: V1Pod[]) =>
  Math.max(...pods.map((p) => new Date(p.metadata!.creationTimestamp!).getTime()));

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace, OutsideGatekeeper);
  await apps.createNamespacedStatefulSet({
    namespace,
    body: {
      metadata: { name: database },
      spec: {
        replicas: 0,
        serviceName: database,
        selector: { matchLabels: { app: database } },
        template: { metadata: { labels: { app: database } }, spec: restrictedPodSpec() },
      },
    },
  });
});

afterAll(async () => {
  await cleanup();
});

/**
 * Starts the database anew and audits it with the run's clock off by `offMs`: the audit must
 * find the new pod's violations, from passes that all started after it existed.
 */
async function auditWithClockOff(offMs: number): Promise<{ found: NamespaceAudit; created: number }> {
  await scaleTo(0);
  const pods = await scaleTo(1);
  const found = await audit.auditNamespace({
    namespace,
    since: new Date(Date.now() + offMs).toISOString(),
    databases: [database],
    timeoutSeconds: 60,
  });
  expect(found.state).toBe('violations');
  expect(violatorsOf(found)).toEqual(pods.map((p) => p.metadata!.name));
  // auditTimestamp has whole seconds: a pass in the pods' own second may have started before them.
  for (const c of found.constraints)
    expect(Date.parse(c.auditTimestamp!), c.constraint).toBeGreaterThan(newestCreation(pods));
  return { found, created: newestCreation(pods) };
}

describe("Gatekeeper's audit, by the cluster's clock", () => {
  it("with the run's clock an hour behind, counts only passes that started after the new pods existed", async () => {
    const { found, created } = await auditWithClockOff(-HourMs);
    expect(found.countedFrom).toBe(new Date(created + 1000).toISOString());
  });

  it("with the run's clock an hour ahead, still ends with the next pass instead of not-audited", async () => {
    await auditWithClockOff(HourMs);
  });

  it("without database pods to go by, counts from the run's clock as before (and the pod gone, clean)", async () => {
    await scaleTo(0);
    const since = new Date().toISOString();
    const found = await audit.auditNamespace({ namespace, since, databases: [database], timeoutSeconds: 60 });
    expect(found.state).toBe('clean');
    expect(found.countedFrom).toBe(since);
    for (const c of found.constraints)
      expect(Date.parse(c.auditTimestamp!), c.constraint).toBeGreaterThanOrEqual(Date.parse(since));
  });
});
