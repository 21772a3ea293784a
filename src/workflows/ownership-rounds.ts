/**
 * Rounds of ownership Jobs: each round opens a fresh window, creates the Jobs of the targets
 * not yet done, closes the window as soon as the mode allows, and waits for the Jobs.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import type { DatabasePlan } from '../core/plan.js';
import type { JobOutcome, JobRef } from '../services/ownership-jobs.js';
import { Phase, type JobStatus } from './messages.js';
import type { Migration } from './migrate.js';
import { updateJob } from './run-state.js';
import { act, wait, Wait } from './steps.js';

/** One Job of the plan. */
export type PlannedJob = DatabasePlan['jobs'][number];

/** Target IDs of a round. */
export interface RoundIds {
  uid: number;
  gid: number;
}

/**
 * Runs one Job per target to `ids`, each attempt under a fresh window, until every target
 * succeeded or `attempts` are spent. Returns the outcomes that failed (empty: all done).
 */
export async function runOwnershipJobs(
  m: Migration,
  ids: RoundIds,
  targets: PlannedJob[],
  jobs: JobStatus[],
  attempts: number,
): Promise<JobOutcome[]> {
  const remaining = new Set(targets.map((t) => t.name));
  for (let attempt = 1; ; attempt++) {
    const outcomes = await oneRound(
      m,
      ids,
      targets.filter((t) => remaining.has(t.name)),
      jobs,
      attempt,
    );
    for (const o of outcomes) {
      updateJob(jobs, o.name, {
        state: o.succeeded ? 'succeeded' : 'failed',
        message: o.message,
        ...(o.summary ? { summary: o.summary } : {}),
      });
      if (o.succeeded) remaining.delete(o.name);
    }
    if (remaining.size === 0) return [];
    if (attempt >= attempts) return outcomes.filter((o) => !o.succeeded);
  }
}

async function oneRound(
  m: Migration,
  ids: RoundIds,
  batch: PlannedJob[],
  jobs: JobStatus[],
  attempt: number,
): Promise<JobOutcome[]> {
  const { state, input, namespace, stubs } = m;
  state.setPhase(Phase.RelaxingPolicies);
  const run = { namespace, uid: ids.uid, gid: ids.gid, job: input.job };
  const window = await m.window.open({ run, targets: batch });

  state.setPhase(Phase.MigratingOwnership);
  m.progress.jobsStarted = true;
  m.progress.refs = null;
  const refs: JobRef[] = await act(
    stubs.steps.createOwnershipJobs,
    `create ${batch.length} ownership Jobs to ${ids.uid}:${ids.gid}`,
    { run, targets: batch, owner: m.owner },
  );
  m.progress.refs = refs;
  for (const r of refs) updateJob(jobs, r.name, { state: 'created', attempts: attempt });
  const admitted =
    input.window.mode === 'admission'
      ? await closeOnAdmission(m, refs, jobs, window.relaxedAt)
      : { running: refs, lost: [] };
  const outcomes = admitted.running.length
    ? await wait(
        stubs.steps.waitForJobs,
        `wait for ${admitted.running.length} ownership Jobs`,
        { namespace, jobs: admitted.running, uid: ids.uid, gid: ids.gid },
        m.ms(input.job.timeout) + Wait.margin,
      )
    : [];
  state.setPhase(Phase.ReEnforcingPolicies);
  await m.window.reEnforce(
    input.window.mode === 'admission' ? 'every migration pod admitted' : 'every Job finished',
  );
  await window.closeTimer();
  return [...outcomes, ...admitted.lost];
}

/**
 * Window mode `admission`: closes the window once every Job's pod is admitted (or window.max
 * passed). A Job whose pod did not appear within the window would be refused once the policies
 * are back: it is removed and counts as a failed attempt instead of being waited for.
 *
 * @throws `AdmissionRefused` when a pod was refused.
 */
async function closeOnAdmission(
  m: Migration,
  refs: JobRef[],
  jobs: JobStatus[],
  relaxedAt: string,
): Promise<{ running: JobRef[]; lost: JobOutcome[] }> {
  const { state, input, namespace, stubs } = m;
  const opened = Date.parse(relaxedAt);
  const evidence = await wait(
    stubs.steps.waitForPodsAdmitted,
    'wait until every migration pod is admitted',
    { namespace, jobs: refs },
    Math.max(1000, opened + m.ms(input.window.max) - Date.now()),
  );
  state.status.admission.push(evidence);
  for (const a of evidence.admitted) updateJob(jobs, a.job, { state: 'admitted', pod: a.pod });
  await m.window.reEnforce(
    evidence.timedOut ? 'admission wait reached window.max' : 'every migration pod admitted',
  );
  state.setPhase(Phase.ReEnforcingPolicies);
  if (evidence.refused.length) {
    throw ApplicationFailure.nonRetryable(
      `admission refused: ${evidence.refused.map((r) => `${r.job}: ${r.message}`).join('; ')}`,
      FailureType.AdmissionRefused,
    );
  }
  const running = refs.filter((r) => evidence.admitted.some((a) => a.job === r.name));
  const stuck = refs.filter((r) => !running.includes(r)).map((r) => r.name);
  const lost: JobOutcome[] = [];
  if (stuck.length) {
    await wait(
      stubs.steps.deleteOwnershipJobs,
      `delete ${stuck.length} Jobs whose pods were not admitted`,
      { namespace, names: stuck },
      Wait.podsGone,
    );
    for (const name of stuck) {
      updateJob(jobs, name, { state: 'not-admitted' });
      lost.push({
        name,
        succeeded: false,
        summary: null,
        message: `its pod was not created within window.max ${input.window.max}`,
      });
    }
  }
  state.setPhase(Phase.MigratingOwnership);
  return { running, lost };
}
