/**
 * Settling after a failure, `abort` or cancel, in this order: re-enforce the policies; find out
 * which Jobs may have changed files; roll forward or back; delete the Jobs; make each template
 * carry the IDs its files have; start only the databases whose template matches their files.
 * Whatever cannot be finished is said under "left to do" rather than retried for ever.
 */
import { ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import { Recovery } from '../core/input.js';
import type { DatabasePlan, PodIds } from '../core/plan.js';
import type { JobRef } from '../services/ownership-jobs.js';
import { EndState } from './messages.js';
import { idsOf, jobStatuses, type Migration } from './migrate.js';
import { runOwnershipJobs } from './ownership-rounds.js';
import { updateJob } from './run-state.js';
import { act, HelmStepTimeout, wait, Wait } from './steps.js';

/** Whose IDs the files carry, as far as the run knows. */
type Files = 'old' | 'new' | 'mixed';

const sameIds = (a: PodIds, uid: number | null, gid: number | null) =>
  a.runAsUser === uid && (a.runAsGroup ?? a.fsGroup) === gid;

/** Settles the run after `err`; sets its end state and what is left to do. */
export async function settleAfter(m: Migration, err: unknown): Promise<void> {
  const { state, progress } = m;
  await m.settleStep('re-enforce the policies', () => m.window.reEnforce('compensation'));
  let files: Files = progress.filesNew ? 'new' : 'old';
  let rolledBack = false;
  if (progress.jobsStarted && !progress.filesNew) ({ files, rolledBack } = await settleFiles(m, err));
  if (files === 'mixed' || !m.plan) {
    state.status.endState = m.plan ? EndState.StoppedScaledDown : EndState.Unchanged;
    return;
  }
  const allStarted = await startWhatMatches(m, files);
  state.status.endState = !allStarted
    ? EndState.StoppedScaledDown
    : files === 'new'
      ? EndState.RolledForward
      : rolledBack
        ? EndState.RolledBack
        : EndState.Unchanged;
}

/** Once Jobs may have run: which did, roll forward or back, delete them. */
async function settleFiles(m: Migration, err: unknown): Promise<{ files: Files; rolledBack: boolean }> {
  const { input, namespace, state } = m;
  const status = state.status;
  // Interrupted while creating them: ask the cluster which exist.
  const refs =
    m.progress.refs ??
    (
      await m.settleStep("find this run's ownership Jobs", () =>
        act(m.stubs.settle.findOwnershipJobs, "find this run's ownership Jobs", {
          namespace,
          owner: m.owner,
        }),
      )
    )?.value ??
    null;
  const { ran, admitted } = await whichRan(m, refs);
  // Those Jobs already had every attempt the input allows.
  const forwardFailedForGood =
    err instanceof ApplicationFailure && err.type === FailureType.OwnershipJobFailed;
  if (input.recovery === Recovery.RollForward && ran && refs && !forwardFailedForGood)
    await rollForward(
      m,
      refs.filter((r) => admitted.includes(r.name)),
    );
  const jobsGone = await m.settleStep('delete the ownership Jobs and wait until their pods are gone', () =>
    wait(m.stubs.settle.deleteOwnershipJobs, 'delete the ownership Jobs', { namespace }, Wait.podsGone),
  );
  let files: Files = 'mixed';
  let rolledBack = false;
  if (jobsGone === undefined) {
    status.leftToDo.push(
      `ownership Jobs of ${namespace} could not be confirmed gone: kubectl delete jobs -n ${namespace} -l app.kubernetes.io/managed-by=runas-migrate --cascade=foreground, then check the files`,
    );
  } else if (status.jobs.every((j) => j.state === 'succeeded')) {
    files = 'new';
  } else if (!ran) {
    files = 'old';
  } else if (input.recovery === Recovery.RollBack && (await rollBack(m))) {
    files = 'old';
    rolledBack = true;
  }
  if (files === 'mixed') {
    const failed = status.jobs
      .filter((j) => j.state !== 'succeeded')
      .map((j) => `${j.name} (${j.state}${j.message ? `: ${j.message}` : ''})`);
    status.leftToDo.push(
      `the files of ${namespace} are partly ${input.uid}:${input.gid} and partly as before; the databases stay scaled to 0 so none starts on files it cannot use. Not finished: ${failed.join(', ')}. ` +
        `Fix the cause, then start the run again with the same input (its Jobs change only what is left), or with "recovery": "roll-back" to return to the old IDs`,
    );
  }
  return { files, rolledBack };
}

/**
 * Which Jobs may have changed files: those of earlier attempts that ended, and those whose pod
 * is bound to a node now that the policies are back (an unscheduled pod has not run, and
 * deleted now it never will).
 */
async function whichRan(m: Migration, refs: JobRef[] | null): Promise<{ ran: boolean; admitted: string[] }> {
  const { namespace } = m;
  let ran = refs === null || m.state.status.jobs.some((j) => j.state === 'succeeded' || j.state === 'failed');
  let admitted: string[] = [];
  if (refs?.length) {
    const evidence = await m.settleStep('see which ownership Jobs have pods', () =>
      wait(
        m.stubs.settle.waitForPodsAdmitted,
        'see which ownership Jobs have pods',
        { namespace, jobs: refs },
        Wait.podsSettled,
      ),
    );
    admitted =
      evidence?.value.admitted.filter((a) => a.node !== null).map((a) => a.job) ?? refs.map((r) => r.name);
    ran ||= admitted.length > 0;
  }
  return { ran, admitted };
}

/** Roll forward: waits for the Jobs that are running, so their files end up new. */
async function rollForward(m: Migration, running: JobRef[]): Promise<void> {
  const { input, namespace } = m;
  const outcomes = running.length
    ? await m.settleStep(`wait for ${running.length} running ownership Jobs (roll forward)`, () =>
        wait(
          m.stubs.settle.waitForJobs,
          'wait for the running ownership Jobs (roll forward)',
          { namespace, jobs: running, uid: input.uid, gid: input.gid },
          m.ms(input.job.timeout) + Wait.margin,
        ),
      )
    : undefined;
  for (const o of outcomes?.value ?? [])
    updateJob(m.state.status.jobs, o.name, {
      state: o.succeeded ? 'succeeded' : 'failed',
      message: o.message,
      ...(o.summary ? { summary: o.summary } : {}),
    });
}

/**
 * Roll back: reverse Jobs to each database's old IDs, one round after another (each opens its
 * own window, and IDs may differ per database). Returns whether every reverse Job succeeded.
 */
async function rollBack(m: Migration): Promise<boolean> {
  const { input, namespace, state } = m;
  state.status.rollbackJobs = jobStatuses(m.plan);
  const reverse: boolean[] = [];
  for (const d of m.plan.databases) {
    const { uid, gid } = idsOf(d);
    const failed = await m.settleStep(
      `change the files of ${d.statefulSet} back to ${uid}:${gid} (roll back)`,
      () =>
        runOwnershipJobs(
          m,
          { uid: uid!, gid: gid! },
          d.jobs,
          state.status.rollbackJobs,
          input.job.retries + 1,
        ),
    );
    reverse.push(failed !== undefined && failed.value.length === 0);
  }
  await m.settleStep('re-enforce the policies', () => m.window.reEnforce('compensation'));
  await m.settleStep('delete the reverse Jobs', () =>
    wait(
      m.stubs.settle.deleteOwnershipJobs,
      'delete the reverse ownership Jobs',
      { namespace },
      Wait.podsGone,
    ),
  );
  return reverse.every(Boolean);
}

/**
 * The template must carry the IDs the files have before anything starts on them: starts each
 * scaled-down database whose template matches (or could be put back), and says what to do for
 * the others. Returns whether every one started.
 */
async function startWhatMatches(m: Migration, files: 'old' | 'new'): Promise<boolean> {
  const startable: DatabasePlan[] = [];
  for (const db of m.progress.scaledDown) {
    if (await matchTemplate(m, db, files)) startable.push(db);
  }
  const { namespace, state } = m;
  await Promise.all(
    startable.map((db) =>
      m
        .settleStep(`scale ${db.statefulSet} back to ${db.replicas}`, () =>
          wait(
            m.stubs.settle.scaleUp,
            `scale ${db.statefulSet} back to ${db.replicas}`,
            { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
            Wait.replicasReady,
          ),
        )
        .then((done) => {
          if (done === undefined)
            state.status.leftToDo.push(
              `StatefulSet ${db.statefulSet} did not become Ready at ${db.replicas} replicas: kubectl describe statefulset ${db.statefulSet} -n ${namespace}`,
            );
        }),
    ),
  );
  return startable.length === m.progress.scaledDown.length;
}

/**
 * Rolls the Helm release back to the revision recorded before the upgrade, once for every
 * StatefulSet it renders. Returns whether the release is back.
 */
async function rollBackRelease(m: Migration): Promise<boolean> {
  const { progress, namespace, state } = m;
  if (progress.helmRolledBack) return true;
  const release = m.input.securityContext.helm!.release;
  const revision = progress.helmRevisionBefore!;
  const done = await m.settleStep(`roll back helm release ${release} to revision ${revision}`, () =>
    act(
      m.stubs.settle.helmRollback,
      `helm rollback ${release} ${revision}`,
      { namespace, release, revision },
      HelmStepTimeout,
    ),
  );
  if (!done) return false;
  progress.helmRolledBack = true;
  if (state.status.helm) state.status.helm.rolledBackTo = done.value.revision;
  return true;
}

/** Whether `db`'s template carries (or was put back to) the IDs of its files. */
async function matchTemplate(m: Migration, db: DatabasePlan, files: 'old' | 'new'): Promise<boolean> {
  const { input, namespace } = m;
  const current = await m.settleStep(`read the template of ${db.statefulSet}`, () =>
    act(m.stubs.settle.readPodIds, `read securityContext of ${db.statefulSet}`, {
      namespace,
      statefulSet: db.statefulSet,
    }),
  );
  const want = files === 'new' ? { uid: input.uid, gid: input.gid } : idsOf(db);
  if (current && sameIds(current.value, want.uid, want.gid)) return true;
  const previous = m.progress.previousIds.get(db.statefulSet);
  if (files === 'old' && previous) {
    const ok = await m.settleStep(`restore securityContext of ${db.statefulSet}`, () =>
      act(m.stubs.settle.patchPodIds, `restore securityContext of ${db.statefulSet}`, {
        namespace,
        statefulSet: db.statefulSet,
        ids: previous,
      }),
    );
    if (ok) return true;
  }
  if (files === 'old' && m.progress.helmRevisionBefore !== null && (await rollBackRelease(m))) {
    const again = await m.settleStep(`read the template of ${db.statefulSet} after the rollback`, () =>
      act(m.stubs.settle.readPodIds, `read securityContext of ${db.statefulSet}`, {
        namespace,
        statefulSet: db.statefulSet,
      }),
    );
    if (again && sameIds(again.value, want.uid, want.gid)) return true;
  }
  m.state.status.leftToDo.push(
    `StatefulSet ${db.statefulSet} stays at 0 replicas: its template runs as ${current ? `${current.value.runAsUser}:${current.value.runAsGroup}` : 'unknown IDs'} but the files belong to ${want.uid}:${want.gid}. ` +
      (files === 'old' && m.progress.helmRevisionBefore !== null
        ? `Roll the release back (helm rollback ${m.input.securityContext.helm!.release} ${m.progress.helmRevisionBefore} -n ${namespace})`
        : `Set the template to ${want.uid}:${want.gid} (helm or your own change)`) +
      `, then kubectl scale statefulset ${db.statefulSet} -n ${namespace} --replicas=${db.replicas}`,
  );
  return false;
}
