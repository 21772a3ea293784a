/**
 * Names that are part of runas-migrate's public interface (see the README): the task queue,
 * the workflow type and the search attributes runs are indexed by.
 */

/** Task queue the worker polls. */
export const TaskQueue = 'runas-migrate';

/**
 * Task queue of the workers of one cluster (`runas-migrate-<cluster>`): a fleet run routes each
 * target's run there, so only that cluster's worker, holding only its credentials, runs its steps.
 */
export function clusterTaskQueue(cluster: string | undefined, base: string = TaskQueue): string {
  return cluster ? `${base}-${cluster}` : base;
}

/**
 * Workflow ID of the run of a namespace (of a cluster, when named): at most one run at a time
 * per namespace, whether started alone or by a fleet (invariant 5).
 */
export function runWorkflowId(namespace: string, cluster?: string): string {
  return cluster ? `runas-migrate-${cluster}.${namespace}` : `runas-migrate-${namespace}`;
}

/**
 * Workflow ID of a fleet run. The colon keeps it apart from every run's ID: `runas-migrate-fleet-db`
 * would be the run of namespace `fleet-db`, and a colon is in no namespace or cluster name.
 */
export function fleetWorkflowId(name: string): string {
  return `runas-migrate-fleet:${name}`;
}

/**
 * The memo key a fleet with `maxOpenWindows` starts its runs with: the fleet's workflow ID, which
 * the run asks for its turn before it relaxes.
 */
export const FleetWindowsMemo = 'runasFleetWindows';

/** Workflow types. */
export const WorkflowType = {
  MigrateOwnership: 'migrateOwnership',
  MigrateFleet: 'migrateFleet',
  SweepRelaxations: 'sweepRelaxations',
} as const;
export type WorkflowType = (typeof WorkflowType)[keyof typeof WorkflowType];

/** Custom search attributes, registered on the Temporal namespace with the types of {@link SearchAttributeTypes}. */
export const SearchAttribute = {
  /** Kubernetes namespace a run migrates. */
  TargetNamespace: 'RunasTargetNamespace',
  /** Current phase of a run. */
  Phase: 'RunasPhase',
  /** When a run entered its current phase: a run that stays long in one phase may be stuck. */
  PhaseSince: 'RunasPhaseSince',
} as const;
export type SearchAttribute = (typeof SearchAttribute)[keyof typeof SearchAttribute];

/** The type each search attribute is registered with (`temporal operator search-attribute create`). */
export const SearchAttributeTypes: Record<SearchAttribute, 'Keyword' | 'Datetime'> = {
  RunasTargetNamespace: 'Keyword',
  RunasPhase: 'Keyword',
  RunasPhaseSince: 'Datetime',
};
