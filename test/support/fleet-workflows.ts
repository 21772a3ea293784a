/**
 * Workflows for the fleet's workflow tests: the real `migrateFleet`, with a stand-in for
 * `migrateOwnership` whose outcome its namespace chooses (the fleet's logic is under test; the
 * runs themselves are tested on their own and, under a fleet, on the bed).
 */
import * as wf from '@temporalio/workflow';
import { ApplicationFailure } from '@temporalio/common';
import { abortSignal } from '../../src/workflows/messages.js';

export { migrateFleet } from '../../src/workflows/fleet.js';

/**
 * A run that takes a minute (`slow-*`: ten; `hold-*`: until aborted or cancelled), then completes;
 * `fail-*` fails at the end; `done-*` finds nothing to change (its namespace already runs as the target IDs). Aborted,
 * it fails as an aborted run does, saying it ended unchanged. Its result names the task queue it
 * ran on and the approvals it was given.
 */
export async function migrateOwnership(input: { namespace: string; approvals?: string[] }) {
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
