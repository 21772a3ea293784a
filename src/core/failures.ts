/**
 * The failure vocabulary of runas-migrate: every type a run, a step or the Kubernetes wrapper
 * can fail with, in one module that workflows, services, the CLI and tests share (pure: safe in
 * the workflow sandbox). A step fails with a {@link TypedFailure}; the activities turn it into a
 * Temporal `ApplicationFailure` of the same type, which the workflow branches on.
 */

/** Every failure type, by name. The string values are part of the run history: never rename one. */
export const FailureType = {
  // The run's input and its plan
  InvalidInput: 'InvalidInput',
  PreflightFailed: 'PreflightFailed',
  PlanningFailed: 'PlanningFailed',
  PlanChanged: 'PlanChanged',
  /** Another open run holds the namespace's lock. */
  NamespaceLocked: 'NamespaceLocked',
  /** The run asks for more than the worker's guardrails allow. */
  GuardrailRefused: 'GuardrailRefused',
  /** The worker's guardrails file or ConfigMap does not validate. */
  InvalidGuardrails: 'InvalidGuardrails',

  // Gates
  ApprovalTimedOut: 'ApprovalTimedOut',
  Aborted: 'Aborted',

  /** A fleet stopped starting runs: failure budget spent, or a fleet gate timed out. */
  FleetStopped: 'FleetStopped',
  /** A fleet ran every wave, but some of its runs failed (within its failure budget). */
  FleetRunsFailed: 'FleetRunsFailed',
  /** A fleet's run could not ask its fleet for its turn to relax (the fleet is gone): nothing was relaxed. */
  FleetUnreachable: 'FleetUnreachable',

  // The policy guard
  MalformedConstraint: 'MalformedConstraint',
  RelaxedByAnotherRun: 'RelaxedByAnotherRun',
  RestoreNotVerified: 'RestoreNotVerified',
  MalformedRecord: 'MalformedRelaxationRecord',
  /** A constraint kept changing under every guarded patch (retryable). */
  ConstraintContention: 'ConstraintContention',
  /** The namespace shows a relaxation (annotation) that no protected record backs. */
  UnverifiedRecord: 'UnverifiedRelaxationRecord',
  /** The namespace that keeps the protected records does not exist. */
  RecordsNamespaceMissing: 'RecordsNamespaceMissing',
  AdmissionRefused: 'AdmissionRefused',
  /** Gatekeeper did not take in a relaxed constraint in time: the Jobs would meet the old one. */
  EnforcementNotConfirmed: 'EnforcementNotConfirmed',

  // The data path
  SecurityContextNotApplied: 'SecurityContextNotApplied',
  HelmFailed: 'HelmFailed',
  WaitTimedOut: 'WaitTimedOut',
  /** A wait was given a deadline that does not parse, or no limit at all. */
  InvalidWaitLimit: 'InvalidWaitLimit',
  /** A Job of the same name belongs to runas-migrate but to another run or other IDs, and still runs. */
  JobOfAnotherRun: 'JobOfAnotherRun',
  /** A Job of the same name that runas-migrate did not create. */
  JobNameTaken: 'JobNameTaken',
  OwnershipJobFailed: 'OwnershipJobFailed',
  VerificationFailed: 'VerificationFailed',
  CompensationFailed: 'CompensationFailed',

  // Kubernetes calls (src/cluster/kube.ts): retried when Conflict or Unavailable
  KubeForbidden: 'KubeForbidden',
  KubeUnauthorized: 'KubeUnauthorized',
  KubeNotFound: 'KubeNotFound',
  KubeInvalid: 'KubeInvalid',
  KubeConflict: 'KubeConflict',
  KubeUnavailable: 'KubeUnavailable',
  KubeBadRequest: 'KubeBadRequest',
} as const;
/** One failure type. */
export type FailureType = (typeof FailureType)[keyof typeof FailureType];
/** The failure types of a Kubernetes call. */
export type KubeFailureType = Extract<FailureType, `Kube${string}`>;

/** Options of a {@link TypedFailure}. */
export interface FailureOptions {
  /** Whether trying the same step again can succeed. @default false */
  retryable?: boolean;
  /** Structured evidence, kept in the failure's details. */
  details?: unknown[];
  cause?: unknown;
}

/**
 * An error with a type from {@link FailureType}: what a step throws when it knows why it failed.
 * The core's own errors (invalid input, planning, malformed constraint or record) and the
 * Kubernetes wrapper's errors are typed failures too.
 */
export class TypedFailure extends Error {
  override readonly name: string = 'TypedFailure';
  readonly retryable: boolean;
  readonly details: unknown[];

  constructor(
    readonly type: FailureType,
    message: string,
    options: FailureOptions = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.retryable = options.retryable ?? false;
    this.details = options.details ?? [];
  }

  /** A failure that trying again cannot fix. */
  static nonRetryable(message: string, type: FailureType, ...details: unknown[]): TypedFailure {
    return new TypedFailure(type, message, { details });
  }

  /** A failure that a later attempt may not meet. */
  static retryable(message: string, type: FailureType, ...details: unknown[]): TypedFailure {
    return new TypedFailure(type, message, { retryable: true, details });
  }
}
