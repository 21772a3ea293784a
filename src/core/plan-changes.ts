/**
 * What changed in the cluster between two plans of the same run, pure: the plan is read before
 * gates that may wait for a day, so the run plans again after the last gate and stops when the
 * databases it would migrate are no longer what the operator approved.
 */
import type { MigrationPlan } from './plan.js';

const volumesOf = (j: MigrationPlan['databases'][number]['jobs'][number]) =>
  j.volumes.map((v) => `${v.claimName}@${v.mountPath}${v.subPath ? `:${v.subPath}` : ''}`).join(', ');

/**
 * Lists the differences that matter to the migration: StatefulSets, replicas, images, Jobs and
 * the claims each mounts. Policy state and the template's IDs are left out: the run itself
 * changes those between the two plans.
 *
 * @returns one line per difference; empty when the approved plan still holds.
 */
export function planChanges(approved: MigrationPlan, now: MigrationPlan): string[] {
  const changes: string[] = [];
  const byName = (p: MigrationPlan) => new Map(p.databases.map((d) => [d.statefulSet, d]));
  const before = byName(approved);
  const after = byName(now);
  for (const [name, a] of before) {
    const b = after.get(name);
    if (!b) {
      changes.push(`StatefulSet ${name} is no longer planned`);
      continue;
    }
    if (a.replicas !== b.replicas) changes.push(`${name}: replicas ${a.replicas} → ${b.replicas}`);
    if (a.image !== b.image) changes.push(`${name}: image ${a.image} → ${b.image}`);
    const jobsA = new Map(a.jobs.map((j) => [j.name, volumesOf(j)]));
    const jobsB = new Map(b.jobs.map((j) => [j.name, volumesOf(j)]));
    for (const [job, vols] of jobsA) {
      if (!jobsB.has(job)) changes.push(`${name}: Job ${job} (${vols}) is no longer planned`);
      else if (jobsB.get(job) !== vols)
        changes.push(`${name}: Job ${job} volumes ${vols} → ${jobsB.get(job)}`);
    }
    for (const [job, vols] of jobsB) if (!jobsA.has(job)) changes.push(`${name}: new Job ${job} (${vols})`);
  }
  for (const name of after.keys())
    if (!before.has(name)) changes.push(`StatefulSet ${name} is newly planned`);
  return changes;
}
