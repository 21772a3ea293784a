/**
 * A watch that wakes a wait, across a kube-apiserver restart: the restarted server's watch cache
 * starts at the current resourceVersion, so resuming from the last version the watch saw is
 * answered 410 Gone ("too old resource version") when anything was written in between. The feed
 * must start again from the current state, wake its wait (it may have missed a change), and go on
 * waking it.
 */
import { CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Collections } from '../../src/cluster/changes.js';
import { Kube } from '../../src/cluster/kube.js';
import { restartApiserver } from '../../testbed/bed.js';
import { waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { unscheduledPod } from '../support/pods.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const namespace = uniqueName('watch-resume');
let cleanup: () => Promise<void>;

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace, OutsideGatekeeper);
});

afterAll(async () => {
  await cleanup();
});

it(
  'a watch resumed after an API server restart starts again on 410 Gone and keeps waking its wait',
  { timeout: 180_000 },
  async () => {
    const feed = new Kube(kc).watchChanges([{ path: Collections.pods(namespace) }]);
    try {
      await core.createNamespacedPod({ namespace, body: unscheduledPod('before') });
      await feed.changeOrTimeout(30_000);
      expect(feed.counts.events).toBeGreaterThanOrEqual(1);
      // A write the watch does not see: the resourceVersion it resumes from is then older than
      // the restarted server's watch cache.
      await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: 'moves-the-version' } } });
      await restartApiserver(bed());
      await waitFor(
        'the watch to start again from the current state',
        () => feed.counts.relists >= 1,
        60_000,
        100,
      );
      await feed.changeOrTimeout(1); // the relist's own wake-up
      const events = feed.counts.events;
      const woken = feed.changeOrTimeout(120_000).then(() => feed.counts.events);
      await core.createNamespacedPod({ namespace, body: unscheduledPod('after') });
      // Woken by the new pod's event, not by the 120 s fallback.
      expect(await woken).toBeGreaterThan(events);
    } finally {
      feed.close();
    }
  },
);
