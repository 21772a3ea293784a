/**
 * The public messages of `migrateOwnership`: its phases, signals, query and status.
 */
import type { GuardrailsInForce } from '../core/guardrails.js';
import type { CheckResult } from '../core/verification.js';
import * as wf from '@temporalio/workflow';
import type { AdmissionEvidence } from '../services/ownership-jobs.js';
import type { JobPodsAdmission, RestoreReport } from '../services/policy-guard.js';
import type { NamespaceAudit } from '../services/gatekeeper-audit.js';
import type { JobSummary } from '../core/job.js';
import type { MigrationPlan } from '../core/plan.js';
import type { RelaxationRecord } from '../core/policy.js';

/** Phases of a run, in order (docs/architecture.md). */
export const Phase = {
  Validating: 'validating',
  Planning: 'planning',
  ApplyingSecurityContext: 'applying-security-context',
  ScalingDown: 'scaling-down',
  RelaxingPolicies: 'relaxing-policies',
  MigratingOwnership: 'migrating-ownership',
  ReEnforcingPolicies: 're-enforcing-policies',
  ScalingUp: 'scaling-up',
  Verifying: 'verifying',
  Completed: 'completed',
  Compensating: 'compensating',
  Failed: 'failed',
  Aborted: 'aborted',
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

/**
 * How a run left the namespace. Files and template always agree; no database is started on
 * files it does not own.
 */
export const EndState = {
  /** Every file and the template carry the new IDs; the databases run. */
  Completed: 'completed',
  /** Stopped before any Job could change a file: template, replicas and policies as before. */
  Unchanged: 'unchanged',
  /** Stopped after Jobs started; the change was finished and the databases run as the new IDs. */
  RolledForward: 'rolled-forward',
  /** Stopped after Jobs started; files changed back by reverse Jobs, the old template restored. */
  RolledBack: 'rolled-back',
  /**
   * Files and template could not be made to agree (a Job failed for good, a step gave up): the
   * databases stay scaled to 0, the policies are enforced, and `leftToDo` says how to finish.
   */
  StoppedScaledDown: 'stopped-scaled-down',
} as const;
export type EndState = (typeof EndState)[keyof typeof EndState];

/** An operator's approval of a gate. */
export interface Approval {
  gate: string;
  by?: string;
  comment?: string;
}

/** Why the operator stops a run. */
export interface Abort {
  reason: string;
  by?: string;
}

/** The operator says the securityContext was applied (securityContext.apply = external). */
export interface SecurityContextApplied {
  by?: string;
}

/**
 * Sent by the sweeper to a run whose window it closed after the record's `notAfter` (the run was
 * stuck): the run counts that window closed and opens a fresh one if it still needs one.
 */
export interface WindowClosedBySweeper {
  /** `snapshot.takenAt` of the record the sweeper restored: which window it closed. */
  takenAt: string;
  notAfter: string;
  restoredAt: string;
}

/** `temporal workflow signal --name approve --input '{"gate":"relax","by":"alice"}'` */
export const approveSignal = wf.defineSignal<[Approval]>('approve');
/** `temporal workflow signal --name abort --input '{"reason":"…"}'` */
export const abortSignal = wf.defineSignal<[Abort]>('abort');
/** `temporal workflow signal --name securityContextApplied --input '{"by":"alice"}'` */
export const securityContextAppliedSignal =
  wf.defineSignal<[SecurityContextApplied]>('securityContextApplied');
/** Sent by the sweeper only. */
export const windowClosedBySweeperSignal = wf.defineSignal<[WindowClosedBySweeper]>('windowClosedBySweeper');
/** Sent by the fleet that started the run (its `maxOpenWindows`): the run may relax now. */
export const windowSlotGrantedSignal = wf.defineSignal('windowSlotGranted');

/** State of one gate. */
export interface GateStatus {
  gate: string;
  required: boolean;
  state: 'pending' | 'waiting' | 'approved' | 'timed-out' | 'not-required';
  by?: string;
  comment?: string;
  at?: string;
}

/** Why an approval of `gate` is refused, by the run and by `runas-migrate approve`; null: accepted. */
export function approvalRefusal(
  gates: readonly GateStatus[],
  gate: string | undefined,
  phase: string,
): { kind: 'not-a-gate' | 'approved' | 'timed-out' | 'not-reached'; message: string } | null {
  const g = gates.find((x) => x.gate === gate);
  if (!g || !g.required) {
    const required = gates.filter((x) => x.required).map((x) => x.gate);
    return { kind: 'not-a-gate', message: `not a gate of this run (${required.join(', ') || 'none'})` };
  }
  if (g.state === 'approved' || g.state === 'timed-out')
    return { kind: g.state, message: `already ${g.state}` };
  // An approval says "I have seen what this gate shows": nothing is shown before it is reached.
  if (g.state === 'pending')
    return {
      kind: 'not-reached',
      message: `not reached yet (the run is ${phase}): approve it when the status shows it waiting`,
    };
  return null;
}

/** The Helm release of a run in helm mode: its revisions before, after the upgrade, after a rollback. */
export interface HelmStatus {
  release: string;
  /** The revision before the run: what a rollback returns to. */
  revisionBefore: number;
  /** The revision the upgrade made, once it succeeded. */
  upgradedTo: number | null;
  /** The values file the upgrade passed, as YAML. */
  values: string | null;
  /** The revision the rollback made, once it ran. */
  rolledBackTo: number | null;
}

/** State of one ownership Job. */
export interface JobStatus {
  name: string;
  statefulSet: string;
  ordinal: number;
  state: 'pending' | 'created' | 'admitted' | 'succeeded' | 'failed' | 'not-admitted';
  attempts: number;
  pod?: string;
  summary?: JobSummary;
  message?: string;
}

/** One relaxation window. */
export interface WindowStatus {
  /** When the relaxation began: its first write, before PSA and any constraint was relaxed. */
  openedAt: string;
  /** When Gatekeeper had taken in every relaxed constraint: from then on Jobs may be created. */
  relaxationEnforcedAt?: string;
  /**
   * What the admission chain said about the Job pods, by dry run, while the policies were
   * relaxed: each refusal, the constraints relaxed for it, those left enforced.
   */
  admission?: JobPodsAdmission;
  /** When the policies were written back. */
  writtenBackAt?: string;
  /** When the run saw the policies enforced again (Gatekeeper included): the window's end. */
  closedAt?: string;
  closedBecause?: string;
}

/** What `temporal workflow query --type status` returns. */
export interface MigrationStatus {
  phase: Phase;
  /** When the run entered `phase` (also the search attribute RunasPhaseSince). */
  phaseSince: string;
  namespace: string | null;
  startedAt: string;
  gates: GateStatus[];
  windowMode: string | null;
  windows: WindowStatus[];
  jobs: JobStatus[];
  policies: {
    state: 'enforced' | 'relaxed' | 'restoring' | 'restored';
    record: RelaxationRecord | null;
    lastRestore: RestoreReport | null;
  };
  admission: AdmissionEvidence[];
  /** Compensations done, in the order they ran. */
  compensations: string[];
  /** Compensations that failed for good (the rest still ran), with why. */
  compensationFailures: string[];
  rejectedSignals: string[];
  plan: MigrationPlan | null;
  error: string | null;
  /** What a failure after the Jobs started does (input `recovery`). */
  recovery: string | null;
  /** The reverse Jobs of a roll-back, when one ran. */
  rollbackJobs: JobStatus[];
  /** How the run left the namespace, once it ended. */
  endState: EndState | null;
  /** What an operator must still do when the run could not finish consistently. */
  leftToDo: string[];
  /** Tampering with the relaxation record that a restore found (it restored from the run's copy). */
  alarms: string[];
  /** The worker's guardrails the run was checked against: what was allowed, from which file or ConfigMap. */
  guardrails: GuardrailsInForce | null;
  /** The checks of every replica once the databases were back (exec and logs), as evidence. */
  databaseChecks: CheckResult[];
  /** Gatekeeper's audit of the namespace once the databases are back; null when not read. */
  gatekeeperAudit: NamespaceAudit | null;
  /** The Helm release the run upgraded (securityContext.apply = helm); null in other modes. */
  helm: HelmStatus | null;
  /** A run of a fleet with `maxOpenWindows`: its turn to relax; null for any other run. */
  windowSlot: WindowSlotStatus | null;
}

/** Where a fleet's run is with its turn to relax (the fleet's `maxOpenWindows`). */
export interface WindowSlotStatus {
  /** The fleet's workflow ID. */
  fleet: string;
  /** `waiting`: asked, the fleet's windows are all taken; `held`: relaxing or relaxed; `released`: closed again. */
  state: 'waiting' | 'held' | 'released';
  since: string;
}

/** The status of a run that has just started, at `now` (ISO 8601). */
export function initialStatus(now: string): MigrationStatus {
  return {
    phase: Phase.Validating,
    namespace: null,
    startedAt: now,
    phaseSince: now,
    gates: [],
    windowMode: null,
    windows: [],
    jobs: [],
    policies: { state: 'enforced', record: null, lastRestore: null },
    admission: [],
    compensations: [],
    compensationFailures: [],
    rejectedSignals: [],
    plan: null,
    error: null,
    recovery: null,
    rollbackJobs: [],
    endState: null,
    leftToDo: [],
    alarms: [],
    guardrails: null,
    databaseChecks: [],
    gatekeeperAudit: null,
    helm: null,
    windowSlot: null,
  };
}

/** `temporal workflow query --type status` */
export const statusQuery = wf.defineQuery<MigrationStatus>('status');

/** What a run returns. */
export interface MigrationReport {
  namespace: string;
  uid: number;
  gid: number;
  dryRun: boolean;
  plan: MigrationPlan;
  volumes: { job: string; path: string; skipped: boolean; scanned: number; changed: number }[];
  jobs: { name: string; attempts: number; seconds: number | null; scanned: number; changed: number }[];
  windows: WindowStatus[];
  /** Seconds the policies were relaxed, summed over the windows. */
  windowSeconds: number;
  approvals: GateStatus[];
  verification: string[];
  /** Each check of each replica: what it saw and how long it took. */
  databaseChecks: CheckResult[];
  /** Gatekeeper's audit of the namespace once the databases are back; null when not read. */
  gatekeeperAudit: NamespaceAudit | null;
  /** The Helm release's revisions (securityContext.apply = helm); null in other modes. */
  helm: HelmStatus | null;
  endState: EndState;
  /** Tampering with the relaxation record found during the run. */
  alarms: string[];
  /** The guardrails the run was checked against (null: a run from before guardrails). */
  guardrails: GuardrailsInForce | null;
  /** Why the run changed nothing although it succeeded (e.g. the target already runs as the IDs). */
  nothingToDo: string | null;
  startedAt: string;
  finishedAt: string;
}
