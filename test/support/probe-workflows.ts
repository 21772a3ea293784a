/**
 * Small workflows that prove the Temporal side of the test bed works (not runas-migrate's).
 */
import * as wf from '@temporalio/workflow';

/** Approval sent with `temporal workflow signal --name approve`. */
export interface ProbeApproval {
  gate: string;
  by?: string;
}

export const approveSignal = wf.defineSignal<[ProbeApproval]>('approve');
export const statusQuery = wf.defineQuery<{ waitingFor: string; approvals: ProbeApproval[] }>('status');

/** Waits for one approval of `gate`, answering `status` meanwhile. */
export async function probeApproval(input: { gate: string }): Promise<string> {
  const approvals: ProbeApproval[] = [];
  wf.setHandler(approveSignal, (a) => void approvals.push(a));
  wf.setHandler(statusQuery, () => ({ waitingFor: input.gate, approvals }));
  await wf.condition(() => approvals.some((a) => a.gate === input.gate));
  return `approved ${input.gate} by ${approvals.find((a) => a.gate === input.gate)?.by ?? 'someone'}`;
}

/** Sleeps 30 days: completes in seconds only where time skips. */
export async function sleepThirtyDays(): Promise<string> {
  const start = Date.now();
  await wf.sleep('30 days');
  return `slept ${Math.round((Date.now() - start) / 86_400_000)} days`;
}
