/**
 * The host runner does real work on real files: a Job submitted to the API server, run as root
 * with only CHOWN/FOWNER/DAC_OVERRIDE, changes the owner of every file of a PersistentVolume's
 * host directory; with every capability dropped the same Job fails with EPERM, its pod is
 * Failed with the exit code, and its log is readable through the Log API.
 */
import { chownSync, lstatSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BatchV1Api, CoreV1Api, type V1Job, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostRunnerNode } from '../../testbed/host-runner/runner.js';
import { waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const namespace = uniqueName('runner');
let cleanup: () => Promise<void>;

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? [p, ...walk(p)] : [p];
  });
}

/** A PV over a host directory of mixed-owner files, pre-bound to a claim of the same name. */
async function volumeWithFiles(name: string): Promise<string> {
  const dir = join(bed().dir, 'pv', namespace, name);
  mkdirSync(join(dir, 'data', 'base', '1'), { recursive: true });
  for (let i = 0; i < 50; i++) writeFileSync(join(dir, 'data', 'base', '1', String(i)), 'x');
  writeFileSync(join(dir, 'data', 'other-owner'), 'y');
  symlinkSync('base/1', join(dir, 'data', 'link'));
  for (const p of [dir, ...walk(dir)]) chownSync(p, 1000, 1000);
  chownSync(join(dir, 'data', 'other-owner'), 1234, 1234);
  await core.createPersistentVolume({
    body: {
      metadata: { name: `${namespace}-${name}` },
      spec: {
        capacity: { storage: '1Gi' },
        accessModes: ['ReadWriteOnce'],
        storageClassName: 'testbed-static',
        hostPath: { path: dir, type: 'Directory' },
        claimRef: { namespace, name },
      },
    },
  });
  await core.createNamespacedPersistentVolumeClaim({
    namespace,
    body: {
      metadata: { name },
      spec: {
        accessModes: ['ReadWriteOnce'],
        storageClassName: 'testbed-static',
        resources: { requests: { storage: '1Gi' } },
      },
    },
  });
  await waitFor(
    `${name} bound`,
    async () =>
      (await core.readNamespacedPersistentVolumeClaim({ name, namespace })).status?.phase === 'Bound',
    30_000,
  );
  return dir;
}

function chownJob(name: string, claim: string, capabilities: string[]): V1Job {
  return {
    metadata: { name },
    spec: {
      backoffLimit: 0,
      template: {
        spec: {
          restartPolicy: 'Never',
          nodeSelector: { [HostRunnerNode.Label]: 'true' },
          tolerations: [{ key: HostRunnerNode.TaintKey, operator: 'Exists', effect: 'NoSchedule' }],
          securityContext: { runAsUser: 0, runAsGroup: 0, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [
            {
              name: 'fix-ownership',
              image: 'docker.itrsgroup.com/iax/postgres:2.17.0',
              command: [
                '/bin/bash',
                '-c',
                'set -e; grep CapEff /proc/self/status; chown -R 5000:5000 /var/lib/postgresql; echo \'{"done":true}\' > /dev/termination-log',
              ],
              securityContext: {
                runAsNonRoot: false,
                allowPrivilegeEscalation: false,
                capabilities: { add: capabilities, drop: ['ALL'] },
              },
              volumeMounts: [{ name: 'pgdata', mountPath: '/var/lib/postgresql' }],
            },
          ],
          volumes: [{ name: 'pgdata', persistentVolumeClaim: { claimName: claim } }],
        },
      },
    },
  };
}

async function finishedPod(job: string): Promise<V1Pod> {
  return waitFor(
    `pod of ${job} finished`,
    async () => {
      const pods = await core.listNamespacedPod({ namespace, labelSelector: `job-name=${job}` });
      const pod = pods.items[0];
      return pod && ['Succeeded', 'Failed'].includes(pod.status?.phase ?? '') ? pod : undefined;
    },
    60_000,
  );
}

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace, {
    'pod-security.kubernetes.io/enforce': 'baseline',
    ...OutsideGatekeeper,
  });
});
afterAll(async () => {
  await cleanup();
  for (const name of ['granted', 'dropped'])
    await core.deletePersistentVolume({ name: `${namespace}-${name}` }).catch(() => undefined);
});

describe('host runner', () => {
  it('changes the owner of every file with only CHOWN, FOWNER and DAC_OVERRIDE', async () => {
    const dir = await volumeWithFiles('granted');
    await batch.createNamespacedJob({
      namespace,
      body: chownJob('granted', 'granted', ['CHOWN', 'FOWNER', 'DAC_OVERRIDE']),
    });
    const pod = await finishedPod('granted');

    expect(pod.spec?.nodeName).toBe('host-runner');
    expect(pod.status?.phase).toBe('Succeeded');
    const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
    expect(terminated?.exitCode).toBe(0);
    expect(terminated?.message?.trim()).toBe('{"done":true}');
    const owners = new Set([dir, ...walk(dir)].map((p) => `${lstatSync(p).uid}:${lstatSync(p).gid}`));
    expect([...owners]).toEqual(['5000:5000']);

    const log = await core.readNamespacedPodLog({ name: pod.metadata!.name!, namespace });
    expect(log).toContain('CapEff:\t000000000000000b');
    await waitFor(
      'Job Complete',
      async () => (await batch.readNamespacedJob({ name: 'granted', namespace })).status?.succeeded === 1,
      30_000,
    );
  });

  it('fails with EPERM when every capability is dropped, and reports it through the API', async () => {
    const dir = await volumeWithFiles('dropped');
    await batch.createNamespacedJob({ namespace, body: chownJob('dropped', 'dropped', []) });
    const pod = await finishedPod('dropped');

    expect(pod.status?.phase).toBe('Failed');
    const terminated = pod.status?.containerStatuses?.[0]?.state?.terminated;
    expect(terminated?.exitCode).toBe(1);
    expect(terminated?.reason).toBe('Error');
    const log = await core.readNamespacedPodLog({
      name: pod.metadata!.name!,
      namespace,
      container: 'fix-ownership',
    });
    expect(log).toContain('CapEff:\t0000000000000000');
    expect(log).toMatch(/Operation not permitted/);
    expect(lstatSync(join(dir, 'data', 'base', '1', '0')).uid).toBe(1000);
    await waitFor(
      'Job Failed',
      async () =>
        (await batch.readNamespacedJob({ name: 'dropped', namespace })).status?.conditions?.some(
          (c) => c.type === 'Failed',
        ),
      30_000,
    );
  });
});
