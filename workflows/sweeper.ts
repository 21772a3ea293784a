/**
 * `sweepRelaxations`: run by a Temporal Schedule, it restores the policies of every namespace
 * whose relaxation record names a run that is no longer running — the case of a terminated run
 * or a lost history, where no compensation of the run itself can execute.
 */
import * as wf from '@temporalio/workflow';
import type { Activities } from '../activities/index.js';
import type { RunRef } from '../src/policy.js';

const { findRelaxations, isRunOpen } = wf.proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 5 },
});

const { restorePolicies } = wf.proxyActivities<Activities>({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '30 seconds',
  // The next sweep tries again; a non-retryable failure is reported, not hidden.
  retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 10 },
});

/** What one sweep found and did. */
export interface SweepReport {
  checked: number;
  restored: { namespace: string; owner: RunRef }[];
  leftToRunningRuns: { namespace: string; owner: RunRef }[];
  failed: { namespace: string; error: string }[];
}

/** Restores every relaxation whose run is gone. */
export async function sweepRelaxations(): Promise<SweepReport> {
  const report: SweepReport = { checked: 0, restored: [], leftToRunningRuns: [], failed: [] };
  for (const found of await findRelaxations()) {
    report.checked++;
    if (!found.owner) {
      report.failed.push({ namespace: found.namespace, error: found.error ?? 'unreadable record' });
      continue;
    }
    const owner = found.owner;
    if (await isRunOpen(owner)) {
      report.leftToRunningRuns.push({ namespace: found.namespace, owner });
      continue;
    }
    try {
      const r = await restorePolicies({ namespace: found.namespace, owner });
      if (r.restored) report.restored.push({ namespace: found.namespace, owner });
    } catch (err) {
      report.failed.push({
        namespace: found.namespace,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }
  wf.log.info('sweep done', { ...report });
  return report;
}
