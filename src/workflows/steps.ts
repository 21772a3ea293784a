/**
 * How the run calls its steps: the activity stubs with their retry policies, and the two ways
 * to call one (a step with a summary, or a wait whose deadline survives retries).
 */
import * as wf from '@temporalio/workflow';
import type { ActivityOptions } from '@temporalio/common';
import type { Activities } from '../activities/index.js';
import { HelmCommandMs } from '../core/helm.js';

/** How long each wait may take; its activity gets that deadline plus {@link Wait.margin}. */
export const Wait = {
  podsGone: 10 * 60_000,
  replicasReady: 15 * 60_000,
  platformReady: 15 * 60_000,
  /** Once the policies are back, a Job's pod exists or was refused within this. */
  podsSettled: 60_000,
  /** Room for a wait's last poll and its report after its own deadline. */
  margin: 2 * 60_000,
} as const;

/** Start-to-close timeout of a step that does not wait for the cluster. */
export const StepTimeout = '2 minutes';

/** A helm step outlasts its command, so a retry never runs beside a helm that is still going. */
export const HelmStepTimeout = { startToCloseTimeout: HelmCommandMs + Wait.margin };

const retry = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '30 seconds',
  maximumAttempts: 10,
};

/** Attempts of a settling step before it is reported as left to do. */
const SettleAttempts = 5;

/** The activity stubs of a run, by how hard each kind of step tries. */
export interface Steps {
  /** The procedure's steps. */
  steps: wf.ActivityInterfaceFor<Activities>;
  /** Settling after a failure: gives up after its attempts and says what is left, rather than looping. */
  settle: wf.ActivityInterfaceFor<Activities>;
  /** Restoring the policies: never gives up, a namespace must not stay open. */
  policies: wf.ActivityInterfaceFor<Activities>;
}

/**
 * The run's activity stubs. Every step heartbeats (the activities' adapter), so a worker that
 * dies is noticed within `heartbeatTimeout` whatever step it was running. Cancellation waits
 * for the step: left unset, the SDK encodes `cancellationType` as the protocol's 0, TRY_CANCEL,
 * and a compensation would then race the step it undoes.
 */
export function stepsFor(heartbeatTimeout: string): Steps {
  const base = {
    heartbeatTimeout,
    startToCloseTimeout: StepTimeout,
    cancellationType: wf.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
  return {
    steps: wf.proxyActivities<Activities>({ ...base, retry }),
    settle: wf.proxyActivities<Activities>({ ...base, retry: { ...retry, maximumAttempts: SettleAttempts } }),
    policies: wf.proxyActivities<Activities>({
      ...base,
      retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
    }),
  };
}

type Act<A, R> = ((arg: A) => Promise<R>) & { executeWithOptions(o: ActivityOptions, a: [A]): Promise<R> };

/** Calls an activity with a one-line summary for the Web UI. */
export function act<A, R>(fn: Act<A, R>, summary: string, arg: A, options: ActivityOptions = {}): Promise<R> {
  return fn.executeWithOptions({ ...options, summary }, [arg]);
}

/** Calls a waiting activity that must end by `waitMs` from now: its deadline survives retries. */
export function wait<F extends (arg: never) => Promise<unknown>>(
  fn: F & { executeWithOptions(o: ActivityOptions, a: Parameters<F>): ReturnType<F> },
  summary: string,
  arg: Omit<Parameters<F>[0], 'deadline' | 'timeoutSeconds'>,
  waitMs: number,
): ReturnType<F> {
  const deadline = new Date(Date.now() + waitMs).toISOString();
  const full = { ...arg, deadline, timeoutSeconds: Math.ceil(waitMs / 1000) } as unknown as Parameters<F>[0];
  return fn.executeWithOptions(
    { summary, startToCloseTimeout: waitMs + Wait.margin, scheduleToCloseTimeout: waitMs + 2 * Wait.margin },
    [full] as Parameters<F>,
  );
}
