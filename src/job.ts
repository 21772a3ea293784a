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
 * interruption finishes the work. Each volume is counted, changed and then proven by a walk
 * after the change; with several CPUs its top-level subtrees are shared among workers, each
 * doing the three in turn on its own subtrees, since a volume's entries are independent.
 */
export const OwnershipScript = String.raw`set -uo pipefail
shopt -s lastpipe
uid="$TARGET_UID"; gid="$TARGET_GID"
start=$(date +%s%N)
status=0; total_scanned=0; total_changed=0
declare -A result
esc() { local s="$1"; s="\${s//\\/\\\\}"; printf '%s' "\${s//\"/\\\"}"; }
workers=$(nproc 2>/dev/null) || workers=1
if [ "$workers" -lt 1 ] 2>/dev/null; then workers=1; elif [ "$workers" -gt 8 ]; then workers=8; fi
wrong=(\( ! -uid "$uid" -o ! -gid "$gid" \))
# Counts what is not uid:gid under the start points (only themselves with "self", whole subtrees
# with "tree"), changes it, then walks again to count entries and what is still wrong. Prints
# one line, "changed scanned left failed", in a single write so parallel workers do not interleave.
migrate() {
  local how=$1 depth=() recurse=(-R -P) changed=0 scanned=0 chars=0 failed=0
  shift
  if [ "$how" = self ]; then depth=(-maxdepth 0); recurse=(); fi
  # Counted with wc, not in bash: bash string work is quadratic on big strings.
  changed=$(find -P "$@" "\${depth[@]}" "\${prune[@]}" "\${wrong[@]}" -printf c | wc -c) || failed=1
  if [ "$changed" -ne 0 ] || [ "$failed" -ne 0 ]; then
    # -P -h: never follow a symlink, change the link itself.
    chown "\${recurse[@]}" -h "$uid:$gid" -- "$@" || failed=1
  fi
  # Proof, in one walk after the change that also counts: one line per entry, an x on the wrong ones.
  find -P "$@" "\${depth[@]}" "\${prune[@]}" \( "\${wrong[@]}" -printf 'x\n' -o -printf '\n' \) | wc -lc | read -r scanned chars || failed=1
  echo "$changed $scanned $((chars - scanned)) $failed"
}
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
  units=()
  if [ "$workers" -gt 1 ]; then
    mapfile -d '' -t units < <(find -P "$path" -mindepth 1 -maxdepth 1 "\${prune[@]}" -print0)
  fi
  changed=0; scanned=0; left=0; failed=0
  {
    # Few top-level entries leave nothing to share; very many would overflow the argument list.
    if [ "\${#units[@]}" -lt 2 ] || [ "\${#units[@]}" -gt 4096 ]; then
      migrate tree "$path"
    else
      migrate self "$path"
      for ((w = 0; w < workers; w++)); do
        share=()
        for ((i = w; i < \${#units[@]}; i += workers)); do share+=("\${units[i]}"); done
        migrate tree "\${share[@]}" &
      done
      wait
    fi
  } | while read -r c s l f; do
    changed=$((changed + c)); scanned=$((scanned + s)); left=$((left + l)); failed=$((failed + f))
  done
  if [ "$failed" -ne 0 ]; then
    echo "runas-migrate: could not change ownership under $path" >&2; status=1
  fi
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
