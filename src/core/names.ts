/**
 * Names that are part of runas-migrate's public interface (see the README): the task queue,
 * the workflow type and the search attributes runs are indexed by.
 */

/** Task queue the worker polls. */
export const TaskQueue = 'runas-migrate';

/** Workflow types. */
export const WorkflowType = {
  MigrateOwnership: 'migrateOwnership',
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
