/**
 * `migrateOwnership`: the vendor's manual procedure as one durable run. Each phase is an
 * activity with retries; approvals are signals; the policies are always re-enforced — on
 * success, failure, abort and cancel — and the run always ends with files and template in
 * agreement (an {@link EndState}): no database is started on files it does not own.
 *
 * The procedure reads top to bottom in {@link Migration.procedure}; settling after a failure is
 * in settle.ts, the rounds of Jobs in ownership-rounds.ts, the window in policy-window.ts.
 */
import * as wf from '@temporalio/workflow';
import { ActivityFailure, ApplicationFailure } from '@temporalio/common';
import { FailureType } from '../core/failures.js';
import { reasonOf } from '../core/failure-reason.js';
import {
  InvalidInputError,
  parseDuration,
  parseMigrationInput,
  Recovery,
  refusedByWorker,
  type MigrationInput,
} from '../core/input.js';
import { planChanges } from '../core/plan-changes.js';
import type { DatabasePlan, MigrationPlan, PodIds } from '../core/plan.js';
import type { RunRef } from '../core/policy.js';
import { DefaultConnection, profileOf } from '../core/profiles.js';
import { problemOf } from '../core/verification.js';
import type { JobRef } from '../services/ownership-jobs.js';
import { compensationRan } from './metrics.js';
import { EndState, Phase, type JobStatus, type MigrationReport } from './messages.js';
import { runOwnershipJobs } from './ownership-rounds.js';
import { PolicyWindow } from './policy-window.js';
import { nowIso, RunState } from './run-state.js';
import { settleAfter } from './settle.js';
import { act, HelmStepTimeout, stepsFor, wait, Wait, type Steps } from './steps.js';

/** What the run has changed so far: what settling works from. */
export interface RunProgress {
  locked: boolean;
  /** StatefulSets this run scaled to 0. */
  scaledDown: DatabasePlan[];
  /** The template's IDs before the run (patch mode): what a roll-back puts back. */
  previousIds: Map<string, PodIds>;
  /** Some ownership Job may exist, so files may have changed. */
  jobsStarted: boolean;
  /** The Jobs of the latest round, once their creation returned. */
  refs: JobRef[] | null;
  /** Every file under the planned volumes carries the new IDs (every forward Job succeeded). */
  filesNew: boolean;
  /** The Helm release's revision before the upgrade (helm mode): what a roll-back returns to. */
  helmRevisionBefore: number | null;
  /** The release was rolled back to that revision. */
  helmRolledBack: boolean;
}

/** Changes to the workflow's commands, for runs started before them (`wf.patched`). */
const Patch = {
  /** The guardrails check before the lock. */
  Guardrails: 'guardrails',
  /** The checks of every replica through exec and the Log API, after the pod checks. */
  DatabaseChecks: 'database-checks',
  /** Gatekeeper's audit of the namespace after the Jobs are gone. */
  GatekeeperAudit: 'gatekeeper-audit',
  /** The Helm release's revision read before the upgrade, for the rollback. */
  HelmRevision: 'helm-revision',
  /** Gatekeeper's audit from the moment the databases are up, alongside the other checks. */
  AuditAlongside: 'audit-alongside',
} as const;

/**
 * Runs `fn` in a cancellation scope of its own, beside whatever the caller does next: `result()`
 * awaits it (its failure included); `cancel()` cancels it and awaits its end, whatever it was.
 */
function alongside(fn: () => Promise<unknown>): { result(): Promise<unknown>; cancel(): Promise<void> } {
  const scope = new wf.CancellationScope();
  const running = scope.run(fn);
  // Observed at once: a failure while the caller is busy elsewhere is not an unhandled rejection.
  const ended = running.then(
    () => ({ failed: false, error: null as unknown }),
    (error: unknown) => ({ failed: true, error }),
  );
  return {
    result: async () => {
      const { failed, error } = await ended;
      if (failed) throw error as Error;
    },
    cancel: async () => {
      scope.cancel();
      await ended;
    },
  };
}

/** Awaits a step; a refusal of `type` fails the run as that refusal, not as "activity task failed". */
async function refusedAs<T>(type: FailureType, step: Promise<T>): Promise<T> {
  try {
    return await step;
  } catch (err) {
    const root = err instanceof ActivityFailure ? err.cause : undefined;
    if (root instanceof ApplicationFailure && root.type === type)
      throw ApplicationFailure.nonRetryable(root.message, type, ...(root.details ?? []));
    throw err;
  }
}

/** The IDs a database's template ran as before the run. */
export const idsOf = (d: DatabasePlan) => ({
  uid: d.currentIds.runAsUser,
  gid: d.currentIds.runAsGroup ?? d.currentIds.fsGroup,
});

/** A Job status per Job of the plan, all pending. */
export const jobStatuses = (p: MigrationPlan): JobStatus[] =>
  p.databases.flatMap((d) =>
    d.jobs.map((j) => ({
      name: j.name,
      statefulSet: d.statefulSet,
      ordinal: j.ordinal,
      state: 'pending' as const,
      attempts: 0,
    })),
  );

/** One run of the procedure over one namespace. */
export class Migration {
  readonly namespace: string;
  readonly stubs: Steps;
  readonly window: PolicyWindow;
  readonly progress: RunProgress = {
    locked: false,
    scaledDown: [],
    previousIds: new Map(),
    jobsStarted: false,
    refs: null,
    filesNew: false,
    helmRevisionBefore: null,
    helmRolledBack: false,
  };
  plan!: MigrationPlan;
  readonly verification: string[] = [];
  /** Why the run had nothing to do, when it had nothing to do. */
  private nothingToDo: string | null = null;

  constructor(
    readonly state: RunState,
    readonly input: MigrationInput,
    readonly owner: RunRef,
  ) {
    this.namespace = input.namespace;
    this.stubs = stepsFor(input.heartbeatTimeout);
    this.window = new PolicyWindow(state, this.stubs, input, owner);
  }

  /** Milliseconds of a duration of the input. */
  ms(d: string): number {
    return parseDuration(d) ?? 0;
  }

  /** The procedure, phase by phase; on any failure the run settles (settle.ts). */
  async run(): Promise<MigrationReport> {
    try {
      await this.state.main.run(() => this.procedure());
    } catch (err) {
      await this.fail(err);
    } finally {
      await this.unlock();
    }
    return this.report();
  }

  private async procedure(): Promise<void> {
    const { input } = this;
    if (wf.patched(Patch.Guardrails)) await this.checkGuardrails();
    if (!input.dryRun) await this.lock();
    await this.planAndCheck();
    if (input.dryRun || this.alreadyThere()) return;
    await this.state.gate('plan', this.planGateText(), this.ms(input.approvalTimeout), input.approvalTimeout);
    // Scaled to 0 before the template changes: a rolling update would otherwise start each
    // database with the new IDs on files that still belong to the old ones.
    this.state.setPhase(Phase.ScalingDown);
    await this.scaleDown(this.plan.databases);
    this.state.setPhase(Phase.ApplyingSecurityContext);
    await this.applySecurityContext(this.plan.databases.map((d) => d.statefulSet));
    await this.state.gate(
      'relax',
      this.relaxGateText(),
      this.ms(input.approvalTimeout),
      input.approvalTimeout,
    );
    if (input.approvals.length) await this.planAgain();
    await this.changeFiles();
    if (wf.patched(Patch.AuditAlongside)) {
      await this.startAndVerify();
      return;
    }
    await this.startDatabases();
    await this.verify();
  }

  /** The worker's guardrails, before anything changes: refused runs end here. */
  private async checkGuardrails(): Promise<void> {
    this.state.status.guardrails = await refusedAs(
      FailureType.GuardrailRefused,
      act(this.stubs.steps.checkGuardrails, `check ${this.namespace} against the worker's guardrails`, {
        run: this.input,
      }),
    );
  }

  private async lock(): Promise<void> {
    const { namespace, owner } = this;
    await refusedAs(
      FailureType.NamespaceLocked,
      act(this.stubs.steps.acquireNamespaceLock, `lock namespace ${namespace} for this run`, {
        namespace,
        owner,
      }),
    );
    this.progress.locked = true;
  }

  /**
   * Whether every database already runs as the target IDs: then there is nothing to do. Not when
   * one is at 0 replicas (an earlier run, or someone, left it down): its template may be new while
   * its files are not.
   */
  private alreadyThere(): boolean {
    const { input, plan } = this;
    const there =
      plan.databases.length > 0 &&
      plan.databases.every(
        (d) =>
          !d.leftScaledDown && d.replicas > 0 && idsOf(d).uid === input.uid && idsOf(d).gid === input.gid,
      );
    if (there)
      this.nothingToDo = `every StatefulSet of ${this.namespace} already runs as ${input.uid}:${input.gid}: nothing to do`;
    return there;
  }

  private async unlock(): Promise<void> {
    if (!this.progress.locked) return;
    const { namespace, owner } = this;
    await wf.CancellationScope.nonCancellable(() =>
      this.settleStep('release the namespace lock', () =>
        act(this.stubs.settle.releaseNamespaceLock, `unlock namespace ${namespace}`, { namespace, owner }),
      ),
    );
  }

  private async planAndCheck(): Promise<void> {
    const { input, namespace, state } = this;
    state.setPhase(Phase.Planning);
    this.plan = await act(this.stubs.steps.planMigration, `discover and plan ${namespace}`, {
      run: input,
      owner: this.owner,
    });
    state.status.plan = this.plan;
    state.status.jobs = jobStatuses(this.plan);
    const preflight = [...this.plan.preflight];
    if (input.recovery === Recovery.RollBack) {
      for (const d of this.plan.databases.filter((x) => idsOf(x).uid === null || idsOf(x).gid === null))
        preflight.push(
          `recovery roll-back: StatefulSet ${d.statefulSet} sets no runAsUser/runAsGroup, so the IDs to change the files back to are unknown: set them, or use recovery "roll-forward"`,
        );
    }
    if (preflight.length)
      throw ApplicationFailure.nonRetryable(
        `preflight failed: ${preflight.join('; ')}`,
        FailureType.PreflightFailed,
      );
  }

  private get imageNote(): string {
    return this.input.job.image
      ? `; Job image ${this.input.job.image}, asked for instead of the StatefulSets' own: it runs as root over the volumes`
      : '';
  }

  private planGateText(): string {
    const { input, plan } = this;
    return `${this.state.status.jobs.length} Jobs over ${plan.databases.length} StatefulSets to ${input.uid}:${input.gid}; on failure after the Jobs start: ${input.recovery}${this.imageNote}`;
  }

  private relaxGateText(): string {
    const { input, plan, namespace } = this;
    const { podSecurityEnforce: psa, constraints } = plan.policies.plan;
    const relax =
      plan.jobPodsAdmission?.relaxation.join('; ') ??
      `relax PSA to ${psa ?? '(unchanged)'} and exclude ${namespace} from ${constraints.length} Gatekeeper constraints`;
    return `${relax}; on failure after the Jobs start: ${input.recovery}${this.imageNote}`;
  }

  /** Plans again after the approvals: what was approved must still be what is done. */
  private async planAgain(): Promise<void> {
    const { namespace } = this;
    const fresh = await act(this.stubs.steps.planMigration, `plan ${namespace} again after the approvals`, {
      run: this.input,
      owner: this.owner,
    });
    const changes = [...planChanges(this.plan, fresh), ...fresh.preflight];
    if (changes.length)
      throw ApplicationFailure.nonRetryable(
        `the cluster changed while the run waited for approval: ${changes.join('; ')}. Start a new run to plan again`,
        FailureType.PlanChanged,
      );
  }

  /** Scales `dbs` to 0 and waits until their pods are gone. */
  scaleDown(dbs: DatabasePlan[]): Promise<unknown> {
    const { namespace } = this;
    return Promise.all(
      dbs.map(async (db) => {
        if (!this.progress.scaledDown.includes(db)) this.progress.scaledDown.push(db);
        await wait(
          this.stubs.steps.scaleDown,
          `scale ${db.statefulSet} to 0`,
          { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
          Wait.podsGone,
        );
      }),
    );
  }

  /** Sets the templates to the new IDs the way the input says, and verifies them. */
  private async applySecurityContext(statefulSets: string[]): Promise<void> {
    const apply = this.input.securityContext.apply;
    if (apply === 'patch') await this.patchTemplates();
    else if (apply === 'helm') await this.helmUpgrade();
    if (apply === 'none') return;
    await this.verifyTemplates(statefulSets);
    // helm and the operator may have scaled the databases up again with the new template.
    if (apply !== 'patch') await this.scaleDown(this.plan.databases);
  }

  private async patchTemplates(): Promise<void> {
    const { input, namespace } = this;
    const ids = {
      runAsUser: input.uid,
      runAsGroup: input.gid,
      fsGroup: input.gid,
      supplementalGroups: input.supplementalGroups,
    };
    for (const db of this.plan.databases) {
      const previous = await act(this.stubs.steps.readPodIds, `read securityContext of ${db.statefulSet}`, {
        namespace,
        statefulSet: db.statefulSet,
      });
      if (!this.progress.previousIds.has(db.statefulSet))
        this.progress.previousIds.set(db.statefulSet, previous);
      await act(this.stubs.steps.patchPodIds, `set ${db.statefulSet} to ${input.uid}:${input.gid}`, {
        namespace,
        statefulSet: db.statefulSet,
        ids,
      });
    }
  }

  private async helmUpgrade(): Promise<void> {
    const { input, namespace, state, progress } = this;
    const h = input.securityContext.helm!;
    const ref = { namespace, release: h.release };
    if (progress.helmRevisionBefore === null && wf.patched(Patch.HelmRevision)) {
      const before = await act(this.stubs.steps.readHelmRelease, `read helm release ${h.release}`, ref);
      progress.helmRevisionBefore = before.revision;
      state.status.helm = {
        release: h.release,
        revisionBefore: before.revision,
        upgradedTo: null,
        values: null,
        rolledBackTo: null,
      };
    }
    const after = await act(
      this.stubs.steps.helmUpgrade,
      `helm upgrade ${h.release}`,
      {
        ...ref,
        chart: h.chart,
        ...(h.valuesFile ? { valuesFile: h.valuesFile } : {}),
        extraArgs: h.extraArgs,
        uid: input.uid,
        gid: input.gid,
        supplementalGroups: input.supplementalGroups,
      },
      HelmStepTimeout,
    );
    if (state.status.helm)
      Object.assign(state.status.helm, { upgradedTo: after.revision, values: after.values });
  }

  /** Verifies the templates; in `external` mode, first waits for the operator's signal each time. */
  private async verifyTemplates(statefulSets: string[]): Promise<void> {
    const { input, namespace, state } = this;
    const external = input.securityContext.apply === 'external';
    for (;;) {
      if (external) {
        const seen = state.securityContextSignals;
        state.setPhase(
          Phase.ApplyingSecurityContext,
          `apply runAsUser/runAsGroup/fsGroup ${input.uid}:${input.gid} to ${statefulSets.join(', ')} (they are scaled to 0: keep them there), then signal \`securityContextApplied\`.`,
        );
        if (!(await wf.condition(() => state.securityContextSignals > seen, this.ms(input.approvalTimeout))))
          throw ApplicationFailure.nonRetryable(
            `no securityContextApplied signal within ${input.approvalTimeout}`,
            FailureType.ApprovalTimedOut,
          );
      }
      const problems = await act(this.stubs.steps.verifySecurityContext, 'verify the StatefulSet templates', {
        namespace,
        statefulSets,
        uid: input.uid,
        gid: input.gid,
      });
      if (!problems.length) return;
      if (!external)
        throw ApplicationFailure.nonRetryable(
          `securityContext not applied: ${problems.join('; ')}`,
          FailureType.SecurityContextNotApplied,
        );
      state.status.rejectedSignals.push(`securityContextApplied, but: ${problems.join('; ')}`);
    }
  }

  /** The ownership Jobs, under as few and as short windows as the mode allows. */
  private async changeFiles(): Promise<void> {
    const { input, namespace } = this;
    const failed = await runOwnershipJobs(
      this,
      { uid: input.uid, gid: input.gid },
      this.plan.databases.flatMap((d) => d.jobs),
      this.state.status.jobs,
      input.job.retries + 1,
    );
    if (failed.length)
      throw ApplicationFailure.nonRetryable(
        `ownership Jobs failed after ${input.job.retries + 1} attempts: ${failed.map((f) => `${f.name}: ${f.message}`).join('; ')}`,
        FailureType.OwnershipJobFailed,
      );
    this.progress.filesNew = true;
    await wait(
      this.stubs.steps.deleteOwnershipJobs,
      'delete the finished ownership Jobs',
      { namespace },
      Wait.podsGone,
    );
  }

  private async startDatabases(): Promise<void> {
    await this.scaleUp();
    await this.waitForPlatform();
  }

  private async scaleUp(): Promise<void> {
    const { namespace, plan } = this;
    this.state.setPhase(Phase.ScalingUp);
    await Promise.all(
      plan.databases.map((db) =>
        wait(
          this.stubs.steps.scaleUp,
          `scale ${db.statefulSet} back to ${db.replicas}`,
          { namespace, statefulSet: db.statefulSet, replicas: db.replicas },
          Wait.replicasReady,
        ),
      ),
    );
    this.progress.scaledDown = [];
  }

  private async waitForPlatform(): Promise<void> {
    const { namespace, plan } = this;
    if (plan.platform) {
      await wait(
        this.stubs.steps.waitForPlatform,
        `wait for ${plan.platform.name} ${plan.platform.ready}`,
        { namespace, platform: plan.platform },
        Wait.platformReady,
      );
    }
  }

  private get auditWanted(): boolean {
    const { input } = this;
    return wf.patched(Patch.GatekeeperAudit) && input.verify.audit && input.policies.gatekeeper;
  }

  /**
   * Scales the databases up, then verifies them. Gatekeeper's audit waits for a pass of its own
   * (up to its audit interval, 60 s by default), so it starts as soon as the database pods exist
   * and runs alongside the platform wait and the other checks instead of after them. Should one of
   * those fail, the audit is cancelled and awaited before the failure goes on to the
   * compensations, so no step of this run is left running beside them.
   */
  private async startAndVerify(): Promise<void> {
    await this.scaleUp();
    const audit = this.auditWanted ? alongside(() => this.auditNamespace()) : null;
    try {
      await this.waitForPlatform();
      await this.checkAll();
    } catch (err) {
      await audit?.cancel();
      throw err;
    }
    await audit?.result();
    this.failOnVerification();
  }

  private async verify(): Promise<void> {
    await this.checkAll();
    if (this.auditWanted) await this.auditNamespace();
    this.failOnVerification();
  }

  /** The databases' pods and, when asked, the checks inside every replica. */
  private async checkAll(): Promise<void> {
    const { input, namespace } = this;
    this.state.setPhase(Phase.Verifying);
    this.verification.push(
      ...(await act(this.stubs.steps.verifyDatabases, 'verify the databases', {
        namespace,
        statefulSets: this.plan.databases.map((d) => d.statefulSet),
        uid: input.uid,
        gid: input.gid,
      })),
    );
    if (wf.patched(Patch.DatabaseChecks) && input.verify.checks.length) await this.checkDatabases();
  }

  private failOnVerification(): void {
    if (this.verification.length)
      throw ApplicationFailure.nonRetryable(
        `verification failed: ${this.verification.join('; ')}`,
        FailureType.VerificationFailed,
      );
  }

  /** The seed's checks of every replica, inside its container: their results are the run's evidence. */
  private async checkDatabases(): Promise<void> {
    const { input, namespace, plan } = this;
    const connection = (input.profile ? profileOf(input.profile).connection : undefined) ?? DefaultConnection;
    const replicas = plan.databases.reduce((n, d) => n + d.replicas, 0);
    const results = await act(
      this.stubs.steps.checkDatabases,
      `check every replica: ${input.verify.checks.join(', ')}`,
      {
        namespace,
        uid: input.uid,
        gid: input.gid,
        databases: plan.databases.map((d) => ({
          statefulSet: d.statefulSet,
          container: d.container,
          mountPaths: (d.jobs[0]?.volumes ?? []).map((v) => v.mountPath),
        })),
        settings: {
          checks: input.verify.checks,
          user: input.verify.user ?? connection.user,
          database: input.verify.database ?? connection.database,
          commands: input.verify.commands,
          checksAtOnce: input.verify.checksAtOnce,
        },
        timeout: input.verify.timeout,
      },
      {
        startToCloseTimeout:
          this.ms(input.verify.timeout) * input.verify.checks.length * replicas + Wait.margin,
      },
    );
    this.state.status.databaseChecks = results;
    this.verification.push(...results.filter((r) => !r.ok).map(problemOf));
  }

  /**
   * The seed's last check: Gatekeeper's audit, in a pass that started once the Jobs were gone,
   * finds no violation by the migrated databases' pods (a failure); others are alarms.
   */
  private async auditNamespace(): Promise<void> {
    const { input, namespace, plan, state } = this;
    const audit = await act(
      this.stubs.steps.auditNamespace,
      `read Gatekeeper's audit of ${namespace}`,
      {
        namespace,
        since: nowIso(),
        databases: plan.databases.map((d) => d.statefulSet),
        timeoutSeconds: this.ms(input.verify.auditTimeout) / 1000,
      },
      { startToCloseTimeout: this.ms(input.verify.auditTimeout) + Wait.margin },
    );
    state.status.gatekeeperAudit = audit;
    const ours = (pod: string) =>
      plan.databases.some(
        (d) => pod.startsWith(`${d.statefulSet}-`) && /^\d+$/.test(pod.slice(d.statefulSet.length + 1)),
      );
    for (const c of audit.constraints) {
      for (const v of c.violations) {
        const line = `Gatekeeper's audit: ${c.constraint} finds ${v.kind} ${v.name}: ${v.message}`;
        if (v.kind === 'Pod' && ours(v.name)) this.verification.push(line);
        else state.alarm(line);
      }
      if (c.violations.length === 0 && !c.complete && c.auditTimestamp)
        state.alarm(
          `Gatekeeper's audit: ${c.constraint} lists ${c.totalViolations} violations only in part, so some in ${namespace} may not show`,
        );
    }
    if (audit.state === 'not-audited')
      state.alarm(
        `Gatekeeper's audit did not pass over ${audit.constraints
          .filter((c) => !c.auditTimestamp)
          .map((c) => c.constraint)
          .join(', ')} within ${input.verify.auditTimeout}: is its audit operation running?`,
      );
  }

  /** After a failure, `abort` or cancel: settles, then ends the run with the right failure. */
  private async fail(err: unknown): Promise<never> {
    const { state } = this;
    const status = state.status;
    status.error = state.abortReason ? `aborted: ${state.abortReason}` : reasonOf(err);
    state.setPhase(Phase.Compensating, status.error);
    await wf.CancellationScope.nonCancellable(() => settleAfter(this, err));
    if (status.compensationFailures.length)
      status.error += `; compensations that failed: ${status.compensationFailures.join('; ')}`;
    state.setPhase(
      state.abortReason ? Phase.Aborted : Phase.Failed,
      `${status.error}\n\nended ${status.endState}`,
    );
    if (state.abortReason)
      throw ApplicationFailure.nonRetryable(`run aborted: ${state.abortReason}`, FailureType.Aborted, {
        endState: status.endState,
        leftToDo: status.leftToDo,
      });
    if (status.compensationFailures.length)
      throw ApplicationFailure.nonRetryable(status.error, FailureType.CompensationFailed, reasonOf(err));
    throw err;
  }

  /**
   * Runs one settling step, recording it; a step that fails for good is reported, not thrown.
   * @returns `{ value }` when it succeeded, undefined when it failed.
   */
  async settleStep<T>(name: string, fn: () => Promise<T>): Promise<{ value: T } | undefined> {
    const status = this.state.status;
    try {
      const value = await fn();
      status.compensations.push(name);
      compensationRan(name, true);
      return { value };
    } catch (failure) {
      status.compensationFailures.push(`${name}: ${reasonOf(failure)}`);
      compensationRan(name, false);
      return undefined;
    }
  }

  private report(): MigrationReport {
    const { input, state } = this;
    const status = state.status;
    state.setPhase(Phase.Completed, this.nothingToDo ?? undefined);
    const endState = this.nothingToDo ? EndState.Unchanged : EndState.Completed;
    status.endState = endState;
    const windowSeconds = status.windows.reduce(
      (s, w) => s + (w.closedAt ? (Date.parse(w.closedAt) - Date.parse(w.openedAt)) / 1000 : 0),
      0,
    );
    return {
      namespace: this.namespace,
      uid: input.uid,
      gid: input.gid,
      dryRun: input.dryRun,
      plan: this.plan,
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
      verification: this.verification,
      databaseChecks: status.databaseChecks,
      gatekeeperAudit: status.gatekeeperAudit,
      helm: status.helm,
      endState,
      alarms: status.alarms,
      guardrails: status.guardrails,
      nothingToDo: this.nothingToDo,
      startedAt: status.startedAt,
      finishedAt: nowIso(),
    };
  }
}

/** Migrates the ownership of a namespace's database volumes to new IDs. */
export async function migrateOwnership(raw: unknown): Promise<MigrationReport> {
  const info = wf.workflowInfo();
  const state = new RunState();
  state.listen();
  let input: MigrationInput;
  try {
    input = parseMigrationInput(raw);
  } catch (err) {
    state.status.phase = Phase.Failed;
    state.status.error = (err as Error).message;
    if (err instanceof InvalidInputError)
      throw ApplicationFailure.nonRetryable(refusedByWorker(err), FailureType.InvalidInput);
    throw err;
  }
  state.begin(input.namespace, {
    approvals: input.approvals,
    windowMode: input.window.mode,
    recovery: input.recovery,
  });
  state.setPhase(Phase.Validating);
  return new Migration(state, input, { workflowId: info.workflowId, runId: info.runId }).run();
}
