/**
 * `sweepRelaxations`: run by a Temporal Schedule, it restores the policies of every namespace
 * whose protected relaxation record names a run that is no longer running — a terminated run
 * or a lost history, where no compensation of the run itself can execute — or whose record is
 * past its `notAfter` (window.max + window.grace) whatever its run's state: a stuck run (a
 * workflow task failing for good, no worker left) does not keep a namespace open. Such a run is
 * told with the signal `windowClosedBySweeper`. Each namespace is swept on its own: one that
 * cannot be judged or restored is reported, and the others go on.
 */
import * as wf from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import type { RecordedRelaxation } from '../services/policy-guard.js';
import type { RunRef } from '../core/policy.js';
import { windowClosedBySweeperSignal } from './messages.js';

// A sweep cancelled (or terminated with its Schedule) must not leave a restore running behind
// it: unset means TRY_CANCEL in the protocol.
const cancellationType = wf.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED;

const { findRelaxations } = wf.proxyActivities<Activities>({
  cancellationType,
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 5 },
});

const { isRunOpen } = wf.proxyActivities<Activities>({
  cancellationType,
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', maximumInterval: '5 seconds', maximumAttempts: 3 },
});

const { restorePolicies } = wf.proxyActivities<Activities>({
  cancellationType,
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '30 seconds',
  // Short: the next sweep tries again, and one namespace must not hold up the others' sweep.
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 3 },
});

/** How many namespaces one sweep works on at once. */
const SweepParallelism = 4;

/** What one sweep did with one namespace. */
export type SweptNamespace =
  | {
      namespace: string;
      outcome: 'restored';
      owner: RunRef;
      alarms: string[];
      /** Set when the run was still open and its record past notAfter. */
      expired?: string;
    }
  | { namespace: string; outcome: 'left'; owner: RunRef; why: string }
  | { namespace: string; outcome: 'refused'; why: string }
  | { namespace: string; outcome: 'failed'; why: string };

/** What one sweep found and did, namespace by namespace. */
export interface SweepReport {
  /** The Temporal namespace this sweep judges runs of. */
  temporalNamespace: string;
  checked: number;
  namespaces: SweptNamespace[];
}

const reasonOf = (err: unknown): string =>
  err instanceof wf.ActivityFailure && err.cause
    ? err.cause.message
    : err instanceof Error
      ? err.message
      : String(err);

async function sweepOne(found: RecordedRelaxation, here: string): Promise<SweptNamespace> {
  const { namespace } = found;
  try {
    if (!found.owner || found.refused)
      return { namespace, outcome: 'refused', why: found.refused ?? 'no usable record' };
    const owner = found.owner;
    if (found.temporalNamespace !== here) {
      return {
        namespace,
        outcome: 'left',
        owner,
        why: `recorded by a run of Temporal namespace ${found.temporalNamespace}: only a sweeper there can tell whether it is alive`,
      };
    }
    const expired = found.notAfter && Date.parse(found.notAfter) <= Date.now() ? found.notAfter : null;
    const open = await isRunOpen(owner);
    if (open && !expired)
      return { namespace, outcome: 'left', owner, why: 'its run is still running and restores it itself' };
    const r = await restorePolicies({ namespace, owner });
    if (r.refused) return { namespace, outcome: 'refused', why: r.refused };
    if (!r.restored) return { namespace, outcome: 'left', owner, why: 'nothing left to restore' };
    if (!open) return { namespace, outcome: 'restored', owner, alarms: r.alarms };
    const why = `its run is still open but made no progress past notAfter ${expired}: window closed`;
    try {
      await wf.getExternalWorkflowHandle(owner.workflowId, owner.runId).signal(windowClosedBySweeperSignal, {
        takenAt: found.takenAt!,
        notAfter: expired!,
        restoredAt: r.restoredAt,
      });
    } catch (err) {
      return {
        namespace,
        outcome: 'restored',
        owner,
        alarms: r.alarms,
        expired: `${why}; the run could not be told: ${reasonOf(err)}`,
      };
    }
    return { namespace, outcome: 'restored', owner, alarms: r.alarms, expired: why };
  } catch (err) {
    return { namespace, outcome: 'failed', why: reasonOf(err) };
  }
}

/** Restores every relaxation whose run is gone; reports every namespace it looked at. */
export async function sweepRelaxations(): Promise<SweepReport> {
  const here = wf.workflowInfo().namespace;
  const found = await findRelaxations();
  const swept: SweptNamespace[] = new Array<SweptNamespace>(found.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(SweepParallelism, found.length) }, async () => {
      while (next < found.length) {
        const i = next++;
        swept[i] = await sweepOne(found[i]!, here);
      }
    }),
  );
  const report: SweepReport = { temporalNamespace: here, checked: found.length, namespaces: swept };
  wf.log.info('sweep done', {
    checked: report.checked,
    ...Object.fromEntries(
      (['restored', 'left', 'refused', 'failed'] as const).map((o) => [
        o,
        swept.filter((s) => s.outcome === o).map((s) => s.namespace),
      ]),
    ),
  });
  return report;
}
