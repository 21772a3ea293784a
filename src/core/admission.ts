/**
 * Pods to put to the admission chain by server-side dry run — what a StatefulSet would create
 * once its template carries the target IDs, what an ownership Job's controller would create —
 * and who refused them, read from the refusal.
 */
import type { V1Job, V1Pod, V1StatefulSet } from '@kubernetes/client-node';
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

/**
 * The pod a Job's controller would create from it: its template, with the labels the Job
 * controller adds, so policies that select by label judge it as they will judge the real one.
 */
export function podOfJob(job: V1Job): V1Pod {
  const name = job.metadata?.name ?? 'job';
  const template = job.spec?.template;
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      generateName: `${name}-`,
      labels: { ...template?.metadata?.labels, 'job-name': name, 'batch.kubernetes.io/job-name': name },
      ...(template?.metadata?.annotations ? { annotations: template.metadata.annotations } : {}),
    },
    spec: { ...template!.spec! },
  };
}

/** The webhook Gatekeeper's chart registers for validation. */
export const GatekeeperWebhook = 'validation.gatekeeper.sh';

/**
 * Who refused a pod, read from the API server's message. The validating chain stops at the first
 * refusal, and Pod Security Admission comes before the webhooks: while PSA refuses, Gatekeeper's
 * verdict is unknown.
 */
export type AdmissionRefusal =
  | { by: 'pod-security'; message: string }
  /** Gatekeeper's webhook, naming each constraint that refused (one `[name] …` line each). */
  | { by: 'gatekeeper'; constraints: string[]; message: string }
  /** A webhook that could not be called (down, timing out): the refusal says nothing yet. */
  | { by: 'unavailable'; message: string }
  /** Not judged at all: the pod itself is invalid (the Job's own dry run names the input field). */
  | { by: 'invalid'; message: string }
  /** Anything the guard cannot relax: another webhook, a ValidatingAdmissionPolicy, a quota… */
  | { by: 'other'; message: string };

/** Reads who refused a pod from the API server's message (`KubeError.reason`). */
export function refusalOf(message: string): AdmissionRefusal {
  if (/violates PodSecurity "/.test(message)) return { by: 'pod-security', message };
  if (/failed calling webhook|context deadline exceeded|connection refused/.test(message))
    return { by: 'unavailable', message };
  const gatekeeper = new RegExp(
    `admission webhook "${GatekeeperWebhook.replace(/\./g, '\\.')}" denied the request:`,
  );
  if (gatekeeper.test(message)) {
    const after = message.slice(message.search(gatekeeper));
    const constraints = [...after.matchAll(/(?:^|\n|request: )\[([^\]\s]+)\]/g)].map((m) => m[1]!);
    if (constraints.length > 0) return { by: 'gatekeeper', constraints: [...new Set(constraints)], message };
  }
  return { by: 'other', message };
}

/**
 * Whether a Job controller's `FailedCreate` says only that creating the pod failed this time,
 * not that admission refused it: a conflict on a ResourceQuota (the Jobs' pods are created side
 * by side), an API server too busy or timing out. The controller tries again by itself, so such
 * an Event is no refusal. A webhook that cannot be called stays a refusal: with `failurePolicy:
 * Fail` it refuses every pod until it is back, and waiting for it would keep the window open
 * until `window.max`.
 */
export function isPassingCreateFailure(message: string): boolean {
  return /Operation cannot be fulfilled on resourcequotas|the object has been modified|Timeout: request did not complete|Too Many Requests|the server is currently unable|etcdserver: (request timed out|leader changed)/.test(
    message,
  );
}
