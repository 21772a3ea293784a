/**
 * The databases' StatefulSets: their pod-level IDs (read, patched, or set by helm: src/services/helm.ts),
 * scaling down and back up, the platform wait and the final verification. Every side effect
 * goes through the injected {@link Kube}; waits report progress and honour cancellation.
 */
import { PatchStrategy, type V1Pod, type V1PodSecurityContext, type V1StatefulSet } from '@kubernetes/client-node';
import type { Kube } from '../cluster/kube.js';
import { OriginalReplicasAnnotation, type PlatformPlan, type PodIds } from '../core/plan.js';
import { byName, Collections } from '../cluster/changes.js';
import type { WaitLimit } from './step.js';
import { cadenceOf, getPath, waitUntil, type WaitMode } from './workloads.js';

/** Dependencies of {@link StatefulSets}. */
export interface StatefulSetsDeps {
  kube: Kube;
  log?: (message: string) => void;
  /** Pause between polls while waiting. @default 500 */
  pollMs?: number;
  /** Whether waits watch what they wait for, or only poll. @default "watch" */
  waits?: WaitMode;
}

/** The pod-level IDs of a template (src/core/plan.ts). */
export type { PodIds };

/** Which StatefulSets of a namespace should run as uid:gid. */
export interface IdsCheck {
  namespace: string;
  statefulSets: string[];
  uid: number;
  gid: number;
}

/** Which StatefulSet to scale, to how many replicas, within which limit. */
export type ScaleInput = { namespace: string; statefulSet: string; replicas: number } & WaitLimit;

/** The template patch that sets (or, with null, removes) the pod-level IDs. */
export const podIdsPatch = (ids: PodIds) => ({
  spec: { template: { spec: { securityContext: { ...ids } } } },
});

/** The label selector of a StatefulSet's pods. */
export function selectorOf(sts: V1StatefulSet): string {
  return Object.entries(sts.spec?.selector.matchLabels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/** A StatefulSet as it is now, and the pods its selector finds. */
export async function statefulSetPods(
  kube: Kube,
  namespace: string,
  name: string,
): Promise<{ sts: V1StatefulSet; pods: V1Pod[] }> {
  const sts = await kube.readStatefulSet(namespace, name);
  return { sts, pods: await kube.listPods(namespace, selectorOf(sts)) };
}

/** The StatefulSets of the databases, and the platform that runs on them. */
export class StatefulSets {
  private readonly kube: Kube;
  private readonly log: (message: string) => void;
  private readonly pollMs: number;
  private readonly waits: WaitMode;

  constructor(deps: StatefulSetsDeps) {
    this.kube = deps.kube;
    this.log = deps.log ?? (() => undefined);
    this.pollMs = deps.pollMs ?? 500;
    this.waits = deps.waits ?? 'watch';
  }

  private cadence(...collections: { path: string; labelSelector?: string; fieldSelector?: string }[]) {
    return cadenceOf(this.kube, this.waits, this.pollMs, collections);
  }

  /** Reads the pod-level IDs of a StatefulSet's template. */
  async readPodIds(input: { namespace: string; statefulSet: string }): Promise<PodIds> {
    const sc: V1PodSecurityContext =
      (await this.kube.readStatefulSet(input.namespace, input.statefulSet)).spec?.template.spec
        ?.securityContext ?? {};
    return {
      runAsUser: sc.runAsUser ?? null,
      runAsGroup: sc.runAsGroup ?? null,
      fsGroup: sc.fsGroup ?? null,
      supplementalGroups: sc.supplementalGroups ?? null,
    };
  }

  /** Sets the pod-level IDs of a StatefulSet's template (null removes a field). */
  async patchPodIds(input: { namespace: string; statefulSet: string; ids: PodIds }): Promise<void> {
    await this.kube.patchStatefulSet(
      input.namespace,
      input.statefulSet,
      podIdsPatch(input.ids),
      PatchStrategy.MergePatch,
    );
    this.log(`StatefulSet ${input.statefulSet}: securityContext set to ${JSON.stringify(input.ids)}`);
  }

  /** Checks that every StatefulSet's template carries the target IDs; returns the mismatches. */
  async verifySecurityContext(input: IdsCheck): Promise<string[]> {
    const problems: string[] = [];
    for (const name of input.statefulSets) {
      const ids = await this.readPodIds({ namespace: input.namespace, statefulSet: name });
      if (ids.runAsUser !== input.uid)
        problems.push(`${name}: runAsUser is ${ids.runAsUser ?? 'unset'}, not ${input.uid}`);
      if (ids.runAsGroup !== input.gid)
        problems.push(`${name}: runAsGroup is ${ids.runAsGroup ?? 'unset'}, not ${input.gid}`);
      if (ids.fsGroup !== input.gid)
        problems.push(`${name}: fsGroup is ${ids.fsGroup ?? 'unset'}, not ${input.gid}`);
    }
    return problems;
  }

  /**
   * Scales a StatefulSet to 0 (recording its replicas on it) and waits until its pods are gone.
   *
   * @throws `WaitTimedOut` when the pods outlive the limit.
   */
  async scaleDown(input: ScaleInput): Promise<void> {
    const sts = await this.kube.patchStatefulSet(
      input.namespace,
      input.statefulSet,
      {
        metadata: { annotations: { [OriginalReplicasAnnotation]: String(input.replicas) } },
        spec: { replicas: 0 },
      },
      PatchStrategy.MergePatch,
    );
    const selector = selectorOf(sts);
    const pods = { path: Collections.pods(input.namespace), labelSelector: selector };
    await waitUntil(`pods of ${input.statefulSet} gone`, input, this.cadence(pods), async () =>
      (await this.kube.listPods(input.namespace, selector)).length === 0 ? true : undefined,
    );
    this.log(`StatefulSet ${input.statefulSet} scaled to 0; its pods are gone`);
  }

  /**
   * Scales a StatefulSet back and waits until every replica is Ready.
   *
   * @throws `WaitTimedOut` when not every replica is Ready within the limit.
   */
  async scaleUp(input: ScaleInput): Promise<void> {
    await this.kube.patchStatefulSet(
      input.namespace,
      input.statefulSet,
      {
        metadata: { annotations: { [OriginalReplicasAnnotation]: null } },
        spec: { replicas: input.replicas },
      },
      PatchStrategy.MergePatch,
    );
    await waitUntil(
      `${input.replicas} ready replicas of ${input.statefulSet}`,
      input,
      this.cadence({
        path: Collections.statefulSets(input.namespace),
        fieldSelector: byName(input.statefulSet),
      }),
      async () => {
        const s = await this.kube.readStatefulSet(input.namespace, input.statefulSet);
        const ready = s.status?.readyReplicas ?? 0;
        const current = s.status?.updatedReplicas ?? ready;
        return ready === input.replicas && current === input.replicas ? true : undefined;
      },
    );
    this.log(`StatefulSet ${input.statefulSet} back at ${input.replicas} ready replicas`);
  }

  /**
   * Waits for the platform resource's status to say ready; returns that status.
   *
   * @throws `WaitTimedOut` when it does not within the limit.
   */
  async waitForPlatform(input: { namespace: string; platform: PlatformPlan } & WaitLimit): Promise<string> {
    const { platform } = input;
    return waitUntil(
      `${platform.plural}/${platform.name} ${platform.statusPath}=${platform.ready}`,
      input,
      this.cadence({
        path: Collections.custom(platform, input.namespace),
        fieldSelector: byName(platform.name),
      }),
      async () => {
        const obj = await this.kube.readNamespacedObject<unknown>(platform, input.namespace, platform.name);
        const v = getPath(obj, platform.statusPath);
        return v === platform.ready ? v : undefined;
      },
    );
  }

  /**
   * Checks the databases after scale-up: every replica Ready and running as uid:gid (pod
   * securityContext as admitted). Returns one line per problem.
   */
  async verifyDatabases(input: IdsCheck): Promise<string[]> {
    const problems: string[] = [];
    for (const name of input.statefulSets) {
      const { sts, pods } = await statefulSetPods(this.kube, input.namespace, name);
      if (pods.length !== (sts.spec?.replicas ?? 0))
        problems.push(`${name}: ${pods.length} pods for ${sts.spec?.replicas} replicas`);
      for (const p of pods) {
        const sc = p.spec?.securityContext ?? {};
        if (sc.runAsUser !== input.uid || sc.runAsGroup !== input.gid) {
          problems.push(
            `${p.metadata?.name}: runs as ${sc.runAsUser}:${sc.runAsGroup}, not ${input.uid}:${input.gid}`,
          );
        }
        if (!p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
          problems.push(`${p.metadata?.name}: not Ready`);
      }
    }
    return problems;
  }
}
