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

/** Custom search attributes, all of type Keyword, registered on the Temporal namespace. */
export const SearchAttribute = {
  /** Kubernetes namespace a run migrates. */
  TargetNamespace: 'RunasTargetNamespace',
  /** Current phase of a run. */
  Phase: 'RunasPhase',
} as const;
export type SearchAttribute = (typeof SearchAttribute)[keyof typeof SearchAttribute];
