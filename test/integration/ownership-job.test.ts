/**
 * The ownership Job exactly as runas-migrate submits it, admitted under PSA `baseline`
 * (invariant 6) and run on the host runner over a real volume of 100k+ files.
 */
import { join } from 'node:path';
import { BatchV1Api, CoreV1Api } from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';
import { parseMigrationInput } from '../../src/input.js';
import { buildOwnershipJob, parseJobSummary } from '../../src/job.js';
import { HostRunnerPlacement } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { makeTree } from '../support/tree.js';
import { execFileSync } from 'node:child_process';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const namespace = uniqueName('job');
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const c of cleanups) await c().catch(() => undefined);
});

describe('the ownership Job on the host runner', () => {
  it(
    'is admitted under baseline and migrates 100k+ files of a bound volume',
    { timeout: 180_000 },
    async () => {
      cleanups.push(
        await createNamespace(kc, namespace, { 'pod-security.kubernetes.io/enforce': 'baseline' }),
      );
      const dir = join(bed().dir, 'pv', namespace, 'data-pg-0');
      const entries = makeTree(dir, 100, 1001);
      await core.createPersistentVolume({
        body: {
          metadata: { name: `${namespace}-data` },
          spec: {
            capacity: { storage: '1Gi' },
            accessModes: ['ReadWriteOnce'],
            storageClassName: 'testbed-static',
            hostPath: { path: dir },
            claimRef: { namespace, name: 'data-pg-0' },
          },
        },
      });
      cleanups.push(async () => void (await core.deletePersistentVolume({ name: `${namespace}-data` })));
      await core.createNamespacedPersistentVolumeClaim({
        namespace,
        body: {
          metadata: { name: 'data-pg-0' },
          spec: {
            accessModes: ['ReadWriteOnce'],
            storageClassName: 'testbed-static',
            resources: { requests: { storage: '1Gi' } },
          },
        },
      });
      const input = parseMigrationInput({
        namespace,
        uid: 5000,
        gid: 5000,
        job: { ...HostRunnerPlacement },
      });
      const job = buildOwnershipJob(input, {
        statefulSet: 'pg',
        ordinal: 0,
        image: 'postgres:15',
        volumes: [{ volume: 'data', claimName: 'data-pg-0', mountPath: '/var/lib/postgresql' }],
      });
      await waitFor(
        'claim bound',
        async () =>
          (await core.readNamespacedPersistentVolumeClaim({ name: 'data-pg-0', namespace })).status?.phase ===
          'Bound',
        30_000,
      );
      await batch.createNamespacedJob({ namespace, body: job });

      const pod = await waitFor(
        'Job pod finished',
        async () => {
          const p = (
            await core.listNamespacedPod({ namespace, labelSelector: `job-name=${job.metadata!.name}` })
          ).items[0];
          return p && ['Succeeded', 'Failed'].includes(p.status?.phase ?? '') ? p : undefined;
        },
        150_000,
        500,
      );
      expect(pod.spec?.nodeName).toBe('host-runner');
      expect(pod.status?.phase).toBe('Succeeded');
      const summary = parseJobSummary(pod.status?.containerStatuses?.[0]?.state?.terminated?.message);
      expect(summary).toMatchObject({ ok: true, scanned: entries, changed: entries - 1002 });
      const log = await core.readNamespacedPodLog({ name: pod.metadata!.name!, namespace });
      expect(log).toContain(`/var/lib/postgresql: ${entries} entries, ${entries - 1002} changed`);
      const left = execFileSync(
        'find',
        [dir, '(', '!', '-uid', '5000', '-o', '!', '-gid', '5000', ')', '-print'],
        { encoding: 'utf8' },
      ).trim();
      expect(left).toBe('');
    },
  );
});
