/**
 * The public messages of `migrateFleet`: its status query and report. It takes the same `approve`
 * and `abort` signals as a run (src/workflows/messages.ts).
 */
import * as wf from '@temporalio/workflow';
import type { EndState, GateStatus } from './messages.js';

/** Where one target of a fleet is. */
export type FleetTargetState =
  | 'pending'
  | 'running'
  | 'succeeded'
  | 'failed'
  /** Never started: the fleet stopped (failure budget, abort, an approval that timed out). */
  | 'skipped';

/** One target of a fleet, as the status shows it. */
export interface FleetTargetStatus {
  /** `cluster/namespace`, or the namespace alone. */
  id: string;
  namespace: string;
  cluster: string | null;
  workflowId: string;
  taskQueue: string;
  /** 0 is the canary when the fleet has one. */
  wave: number;
  state: FleetTargetState;
  /** How its run ended: the run's end state when it said, else null. */
  endState: EndState | null;
  /** Seconds its policies were relaxed (a completed run). */
  windowSeconds: number | null;
  /** Why it failed or was skipped. */
  message: string | null;
  startedAt: string | null;
  finishedAt: string | null;
}

/** The phases of a fleet. */
export const FleetPhase = {
  Running: 'running',
  WaitingForApproval: 'waiting-for-approval',
  Completed: 'completed',
  /** Every wave ran, but some runs failed (within the failure budget). */
  CompletedWithFailures: 'completed-with-failures',
  /** Stopped by its failure budget, or an approval that timed out. */
  Stopped: 'stopped',
  Aborted: 'aborted',
  /** Its workflow was cancelled: the running runs were cancelled and compensated. */
  Cancelled: 'cancelled',
} as const;
export type FleetPhase = (typeof FleetPhase)[keyof typeof FleetPhase];

/** What `fleetStatus` answers. */
export interface FleetStatus {
  name: string;
  phase: FleetPhase;
  /** The wave running or next (0-based; the canary is wave 0 when the fleet has one). */
  wave: number;
  waves: number;
  canary: boolean;
  failureBudget: number;
  failures: number;
  gates: GateStatus[];
  targets: FleetTargetStatus[];
  /** Why the fleet stopped or was aborted. */
  reason: string | null;
  /** The fleet's turns to relax, with `maxOpenWindows`; absent without. */
  windowSlots?: WindowSlots;
  /** How many times this fleet continued as new (each keeps the history short). */
  continuedAsNew: number;
  startedAt: string;
}

/** What a fleet returns: its last status, with when it finished. */
export interface FleetReport extends FleetStatus {
  finishedAt: string;
}

/** The fleet's turns to relax (`maxOpenWindows`): which runs hold one, which wait for one. */
export interface WindowSlots {
  max: number;
  /** Workflow IDs of the runs whose turn it is, in the order they got it. */
  held: string[];
  /** Workflow IDs of the runs waiting for a turn, first come first served. */
  waiting: string[];
}

/** A run of the fleet asking for, or giving back, its turn to relax. */
export interface WindowSlotMessage {
  /** The run's workflow ID. */
  workflowId: string;
}

/** Sent by a run of the fleet before it relaxes its namespace; answered by `windowSlotGranted`. */
export const windowSlotRequestSignal = wf.defineSignal<[WindowSlotMessage]>('windowSlotRequest');
/** Sent by a run of the fleet once its window has closed. */
export const windowSlotReleaseSignal = wf.defineSignal<[WindowSlotMessage]>('windowSlotRelease');

/** `temporal workflow query --name fleetStatus` */
export const fleetStatusQuery = wf.defineQuery<FleetStatus>('fleetStatus');
