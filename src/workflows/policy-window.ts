/**
 * The security window, seen from the run: relaxing the policies opens it, re-enforcing closes
 * it (once, however many callers ask), `window.max` closes it on a timer, and the sweeper may
 * close it for a stuck run.
 */
import * as wf from '@temporalio/workflow';
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import { FleetWindowsMemo } from '../core/names.js';
import { windowSlotReleaseSignal, windowSlotRequestSignal } from './fleet-messages.js';
import { Phase } from './messages.js';
import type { MigrationInput } from '../core/input.js';
import type { RelaxationRecord, RunRef } from '../core/policy.js';
import { reasonOf } from '../core/failure-reason.js';
import type { WindowClosedBySweeper } from './messages.js';
import { nowIso, type RunState } from './run-state.js';
import { act, type Steps } from './steps.js';
import { windowClosed } from './metrics.js';
import type { RelaxInput } from '../services/policy-guard.js';
import { parseDuration } from '../core/input.js';

const ms = (d: string) => parseDuration(d) ?? 0;

/** A new turn asked for only once the fleet has the last one back (`wf.patched`; runs before it asked at once). */
const TurnAfterRelease = 'turn-after-release';

/** One run's security windows. */
export class PolicyWindow {
  /** The run's own copy of the latest relaxation record. */
  private record: RelaxationRecord | null = null;
  private restoring: Promise<void> | undefined;
  /** Set before each relax call: a relax that failed half-way must be restored too. */
  private mayBeRelaxed = false;
  /** The fleet this run asks for its turn to relax (its `maxOpenWindows`); null for any other run. */
  private readonly fleet: string | null = fleetOf(wf.workflowInfo());
  /** The signal giving the fleet back the last turn, settled once the fleet has it (or cannot). */
  private releasing: Promise<void> | undefined;

  constructor(
    private readonly state: RunState,
    private readonly stubs: Steps,
    private readonly input: MigrationInput,
    private readonly owner: RunRef,
  ) {
    state.onWindowClosedBySweeper = (s) => this.closedBySweeper(s);
  }

  /**
   * Relaxes the policies and opens a window, closed by `window.max` at the latest: only as far
   * as the admission chain refuses `jobs`' pods, when given. Returns when it opened and a promise
   * that settles once the `window.max` timer is done with.
   */
  async open(jobs?: RelaxInput['jobs']): Promise<{ relaxedAt: string; closeTimer: () => Promise<void> }> {
    const { state, input } = this;
    const namespace = input.namespace;
    await this.takeTurn();
    this.mayBeRelaxed = true;
    const relaxed = await act(this.stubs.steps.relaxPolicies, `relax the policies of ${namespace}`, {
      namespace,
      owner: this.owner,
      closeWithinSeconds: (ms(input.window.max) + ms(input.window.grace)) / 1000,
      podSecurity: input.policies.podSecurity,
      gatekeeper: input.policies.gatekeeper,
      ...(jobs ? { jobs } : {}),
    });
    this.record = relaxed.record;
    state.status.policies.record = relaxed.record;
    state.status.policies.state = 'relaxed';
    state.status.windows.push({
      openedAt: relaxed.relaxedAt,
      ...(relaxed.enforcedAt ? { relaxationEnforcedAt: relaxed.enforcedAt } : {}),
      ...(relaxed.admission ? { admission: relaxed.admission } : {}),
    });
    const timer = new wf.CancellationScope();
    // Handled at once: a restore that fails here is reported, never thrown into the workflow task.
    const maxTimer = timer
      .run(() => wf.sleep(ms(input.window.max)))
      .then(
        () => this.reEnforce(`window.max ${input.window.max} reached`),
        () => undefined,
      )
      .catch((err: unknown) => {
        state.status.compensationFailures.push(`re-enforce at window.max: ${reasonOf(err)}`);
      });
    return {
      relaxedAt: relaxed.relaxedAt,
      closeTimer: async () => {
        timer.cancel();
        await maxTimer;
      },
    };
  }

  /**
   * A run of a fleet with `maxOpenWindows` waits for its turn before it relaxes: it asks the
   * fleet, which answers once fewer than that many of its runs are relaxed.
   *
   * @throws `FleetUnreachable` when the fleet cannot be asked (it has ended): nothing is relaxed.
   */
  private async takeTurn(): Promise<void> {
    const { fleet, state } = this;
    if (!fleet || state.status.windowSlot?.state === 'held') return;
    // Signals a workflow sends to another are not delivered in the order they were sent: a request
    // for the next round's turn could reach the fleet before the release of this round's, be taken
    // for the turn it still holds, and be lost when the release comes: the run would wait forever.
    if (this.releasing && wf.patched(TurnAfterRelease)) await this.releasing;
    state.windowSlotGranted = false;
    state.status.windowSlot = { fleet, state: 'waiting', since: nowIso() };
    state.setPhase(
      Phase.RelaxingPolicies,
      `waiting for a turn to relax: fleet \`${fleet}\` lets only maxOpenWindows of its namespaces be relaxed at once`,
    );
    try {
      await wf
        .getExternalWorkflowHandle(fleet)
        .signal(windowSlotRequestSignal, { workflowId: wf.workflowInfo().workflowId });
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      throw ApplicationFailure.nonRetryable(
        `could not ask fleet ${fleet} for a turn to relax (${reasonOf(err)}): nothing was relaxed`,
        FailureType.FleetUnreachable,
      );
    }
    try {
      await wf.condition(() => state.windowSlotGranted);
    } catch (err) {
      // Stopped while waiting: out of the fleet's queue at once, not only when the run ends.
      this.giveBackTurn();
      throw err;
    }
    state.status.windowSlot = { fleet, state: 'held', since: nowIso() };
    state.setPhase(Phase.RelaxingPolicies, `fleet \`${fleet}\` gave this run its turn to relax`);
  }

  /**
   * Gives the fleet back the turn this run holds or waits for (its window closed, or it stopped
   * waiting); the fleet also takes it back when the run ends.
   */
  private giveBackTurn(): void {
    const { fleet, state } = this;
    if (!fleet || !state.status.windowSlot || state.status.windowSlot.state === 'released') return;
    state.status.windowSlot = { fleet, state: 'released', since: nowIso() };
    // Sent even while the run is being cancelled: its compensation may go on for minutes.
    this.releasing = wf.CancellationScope.nonCancellable(() =>
      wf.getExternalWorkflowHandle(fleet).signal(windowSlotReleaseSignal, {
        workflowId: wf.workflowInfo().workflowId,
      }),
    ).catch((err: unknown) =>
      wf.log.info(`the turn to relax did not reach fleet ${fleet}: ${reasonOf(err)}`),
    );
  }

  /** Re-enforces the policies once per window; concurrent callers share the same restore. */
  reEnforce(because: string): Promise<void> {
    if (!this.mayBeRelaxed && !this.restoring) return Promise.resolve();
    this.restoring ??= this.restore(because).finally(() => {
      this.restoring = undefined;
    });
    return this.restoring;
  }

  private async restore(because: string): Promise<void> {
    const { status } = this.state;
    const namespace = this.input.namespace;
    status.policies.state = 'restoring';
    const report = await wf.CancellationScope.nonCancellable(() =>
      act(this.stubs.policies.restorePolicies, `re-enforce the policies of ${namespace} (${because})`, {
        namespace,
        owner: this.owner,
        ...(this.record ? { record: this.record } : {}),
      }),
    );
    status.policies.lastRestore = report;
    for (const alarm of [...report.alarms, ...(report.refused ? [`restore refused: ${report.refused}`] : [])])
      this.state.alarm(alarm);
    status.policies.state = 'restored';
    this.mayBeRelaxed = false;
    this.giveBackTurn();
    const w = status.windows.at(-1);
    if (w && !w.closedAt) {
      Object.assign(w, {
        ...(report.restored ? { writtenBackAt: report.restoredAt } : {}),
        closedAt: nowIso(),
        closedBecause: because,
      });
      windowClosed((Date.parse(w.closedAt!) - Date.parse(w.openedAt)) / 1000);
    }
  }

  private closedBySweeper(s: WindowClosedBySweeper): void {
    const { status } = this.state;
    const latest = status.windows.at(-1);
    // Only the window of the record the sweeper restored; a later one is this run's to close.
    if (!latest || status.policies.record?.snapshot.takenAt !== s?.takenAt) return;
    // The run's own (then empty) restore may have come first when it woke up: the sweeper's is
    // the one that closed the window.
    if (!latest.closedAt || Date.parse(s.restoredAt) < Date.parse(latest.closedAt))
      Object.assign(latest, {
        closedAt: s.restoredAt,
        closedBecause: `the sweeper restored the policies after notAfter ${s.notAfter}: the run had made no progress`,
      });
    status.alarms.push(
      `the window opened at ${latest.openedAt} outlived window.max + window.grace (notAfter ${s.notAfter}) and was closed by the sweeper at ${s.restoredAt}`,
    );
    if (!this.restoring) {
      this.mayBeRelaxed = false;
      status.policies.state = 'restored';
      this.giveBackTurn();
    }
  }
}

/** The fleet a run asks for its turn to relax: the parent that started it with the memo, else null. */
function fleetOf(info: wf.WorkflowInfo): string | null {
  const fleet = info.memo?.[FleetWindowsMemo];
  return typeof fleet === 'string' && info.parent?.workflowId === fleet ? fleet : null;
}
