/**
 * Waits woken by watches, against the test bed's API server: a change wakes the wait long before
 * its fallback look, and the services' waits end as they did when polling. (A watch resumed past
 * an API server restart: test/fault/watch-resume.test.ts.)
 */
import { AppsV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Collections, type ChangeFeed } from '../../src/cluster/changes.js';
import { Kube } from '../../src/cluster/kube.js';
import { GatekeeperAudit } from '../../src/services/gatekeeper-audit.js';
import { StatefulSets } from '../../src/services/statefulsets.js';
import { waitUntil } from '../../src/services/workloads.js';
import { waitFor } from '../../testbed/process.js';
import { createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { restrictedPodSpec, unscheduledPod } from '../support/pods.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const apps = kc.makeApiClient(AppsV1Api);
const kube = new Kube(kc);
/** The bed's API server as a user no role binds: every watch it asks for is refused (403). */
const nobody = (() => {
  const as = new KubeConfig();
  as.loadFromString(kc.exportConfig());
  const user = as.getCurrentUser()!;
  as.users = as.users.map((u) =>
    u.name === user.name ? { ...u, impersonateUser: 'runas-migrate-test-nobody' } : u,
  );
  return new Kube(as);
})();
const namespace = uniqueName('watched');
let cleanup: () => Promise<void>;

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace, OutsideGatekeeper);
});

afterAll(async () => {
  await cleanup();
});

describe("the wait for Gatekeeper's audit", () => {
  it('is woken by the pass Gatekeeper writes into the constraints, not by its fallback look', async () => {
    // The bed audits every 5 s; without the watch this wait would look once, then at its deadline.
    const audit = new GatekeeperAudit({ kube, fallbackMs: 120_000 });
    const found = await audit.auditNamespace({
      namespace,
      since: new Date().toISOString(),
      timeoutSeconds: 90,
    });
    expect(found.state).toBe('clean');
    expect(found.constraints.length).toBeGreaterThan(0);
    expect(found.constraints.filter((c) => c.auditTimestamp === null)).toEqual([]);
    expect(found.waitedMs).toBeLessThan(45_000);
  });
});

describe('a watched wait', () => {
  it('looks again as soon as what it waits for changes, not at its fallback look', async () => {
    await core.createNamespacedPod({ namespace, body: unscheduledPod('goes') });
    let feed: ChangeFeed | undefined;
    let looks = 0;
    const started = Date.now();
    const waiting = waitUntil(
      'pod goes gone',
      { timeoutSeconds: 90 },
      // Without the watch this wait would look once, then not before 90 s (its deadline).
      {
        pollMs: 500,
        fallbackMs: 120_000,
        changes: () => (feed = kube.watchChanges([{ path: Collections.pods(namespace) }])),
      },
      async () => {
        looks++;
        const pods = await core.listNamespacedPod({ namespace });
        return pods.items.some((p) => p.metadata?.name === 'goes') ? undefined : true;
      },
    );
    await new Promise((r) => setTimeout(r, 1000));
    await core.deleteNamespacedPod({ namespace, name: 'goes', gracePeriodSeconds: 0 });
    await expect(waiting).resolves.toBe(true);
    expect(Date.now() - started).toBeLessThan(45_000);
    expect(feed!.counts.events).toBeGreaterThanOrEqual(1);
    expect(looks).toBeLessThanOrEqual(6);
  });

  it("scaling down a StatefulSet watches its pods go, with the poll's answer", async () => {
    const statefulSets = new StatefulSets({ kube, pollMs: 60_000, waits: 'watch' });
    const name = 'db';
    await apps.createNamespacedStatefulSet({
      namespace,
      body: {
        metadata: { name },
        spec: {
          replicas: 1,
          serviceName: name,
          selector: { matchLabels: { app: name } },
          template: {
            metadata: { labels: { app: name } },
            spec: restrictedPodSpec(),
          },
        },
      },
    });
    await waitFor(
      'the pod of db',
      async () =>
        (await core.listNamespacedPod({ namespace, labelSelector: `app=${name}` })).items.length === 1,
      60_000,
      200,
    );
    const before = { ...kube.counts };
    await statefulSets.scaleDown({ namespace, statefulSet: name, replicas: 1, timeoutSeconds: 90 });
    expect((await core.listNamespacedPod({ namespace, labelSelector: `app=${name}` })).items).toHaveLength(0);
    // One watch on the pods, and a handful of looks where a 500 ms poll would have made one per poll.
    expect(kube.counts.watches - before.watches).toBe(1);
    expect(kube.counts.reads - before.reads).toBeLessThanOrEqual(8);
  });
});

describe('a wait the API server will not let watch', () => {
  it('is woken by the refusal and polls from then on, instead of sleeping until its fallback look', async () => {
    // The wait asks for its first sleep before the 403 comes back: only a wake at the refusal
    // keeps a worker whose role lacks `watch` from sleeping its whole fallback on every wait.
    const feed = nobody.watchChanges([{ path: Collections.pods(namespace) }]);
    try {
      const slept = await Promise.race([
        feed.changeOrTimeout(120_000).then(() => 'woken' as const),
        new Promise<'slept'>((r) => setTimeout(() => r('slept'), 30_000)),
      ]);
      expect(slept).toBe('woken');
      expect(feed.counts.refused).toBe(1);
      expect(feed.counts.watches).toBe(1);
    } finally {
      feed.close();
    }
  });
});
