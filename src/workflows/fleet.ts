/**
 * `migrateFleet`: many namespaces, on one or many clusters, each migrated by its own
 * `migrateOwnership` run (a child workflow with the namespace's own workflow ID, so one run per
 * namespace holds across fleets and single runs). A canary first, then waves; the fleet stops
 * starting runs once more of them failed than its budget allows, or when aborted. Every run on a
 * cluster goes to that cluster's task queue, where only its workers (with only its credentials)
 * poll. A running run is never left behind: an abort is passed on to it (it compensates as any
 * aborted run), and a fleet closed in any other way asks its runs to cancel (they compensate too).
 */
import * as wf from '@temporalio/workflow';
import {
  ApplicationFailure,
  CancelledFailure,
  ChildWorkflowFailure,
  WorkflowExecutionAlreadyStartedError,
} from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import {
  parseFleetInput,
  resolvedFleetInput,
  wavesOf,
  FleetApprovals,
  type FleetInput,
  type FleetTarget,
} from '../core/fleet.js';
import { InvalidInputError, parseDuration, refusedByWorker } from '../core/input.js';
import { FleetWindowsMemo, WorkflowType } from '../core/names.js';
import {
  FleetPhase,
  fleetStatusQuery,
  windowSlotReleaseSignal,
  windowSlotRequestSignal,
  type FleetReport,
  type FleetStatus,
  type FleetTargetStatus,
} from './fleet-messages.js';
import {
  abortSignal,
  approveSignal,
  approvalRefusal,
  windowSlotGrantedSignal,
  EndState,
  type Abort,
  type GateStatus,
  type MigrationReport,
} from './messages.js';
import { nowIso } from './run-state.js';

/** Changes to the fleet's commands, for fleets started before them (`wf.patched`). */
const FleetPatch = {
  /** each-wave has no gate before the first wave. */
  NoFirstWaveGate: 'fleet-no-first-wave-gate',
  /** A run that found nothing to change counts as done. */
  UnchangedIsDone: 'fleet-unchanged-is-done',
  /** A cancelled fleet stops, skips the rest, and ends cancelled (before: it went on and failed). */
  CancelStops: 'fleet-cancel-stops',
} as const;

/** What a fleet carries into its next run when it continues as new. */
export interface FleetCarry {
  status: FleetStatus;
  /** The wave to start with. */
  nextWave: number;
}

/**
 * The fleet gate before wave `w` (0-based), if the fleet's approvals ask for one. Never before
 * the first wave: starting the fleet is its approval.
 */
function gateBefore(fleet: FleetInput, w: number): string | undefined {
  if (fleet.approvals === FleetApprovals.EachWave)
    return w > 0 || !wf.patched(FleetPatch.NoFirstWaveGate) ? `wave-${w}` : undefined;
  if (fleet.approvals === FleetApprovals.AfterCanary && fleet.canary && w === 1) return 'after-canary';
  return undefined;
}

/** The gates a fleet will wait at, all pending. */
function gatesOf(fleet: FleetInput, waves: number): GateStatus[] {
  return Array.from({ length: waves }, (_, w) => gateBefore(fleet, w))
    .filter((g): g is string => g !== undefined)
    .map((gate) => ({ gate, required: true, state: 'pending' as const }));
}

/** The run input a target's child gets: without its own gates unless the fleet leaves them to each run. */
function childInput(fleet: FleetInput, t: FleetTarget) {
  return fleet.approvals === FleetApprovals.EachRun ? t.input : { ...t.input, approvals: [] };
}

/** The innermost message and the end state (an aborted run says it) of a child's failure. */
function failureOf(err: unknown): { message: string; endState: EndState | null } {
  let e: unknown = err instanceof ChildWorkflowFailure ? err.cause : err;
  let endState: EndState | null = null;
  const messages: string[] = [];
  while (e instanceof Error) {
    if (e instanceof ApplicationFailure) {
      const d = e.details?.[0] as { endState?: EndState } | undefined;
      if (d?.endState) endState = d.endState;
    }
    if (e.message) messages.push(e.message);
    e = (e as { cause?: unknown }).cause;
  }
  return { message: messages[0] ?? String(err), endState };
}

/** The first status of a fleet: every target pending. */
function initialStatus(fleet: FleetInput, waves: number[][]): FleetStatus {
  const waveOf = new Map<number, number>();
  waves.forEach((members, w) => members.forEach((i) => waveOf.set(i, w)));
  return {
    name: fleet.name,
    phase: FleetPhase.Running,
    wave: 0,
    waves: waves.length,
    canary: fleet.canary,
    failureBudget: fleet.failureBudget,
    failures: 0,
    gates: gatesOf(fleet, waves.length),
    targets: fleet.targets.map((t, i): FleetTargetStatus => ({
      id: t.id,
      namespace: t.namespace,
      cluster: t.cluster,
      workflowId: t.workflowId,
      taskQueue: t.taskQueue,
      wave: waveOf.get(i)!,
      state: 'pending',
      endState: null,
      windowSeconds: null,
      message: null,
      startedAt: null,
      finishedAt: null,
    })),
    reason: null,
    continuedAsNew: 0,
    startedAt: nowIso(),
  };
}

/** One fleet run: its waves, gates, and the runs in flight. */
class Fleet {
  readonly waves: number[][];
  readonly status: FleetStatus;
  private abort: Abort | null = null;
  private readonly running = new Map<number, wf.ChildWorkflowHandle<MigrateOwnershipType>>();

  constructor(
    private readonly fleet: FleetInput,
    carried?: FleetCarry,
  ) {
    this.waves = wavesOf(fleet.targets.length, fleet.canary, fleet.waveSize);
    this.status = carried?.status ?? initialStatus(fleet, this.waves);
    if (fleet.maxOpenWindows !== undefined)
      this.status.windowSlots ??= { max: fleet.maxOpenWindows, held: [], waiting: [] };
  }

  listen(): void {
    const { status } = this;
    wf.setHandler(fleetStatusQuery, () => status);
    wf.setHandler(approveSignal, (a) => {
      const refusal = approvalRefusal(status.gates, a.gate, status.phase);
      if (refusal) {
        wf.log.warn(`approval of ${a.gate} refused: ${refusal.message}`);
        return;
      }
      const g = status.gates.find((x) => x.gate === a.gate)!;
      Object.assign(g, { state: 'approved', by: a.by, comment: a.comment, at: nowIso() });
    });
    wf.setHandler(abortSignal, (a) => {
      if (this.abort) return;
      this.abort = a;
      // Each running run is aborted as an operator would abort it: it compensates and says how it ended.
      for (const handle of this.running.values()) void this.passOnAbort(handle);
    });
    if (!status.windowSlots) return;
    wf.setHandler(windowSlotRequestSignal, ({ workflowId }) => {
      const slots = status.windowSlots!;
      // Only a run of this fleet that is running may queue: anything else would hold a turn forever.
      const running = status.targets.some((t) => t.workflowId === workflowId && t.state === 'running');
      if (!running) {
        wf.log.warn(`window slot asked for by ${workflowId}, which is no running run of this fleet: ignored`);
        return;
      }
      if (!slots.held.includes(workflowId) && !slots.waiting.includes(workflowId))
        slots.waiting.push(workflowId);
      this.grantSlots();
    });
    wf.setHandler(windowSlotReleaseSignal, ({ workflowId }) => this.releaseSlot(workflowId));
  }

  /** Hands the free turns to relax to the runs waiting longest. */
  private grantSlots(): void {
    const slots = this.status.windowSlots!;
    while (slots.held.length < slots.max && slots.waiting.length) {
      const workflowId = slots.waiting.shift()!;
      slots.held.push(workflowId);
      wf.getExternalWorkflowHandle(workflowId)
        .signal(windowSlotGrantedSignal)
        .catch((err: unknown) => {
          // The run ended meanwhile: its turn goes to the next.
          wf.log.info(`window slot not delivered to ${workflowId}: ${String(err)}`);
          this.releaseSlot(workflowId);
        });
    }
  }

  /** A run's turn comes back (its window closed, or it ended): the next waiting run gets it. */
  private releaseSlot(workflowId: string): void {
    const slots = this.status.windowSlots;
    if (!slots) return;
    slots.held = slots.held.filter((x) => x !== workflowId);
    slots.waiting = slots.waiting.filter((x) => x !== workflowId);
    this.grantSlots();
  }

  /**
   * Aborts a running run. It may have ended in the same workflow task (signals are handled before
   * the run's end is), and Temporal then refuses the signal: that refusal must not fail the fleet,
   * and the run's own end is what its row says.
   */
  private passOnAbort(handle: wf.ChildWorkflowHandle<MigrateOwnershipType>): Promise<void> {
    return handle
      .signal(abortSignal, {
        reason: `fleet ${this.fleet.name} aborted: ${this.abort!.reason}`,
        by: this.abort!.by,
      })
      .catch((err: unknown) => {
        wf.log.info(`the abort did not reach ${handle.workflowId}: ${String(err)}`);
      });
  }

  /**
   * Whether the fleet's own workflow was cancelled (`temporal workflow cancel`, the Web UI). A
   * fleet cancelled before the change keeps its old course on replay: the marker is written only
   * once a cancel has come.
   */
  private get cancelled(): boolean {
    return wf.CancellationScope.current().consideredCancelled && wf.patched(FleetPatch.CancelStops);
  }

  /** Runs one target's migration as a child and records how it ended. */
  private async runTarget(i: number): Promise<void> {
    const t = this.fleet.targets[i]!;
    const s = this.status.targets[i]!;
    s.state = 'running';
    s.startedAt = nowIso();
    try {
      const handle = await wf.startChild(WorkflowType.MigrateOwnership, {
        workflowId: t.workflowId,
        taskQueue: t.taskQueue,
        args: [childInput(this.fleet, t)],
        // A fleet closed in any way asks its runs to cancel: they compensate, none is cut off.
        parentClosePolicy: wf.ParentClosePolicy.REQUEST_CANCEL,
        cancellationType: wf.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
        staticSummary: `fleet ${this.fleet.name}, wave ${s.wave}: migrate ${t.id} to ${t.input.uid}:${t.input.gid}`,
        ...(this.status.windowSlots ? { memo: { [FleetWindowsMemo]: wf.workflowInfo().workflowId } } : {}),
      });
      this.running.set(i, handle as wf.ChildWorkflowHandle<MigrateOwnershipType>);
      if (this.abort) await this.passOnAbort(handle as wf.ChildWorkflowHandle<MigrateOwnershipType>);
      const report = (await handle.result()) as MigrationReport;
      s.endState = report.endState;
      s.windowSeconds = report.windowSeconds;
      // Unchanged: the namespace already runs as the target IDs (a fleet started again after a stop).
      const done =
        report.endState === EndState.Completed ||
        (report.endState === EndState.Unchanged && wf.patched(FleetPatch.UnchangedIsDone));
      s.state = done ? 'succeeded' : 'failed';
      if (!done) s.message = `ended ${report.endState}`;
      else if (report.endState === EndState.Unchanged)
        s.message = 'nothing to change: it already runs as the target IDs';
    } catch (err) {
      if (err instanceof WorkflowExecutionAlreadyStartedError) {
        s.message = `a run of ${t.id} is already in progress (workflow ${t.workflowId}): the fleet did not start another`;
      } else if (this.cancelled && wf.isCancellation(err)) {
        s.message = `cancelled with the fleet; it compensated as a cancelled run does`;
        s.endState = failureOf(err).endState;
      } else {
        const f = failureOf(err);
        s.message = f.message;
        s.endState = f.endState;
      }
      s.state = 'failed';
    } finally {
      this.running.delete(i);
      this.releaseSlot(t.workflowId);
      s.finishedAt = nowIso();
    }
  }

  private stopReason(): string | null {
    if (this.abort) return `aborted: ${this.abort.reason}`;
    if (this.cancelled) return "cancelled: the fleet's workflow was cancelled";
    if (this.status.failures > this.fleet.failureBudget)
      return `${this.status.failures} run(s) failed, more than the failure budget of ${this.fleet.failureBudget}`;
    return null;
  }

  /** Waits at the fleet gate before wave `w`, if any; false when the fleet must not go on. */
  private async passGate(w: number): Promise<boolean> {
    const gate = gateBefore(this.fleet, w);
    const g = gate ? this.status.gates.find((x) => x.gate === gate) : undefined;
    if (!g || g.state === 'approved') return true;
    g.state = 'waiting';
    this.status.phase = FleetPhase.WaitingForApproval;
    let answered: boolean;
    try {
      answered = await wf.condition(
        () => g.state === 'approved' || this.abort !== null,
        parseDuration(this.fleet.approvalTimeout)!,
      );
    } catch (err) {
      if (!wf.isCancellation(err) || !this.cancelled) throw err;
      g.state = 'pending';
      return false;
    }
    if (!answered) {
      g.state = 'timed-out';
      this.status.reason = `gate ${gate} was not approved within ${this.fleet.approvalTimeout}`;
      return false;
    }
    this.status.phase = FleetPhase.Running;
    return this.abort === null;
  }

  async run(firstWave: number): Promise<FleetReport> {
    const { status, waves } = this;
    let runsThisHistory = 0;
    for (let w = firstWave; w < waves.length; w++) {
      status.wave = w;
      if (this.stopReason() || !(await this.passGate(w))) break;
      await Promise.all(waves[w]!.map((i) => this.runTarget(i)));
      status.failures = status.targets.filter((t) => t.state === 'failed').length;
      runsThisHistory += waves[w]!.length;
      const more = w + 1 < waves.length;
      const long =
        runsThisHistory >= this.fleet.continueAfterRuns || wf.workflowInfo().continueAsNewSuggested;
      if (more && long && !this.stopReason()) {
        // Between waves no run is in flight, so closing this history leaves no child to cancel.
        status.continuedAsNew++;
        await wf.continueAsNew<typeof migrateFleet>(resolvedFleetInput(this.fleet), {
          status,
          nextWave: w + 1,
        });
      }
    }
    return this.finish();
  }

  /** Marks what never started, sets the phase, and returns or throws the report. */
  private finish(): FleetReport {
    const { status, fleet } = this;
    status.reason ??= this.stopReason();
    for (const t of status.targets)
      if (t.state === 'pending') {
        t.state = 'skipped';
        t.message = status.reason ?? 'not started';
      }
    const failed = status.targets.filter((t) => t.state === 'failed').map((t) => t.id);
    status.phase = this.abort
      ? FleetPhase.Aborted
      : this.cancelled
        ? FleetPhase.Cancelled
        : status.reason
          ? FleetPhase.Stopped
          : failed.length
            ? FleetPhase.CompletedWithFailures
            : FleetPhase.Completed;
    const report: FleetReport = { ...status, finishedAt: nowIso() };
    // Thrown while cancelled, a CancelledFailure closes the workflow as cancelled.
    if (status.phase === FleetPhase.Cancelled)
      throw new CancelledFailure(`fleet ${fleet.name} cancelled`, [report]);
    if (status.phase === FleetPhase.CompletedWithFailures)
      throw ApplicationFailure.nonRetryable(
        `fleet ${fleet.name}: every wave ran, but ${failed.length} run(s) failed (${failed.join(', ')}), within the failure budget of ${fleet.failureBudget}`,
        FailureType.FleetRunsFailed,
        report,
      );
    if (status.phase !== FleetPhase.Completed)
      throw ApplicationFailure.nonRetryable(
        `fleet ${fleet.name} ${status.phase}: ${status.reason}`,
        this.abort ? FailureType.Aborted : FailureType.FleetStopped,
        report,
      );
    return report;
  }
}

/** The fleet's workflow. `carried` is set when it continued as new. */
export async function migrateFleet(raw: unknown, carried?: FleetCarry): Promise<FleetReport> {
  let input: FleetInput;
  try {
    input = parseFleetInput(raw, wf.workflowInfo().taskQueue);
  } catch (err) {
    if (err instanceof InvalidInputError)
      throw ApplicationFailure.nonRetryable(refusedByWorker(err), FailureType.InvalidInput);
    throw err;
  }
  const fleet = new Fleet(input, carried);
  fleet.listen();
  return fleet.run(carried?.nextWave ?? 0);
}

/** The child's type, for its handle. */
type MigrateOwnershipType = (raw: unknown) => Promise<MigrationReport>;
