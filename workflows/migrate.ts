/**
 * `migrateOwnership`: the vendor's manual procedure as one durable run. Each phase is an
 * activity with retries; each mutating step registers its compensation first; approvals are
 * signals; the policies are always re-enforced — on success, failure, abort and cancel.
 */
import * as wf from '@temporalio/workflow';
import {
  ApplicationFailure,
  defineSearchAttributeKey,
  SearchAttributeType,
  type ActivityOptions,
} from '@temporalio/common';
import type { Activities } from '../activities/index.js';
import type { JobRef } from '../activities/policy.js';
import {
  InvalidInputError,
  parseDuration,
  parseMigrationInput,
  type Gate,
  type MigrationInput,
} from '../src/input.js';
import { reasonOf } from '../src/failure-reason.js';
import { SearchAttribute } from '../src/names.js';
import type { MigrationPlan } from '../src/plan.js';
import type { RelaxationRecord, RunRef } from '../src/policy.js';
import {
  abortSignal,
  approveSignal,
  Phase,
  securityContextAppliedSignal,
  statusQuery,
  type GateStatus,
  type MigrationReport,
  type MigrationStatus,
} from './messages.js';

/** Failure types a run ends with. */
export const RunFailureType = {
  InvalidInput: 'InvalidInput',
  PreflightFailed: 'PreflightFailed',
  ApprovalTimedOut: 'ApprovalTimedOut',
  Aborted: 'Aborted',
  AdmissionRefused: 'AdmissionRefused',
  OwnershipJobFailed: 'OwnershipJobFailed',
  VerificationFailed: 'VerificationFailed',
  CompensationFailed: 'CompensationFailed',
} as const;

const retry = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '30 seconds',
  maximumAttempts: 10,
};
/**
 * The run's activity stubs. Every step heartbeats (the worker's keep-alive), so a worker that
 * dies is noticed within `heartbeatTimeout` whatever step it was running.
 */
function activitiesFor(heartbeatTimeout: string) {
  return {
    steps: wf.proxyActivities<Activities>({ startToCloseTimeout: '2 minutes', heartbeatTimeout, retry }),
    waits: wf.proxyActivities<Activities>({ startToCloseTimeout: '30 minutes', heartbeatTimeout, retry }),
    // Compensations never give up: a namespace must not stay open.
    undo: wf.proxyActivities<Activities>({
      startToCloseTimeout: '5 minutes',
      heartbeatTimeout,
      retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
    }),
  };
}

const nowIso = () => new Date(Date.now()).toISOString();
const ms = (d: string) => parseDuration(d) ?? 0;
const seconds = (d: string) => Math.ceil(ms(d) / 1000);
const PhaseKey = defineSearchAttributeKey(SearchAttribute.Phase, SearchAttributeType.KEYWORD);
const NamespaceKey = defineSearchAttributeKey(SearchAttribute.TargetNamespace, SearchAttributeType.KEYWORD);

/** Calls an activity with a one-line summary for the Web UI. */
function act<A extends unknown[], R>(
  fn: ((...args: A) => Promise<R>) & { executeWithOptions(o: ActivityOptions, a: A): Promise<R> },
  summary: string,
  ...args: A
): Promise<R> {
  return fn.executeWithOptions({ summary }, args);
}

/** Migrates the ownership of a namespace's database volumes to new IDs. */
export async function migrateOwnership(raw: unknown): Promise<MigrationReport> {
  const info = wf.workflowInfo();
  const owner: RunRef = { workflowId: info.workflowId, runId: info.runId };
  const status: MigrationStatus = {
    phase: Phase.Validating,
    namespace: null,
    startedAt: nowIso(),
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
  };
  const approvals = new Map<string, GateStatus>();
  let abortReason: string | undefined;
  let securityContextSignals = 0;
  const main = new wf.CancellationScope();

  wf.setHandler(statusQuery, () => status);
  wf.setHandler(approveSignal, (a) => {
    const gate = status.gates.find((g) => g.gate === a?.gate);
    if (!gate || !gate.required) {
      status.rejectedSignals.push(
        `approve for gate "${String(a?.gate)}": not a gate of this run (${
          status.gates
            .filter((g) => g.required)
            .map((g) => g.gate)
            .join(', ') || 'none'
        })`,
      );
      return;
    }
    if (gate.state === 'approved' || gate.state === 'timed-out') {
      status.rejectedSignals.push(`approve for gate "${gate.gate}": already ${gate.state}`);
      return;
    }
    approvals.set(gate.gate, {
      ...gate,
      state: 'approved',
      by: a.by ?? 'unknown',
      comment: a.comment,
      at: nowIso(),
    });
    Object.assign(gate, approvals.get(gate.gate));
  });
  wf.setHandler(abortSignal, (a) => {
    if (abortReason !== undefined) return;
    abortReason = `${a?.reason ?? 'no reason given'}${a?.by ? ` (by ${a.by})` : ''}`;
    main.cancel();
  });
  wf.setHandler(securityContextAppliedSignal, () => void securityContextSignals++);

  const setPhase = (phase: Phase, details?: string) => {
    status.phase = phase;
    wf.upsertSearchAttributes([{ key: PhaseKey, value: phase }]);
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
  const { steps, waits, undo } = activitiesFor(input.heartbeatTimeout);
  status.namespace = input.namespace;
  status.windowMode = input.window.mode;
  status.gates = (['plan', 'relax'] as const).map((g) => ({
    gate: g,
    required: input.approvals.includes(g),
    state: input.approvals.includes(g) ? 'pending' : 'not-required',
  }));
  wf.upsertSearchAttributes([{ key: NamespaceKey, value: input.namespace }]);
  setPhase(Phase.Validating);

  const compensations: { name: string; run: () => Promise<unknown> }[] = [];
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
        act(undo.restorePolicies, `re-enforce the policies of ${input.namespace} (${because})`, {
          namespace: input.namespace,
          owner,
          ...(record ? { record } : {}),
        }),
      );
      status.policies.lastRestore = report;
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
    if (g.state !== 'approved') g.state = 'waiting';
    setPhase(
      status.phase,
      `waiting for approval of gate \`${name}\`: ${what}. Signal \`approve\` with \`{"gate":"${name}"}\`.`,
    );
    const ok = await wf.condition(() => approvals.has(name), ms(input.approvalTimeout));
    if (!ok) {
      g.state = 'timed-out';
      throw ApplicationFailure.nonRetryable(
        `gate "${name}" was not approved within ${input.approvalTimeout}`,
        RunFailureType.ApprovalTimedOut,
      );
    }
  };

  let plan!: MigrationPlan;
  const verification: string[] = [];
  try {
    await main.run(async () => {
      setPhase(Phase.Planning);
      plan = await act(steps.planMigration, `discover and plan ${input.namespace}`, { run: input, owner });
      status.plan = plan;
      status.jobs = plan.databases.flatMap((d) =>
        d.jobs.map((j) => ({
          name: j.name,
          statefulSet: d.statefulSet,
          ordinal: j.ordinal,
          state: 'pending' as const,
          attempts: 0,
        })),
      );
      if (plan.preflight.length) {
        throw ApplicationFailure.nonRetryable(
          `preflight failed: ${plan.preflight.join('; ')}`,
          RunFailureType.PreflightFailed,
        );
      }
      if (input.dryRun) return;

      await gate(
        'plan',
        `${status.jobs.length} Jobs over ${plan.databases.length} StatefulSets to ${input.uid}:${input.gid}`,
      );

      setPhase(Phase.ApplyingSecurityContext);
      const statefulSets = plan.databases.map((d) => d.statefulSet);
      const ids = {
        runAsUser: input.uid,
        runAsGroup: input.gid,
        fsGroup: input.gid,
        supplementalGroups: input.supplementalGroups,
      };
      if (input.securityContext.apply === 'patch') {
        for (const db of plan.databases) {
          const previous = await act(steps.readPodIds, `read securityContext of ${db.statefulSet}`, {
            namespace: input.namespace,
            statefulSet: db.statefulSet,
          });
          compensations.push({
            name: `restore securityContext of ${db.statefulSet}`,
            run: () =>
              act(undo.patchPodIds, `restore securityContext of ${db.statefulSet}`, {
                namespace: input.namespace,
                statefulSet: db.statefulSet,
                ids: previous,
              }),
          });
          await act(steps.patchPodIds, `set ${db.statefulSet} to ${input.uid}:${input.gid}`, {
            namespace: input.namespace,
            statefulSet: db.statefulSet,
            ids,
          });
        }
      } else if (input.securityContext.apply === 'helm') {
        const h = input.securityContext.helm!;
        await act(steps.helmUpgrade, `helm upgrade ${h.release}`, {
          namespace: input.namespace,
          release: h.release,
          chart: h.chart,
          ...(h.valuesFile ? { valuesFile: h.valuesFile } : {}),
          extraArgs: h.extraArgs,
          uid: input.uid,
          gid: input.gid,
          supplementalGroups: input.supplementalGroups,
        });
      }
      if (input.securityContext.apply !== 'none') {
        for (;;) {
          if (input.securityContext.apply === 'external') {
            const seen = securityContextSignals;
            setPhase(
              Phase.ApplyingSecurityContext,
              `apply runAsUser/runAsGroup/fsGroup ${input.uid}:${input.gid} to ${statefulSets.join(', ')}, then signal \`securityContextApplied\`.`,
            );
            if (!(await wf.condition(() => securityContextSignals > seen, ms(input.approvalTimeout)))) {
              throw ApplicationFailure.nonRetryable(
                `no securityContextApplied signal within ${input.approvalTimeout}`,
                RunFailureType.ApprovalTimedOut,
              );
            }
          }
          const problems = await act(steps.verifySecurityContext, 'verify the StatefulSet templates', {
            namespace: input.namespace,
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
      }

      setPhase(Phase.ScalingDown);
      for (const db of plan.databases) {
        compensations.push({
          name: `scale ${db.statefulSet} back to ${db.replicas}`,
          run: () =>
            act(undo.scaleUp, `scale ${db.statefulSet} back to ${db.replicas}`, {
              namespace: input.namespace,
              statefulSet: db.statefulSet,
              replicas: db.replicas,
              timeoutSeconds: 600,
            }),
        });
      }
      await Promise.all(
        plan.databases.map((db) =>
          act(waits.scaleDown, `scale ${db.statefulSet} to 0`, {
            namespace: input.namespace,
            statefulSet: db.statefulSet,
            replicas: db.replicas,
            timeoutSeconds: 600,
          }),
        ),
      );

      await gate(
        'relax',
        `relax PSA to ${input.policies.podSecurity} and exclude ${input.namespace} from ${plan.policies.plan.constraints.length} Gatekeeper constraints`,
      );

      const targets = plan.databases.flatMap((d) => d.jobs);
      const remaining = new Set(targets.map((t) => t.name));
      compensations.push({
        name: 'delete leftover Jobs',
        run: () =>
          act(undo.deleteOwnershipJobs, 'delete leftover ownership Jobs', { namespace: input.namespace }),
      });
      compensations.push({ name: 're-enforce the policies', run: () => reEnforce('compensation') });
      for (let attempt = 1; ; attempt++) {
        setPhase(Phase.RelaxingPolicies);
        mayBeRelaxed = true;
        const relaxed = await act(steps.relaxPolicies, `relax the policies of ${input.namespace}`, {
          namespace: input.namespace,
          owner,
          podSecurity: input.policies.podSecurity,
          gatekeeper: input.policies.gatekeeper,
        });
        record = relaxed.record;
        status.policies.record = relaxed.record;
        status.policies.state = 'relaxed';
        status.windows.push({ openedAt: relaxed.relaxedAt });
        const windowTimer = new wf.CancellationScope();
        const maxTimer = windowTimer
          .run(() => wf.sleep(ms(input.window.max)))
          .then(
            () => reEnforce(`window.max ${input.window.max} reached`),
            () => undefined,
          );

        setPhase(Phase.MigratingOwnership);
        const batch = targets.filter((t) => remaining.has(t.name));
        const refs: JobRef[] = await act(steps.createOwnershipJobs, `create ${batch.length} ownership Jobs`, {
          run: input,
          targets: batch,
        });
        for (const r of refs) {
          const j = status.jobs.find((x) => x.name === r.name)!;
          j.state = 'created';
          j.attempts = attempt;
        }
        if (input.window.mode === 'admission') {
          const evidence = await act(
            waits.waitForPodsAdmitted,
            'wait until every migration pod is admitted',
            { namespace: input.namespace, jobs: refs, timeoutSeconds: seconds(input.window.max) },
          );
          status.admission.push(evidence);
          for (const a of evidence.admitted)
            Object.assign(
              status.jobs.find((x) => x.name === a.job)!,
              { state: 'admitted', pod: a.pod },
            );
          await reEnforce('every migration pod admitted');
          setPhase(Phase.ReEnforcingPolicies);
          if (evidence.refused.length) {
            throw ApplicationFailure.nonRetryable(
              `admission refused: ${evidence.refused.map((r) => `${r.job}: ${r.message}`).join('; ')}`,
              RunFailureType.AdmissionRefused,
            );
          }
          setPhase(Phase.MigratingOwnership);
        }
        const outcomes = await act(waits.waitForJobs, `wait for ${refs.length} ownership Jobs`, {
          namespace: input.namespace,
          jobs: refs,
          timeoutSeconds: seconds(input.job.timeout),
        });
        setPhase(Phase.ReEnforcingPolicies);
        await reEnforce(
          input.window.mode === 'admission' ? 'every migration pod admitted' : 'every Job finished',
        );
        windowTimer.cancel();
        await maxTimer;
        for (const o of outcomes) {
          const j = status.jobs.find((x) => x.name === o.name)!;
          Object.assign(j, {
            state: o.succeeded ? 'succeeded' : 'failed',
            message: o.message,
            ...(o.summary ? { summary: o.summary } : {}),
          });
          if (o.succeeded) remaining.delete(o.name);
        }
        if (remaining.size === 0) break;
        if (attempt > input.job.retries) {
          const failed = outcomes.filter((o) => !o.succeeded);
          throw ApplicationFailure.nonRetryable(
            `ownership Jobs failed after ${attempt} attempts: ${failed.map((f) => `${f.name}: ${f.message}`).join('; ')}`,
            RunFailureType.OwnershipJobFailed,
          );
        }
      }
      // The files now belong to the new IDs: putting the old template back would break the databases.
      compensations.splice(
        0,
        compensations.length,
        ...compensations.filter((c) => c.name.startsWith('scale ')),
      );
      await act(steps.deleteOwnershipJobs, 'delete the finished ownership Jobs', {
        namespace: input.namespace,
      });

      setPhase(Phase.ScalingUp);
      await Promise.all(
        plan.databases.map((db) =>
          act(waits.scaleUp, `scale ${db.statefulSet} back to ${db.replicas}`, {
            namespace: input.namespace,
            statefulSet: db.statefulSet,
            replicas: db.replicas,
            timeoutSeconds: 900,
          }),
        ),
      );
      compensations.length = 0;
      if (plan.platform) {
        await act(waits.waitForPlatform, `wait for ${plan.platform.name} ${plan.platform.ready}`, {
          namespace: input.namespace,
          platform: plan.platform,
          timeoutSeconds: 900,
        });
      }

      setPhase(Phase.Verifying);
      verification.push(
        ...(await act(steps.verifyDatabases, 'verify the databases', {
          namespace: input.namespace,
          statefulSets,
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
    // Every compensation runs even when one fails for good (e.g. 403): the others still undo
    // their part, and a namespace left relaxed is the sweeper's and `runas-migrate restore`'s.
    await wf.CancellationScope.nonCancellable(async () => {
      for (const c of [...compensations].reverse()) {
        try {
          await c.run();
          status.compensations.push(c.name);
        } catch (failure) {
          status.compensationFailures.push(`${c.name}: ${reasonOf(failure)}`);
        }
      }
    });
    if (status.compensationFailures.length)
      status.error += `; compensations that failed: ${status.compensationFailures.join('; ')}`;
    setPhase(abortReason ? Phase.Aborted : Phase.Failed, status.error);
    if (abortReason)
      throw ApplicationFailure.nonRetryable(`run aborted: ${abortReason}`, RunFailureType.Aborted);
    if (status.compensationFailures.length)
      throw ApplicationFailure.nonRetryable(status.error, RunFailureType.CompensationFailed, reasonOf(err));
    throw err;
  }

  setPhase(Phase.Completed);
  const finishedAt = nowIso();
  const windowSeconds = status.windows.reduce(
    (s, w) => s + (w.closedAt ? (Date.parse(w.closedAt) - Date.parse(w.openedAt)) / 1000 : 0),
    0,
  );
  return {
    namespace: input.namespace,
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
    startedAt: status.startedAt,
    finishedAt,
  };
}
