import { readFileSync } from 'node:fs';

/**
 * The Job's script, `src/core/ownership-job.sh` (bash, coreutils and findutils only: what the database
 * image has), given to `bash -c`. Args are the mount paths; env TARGET_UID and TARGET_GID.
 * Idempotent: it changes only what is not yet uid:gid, so a re-run after an interruption finishes
 * the work. Each volume, its root included, is counted, changed and then proven by a walk after
 * the change; with several CPUs its top-level entries are shared among at most as many workers,
 * since a volume's entries are independent. An empty volume is not walked; its root is changed.
 */
export const OwnershipScript = readFileSync(new URL('../core/ownership-job.sh', import.meta.url), 'utf8');
