/**
 * The run's state, in one small object: the status the `status` query shows, the phase, the
 * gates, and the signal handlers that change them (as Temporal's safe-message-handlers sample
 * keeps them together).
 */
import * as wf from '@temporalio/workflow';
import { ApplicationFailure, defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import { phaseEntered } from './metrics.js';
import type { Gate } from '../core/input.js';
import { SearchAttribute } from '../core/names.js';
import type { Phase } from './messages.js';
import {
  abortSignal,
  initialStatus,
  approvalRefusal,
  approveSignal,
  securityContextAppliedSignal,
  statusQuery,
  windowClosedBySweeperSignal,
  windowSlotGrantedSignal,
  type JobStatus,
  type MigrationStatus,
  type WindowClosedBySweeper,
} from './messages.js';

const PhaseKey = defineSearchAttributeKey(SearchAttribute.Phase, SearchAttributeType.KEYWORD);
const NamespaceKey = defineSearchAttributeKey(SearchAttribute.TargetNamespace, SearchAttributeType.KEYWORD);
const PhaseSinceKey = defineSearchAttributeKey(SearchAttribute.PhaseSince, SearchAttributeType.DATETIME);

/** The workflow's clock, as ISO 8601. */
export const nowIso = () => new Date(Date.now()).toISOString();

/** The state of one run and its message handlers. */
export class RunState {
  readonly status: MigrationStatus = initialStatus(nowIso());
  /** Why the run was aborted; undefined while it was not. */
  abortReason: string | undefined;
  /** Whether the fleet has given this run its turn to relax (`windowSlotGranted`), since it last asked. */
  windowSlotGranted = false;
  /** How many `securityContextApplied` signals arrived. */
  securityContextSignals = 0;
  /** The scope of the procedure: `abort` cancels it, settling runs outside it. */
  readonly main = new wf.CancellationScope();
  /** Told when the sweeper closed a window of this run. */
  onWindowClosedBySweeper: (s: WindowClosedBySweeper) => void = () => undefined;

  /** Registers the status query; call first thing in the workflow. */
  listen(): void {
    wf.setHandler(statusQuery, () => this.status);
  }

  /**
   * Registers the signals. Called by {@link begin}: a signal sent with the start is delivered
   * before the workflow function runs and held until its handler is set, so the handler must see
   * the run's gates already.
   */
  private takeSignals(): void {
    wf.setHandler(approveSignal, (a) => {
      const refusal = approvalRefusal(this.status.gates, a?.gate, this.status.phase);
      if (refusal) {
        this.status.rejectedSignals.push(`approve for gate "${String(a?.gate)}": ${refusal.message}`);
        return;
      }
      const gate = this.status.gates.find((g) => g.gate === a.gate)!;
      Object.assign(gate, { state: 'approved', by: a.by ?? 'unknown', comment: a.comment, at: nowIso() });
    });
    wf.setHandler(abortSignal, (a) => {
      if (this.abortReason !== undefined) return;
      this.abortReason = `${a?.reason ?? 'no reason given'}${a?.by ? ` (by ${a.by})` : ''}`;
      this.main.cancel();
    });
    wf.setHandler(securityContextAppliedSignal, () => void this.securityContextSignals++);
    wf.setHandler(windowClosedBySweeperSignal, (s) => this.onWindowClosedBySweeper(s));
    wf.setHandler(windowSlotGrantedSignal, () => void (this.windowSlotGranted = true));
  }

  /** Starts the run's view of `namespace`: its gates, window mode and recovery. */
  begin(namespace: string, o: { approvals: readonly Gate[]; windowMode: string; recovery: string }): void {
    this.status.namespace = namespace;
    this.status.windowMode = o.windowMode;
    this.status.recovery = o.recovery;
    this.status.gates = (['plan', 'relax'] as const).map((g) => ({
      gate: g,
      required: o.approvals.includes(g),
      state: o.approvals.includes(g) ? 'pending' : 'not-required',
    }));
    wf.upsertSearchAttributes([{ key: NamespaceKey, value: namespace }]);
    this.takeSignals();
  }

  /** Enters `phase` (search attributes and the Web UI's current details follow). */
  setPhase(phase: Phase, details?: string): void {
    const status = this.status;
    if (status.phase !== phase) {
      status.phase = phase;
      status.phaseSince = nowIso();
      phaseEntered(phase);
      wf.log.info('phase entered', { targetNamespace: status.namespace, phase });
    }
    wf.upsertSearchAttributes([
      { key: PhaseKey, value: phase },
      { key: PhaseSinceKey, value: new Date(status.phaseSince) },
    ]);
    const lines = [`**${phase}**${status.namespace ? ` — namespace \`${status.namespace}\`` : ''}`];
    if (details) lines.push(details);
    if (status.policies.state !== 'enforced') lines.push(`policies: **${status.policies.state}**`);
    const w = status.windows.at(-1);
    if (w)
      lines.push(
        w.closedAt
          ? `security window #${status.windows.length}: opened ${w.openedAt}, closed ${w.closedAt} (${w.closedBecause ?? 'closed'})`
          : `security window #${status.windows.length}: **open** since ${w.openedAt}`,
      );
    wf.setCurrentDetails(lines.join('\n\n'));
  }

  /**
   * Waits at gate `name` until it is approved.
   *
   * @throws `ApprovalTimedOut` when it is not approved within `timeoutMs`.
   */
  async gate(name: Gate, what: string, timeoutMs: number, timeoutText: string): Promise<void> {
    const g = this.status.gates.find((x) => x.gate === name)!;
    if (!g.required) return;
    g.state = 'waiting';
    this.setPhase(
      this.status.phase,
      `waiting for approval of gate \`${name}\`: ${what}. Signal \`approve\` with \`{"gate":"${name}"}\`.`,
    );
    if (!(await wf.condition(() => g.state === 'approved', timeoutMs))) {
      g.state = 'timed-out';
      throw ApplicationFailure.nonRetryable(
        `gate "${name}" was not approved within ${timeoutText}`,
        FailureType.ApprovalTimedOut,
      );
    }
  }

  /** Adds an alarm once. */
  alarm(alarm: string): void {
    if (!this.status.alarms.includes(alarm)) this.status.alarms.push(alarm);
  }
}

/** Updates the Job named `name` in `jobs`. */
export function updateJob(jobs: JobStatus[], name: string, change: Partial<JobStatus>): void {
  Object.assign(
    jobs.find((x) => x.name === name)!,
    change,
  );
}
