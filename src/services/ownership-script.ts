import { readFileSync } from 'node:fs';
import type { V1Pod } from '@kubernetes/client-node';
import { podOfJob } from '../core/admission.js';
import { buildOwnershipJob, type JobTarget } from '../core/job.js';
import type { RunRef } from '../core/policy.js';

/**
 * The Job's script, `src/core/ownership-job.sh` (bash, coreutils and findutils only: what the database
 * image has), given to `bash -c`. Args are the mount paths; env TARGET_UID and TARGET_GID.
 * Idempotent: it changes only what is not yet uid:gid, so a re-run after an interruption finishes
 * the work. Each volume, its root included, is counted, changed and then proven by a walk after
 * the change; with several CPUs its top-level entries are shared among at most as many workers,
 * since a volume's entries are independent. An empty volume is not walked; its root is changed.
 */
export const OwnershipScript = readFileSync(new URL('../core/ownership-job.sh', import.meta.url), 'utf8');

/**
 * The pod each ownership Job would create, as the Job controller makes it: what the planner and
 * the policy guard put to the admission chain by dry run.
 */
export function ownershipJobPods(
  run: Parameters<typeof buildOwnershipJob>[0],
  targets: readonly JobTarget[],
  owner: RunRef,
): V1Pod[] {
  return targets.map((t) => podOfJob(buildOwnershipJob(run, t, owner, OwnershipScript)));
}
