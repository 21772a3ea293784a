/**
 * Workflows for the fleet's workflow tests: the real `migrateFleet`, with a stand-in for
 * `migrateOwnership` whose outcome its namespace chooses (the fleet's logic is under test; the
 * runs themselves are tested on their own and, under a fleet, on the bed).
 */
import * as wf from '@temporalio/workflow';
import { ApplicationFailure } from '@temporalio/common';
import { FleetWindowsMemo } from '../../src/core/names.js';
import { windowSlotReleaseSignal, windowSlotRequestSignal } from '../../src/workflows/fleet-messages.js';
import { abortSignal, windowSlotGrantedSignal } from '../../src/workflows/messages.js';

export { migrateFleet } from '../../src/workflows/fleet.js';

/**
 * A run that takes a minute (`slow-*`: ten; `hold-*`: until aborted or cancelled), then completes;
 * `fail-*` fails at the end; `done-*` finds nothing to change (its namespace already runs as the target IDs). Aborted,
 * it fails as an aborted run does, saying it ended unchanged. Its result names the task queue it
 * ran on and the approvals it was given.
 */
export async function migrateOwnership(input: { namespace: string; approvals?: string[] }) {
  if (input.namespace.startsWith('turn')) return takingTurns(input.namespace);
  const aborted: { reason?: string } = {};
  wf.setHandler(abortSignal, (a) => void (aborted.reason = a.reason));
  const done = () => aborted.reason !== undefined;
  // No timer for `hold-*`: whatever the test server's clock does, only an abort or a cancel ends it.
  if (input.namespace.startsWith('hold')) await wf.condition(done);
  else await wf.condition(done, input.namespace.startsWith('slow') ? 600_000 : 60_000);
  if (aborted.reason !== undefined)
    throw ApplicationFailure.nonRetryable(`run aborted: ${aborted.reason}`, 'Aborted', {
      endState: 'unchanged',
    });
  if (input.namespace.startsWith('fail'))
    throw ApplicationFailure.nonRetryable('verification failed on purpose', 'VerificationFailed');
  return {
    namespace: input.namespace,
    endState: input.namespace.startsWith('done') ? 'unchanged' : 'completed',
    windowSeconds: 1,
    approvals: input.approvals,
    taskQueue: wf.workflowInfo().taskQueue,
  };
}

/**
 * `turn-*`: asks the fleet for its turn to relax as a run does, holds it for a minute ("relaxed"),
 * gives it back and completes; `turn-keep-*` ends holding it, as a run that fails in its window
 * does. Its result says when it held the turn (workflow time).
 */
async function takingTurns(namespace: string) {
  const fleet = wf.workflowInfo().memo?.[FleetWindowsMemo] as string | undefined;
  if (!fleet) throw ApplicationFailure.nonRetryable('started without the fleet windows memo', 'NoMemo');
  let granted = false;
  wf.setHandler(windowSlotGrantedSignal, () => void (granted = true));
  const self = { workflowId: wf.workflowInfo().workflowId };
  await wf.getExternalWorkflowHandle(fleet).signal(windowSlotRequestSignal, self);
  await wf.condition(() => granted);
  const heldFrom = Date.now();
  await wf.sleep(60_000);
  const heldTo = Date.now();
  if (!namespace.startsWith('turn-keep'))
    await wf.getExternalWorkflowHandle(fleet).signal(windowSlotReleaseSignal, self);
  return { namespace, endState: 'completed', windowSeconds: 60, heldFrom, heldTo };
}
