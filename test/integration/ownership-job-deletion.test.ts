/**
 * Deleting ownership Jobs ends their processes: an ownership Job changing 200k files on a host
 * runner is deleted mid-run through `deleteOwnershipJobs`, and by the time that returns not one
 * process of its pod is alive (none in its process group, none whose mounts hold its volume) and
 * the pod object is gone. The runner here is a second one, in this process, on its own node, so
 * the shared runner's pods are untouched.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BatchV1Api, CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseMigrationInput } from '../../src/core/input.js';
import { Kube } from '../../src/cluster/kube.js';
import { OwnershipJobs } from '../../src/services/ownership-jobs.js';
import { HostRunner, HostRunnerNode } from '../../testbed/host-runner/runner.js';
import { processGroupMembers } from '../../testbed/host-runner/processes.js';
import { freePort, waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { makeTree } from '../support/tree.js';
import { boundVolume, ownerCounts } from '../support/volume.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const batch = kc.makeApiClient(BatchV1Api);
const ownershipJobs = new OwnershipJobs({ kube: new Kube(kc), pollMs: 200 });
const namespace = uniqueName('jobdel');
const nodeName = `runner-${namespace}`;
const stateDir = join(bed().dir, 'test-runners', namespace);
const owner = { workflowId: 'runas-migrate-jobdel', runId: '33333333-3333-4333-8333-333333333333' };
const cleanups: (() => Promise<void>)[] = [];

/** Processes (other than zombies) whose mount table holds `path`: the pod's, whatever they are called. */
function processesMounting(path: string): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/mountinfo`, 'utf8').includes(path);
      } catch {
        return false;
      }
    })
    .map(Number);
}

beforeAll(async () => {
  cleanups.push(
    await createNamespace(kc, namespace, {
      'pod-security.kubernetes.io/enforce': 'baseline',
      ...OutsideGatekeeper,
    }),
  );
  const pki = join(bed().cluster.workdir, 'clusters', bed().cluster.name, 'pki');
  const runner = new HostRunner({
    kubeConfig: kc,
    nodeName,
    stateDir,
    port: await freePort(),
    tlsCert: join(pki, 'admin.crt'),
    tlsKey: join(pki, 'admin.key'),
    placementValue: namespace,
    log: () => undefined,
  });
  await runner.start();
  cleanups.push(async () => {
    await runner.stop();
    await core.deleteNode({ name: nodeName });
  });
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

describe('deleteOwnershipJobs', () => {
  it(
    'returns only once the Job, its pod and every process of it are gone, chown and find included',
    { timeout: 240_000 },
    async () => {
      const dir = join(bed().dir, 'pv', namespace, 'data-big-0');
      const entries = makeTree(dir, 200, 1000);
      cleanups.push(await boundVolume(kc, namespace, 'data-big-0', dir));
      const run = parseMigrationInput({
        namespace,
        uid: 5000,
        gid: 5000,
        job: {
          nodeSelector: { [HostRunnerNode.Label]: namespace },
          tolerations: [{ key: HostRunnerNode.TaintKey, operator: 'Exists', effect: 'NoSchedule' }],
        },
      });
      const [ref] = await ownershipJobs.createOwnershipJobs({
        run,
        owner,
        targets: [
          {
            statefulSet: 'big',
            ordinal: 0,
            image: 'postgres:15',
            volumes: [{ volume: 'data', claimName: 'data-big-0', mountPath: '/var/lib/postgresql' }],
          },
        ],
      });

      // Running on our node, its processes at work over the volume
      const pod = await waitFor(
        'the Job pod running',
        async () => {
          const p = (await core.listNamespacedPod({ namespace, labelSelector: `job-name=${ref!.name}` }))
            .items[0];
          return p?.status?.phase === 'Running' ? p : undefined;
        },
        60_000,
        100,
      );
      expect(pod.spec?.nodeName).toBe(nodeName);
      const pidFile = join(
        stateDir,
        'pods',
        `${namespace}_${pod.metadata!.name}_${pod.metadata!.uid}`,
        'fix-ownership',
        'pid',
      );
      expect(existsSync(pidFile)).toBe(true);
      const pgid = Number(readFileSync(pidFile, 'utf8').split(' ')[0]);
      const volumePath = `/pv/${namespace}/data-big-0`;
      // past the container's setup (its own mounts): the script and its find or chown at work
      await waitFor(
        'find or chown at work on the volume',
        () => {
          const mounting = processesMounting(volumePath);
          return processGroupMembers(pgid).filter((p) => mounting.includes(p)).length > 1;
        },
        30_000,
        20,
      );

      const deleted = await ownershipJobs.deleteOwnershipJobs({ namespace, owner, timeoutSeconds: 60 });

      expect(deleted).toEqual([ref!.name]);
      expect(processGroupMembers(pgid)).toEqual([]);
      expect(processesMounting(volumePath)).toEqual([]);
      expect(
        (await core.listNamespacedPod({ namespace, labelSelector: `job-name=${ref!.name}` })).items,
      ).toEqual([]);
      await expect(batch.readNamespacedJob({ name: ref!.name, namespace })).rejects.toMatchObject({
        code: 404,
      });
      // stopped mid-run: part of the tree still has its old owner
      const owners = ownerCounts(dir);
      expect(Object.values(owners).reduce((a, b) => a + b, 0)).toBe(entries);
      expect(owners['5000:5000'] ?? 0).toBeLessThan(entries);
    },
  );
});
