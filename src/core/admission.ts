/**
 * Pods to put to the admission chain by server-side dry run: what a StatefulSet would create
 * once its template carries the target IDs.
 */
import type { V1Pod, V1StatefulSet } from '@kubernetes/client-node';
import type { PodIds } from './plan.js';

/**
 * The first pod a StatefulSet would create with `ids` in its pod securityContext: its template,
 * with each claim template as the volume of replica 0's claim (a dry run does not look it up).
 */
export function podOfStatefulSet(
  sts: V1StatefulSet,
  ids: { [K in keyof PodIds]: NonNullable<PodIds[K]> },
): V1Pod {
  const name = sts.metadata?.name ?? 'statefulset';
  const template = sts.spec?.template;
  const volumes = template?.spec?.volumes ?? [];
  const claimVolumes = (sts.spec?.volumeClaimTemplates ?? [])
    .map((c) => c.metadata?.name ?? '')
    .filter((claim) => claim && !volumes.some((v) => v.name === claim))
    .map((claim) => ({ name: claim, persistentVolumeClaim: { claimName: `${claim}-${name}-0` } }));
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      generateName: `${name}-`,
      ...(template?.metadata?.labels ? { labels: template.metadata.labels } : {}),
      ...(template?.metadata?.annotations ? { annotations: template.metadata.annotations } : {}),
    },
    spec: {
      ...template!.spec!,
      securityContext: { ...template?.spec?.securityContext, ...ids },
      volumes: [...volumes, ...claimVolumes],
    },
  };
}
