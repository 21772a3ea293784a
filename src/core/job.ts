/**
 * The ownership Job, pure: one per replica per database, mounting that replica's volumes at the
 * StatefulSet's own mount paths, running as root with only CHOWN, FOWNER and DAC_OVERRIDE (so
 * PSA `baseline` admits it), changing what is not yet owned by uid:gid, proving that nothing is
 * left, and reporting a one-line JSON summary in its termination message.
 */
import type { V1Job, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import type { MigrationInput } from './input.js';
import { parseDuration } from './input.js';
import type { RunRef } from './policy.js';

/** Labels every ownership Job (and its pod) carries. */
export const JobLabel = {
  ManagedBy: 'app.kubernetes.io/managed-by',
  StatefulSet: 'runas-migrate.dev/statefulset',
  Ordinal: 'runas-migrate.dev/ordinal',
  /** The Temporal run ID of the run that created the Job. */
  Run: 'runas-migrate.dev/run',
  /** The target user ID. */
  Uid: 'runas-migrate.dev/uid',
  /** The target group ID. */
  Gid: 'runas-migrate.dev/gid',
} as const;

/** Annotations every ownership Job (and its pod) carries. */
export const JobAnnotation = {
  /** The workflow ID of the run that created the Job (may be longer than a label value). */
  WorkflowId: 'runas-migrate.dev/workflow-id',
} as const;

/** Value of the managed-by label. */
export const ManagedBy = 'runas-migrate';

/** The capabilities the Job adds: DAC_READ_SEARCH is redundant with DAC_OVERRIDE and is refused by PSA baseline. */
export const JobCapabilities = ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'] as const;

/** One mount of one volume of one replica. */
export interface VolumeMountPlan {
  /** The claim template (and pod volume) name. */
  volume: string;
  claimName: string;
  mountPath: string;
  /** The folder of the volume the database mounts there, when it mounts only that folder. */
  subPath?: string;
}

/** What one Job migrates. */
export interface JobTarget {
  statefulSet: string;
  ordinal: number;
  image: string;
  /**
   * How the database's pods pull that image: their pull secrets and ServiceAccount (whose own
   * pull secrets the API server adds), so the Job pulls it where they do. Absent in plans from
   * before them.
   */
  pull?: { imagePullSecrets: string[]; serviceAccountName?: string };
  volumes: VolumeMountPlan[];
}

/** Who created a Job, and for which IDs, as its labels and annotations say. */
export interface JobOwnership {
  /** The creating run's ID; null on a Job without one (created by an older version). */
  runId: string | null;
  workflowId: string | null;
  uid: number | null;
  gid: number | null;
}

/** The summary a Job prints and leaves in its termination message. */
export interface JobSummary {
  ok: boolean;
  uid: number;
  gid: number;
  scanned: number;
  changed: number;
  seconds: number;
  paths: { path: string; skipped: boolean; scanned: number; changed: number }[];
}

const JobNamePrefix = 'runas-migrate-';
const MaxNameLength = 63;

/** FNV-1a, 32 bits, over the UTF-16 code units of `s` (low byte, then high byte when non-zero). */
function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  const mix = (byte: number) => {
    h = Math.imul(h ^ byte, 0x01000193) >>> 0;
  };
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    mix(c & 0xff);
    if (c > 0xff) mix(c >>> 8);
  }
  return h >>> 0;
}

/**
 * Name of the Job of one replica: `runas-migrate-<statefulSet>-<ordinal>-<hash>`, the
 * StatefulSet's name shortened to fit 63 characters and the hash (FNV-1a of the full name and
 * the ordinal, 7 base-36 digits) keeping two long names that share their beginning apart. A valid
 * DNS-1123 label, so also a valid `job-name` label value.
 */
export function ownershipJobName(statefulSet: string, ordinal: number): string {
  const hash = fnv1a32(`${statefulSet}/${ordinal}`).toString(36).padStart(7, '0');
  const suffix = `-${ordinal}-${hash}`;
  const base = statefulSet
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .slice(0, MaxNameLength - JobNamePrefix.length - suffix.length)
    .replace(/-+$/, '');
  return base ? `${JobNamePrefix}${base}${suffix}` : `${JobNamePrefix}${suffix.slice(1)}`;
}

/** The run and target IDs an ownership Job was created for, from its labels and annotations. */
export function jobOwnership(job: Pick<V1Job, 'metadata'>): JobOwnership {
  const labels = job.metadata?.labels ?? {};
  const id = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : null);
  return {
    runId: labels[JobLabel.Run] ?? null,
    workflowId: job.metadata?.annotations?.[JobAnnotation.WorkflowId] ?? null,
    uid: id(labels[JobLabel.Uid]),
    gid: id(labels[JobLabel.Gid]),
  };
}

/** The Job's pod volumes, one per claim, however many times the container mounts it. */
function podVolumes(target: JobTarget): V1Volume[] {
  const volumes = new Map<string, V1Volume>();
  for (const v of target.volumes) {
    if (!volumes.has(v.volume))
      volumes.set(v.volume, { name: v.volume, persistentVolumeClaim: { claimName: v.claimName } });
  }
  return [...volumes.values()];
}

/** The Job's mounts: each exactly as the database mounts it (same path, same subPath). */
function volumeMounts(target: JobTarget): V1VolumeMount[] {
  return target.volumes.map((v) => ({
    name: v.volume,
    mountPath: v.mountPath,
    ...(v.subPath ? { subPath: v.subPath } : {}),
  }));
}

/**
 * Builds the Job that migrates one replica's volumes for `owner`, the run that creates it: its
 * labels name the run and the target IDs, so a retry of the run adopts it and any other run does not.
 */
export function buildOwnershipJob(
  input: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>,
  target: JobTarget,
  owner: RunRef,
  /** The Job's script: {@link ../services/ownership-script.ts}'s `OwnershipScript`. */
  script: string,
): V1Job {
  const labels = {
    ...input.job.podLabels,
    [JobLabel.ManagedBy]: ManagedBy,
    [JobLabel.StatefulSet]: target.statefulSet,
    [JobLabel.Ordinal]: String(target.ordinal),
    [JobLabel.Run]: owner.runId,
    [JobLabel.Uid]: String(input.uid),
    [JobLabel.Gid]: String(input.gid),
  };
  const annotations = { [JobAnnotation.WorkflowId]: owner.workflowId };
  const timeoutSeconds = Math.ceil((parseDuration(input.job.timeout) ?? 6 * 3_600_000) / 1000);
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name: ownershipJobName(target.statefulSet, target.ordinal),
      namespace: input.namespace,
      labels,
      annotations,
    },
    spec: {
      // A retry is the workflow's, under a fresh short window.
      backoffLimit: 0,
      activeDeadlineSeconds: timeoutSeconds,
      template: {
        metadata: { labels, annotations: { ...input.job.podAnnotations, ...annotations } },
        spec: {
          restartPolicy: 'Never',
          // The database's ServiceAccount only for its image pull secrets: no token is mounted.
          ...(target.pull?.serviceAccountName ? { serviceAccountName: target.pull.serviceAccountName } : {}),
          ...(target.pull?.imagePullSecrets.length
            ? { imagePullSecrets: target.pull.imagePullSecrets.map((name) => ({ name })) }
            : {}),
          automountServiceAccountToken: false,
          nodeSelector: { ...input.job.nodeSelector },
          tolerations: input.job.tolerations.map((t) => ({ ...t })),
          securityContext: {
            runAsUser: 0,
            runAsGroup: 0,
            runAsNonRoot: false,
            seccompProfile: { type: 'RuntimeDefault' },
          },
          containers: [
            {
              name: 'fix-ownership',
              image: input.job.image ?? target.image,
              imagePullPolicy: 'IfNotPresent',
              command: [
                '/bin/bash',
                '-c',
                script,
                'fix-ownership',
                ...target.volumes.map((v) => v.mountPath),
              ],
              env: [
                { name: 'TARGET_UID', value: String(input.uid) },
                { name: 'TARGET_GID', value: String(input.gid) },
              ],
              securityContext: {
                runAsNonRoot: false,
                allowPrivilegeEscalation: false,
                capabilities: { add: [...JobCapabilities], drop: ['ALL'] },
              },
              terminationMessagePath: '/dev/termination-log',
              terminationMessagePolicy: 'File',
              resources: { ...input.job.resources },
              volumeMounts: volumeMounts(target),
            },
          ],
          volumes: podVolumes(target),
        },
      },
    },
  };
}

/** How a finished Job ended, as far as the run is concerned. */
export interface JobVerdict {
  succeeded: boolean;
  message: string;
}

/**
 * Judges a finished Job: it succeeded only when it completed and its own summary proves that
 * every volume is owned by exactly the target IDs — no summary, no success.
 */
export function judgeJob(
  finished: { type: string; reason?: string; message?: string },
  summary: JobSummary | undefined,
  exitCode: number | undefined,
  target: { uid: number; gid: number },
): JobVerdict {
  if (finished.type !== 'Complete') {
    const exit = exitCode !== undefined ? ` (exit ${exitCode})` : '';
    return {
      succeeded: false,
      message: `${finished.reason ?? 'failed'}: ${finished.message ?? ''}${exit}`.replace(/ +/g, ' ').trim(),
    };
  }
  if (!summary)
    return {
      succeeded: false,
      message:
        'completed without a summary in its termination message: nothing proves its volumes changed hands',
    };
  if (summary.uid !== target.uid || summary.gid !== target.gid)
    return {
      succeeded: false,
      message: `completed for ${summary.uid}:${summary.gid}, not for the target ${target.uid}:${target.gid}`,
    };
  if (!summary.ok) return { succeeded: false, message: 'completed, but its summary reports a failure' };
  return { succeeded: true, message: 'completed' };
}

/** Parses a Job's termination message; undefined when it is not a summary. */
export function parseJobSummary(message: string | undefined): JobSummary | undefined {
  if (!message) return undefined;
  try {
    const s = JSON.parse(message.trim()) as JobSummary;
    return s !== null &&
      typeof s.ok === 'boolean' &&
      typeof s.uid === 'number' &&
      typeof s.gid === 'number' &&
      typeof s.scanned === 'number' &&
      Array.isArray(s.paths)
      ? s
      : undefined;
  } catch {
    return undefined;
  }
}

/** Where a running ownership Job is, from the last progress line of its script. */
export interface JobProgress {
  /** Which volume (1-based) of how many. */
  volume: number;
  volumes: number;
  path: string;
  /** counting what is not yet owned, changing it (and proving it), or finished with the volume. */
  stage: 'counting' | 'changing' | 'finished';
  /** Entries of this volume to change, once counted. */
  toChange: number | null;
  /** Entries scanned and changed in the volumes finished so far (this one included when finished). */
  scanned: number;
  changed: number;
}

/** The prefix of the script's progress lines. */
export const JobProgressPrefix = 'runas-migrate-progress ';

/** The last progress line in a Job's log; undefined when there is none. */
export function parseJobProgress(log: string): JobProgress | undefined {
  const lines = log.split('\n');
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!;
    if (!line.startsWith(JobProgressPrefix)) continue;
    try {
      const p = JSON.parse(line.slice(JobProgressPrefix.length)) as JobProgress;
      if (typeof p.volume === 'number' && typeof p.scanned === 'number') return p;
    } catch {
      // a line cut short by the log's tail: look further up
    }
  }
  return undefined;
}

/** A progress line for people: "volume 2/4 /var/lib/postgresql/wal: changing 120 entries; 3,000 scanned so far". */
export function describeJobProgress(p: JobProgress): string {
  const what =
    p.stage === 'counting'
      ? 'counting what is not yet owned'
      : p.stage === 'changing'
        ? `changing ${p.toChange ?? '?'} entries`
        : 'finished';
  return `volume ${p.volume}/${p.volumes} ${p.path}: ${what}; ${p.scanned} scanned, ${p.changed} changed so far`;
}
