/**
 * The ownership Job, pure: one per replica per database, mounting that replica's volumes at the
 * StatefulSet's own mount paths, running as root with only CHOWN, FOWNER and DAC_OVERRIDE (so
 * PSA `baseline` admits it), changing what is not yet owned by uid:gid, proving that nothing is
 * left, and reporting a one-line JSON summary in its termination message.
 */
import type { V1Job } from '@kubernetes/client-node';
import type { MigrationInput } from './input.js';
import { parseDuration } from './input.js';

/** Labels every ownership Job (and its pod) carries. */
export const JobLabel = {
  ManagedBy: 'app.kubernetes.io/managed-by',
  StatefulSet: 'runas-migrate.dev/statefulset',
  Ordinal: 'runas-migrate.dev/ordinal',
} as const;

/** Value of the managed-by label. */
export const ManagedBy = 'runas-migrate';

/** The capabilities the Job adds: DAC_READ_SEARCH is redundant with DAC_OVERRIDE and is refused by PSA baseline. */
export const JobCapabilities = ['CHOWN', 'FOWNER', 'DAC_OVERRIDE'] as const;

/** One volume of one replica. */
export interface VolumeMountPlan {
  /** The claim template (and pod volume) name. */
  volume: string;
  claimName: string;
  mountPath: string;
}

/** What one Job migrates. */
export interface JobTarget {
  statefulSet: string;
  ordinal: number;
  image: string;
  volumes: VolumeMountPlan[];
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

/**
 * The Job's script (bash, coreutils and findutils only: what the database image has). Args are
 * the mount paths. Idempotent: it changes only what is not yet uid:gid, so a re-run after an
 * interruption finishes the work.
 */
export const OwnershipScript = String.raw`set -uo pipefail
uid="$TARGET_UID"; gid="$TARGET_GID"
start=$(date +%s%N)
status=0; total_scanned=0; total_changed=0
declare -A result
esc() { local s="$1"; s="\${s//\\/\\\\}"; printf '%s' "\${s//\"/\\\"}"; }
# Deepest paths first: a volume mounted inside another is done (and counted) before its parent.
mapfile -t ordered < <(printf '%s\n' "$@" | sort -r)
for path in "\${ordered[@]}"; do
  if [ ! -d "$path" ]; then
    echo "runas-migrate: $path is not a mounted directory" >&2; status=1; continue
  fi
  if [ -z "$(ls -A "$path")" ]; then
    echo "$path: empty volume (fresh install): skipped"
    result[$path]="{\"path\":\"$(esc "$path")\",\"skipped\":true,\"scanned\":0,\"changed\":0}"
    continue
  fi
  # Volumes mounted inside this one are counted and proven on their own.
  prune=()
  for other in "$@"; do
    if [ "$other" != "$path" ] && [[ "$other" == "$path"/* ]]; then prune+=(-path "$other" -prune -o); fi
  done
  echo "$path: changing what is not owned by $uid:$gid"
  todo=$(find "$path" "\${prune[@]}" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf c)
  changed=\${#todo}
  # -P -h: never follow a symlink, change the link itself.
  if ! chown -R -P -h "$uid:$gid" -- "$path"; then
    echo "runas-migrate: could not change ownership under $path" >&2; status=1
  fi
  # Proof, in one walk that also counts: nothing under the path has another owner.
  marks=$(find "$path" "\${prune[@]}" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf x -o -printf s)
  scanned=\${#marks}
  left=$(printf '%s' "$marks" | tr -cd x | wc -c)
  if [ "$left" -ne 0 ]; then
    echo "runas-migrate: $left entries under $path are still not owned by $uid:$gid" >&2; status=1
  fi
  echo "$path: $scanned entries, $changed changed"
  total_scanned=$((total_scanned + scanned)); total_changed=$((total_changed + changed))
  result[$path]="{\"path\":\"$(esc "$path")\",\"skipped\":false,\"scanned\":$scanned,\"changed\":$changed}"
done
paths_json=""
for path in "$@"; do [ -n "\${result[$path]:-}" ] && paths_json+="\${result[$path]},"; done
ms=$(( ($(date +%s%N) - start) / 1000000 ))
ok=true; [ "$status" -eq 0 ] || ok=false
summary="{\"ok\":$ok,\"uid\":$uid,\"gid\":$gid,\"scanned\":$total_scanned,\"changed\":$total_changed,\"seconds\":$((ms / 1000)).$(printf '%03d' $((ms % 1000))),\"paths\":[\${paths_json%,}]}"
echo "$summary"
echo "$summary" > /dev/termination-log 2>/dev/null || true
exit "$status"
`.replace(/\\\$\{/g, '${');

/** Name of the Job of one replica: `runas-migrate-<statefulSet>-<ordinal>`, at most 63 characters. */
export function ownershipJobName(statefulSet: string, ordinal: number): string {
  const suffix = `-${ordinal}`;
  return `runas-migrate-${statefulSet}`.slice(0, 63 - suffix.length).replace(/-+$/, '') + suffix;
}

/** Builds the Job that migrates one replica's volumes. */
export function buildOwnershipJob(
  input: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>,
  target: JobTarget,
): V1Job {
  const labels = {
    ...input.job.podLabels,
    [JobLabel.ManagedBy]: ManagedBy,
    [JobLabel.StatefulSet]: target.statefulSet,
    [JobLabel.Ordinal]: String(target.ordinal),
  };
  const timeoutSeconds = Math.ceil((parseDuration(input.job.timeout) ?? 6 * 3_600_000) / 1000);
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name: ownershipJobName(target.statefulSet, target.ordinal),
      namespace: input.namespace,
      labels,
    },
    spec: {
      // A retry is the workflow's, under a fresh short window.
      backoffLimit: 0,
      activeDeadlineSeconds: timeoutSeconds,
      template: {
        metadata: { labels, annotations: { ...input.job.podAnnotations } },
        spec: {
          restartPolicy: 'Never',
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
                OwnershipScript,
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
              volumeMounts: target.volumes.map((v) => ({ name: v.volume, mountPath: v.mountPath })),
            },
          ],
          volumes: target.volumes.map((v) => ({
            name: v.volume,
            persistentVolumeClaim: { claimName: v.claimName },
          })),
        },
      },
    },
  };
}

/** Parses a Job's termination message; undefined when it is not a summary. */
export function parseJobSummary(message: string | undefined): JobSummary | undefined {
  if (!message) return undefined;
  try {
    const s = JSON.parse(message.trim()) as JobSummary;
    return typeof s.scanned === 'number' && Array.isArray(s.paths) ? s : undefined;
  } catch {
    return undefined;
  }
}
