/**
 * `migrateOwnership`: the vendor's manual procedure as one durable run. Each phase is an
 * activity with retries; approvals are signals; the policies are always re-enforced — on
 * success, failure, abort and cancel — and the run always ends with files and template in
 * agreement (an {@link EndState}): no database is started on files it does not own.
 */
import * as wf from '@temporalio/workflow';
import {
  ActivityFailure,
  ApplicationFailure,
  defineSearchAttributeKey,
  SearchAttributeType,
  type ActivityOptions,
} from '@temporalio/common';
import type { Activities } from '../activities/index.js';
import type { PodIds, JobOutcome } from '../activities/migration.js';
import type { JobRef } from '../activities/policy.js';
import {
  InvalidInputError,
  parseDuration,
  parseMigrationInput,
  Recovery,
  type Gate,
  type MigrationInput,
} from '../src/input.js';
import { reasonOf } from '../src/failure-reason.js';
import { SearchAttribute } from '../src/names.js';
import { planChanges } from '../src/plan-changes.js';
import type { DatabasePlan, MigrationPlan } from '../src/plan.js';
import type { RelaxationRecord, RunRef } from '../src/policy.js';
import {
  abortSignal,
  approveSignal,
  EndState,
  Phase,
  securityContextAppliedSignal,
  windowClosedBySweeperSignal,
  statusQuery,
  type JobStatus,
  type MigrationReport,
  type MigrationStatus,
} from './messages.js';

/** Failure types a run ends with. */
export const RunFailureType = {
  InvalidInput: 'InvalidInput',
  PreflightFailed: 'PreflightFailed',
  PlanChanged: 'PlanChanged',
  /** Another open run holds the namespace's lock (raised by `acquireNamespaceLock`). */
  NamespaceLocked: 'NamespaceLocked',
  ApprovalTimedOut: 'ApprovalTimedOut',
  Aborted: 'Aborted',
  AdmissionRefused: 'AdmissionRefused',
  OwnershipJobFailed: 'OwnershipJobFailed',
  VerificationFailed: 'VerificationFailed',
  CompensationFailed: 'CompensationFailed',
} as const;

/** How long each wait may take; its activity gets that deadline plus {@link Wait.margin}. */
const Wait = {
  podsGone: 10 * 60_000,
  replicasReady: 15 * 60_000,
  platformReady: 15 * 60_000,
  /** Once the policies are back, a Job's pod exists or was refused within this. */
  podsSettled: 60_000,
  /** Room for a wait's last poll and its report after its own deadline. */
  margin: 2 * 60_000,
} as const;

const retry = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '30 seconds',
  maximumAttempts: 10,
};

/**
 * The run's activity stubs. Every step heartbeats (the worker's keep-alive), so a worker that
 * dies is noticed within `heartbeatTimeout` whatever step it was running. Cancellation waits
 * for the step: left unset, the SDK encodes `cancellationType` as the protocol's 0, TRY_CANCEL,
 * and a compensation would then race the step it undoes.
 */
function activitiesFor(heartbeatTimeout: string) {
  const base = {
    heartbeatTimeout,
    startToCloseTimeout: '2 minutes',
    cancellationType: wf.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  };
  return {
    steps: wf.proxyActivities<Activities>({ ...base, retry }),
    // Settling gives up after its attempts and says what is left, rather than looping.
    settle: wf.proxyActivities<Activities>({ ...base, retry: { ...retry, maximumAttempts: 5 } }),
    // The policies never give up: a namespace must not stay open.
    policies: wf.proxyActivities<Activities>({
      ...base,
      retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
    }),
  };
}

const nowIso = () => new Date(Date.now()).toISOString();
const ms = (d: string) => parseDuration(d) ?? 0;
const PhaseKey = defineSearchAttributeKey(SearchAttribute.Phase, SearchAttributeType.KEYWORD);
const NamespaceKey = defineSearchAttributeKey(SearchAttribute.TargetNamespace, SearchAttributeType.KEYWORD);
const PhaseSinceKey = defineSearchAttributeKey(SearchAttribute.PhaseSince, SearchAttributeType.DATETIME);

type PlannedJob = DatabasePlan['jobs'][number];
type Act<A, R> = ((arg: A) => Promise<R>) & { executeWithOptions(o: ActivityOptions, a: [A]): Promise<R> };

/** Calls an activity with a one-line summary for the Web UI. */
function act<A, R>(fn: Act<A, R>, summary: string, arg: A, options: ActivityOptions = {}): Promise<R> {
  return fn.executeWithOptions({ ...options, summary }, [arg]);
}

/** Calls a waiting activity that must end by `waitMs` from now: its deadline survives retries. */
function wait<F extends (arg: never) => Promise<unknown>>(
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

const idsOf = (d: DatabasePlan) => ({
  uid: d.currentIds.runAsUser,
  gid: d.currentIds.runAsGroup ?? d.currentIds.fsGroup,
});
const sameIds = (a: PodIds, uid: number | null, gid: number | null) =>
  a.runAsUser === uid && (a.runAsGroup ?? a.fsGroup) === gid;

/** Migrates the ownership of a namespace's database volumes to new IDs. */
export async function migrateOwnership(raw: unknown): Promise<MigrationReport> {
  const info = wf.workflowInfo();
  const owner: RunRef = { workflowId: info.workflowId, runId: info.runId };
  const status: MigrationStatus = {
    phase: Phase.Validating,
    namespace: null,
    startedAt: nowIso(),
    phaseSince: nowIso(),
    gates: [],
    windowMode: null,
    windows: [],
    jobs: [],
    policies: { state: 'enforced', record: null, lastRestore: null },
    admission: [],
    compensations: [],
    compensationFailures: [],
    rejectedSignals: [],
    plan: null,
    error: null,
    recovery: null,
    rollbackJobs: [],
    endState: null,
    leftToDo: [],
    alarms: [],
  };
  let abortReason: string | undefined;
  let securityContextSignals = 0;
  const main = new wf.CancellationScope();

  wf.setHandler(statusQuery, () => status);
  wf.setHandler(approveSignal, (a) => {
    const gate = status.gates.find((g) => g.gate === a?.gate);
    const reject = (why: string) =>
      void status.rejectedSignals.push(`approve for gate "${String(a?.gate)}": ${why}`);
    if (!gate || !gate.required) {
      const gates = status.gates.filter((g) => g.required).map((g) => g.gate);
      return reject(`not a gate of this run (${gates.join(', ') || 'none'})`);
    }
    if (gate.state === 'approved' || gate.state === 'timed-out') return reject(`already ${gate.state}`);
    // An approval says "I have seen what this gate shows": nothing is shown before it is reached.
    if (gate.state === 'pending')
      return reject(
        `not reached yet (the run is ${status.phase}): approve it when the status shows it waiting`,
      );
    Object.assign(gate, { state: 'approved', by: a.by ?? 'unknown', comment: a.comment, at: nowIso() });
  });
  wf.setHandler(abortSignal, (a) => {
    if (abortReason !== undefined) return;
    abortReason = `${a?.reason ?? 'no reason given'}${a?.by ? ` (by ${a.by})` : ''}`;
    main.cancel();
  });
  wf.setHandler(securityContextAppliedSignal, () => void securityContextSignals++);
  wf.setHandler(windowClosedBySweeperSignal, (s) => {
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
    if (!restoring) {
      mayBeRelaxed = false;
      status.policies.state = 'restored';
    }
  });

  const setPhase = (phase: Phase, details?: string) => {
    if (status.phase !== phase) {
      status.phase = phase;
      status.phaseSince = nowIso();
    }
    wf.upsertSearchAttributes([
      { key: PhaseKey, value: phase },
      { key: PhaseSinceKey, value: new Date(status.phaseSince) },
    ]);
    const lines = [`**${phase}**${status.namespace ? ` — namespace \`${status.namespace}\`` : ''}`];
    if (details) lines.push(details);
    if (status.policies.state !== 'enforced') lines.push(`policies: **${status.policies.state}**`);
    wf.setCurrentDetails(lines.join('\n\n'));
  };

  let input: MigrationInput;
  try {
    input = parseMigrationInput(raw);
  } catch (err) {
    status.phase = Phase.Failed;
    status.error = (err as Error).message;
    if (err instanceof InvalidInputError)
      throw ApplicationFailure.nonRetryable(err.message, RunFailureType.InvalidInput);
    throw err;
  }
  const { steps, settle, policies } = activitiesFor(input.heartbeatTimeout);
  const namespace = input.namespace;
  status.namespace = namespace;
  status.windowMode = input.window.mode;
  status.recovery = input.recovery;
  status.gates = (['plan', 'relax'] as const).map((g) => ({
    gate: g,
    required: input.approvals.includes(g),
    state: input.approvals.includes(g) ? 'pending' : 'not-required',
  }));
  wf.upsertSearchAttributes([{ key: NamespaceKey, value: namespace }]);
  setPhase(Phase.Validating);

  /** What the run has changed so far: what settling works from. */
  const progress = {
    locked: false,
    /** StatefulSets this run scaled to 0. */
    scaledDown: [] as DatabasePlan[],
    /** The template's IDs before the run (patch mode): what a roll-back puts back. */
    previousIds: new Map<string, PodIds>(),
    /** Some ownership Job may exist, so files may have changed. */
    jobsStarted: false,
    /** The Jobs of the latest round, once their creation returned. */
    refs: null as JobRef[] | null,
    /** Every file under the planned volumes carries the new IDs (every forward Job succeeded). */
    filesNew: false,
  };
  let record: RelaxationRecord | null = null;
  let restoring: Promise<void> | undefined;
  // Set before each relax call: a relax that failed half-way must be restored too.
  let mayBeRelaxed = false;

  /** Re-enforces the policies once per window; concurrent callers share the same restore. */
  const reEnforce = (because: string): Promise<void> => {
    if (!mayBeRelaxed && !restoring) return Promise.resolve();
    restoring ??= (async () => {
      status.policies.state = 'restoring';
      const report = await wf.CancellationScope.nonCancellable(() =>
        act(policies.restorePolicies, `re-enforce the policies of ${namespace} (${because})`, {
          namespace,
          owner,
          ...(record ? { record } : {}),
        }),
      );
      status.policies.lastRestore = report;
      for (const alarm of [
        ...report.alarms,
        ...(report.refused ? [`restore refused: ${report.refused}`] : []),
      ])
        if (!status.alarms.includes(alarm)) status.alarms.push(alarm);
      status.policies.state = 'restored';
      mayBeRelaxed = false;
      const w = status.windows.at(-1);
      if (w && !w.closedAt) Object.assign(w, { closedAt: nowIso(), closedBecause: because });
    })().finally(() => {
      restoring = undefined;
    });
    return restoring;
  };

  const gate = async (name: Gate, what: string) => {
    const g = status.gates.find((x) => x.gate === name)!;
    if (!g.required) return;
    g.state = 'waiting';
    setPhase(
      status.phase,
      `waiting for approval of gate \`${name}\`: ${what}. Signal \`approve\` with \`{"gate":"${name}"}\`.`,
    );
    const ok = await wf.condition(() => g.state === 'approved', ms(input.approvalTimeout));
    if (!ok) {
      g.state = 'timed-out';
      throw ApplicationFailure.nonRetryable(
        `gate "${name}" was not approved within ${input.approvalTimeout}`,
        RunFailureType.ApprovalTimedOut,
      );
    }
  };

  /**
   * Runs one Job per target to `ids`, each attempt under a fresh window, until every target
   * succeeded or `attempts` are spent. Returns the outcomes that failed (empty: all done).
   */
  const runOwnershipJobs = async (
    ids: { uid: number; gid: number },
    targets: PlannedJob[],
    jobs: JobStatus[],
    attempts: number,
  ): Promise<JobOutcome[]> => {
    const remaining = new Set(targets.map((t) => t.name));
    for (let attempt = 1; ; attempt++) {
      setPhase(Phase.RelaxingPolicies);
      mayBeRelaxed = true;
      const relaxed = await act(steps.relaxPolicies, `relax the policies of ${namespace}`, {
        namespace,
        owner,
        closeWithinSeconds: (ms(input.window.max) + ms(input.window.grace)) / 1000,
        podSecurity: input.policies.podSecurity,
        gatekeeper: input.policies.gatekeeper,
      });
      record = relaxed.record;
      status.policies.record = relaxed.record;
      status.policies.state = 'relaxed';
      status.windows.push({ openedAt: relaxed.relaxedAt });
      const windowTimer = new wf.CancellationScope();
      // Handled at once: a restore that fails here is reported, never thrown into the workflow task.
      const maxTimer = windowTimer
        .run(() => wf.sleep(ms(input.window.max)))
        .then(
          () => reEnforce(`window.max ${input.window.max} reached`),
          () => undefined,
        )
        .catch((err: unknown) => {
          status.compensationFailures.push(`re-enforce at window.max: ${reasonOf(err)}`);
        });

      setPhase(Phase.MigratingOwnership);
      const batch = targets.filter((t) => remaining.has(t.name));
      progress.jobsStarted = true;
      progress.refs = null;
      const refs: JobRef[] = await act(
        steps.createOwnershipJobs,
        `create ${batch.length} ownership Jobs to ${ids.uid}:${ids.gid}`,
        {
          run: { namespace, uid: ids.uid, gid: ids.gid, job: input.job },
          targets: batch,
          owner,
        },
      );
      progress.refs = refs;
      for (const r of refs)
        Object.assign(
          jobs.find((x) => x.name === r.name)!,
          { state: 'created', attempts: attempt },
        );
      let running = refs;
      const lost: JobOutcome[] = [];
      if (input.window.mode === 'admission') {
        const opened = Date.parse(relaxed.relaxedAt);
        const evidence = await wait(
          steps.waitForPodsAdmitted,
          'wait until every migration pod is admitted',
          { namespace, jobs: refs },
          Math.max(1000, opened + ms(input.window.max) - Date.now()),
        );
        status.admission.push(evidence);
        for (const a of evidence.admitted)
          Object.assign(
            jobs.find((x) => x.name === a.job)!,
            { state: 'admitted', pod: a.pod },
          );
        await reEnforce(
          evidence.timedOut ? 'admission wait reached window.max' : 'every migration pod admitted',
        );
        setPhase(Phase.ReEnforcingPolicies);
        if (evidence.refused.length) {
          throw ApplicationFailure.nonRetryable(
            `admission refused: ${evidence.refused.map((r) => `${r.job}: ${r.message}`).join('; ')}`,
            RunFailureType.AdmissionRefused,
          );
        }
        // A Job whose pod did not appear within the window will be refused once the policies are
        // back: it is removed and counts as a failed attempt instead of being waited for.
        running = refs.filter((r) => evidence.admitted.some((a) => a.job === r.name));
        const stuck = refs.filter((r) => !running.includes(r)).map((r) => r.name);
        if (stuck.length) {
          await wait(
            steps.deleteOwnershipJobs,
            `delete ${stuck.length} Jobs whose pods were not admitted`,
            { namespace, names: stuck },
            Wait.podsGone,
          );
          for (const name of stuck) {
            Object.assign(
              jobs.find((x) => x.name === name)!,
              { state: 'not-admitted' },
            );
            lost.push({
              name,
              succeeded: false,
              summary: null,
              message: `its pod was not created within window.max ${input.window.max}`,
            });
          }
        }
        setPhase(Phase.MigratingOwnership);
      }
      const outcomes = running.length
        ? await wait(
            steps.waitForJobs,
            `wait for ${running.length} ownership Jobs`,
            { namespace, jobs: running, uid: ids.uid, gid: ids.gid },
            ms(input.job.timeout) + Wait.margin,
          )
        : [];
      setPhase(Phase.ReEnforcingPolicies);
      await reEnforce(
        input.window.mode === 'admission' ? 'every migration pod admitted' : 'every Job finished',
      );
      windowTimer.cancel();
      await maxTimer;
      for (const o of [...outcomes, ...lost]) {
        Object.assign(
          jobs.find((x) => x.name === o.name)!,
          {
            state: o.succeeded ? 'succeeded' : 'failed',
            message: o.message,
            ...(o.summary ? { summary: o.summary } : {}),
          },
        );
        if (o.succeeded) remaining.delete(o.name);
      }
      if (remaining.size === 0) return [];
      if (attempt >= attempts) return [...outcomes, ...lost].filter((o) => !o.succeeded);
    }
  };

  let plan!: MigrationPlan;
  const jobStatuses = (p: MigrationPlan): JobStatus[] =>
    p.databases.flatMap((d) =>
      d.jobs.map((j) => ({
        name: j.name,
        statefulSet: d.statefulSet,
        ordinal: j.ordinal,
        state: 'pending' as const,
        attempts: 0,
      })),
    );
  const verification: string[] = [];
  const imageNote = input.job.image
    ? `; Job image ${input.job.image}, asked for instead of the StatefulSets' own: it runs as root over the volumes`
    : '';
  const ids = {
    runAsUser: input.uid,
    runAsGroup: input.gid,
    fsGroup: input.gid,
    supplementalGroups: input.supplementalGroups,
  };

  const scaleDown = (dbs: DatabasePlan[]) =>
    Promise.all(
      dbs.map(async (db) => {
        if (!progress.scaledDown.includes(db)) progress.scaledDown.push(db);
        await wait(
          steps.scaleDown,
          `scale ${db.statefulSet} to 0`,
          { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
          Wait.podsGone,
        );
      }),
    );

  const applySecurityContext = async (statefulSets: string[]) => {
    if (input.securityContext.apply === 'patch') {
      for (const db of plan.databases) {
        const previous = await act(steps.readPodIds, `read securityContext of ${db.statefulSet}`, {
          namespace,
          statefulSet: db.statefulSet,
        });
        if (!progress.previousIds.has(db.statefulSet)) progress.previousIds.set(db.statefulSet, previous);
        await act(steps.patchPodIds, `set ${db.statefulSet} to ${input.uid}:${input.gid}`, {
          namespace,
          statefulSet: db.statefulSet,
          ids,
        });
      }
    } else if (input.securityContext.apply === 'helm') {
      const h = input.securityContext.helm!;
      await act(steps.helmUpgrade, `helm upgrade ${h.release}`, {
        namespace,
        release: h.release,
        chart: h.chart,
        ...(h.valuesFile ? { valuesFile: h.valuesFile } : {}),
        extraArgs: h.extraArgs,
        uid: input.uid,
        gid: input.gid,
        supplementalGroups: input.supplementalGroups,
      });
    }
    if (input.securityContext.apply === 'none') return;
    for (;;) {
      if (input.securityContext.apply === 'external') {
        const seen = securityContextSignals;
        setPhase(
          Phase.ApplyingSecurityContext,
          `apply runAsUser/runAsGroup/fsGroup ${input.uid}:${input.gid} to ${statefulSets.join(', ')} (they are scaled to 0: keep them there), then signal \`securityContextApplied\`.`,
        );
        if (!(await wf.condition(() => securityContextSignals > seen, ms(input.approvalTimeout)))) {
          throw ApplicationFailure.nonRetryable(
            `no securityContextApplied signal within ${input.approvalTimeout}`,
            RunFailureType.ApprovalTimedOut,
          );
        }
      }
      const problems = await act(steps.verifySecurityContext, 'verify the StatefulSet templates', {
        namespace,
        statefulSets,
        uid: input.uid,
        gid: input.gid,
      });
      if (!problems.length) break;
      if (input.securityContext.apply !== 'external') {
        throw ApplicationFailure.nonRetryable(
          `securityContext not applied: ${problems.join('; ')}`,
          'SecurityContextNotApplied',
        );
      }
      status.rejectedSignals.push(`securityContextApplied, but: ${problems.join('; ')}`);
    }
    // helm and the operator may have scaled the databases up again with the new template.
    if (input.securityContext.apply !== 'patch') await scaleDown(plan.databases);
  };

  try {
    await main.run(async () => {
      if (!input.dryRun) {
        try {
          await act(steps.acquireNamespaceLock, `lock namespace ${namespace} for this run`, {
            namespace,
            owner,
          });
        } catch (err) {
          // The run fails as the lock refused it, not as "activity task failed".
          const root = err instanceof ActivityFailure ? err.cause : undefined;
          if (root instanceof ApplicationFailure && root.type === RunFailureType.NamespaceLocked)
            throw ApplicationFailure.nonRetryable(root.message, RunFailureType.NamespaceLocked);
          throw err;
        }
        progress.locked = true;
      }
      setPhase(Phase.Planning);
      plan = await act(steps.planMigration, `discover and plan ${namespace}`, { run: input, owner });
      status.plan = plan;
      status.jobs = jobStatuses(plan);
      const preflight = [...plan.preflight];
      if (input.recovery === Recovery.RollBack) {
        for (const d of plan.databases.filter((x) => idsOf(x).uid === null || idsOf(x).gid === null))
          preflight.push(
            `recovery roll-back: StatefulSet ${d.statefulSet} sets no runAsUser/runAsGroup, so the IDs to change the files back to are unknown: set them, or use recovery "roll-forward"`,
          );
      }
      if (preflight.length) {
        throw ApplicationFailure.nonRetryable(
          `preflight failed: ${preflight.join('; ')}`,
          RunFailureType.PreflightFailed,
        );
      }
      if (input.dryRun) return;

      await gate(
        'plan',
        `${status.jobs.length} Jobs over ${plan.databases.length} StatefulSets to ${input.uid}:${input.gid}; on failure after the Jobs start: ${input.recovery}${imageNote}`,
      );

      // Scaled to 0 before the template changes: a rolling update would otherwise start each
      // database with the new IDs on files that still belong to the old ones.
      setPhase(Phase.ScalingDown);
      await scaleDown(plan.databases);

      setPhase(Phase.ApplyingSecurityContext);
      await applySecurityContext(plan.databases.map((d) => d.statefulSet));

      await gate(
        'relax',
        `relax PSA to ${input.policies.podSecurity} and exclude ${namespace} from ${plan.policies.plan.constraints.length} Gatekeeper constraints; on failure after the Jobs start: ${input.recovery}${imageNote}`,
      );
      if (input.approvals.length) {
        const fresh = await act(steps.planMigration, `plan ${namespace} again after the approvals`, {
          run: input,
          owner,
        });
        const changes = [...planChanges(plan, fresh), ...fresh.preflight];
        if (changes.length)
          throw ApplicationFailure.nonRetryable(
            `the cluster changed while the run waited for approval: ${changes.join('; ')}. Start a new run to plan again`,
            RunFailureType.PlanChanged,
          );
      }

      const failed = await runOwnershipJobs(
        { uid: input.uid, gid: input.gid },
        plan.databases.flatMap((d) => d.jobs),
        status.jobs,
        input.job.retries + 1,
      );
      if (failed.length)
        throw ApplicationFailure.nonRetryable(
          `ownership Jobs failed after ${input.job.retries + 1} attempts: ${failed.map((f) => `${f.name}: ${f.message}`).join('; ')}`,
          RunFailureType.OwnershipJobFailed,
        );
      progress.filesNew = true;
      await wait(
        steps.deleteOwnershipJobs,
        'delete the finished ownership Jobs',
        { namespace },
        Wait.podsGone,
      );

      setPhase(Phase.ScalingUp);
      await Promise.all(
        plan.databases.map((db) =>
          wait(
            steps.scaleUp,
            `scale ${db.statefulSet} back to ${db.replicas}`,
            { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
            Wait.replicasReady,
          ),
        ),
      );
      progress.scaledDown = [];
      if (plan.platform) {
        await wait(
          steps.waitForPlatform,
          `wait for ${plan.platform.name} ${plan.platform.ready}`,
          { namespace, platform: plan.platform },
          Wait.platformReady,
        );
      }

      setPhase(Phase.Verifying);
      verification.push(
        ...(await act(steps.verifyDatabases, 'verify the databases', {
          namespace,
          statefulSets: plan.databases.map((d) => d.statefulSet),
          uid: input.uid,
          gid: input.gid,
        })),
      );
      if (verification.length)
        throw ApplicationFailure.nonRetryable(
          `verification failed: ${verification.join('; ')}`,
          RunFailureType.VerificationFailed,
        );
    });
  } catch (err) {
    status.error = abortReason ? `aborted: ${abortReason}` : reasonOf(err);
    setPhase(Phase.Compensating, status.error);
    await wf.CancellationScope.nonCancellable(() => settleAfter(err));
    if (status.compensationFailures.length)
      status.error += `; compensations that failed: ${status.compensationFailures.join('; ')}`;
    setPhase(abortReason ? Phase.Aborted : Phase.Failed, `${status.error}\n\nended ${status.endState}`);
    if (abortReason)
      throw ApplicationFailure.nonRetryable(`run aborted: ${abortReason}`, RunFailureType.Aborted, {
        endState: status.endState,
        leftToDo: status.leftToDo,
      });
    if (status.compensationFailures.length)
      throw ApplicationFailure.nonRetryable(status.error, RunFailureType.CompensationFailed, reasonOf(err));
    throw err;
  } finally {
    if (progress.locked)
      await wf.CancellationScope.nonCancellable(() =>
        step('release the namespace lock', () =>
          act(settle.releaseNamespaceLock, `unlock namespace ${namespace}`, { namespace, owner }),
        ),
      );
  }

  /**
   * Runs one settling step, recording it; a step that fails for good is reported, not thrown.
   * @returns `{ value }` when it succeeded, undefined when it failed.
   */
  async function step<T>(name: string, fn: () => Promise<T>): Promise<{ value: T } | undefined> {
    try {
      const value = await fn();
      status.compensations.push(name);
      return { value };
    } catch (failure) {
      status.compensationFailures.push(`${name}: ${reasonOf(failure)}`);
      return undefined;
    }
  }

  /**
   * After a failure, `abort` or cancel: re-enforce the policies, make files and template agree
   * (roll forward or back once Jobs may have changed files), and start the databases only on
   * files they own. Sets the end state and what is left to do.
   */
  async function settleAfter(err: unknown): Promise<void> {
    await step('re-enforce the policies', () => reEnforce('compensation'));
    let files: 'old' | 'new' | 'mixed' = progress.filesNew ? 'new' : 'old';
    let rolledBack = false;
    if (progress.jobsStarted && !progress.filesNew) {
      files = 'mixed';
      // Interrupted while creating them: ask the cluster which exist.
      const refs =
        progress.refs ??
        (
          await step("find this run's ownership Jobs", () =>
            act(settle.findOwnershipJobs, "find this run's ownership Jobs", { namespace, owner }),
          )
        )?.value ??
        null;
      // Which Jobs may have changed files: those of earlier attempts that ended, and those whose
      // pod is bound to a node now that the policies are back (an unscheduled pod has not run,
      // and deleted now it never will).
      let ran = refs === null || status.jobs.some((j) => j.state === 'succeeded' || j.state === 'failed');
      let admitted: string[] = [];
      if (refs?.length) {
        const evidence = await step('see which ownership Jobs have pods', () =>
          wait(
            settle.waitForPodsAdmitted,
            'see which ownership Jobs have pods',
            { namespace, jobs: refs },
            Wait.podsSettled,
          ),
        );
        admitted =
          evidence?.value.admitted.filter((a) => a.node !== null).map((a) => a.job) ??
          refs.map((r) => r.name);
        ran ||= admitted.length > 0;
      }
      // Those Jobs already had every attempt the input allows.
      const forwardFailedForGood =
        err instanceof ApplicationFailure && err.type === RunFailureType.OwnershipJobFailed;
      if (input.recovery === Recovery.RollForward && ran && refs && !forwardFailedForGood) {
        const running = refs.filter((r) => admitted.includes(r.name));
        const outcomes = running.length
          ? await step(`wait for ${running.length} running ownership Jobs (roll forward)`, () =>
              wait(
                settle.waitForJobs,
                'wait for the running ownership Jobs (roll forward)',
                { namespace, jobs: running, uid: input.uid, gid: input.gid },
                ms(input.job.timeout) + Wait.margin,
              ),
            )
          : undefined;
        for (const o of outcomes?.value ?? [])
          Object.assign(
            status.jobs.find((x) => x.name === o.name)!,
            {
              state: o.succeeded ? 'succeeded' : 'failed',
              message: o.message,
              ...(o.summary ? { summary: o.summary } : {}),
            },
          );
      }
      const jobsGone = await step('delete the ownership Jobs and wait until their pods are gone', () =>
        wait(settle.deleteOwnershipJobs, 'delete the ownership Jobs', { namespace }, Wait.podsGone),
      );
      if (jobsGone === undefined) {
        status.leftToDo.push(
          `ownership Jobs of ${namespace} could not be confirmed gone: kubectl delete jobs -n ${namespace} -l app.kubernetes.io/managed-by=runas-migrate --cascade=foreground, then check the files`,
        );
      } else if (status.jobs.every((j) => j.state === 'succeeded')) {
        files = 'new';
      } else if (!ran) {
        files = 'old';
      } else if (input.recovery === Recovery.RollBack) {
        status.rollbackJobs = jobStatuses(plan);
        // One round after another: each opens its own window, and IDs may differ per database.
        const reverse: boolean[] = [];
        for (const d of plan.databases) {
          const { uid, gid } = idsOf(d);
          const failed = await step(
            `change the files of ${d.statefulSet} back to ${uid}:${gid} (roll back)`,
            () =>
              runOwnershipJobs({ uid: uid!, gid: gid! }, d.jobs, status.rollbackJobs, input.job.retries + 1),
          );
          reverse.push(failed !== undefined && failed.value.length === 0);
        }
        await step('re-enforce the policies', () => reEnforce('compensation'));
        await step('delete the reverse Jobs', () =>
          wait(settle.deleteOwnershipJobs, 'delete the reverse ownership Jobs', { namespace }, Wait.podsGone),
        );
        if (reverse.every(Boolean)) {
          files = 'old';
          rolledBack = true;
        }
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
    }
    if (files === 'mixed' || !plan) {
      status.endState = plan ? EndState.StoppedScaledDown : EndState.Unchanged;
      return;
    }
    // The template must carry the IDs the files have before anything starts on them.
    const startable: DatabasePlan[] = [];
    for (const db of progress.scaledDown) {
      const current = await step(`read the template of ${db.statefulSet}`, () =>
        act(settle.readPodIds, `read securityContext of ${db.statefulSet}`, {
          namespace,
          statefulSet: db.statefulSet,
        }),
      );
      const want = files === 'new' ? { uid: input.uid, gid: input.gid } : idsOf(db);
      if (current && sameIds(current.value, want.uid, want.gid)) {
        startable.push(db);
        continue;
      }
      const previous = progress.previousIds.get(db.statefulSet);
      if (files === 'old' && previous) {
        const ok = await step(`restore securityContext of ${db.statefulSet}`, () =>
          act(settle.patchPodIds, `restore securityContext of ${db.statefulSet}`, {
            namespace,
            statefulSet: db.statefulSet,
            ids: previous,
          }),
        );
        if (ok) {
          startable.push(db);
          continue;
        }
      }
      status.leftToDo.push(
        `StatefulSet ${db.statefulSet} stays at 0 replicas: its template runs as ${current ? `${current.value.runAsUser}:${current.value.runAsGroup}` : 'unknown IDs'} but the files belong to ${want.uid}:${want.gid}. ` +
          `Set the template to ${want.uid}:${want.gid} (helm or your own change), then kubectl scale statefulset ${db.statefulSet} -n ${namespace} --replicas=${db.replicas}`,
      );
    }
    await Promise.all(
      startable.map((db) =>
        step(`scale ${db.statefulSet} back to ${db.replicas}`, () =>
          wait(
            settle.scaleUp,
            `scale ${db.statefulSet} back to ${db.replicas}`,
            { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
            Wait.replicasReady,
          ),
        ).then((done) => {
          if (done === undefined)
            status.leftToDo.push(
              `StatefulSet ${db.statefulSet} did not become Ready at ${db.replicas} replicas: kubectl describe statefulset ${db.statefulSet} -n ${namespace}`,
            );
        }),
      ),
    );
    const allStarted = startable.length === progress.scaledDown.length;
    status.endState = !allStarted
      ? EndState.StoppedScaledDown
      : files === 'new'
        ? EndState.RolledForward
        : rolledBack
          ? EndState.RolledBack
          : EndState.Unchanged;
  }

  setPhase(Phase.Completed);
  status.endState = EndState.Completed;
  const finishedAt = nowIso();
  const windowSeconds = status.windows.reduce(
    (s, w) => s + (w.closedAt ? (Date.parse(w.closedAt) - Date.parse(w.openedAt)) / 1000 : 0),
    0,
  );
  return {
    namespace,
    uid: input.uid,
    gid: input.gid,
    dryRun: input.dryRun,
    plan,
    volumes: status.jobs.flatMap((j) => (j.summary?.paths ?? []).map((p) => ({ job: j.name, ...p }))),
    jobs: status.jobs.map((j) => ({
      name: j.name,
      attempts: j.attempts,
      seconds: j.summary?.seconds ?? null,
      scanned: j.summary?.scanned ?? 0,
      changed: j.summary?.changed ?? 0,
    })),
    windows: status.windows,
    windowSeconds,
    approvals: status.gates,
    verification,
    endState: EndState.Completed,
    alarms: status.alarms,
    startedAt: status.startedAt,
    finishedAt,
  };
}
