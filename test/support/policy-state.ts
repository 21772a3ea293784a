/**
 * What the policy guard must leave exactly as it found it: a namespace's labels and
 * annotations, and the spec of every Gatekeeper constraint in the cluster.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import { Kube } from '../../src/cluster/kube.js';
import { GatekeeperConstraintGroup } from '../../src/core/policy.js';

/** The comparable policy state of a namespace and the cluster's constraints. */
export interface PolicyState {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  constraints: Record<string, unknown>;
}

/** Reads the comparable policy state. */
export async function policyState(
  kc: KubeConfig,
  namespace: string,
  group = GatekeeperConstraintGroup,
): Promise<PolicyState> {
  const kube = new Kube(kc);
  const ns = await kube.readNamespace(namespace);
  const constraints: Record<string, unknown> = {};
  for (const kind of await kube.kindsOfGroup(group)) {
    for (const c of await kube.listClusterObjects<{ metadata: { name: string }; spec: unknown }>(kind)) {
      constraints[`${kind.kind}/${c.metadata.name}`] = c.spec;
    }
  }
  return { labels: ns.metadata?.labels ?? {}, annotations: ns.metadata?.annotations ?? {}, constraints };
}

/**
 * What a run may change about `namespace`: its labels and annotations, and which constraints
 * exclude it. Other runs relax their own namespaces meanwhile (or left them relaxed), so the
 * constraints' lists are compared by this namespace's entries only.
 */
export async function namespacePolicies(kc: KubeConfig, namespace: string) {
  const state = await policyState(kc, namespace);
  return {
    labels: state.labels,
    annotations: state.annotations,
    excludedBy: Object.entries(state.constraints)
      .flatMap(([name, spec]) =>
        ((spec as { match?: { excludedNamespaces?: string[] } }).match?.excludedNamespaces ?? [])
          .filter((x) => x === namespace)
          .map(() => name),
      )
      .sort(),
  };
}
