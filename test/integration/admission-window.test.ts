/**
 * The admission window: runas-migrate can tell when every migration Job's pod has been admitted
 * (so the policies can be re-enforced while the Jobs still run), and when one was refused.
 */
import { BatchV1Api, type V1Job } from '@kubernetes/client-node';
import { afterAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { PodSecurityLabel } from '../../src/core/policy.js';
import { OwnershipJobs, type JobRef } from '../../src/services/ownership-jobs.js';
import { createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';

const kc = kubeConfig();
const batch = kc.makeApiClient(BatchV1Api);
const ownershipJobs = new OwnershipJobs({ kube: new Kube(kc), pollMs: 100 });
const cleanups: (() => Promise<void>)[] = [];

afterAll(async () => {
  for (const c of cleanups) await c();
});

const rootJob = (name: string): V1Job => ({
  metadata: { name },
  spec: {
    backoffLimit: 0,
    template: {
      spec: {
        restartPolicy: 'Never',
        securityContext: { runAsUser: 0, seccompProfile: { type: 'RuntimeDefault' } },
        containers: [
          {
            name: 'fix-ownership',
            image: 'postgres',
            command: ['true'],
            securityContext: {
              allowPrivilegeEscalation: false,
              capabilities: { add: ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'], drop: ['ALL'] },
            },
          },
        ],
      },
    },
  },
});

async function createJobs(namespace: string, names: string[]): Promise<JobRef[]> {
  const refs: JobRef[] = [];
  for (const name of names) {
    const job = await batch.createNamespacedJob({ namespace, body: rootJob(name) });
    refs.push({ name, uid: job.metadata!.uid! });
  }
  return refs;
}

describe('waitForPodsAdmitted', () => {
  it('returns as soon as every Job has an admitted pod, with the evidence', async () => {
    const ns = uniqueName('window');
    cleanups.push(
      await createNamespace(kc, ns, { [PodSecurityLabel.Enforce]: 'baseline', ...OutsideGatekeeper }),
    );
    const jobs = await createJobs(ns, ['pgplatform-0', 'timescale-0', 'timescale-1']);

    const started = Date.now();
    const evidence = await ownershipJobs.waitForPodsAdmitted({ namespace: ns, jobs, timeoutSeconds: 30 });
    expect(evidence.timedOut).toBe(false);
    expect(evidence.refused).toEqual([]);
    expect(evidence.admitted.map((a) => a.job).sort()).toEqual([
      'pgplatform-0',
      'timescale-0',
      'timescale-1',
    ]);
    for (const a of evidence.admitted) {
      expect(a.pod.startsWith(`${a.job}-`)).toBe(true);
      expect(new Date(a.createdAt).getTime()).toBeGreaterThan(started - 5_000);
    }
  });

  it('reports a refused creation with the admission message', async () => {
    const ns = uniqueName('window');
    cleanups.push(await createNamespace(kc, ns, { [PodSecurityLabel.Enforce]: 'restricted' }));
    const jobs = await createJobs(ns, ['refused-0']);

    const evidence = await ownershipJobs.waitForPodsAdmitted({ namespace: ns, jobs, timeoutSeconds: 30 });
    expect(evidence.admitted).toEqual([]);
    expect(evidence.refused).toHaveLength(1);
    expect(evidence.refused[0]!.message).toMatch(/violates PodSecurity "restricted:latest"/);
  });

  it("reports a refusal by Gatekeeper's webhook, naming the constraint", async () => {
    const ns = uniqueName('window');
    cleanups.push(await createNamespace(kc, ns, { [PodSecurityLabel.Enforce]: 'baseline' }));
    const jobs = await createJobs(ns, ['refused-0']);

    const evidence = await ownershipJobs.waitForPodsAdmitted({ namespace: ns, jobs, timeoutSeconds: 30 });
    expect(evidence.admitted).toEqual([]);
    expect(evidence.refused).toHaveLength(1);
    expect(evidence.refused[0]!.message).toMatch(
      /admission webhook "validation.gatekeeper.sh" denied the request: .*\[drop-all\]/,
    );
  });

  it('gives up at the timeout and says so', async () => {
    const ns = uniqueName('window');
    cleanups.push(await createNamespace(kc, ns));
    const evidence = await ownershipJobs.waitForPodsAdmitted({
      namespace: ns,
      jobs: [{ name: 'never-created', uid: 'none' }],
      timeoutSeconds: 1,
    });
    expect(evidence).toEqual({ admitted: [], refused: [], timedOut: true });
  });
});
