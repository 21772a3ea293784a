/**
 * The test bed's API server really runs Pod Security Admission: the migration pod's shape is
 * refused under `restricted`, admitted under `baseline`, and DAC_READ_SEARCH (which the manual
 * procedure adds) is refused even under `baseline`.
 */
import { CoreV1Api, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNamespace, kubeConfig, OutsideGatekeeper, uniqueName } from '../support/bed.js';
import { rootPod } from '../support/pods.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const namespace = uniqueName('psa');
let cleanup: () => Promise<void>;

/** The ownership Job's pod shape with `capabilities` added, exiting at once. */
const jobLikePod = (name: string, capabilities: string[]) =>
  rootPod(name, { capabilities, image: 'busybox', command: ['true'] });

const createPod = (pod: V1Pod) => core.createNamespacedPod({ namespace, body: pod });

async function refusal(pod: V1Pod): Promise<{ code: number; message: string }> {
  try {
    await createPod(pod);
  } catch (err) {
    const e = err as { code: number; body: string };
    return { code: e.code, message: (JSON.parse(e.body) as { message: string }).message };
  }
  throw new Error(`pod ${pod.metadata?.name} was admitted`);
}

beforeAll(async () => {
  // Pod Security Admission alone: Gatekeeper is tested in gatekeeper.test.ts.
  cleanup = await createNamespace(kc, namespace, {
    'pod-security.kubernetes.io/enforce': 'restricted',
    ...OutsideGatekeeper,
  });
});
afterAll(async () => cleanup());

describe('Pod Security Admission on the test bed', () => {
  const minimal = ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'];

  it('refuses a root pod with CHOWN/FOWNER/DAC_OVERRIDE under restricted', async () => {
    const r = await refusal(jobLikePod('under-restricted', minimal));
    expect(r.code).toBe(403);
    expect(r.message).toMatch(/violates PodSecurity "restricted:latest"/);
    expect(r.message).toMatch(/runAsNonRoot|runAsUser=0/);
    expect(r.message).toMatch(/capabilities/);
  });

  it('admits it under baseline, and still refuses DAC_READ_SEARCH', async () => {
    await core.patchNamespace(
      {
        name: namespace,
        body: { metadata: { labels: { 'pod-security.kubernetes.io/enforce': 'baseline' } } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    const admitted = await createPod(jobLikePod('under-baseline', minimal));
    expect(admitted.metadata?.uid).toBeTruthy();

    const r = await refusal(jobLikePod('with-dac-read-search', [...minimal, 'DAC_READ_SEARCH']));
    expect(r.code).toBe(403);
    expect(r.message).toMatch(/violates PodSecurity "baseline:latest": non-default capabilities/);
    expect(r.message).toContain('DAC_READ_SEARCH');
  });
});
