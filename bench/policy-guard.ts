/**
 * Policy guard timings on the test bed: time from the relax call to relaxed, and from the
 * restore call to verified, median of 20 rounds on one namespace of the ITRS shape, with the
 * API calls each makes. `npm run bench -- policy-guard`
 */
import { randomUUID } from 'node:crypto';
import { CoreV1Api } from '@kubernetes/client-node';
import { Kube } from '../src/cluster/kube.js';
import { PodSecurityLabel } from '../src/core/policy.js';
import { PolicyGuard } from '../src/services/policy-guard.js';
import { kubeConfigOf, up } from '../testbed/bed.js';

const rounds = Number(process.env.ROUNDS ?? 20);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const bed = await up({ log: () => undefined });
const kc = kubeConfigOf(bed);
const core = kc.makeApiClient(CoreV1Api);
const namespace = `bench-guard-${Date.now().toString(36)}`;
await core.createNamespace({
  body: { metadata: { name: namespace, labels: { [PodSecurityLabel.Enforce]: 'restricted' } } },
});
const relaxMs: number[] = [];
const restoreMs: number[] = [];
let relaxCalls = 0;
let restoreCalls = 0;
try {
  for (let i = 0; i < rounds; i++) {
    const guard = new PolicyGuard({ kube: new Kube(kc) });
    const owner = { workflowId: 'bench', runId: randomUUID() };
    let t = performance.now();
    const relaxed = await guard.relaxPolicies({ namespace, owner });
    relaxMs.push(performance.now() - t);
    relaxCalls = relaxed.apiCalls;
    t = performance.now();
    const restored = await guard.restorePolicies({ namespace, owner });
    restoreMs.push(performance.now() - t);
    restoreCalls = restored.apiCalls;
    if (!restored.restored) throw new Error('restore did nothing');
  }
} finally {
  await core.deleteNamespace({ name: namespace });
}
const constraints = 2;
process.stdout.write(
  [
    `policy guard on the test bed (${rounds} rounds, PSA + ${constraints} Gatekeeper constraints)`,
    `  relax:   median ${median(relaxMs).toFixed(1)} ms, min ${Math.min(...relaxMs).toFixed(1)}, max ${Math.max(...relaxMs).toFixed(1)}; ${relaxCalls} API calls`,
    `  restore: median ${median(restoreMs).toFixed(1)} ms, min ${Math.min(...restoreMs).toFixed(1)}, max ${Math.max(...restoreMs).toFixed(1)}; ${restoreCalls} API calls (verification included)`,
  ].join('\n') + '\n',
);
