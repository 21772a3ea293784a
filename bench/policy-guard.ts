/**
 * Policy guard timings on the test bed: time from the relax call to relaxed, and from the
 * restore call to verified, median of ROUNDS (default 20) rounds on one namespace of the ITRS
 * shape, with the API calls each makes. With BASELINE=<checkout> (another checkout, built, e.g. a
 * `git worktree` of an earlier commit), that build's guard runs too, round by round alternating
 * which goes first, and the figures come as ratios of this build to it.
 * `npm run bench -- policy-guard`
 */
import { randomUUID } from 'node:crypto';
import { basename, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { CoreV1Api } from '@kubernetes/client-node';
import { Kube } from '../src/cluster/kube.js';
import { PodSecurityLabel } from '../src/core/policy.js';
import { PolicyGuard } from '../src/services/policy-guard.js';
import { kubeConfigOf, up } from '../testbed/bed.js';

const rounds = Number(process.env.ROUNDS ?? 20);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** A build of the guard: this checkout's, or the baseline's compiled one. */
interface Build {
  name: string;
  guard: () => PolicyGuard;
  relaxMs: number[];
  restoreMs: number[];
  relaxCalls: number;
  restoreCalls: number;
}
const bed = await up({ log: () => undefined });
const kc = kubeConfigOf(bed);
const core = kc.makeApiClient(CoreV1Api);
const builds: Build[] = [
  {
    name: 'this build',
    guard: () => new PolicyGuard({ kube: new Kube(kc) }),
    relaxMs: [],
    restoreMs: [],
    relaxCalls: 0,
    restoreCalls: 0,
  },
];
if (process.env.BASELINE) {
  const dist = (path: string) => pathToFileURL(resolve(process.env.BASELINE!, 'dist/src', path)).href;
  const { PolicyGuard: Guard } = (await import(dist('services/policy-guard.js'))) as {
    PolicyGuard: typeof PolicyGuard;
  };
  const { Kube: BaseKube } = (await import(dist('cluster/kube.js'))) as { Kube: typeof Kube };
  builds.push({
    name: `build of ${basename(resolve(process.env.BASELINE))}`,
    guard: () => new Guard({ kube: new BaseKube(kc) }),
    relaxMs: [],
    restoreMs: [],
    relaxCalls: 0,
    restoreCalls: 0,
  });
}
const namespace = `bench-guard-${Date.now().toString(36)}`;
await core.createNamespace({
  body: { metadata: { name: namespace, labels: { [PodSecurityLabel.Enforce]: 'restricted' } } },
});
try {
  for (let i = 0; i < rounds; i++) {
    for (const b of i % 2 ? [...builds].reverse() : builds) {
      const guard = b.guard();
      const owner = { workflowId: 'bench', runId: randomUUID() };
      let t = performance.now();
      const relaxed = await guard.relaxPolicies({ namespace, owner });
      b.relaxMs.push(performance.now() - t);
      b.relaxCalls = relaxed.apiCalls;
      t = performance.now();
      const restored = await guard.restorePolicies({ namespace, owner });
      b.restoreMs.push(performance.now() - t);
      b.restoreCalls = restored.apiCalls;
      if (!restored.restored) throw new Error('restore did nothing');
    }
  }
} finally {
  await core.deleteNamespace({ name: namespace });
}
const constraints = 2;
const lines = [
  `policy guard on the test bed (${rounds} rounds, PSA + ${constraints} Gatekeeper constraints)`,
];
const stats = (xs: number[]) =>
  `median ${median(xs).toFixed(1)} ms, min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)}`;
for (const b of builds) {
  if (builds.length > 1) lines.push(`  ${b.name}:`);
  const indent = builds.length > 1 ? '    ' : '  ';
  lines.push(
    `${indent}relax:   ${stats(b.relaxMs)}; ${b.relaxCalls} API calls`,
    `${indent}restore: ${stats(b.restoreMs)}; ${b.restoreCalls} API calls (verification included)`,
  );
}
const [self, base] = builds;
if (base)
  lines.push(
    `  this build / ${base.name}: relax ${(median(self!.relaxMs) / median(base.relaxMs)).toFixed(2)}×, restore ${(median(self!.restoreMs) / median(base.restoreMs)).toFixed(2)}× (medians)`,
  );
process.stdout.write(lines.join('\n') + '\n');
