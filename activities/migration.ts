/**
 * The migration's activities: planning (discovery + preflight), the securityContext, scaling,
 * the ownership Jobs, the platform wait and the verification. Every side effect goes through
 * the injected {@link Kube}; waits heartbeat.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ApplicationFailure } from '@temporalio/common';
import {
  PatchStrategy,
  type V1Job,
  type V1PodSecurityContext,
  type V1StatefulSet,
} from '@kubernetes/client-node';
import { isKubeError, KubeFailureType, type Kube, type KubeError } from '../src/kube.js';
import type { MigrationInput } from '../src/input.js';
import {
  buildOwnershipJob,
  jobOwnership,
  JobLabel,
  judgeJob,
  ManagedBy,
  parseJobSummary,
  type JobSummary,
  type JobTarget,
} from '../src/job.js';
import {
  OriginalReplicasAnnotation,
  PlanningError,
  planDatabase,
  preflight,
  type AllowedUsersParameters,
  type DatabasePlan,
  type MigrationPlan,
  type PlatformPlan,
} from '../src/plan.js';
import { GatekeeperConstraintGroup, type RunRef } from '../src/policy.js';
import { profileOf } from '../src/profiles.js';
import {
  deadlineOf,
  heartbeat,
  pause,
  throwIfCancelled,
  typed,
  unlessCancelled,
  type WaitLimit,
} from './failures.js';
import { createPolicyActivities, type JobRef } from './policy.js';

/** Failure types raised by the migration activities. */
export const MigrationFailureType = {
  PlanningFailed: 'PlanningFailed',
  SecurityContextNotApplied: 'SecurityContextNotApplied',
  HelmFailed: 'HelmFailed',
  Timeout: 'WaitTimedOut',
  /** A Job of the same name belongs to runas-migrate but to another run or other IDs, and still runs. */
  JobOfAnotherRun: 'JobOfAnotherRun',
  /** A Job of the same name that runas-migrate did not create. */
  JobNameTaken: 'JobNameTaken',
} as const;

/** Dependencies of the migration activities. */
export interface MigrationActivityDeps {
  kube: Kube;
  log?: (message: string) => void;
  /** Pause between polls while waiting. @default 500 */
  pollMs?: number;
  /** The `helm` binary. @default "helm" */
  helm?: string;
}

/** The pod-level IDs of a template, as they were (null: absent). */
export interface PodIds {
  runAsUser: number | null;
  runAsGroup: number | null;
  fsGroup: number | null;
  supplementalGroups: number[] | null;
}

/** Which StatefulSets of a namespace should run as uid:gid. */
export interface IdsCheck {
  namespace: string;
  statefulSets: string[];
  uid: number;
  gid: number;
}

/** How one Job ended. */
export interface JobOutcome {
  name: string;
  succeeded: boolean;
  summary: JobSummary | null;
  message: string;
}

const run = promisify(execFile);

/** How long deleting Jobs may take when the caller gives no limit (compensations). */
const DefaultJobDeletionSeconds = 600;

/** The template patch that sets (or, with null, removes) the pod-level IDs. */
const podIdsPatch = (ids: PodIds) => ({ spec: { template: { spec: { securityContext: { ...ids } } } } });

/** Where in the input a field of a refused ownership Job comes from. */
const JobInputFields: [RegExp, string][] = [
  [/(^|\.)labels(\[|\.|$)/, 'job.podLabels'],
  [/(^|\.)annotations(\[|\.|$)/, 'job.podAnnotations'],
  [/\.nodeSelector(\[|\.|$)/, 'job.nodeSelector'],
  [/\.tolerations(\[|\.|$)/, 'job.tolerations'],
  [/\.resources(\[|\.|$)/, 'job.resources'],
  [/\.containers\[0\]\.image$/, 'job.image'],
  [/activeDeadlineSeconds$/, 'job.timeout'],
];

/** One line per field of a refused dry run: the input field when known, else the object's. */
function refusals(err: KubeError, fallback: string): string[] {
  const causes = err.causes.length ? err.causes : [{ field: undefined, message: err.reason }];
  return causes.map((c) => {
    const input =
      (c.field && JobInputFields.find(([re]) => re.test(c.field!))?.[1]) ??
      (/quantit/i.test(c.message) ? 'job.resources' : undefined);
    return input ? `${input}: ${c.message}` : `${fallback}: ${c.field ? `${c.field}: ` : ''}${c.message}`;
  });
}

const isRefusal = (err: unknown): err is KubeError =>
  isKubeError(err, KubeFailureType.Invalid) || isKubeError(err, KubeFailureType.BadRequest);

/** The Complete or Failed condition of a finished Job. */
const finishedCondition = (job: V1Job) =>
  job.status?.conditions?.find((c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True');

/** Selector of a Job's pods: its own selector (the controller's uid label), else its name. */
const podSelectorOf = (job: V1Job) =>
  Object.entries(job.spec?.selector?.matchLabels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',') || `job-name=${job.metadata?.name}`;

const describeOwner = (job: V1Job) => {
  const o = jobOwnership(job);
  return `run ${o.runId ?? 'unknown'} (workflow ${o.workflowId ?? 'unknown'}) to ${o.uid ?? '?'}:${o.gid ?? '?'}`;
};

function getPath(obj: unknown, path: string): unknown {
  return path
    .split('.')
    .reduce<unknown>(
      (o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined),
      obj,
    );
}

function selectorOf(sts: V1StatefulSet): string {
  return Object.entries(sts.spec?.selector.matchLabels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/** Builds the migration activities around their dependencies. */
export function createMigrationActivities(deps: MigrationActivityDeps) {
  const { kube } = deps;
  const log = deps.log ?? (() => undefined);
  const pollMs = deps.pollMs ?? 500;
  const policy = createPolicyActivities({ kube, log });

  /**
   * Polls `check` until it answers or `limit` passes, heartbeating. A cancellation (delivered by
   * a heartbeat) ends the wait at once with the activity's `CancelledFailure`, mid-sleep or
   * mid-call. Past an absolute deadline a retry cannot help: that timeout is non-retryable.
   */
  async function poll<T>(
    what: string,
    limit: Partial<WaitLimit>,
    check: () => Promise<T | undefined>,
    defaultSeconds?: number,
  ): Promise<T> {
    const until = deadlineOf(limit, defaultSeconds);
    for (;;) {
      throwIfCancelled();
      const v = await unlessCancelled(check());
      if (v !== undefined) return v;
      if (Date.now() >= until) {
        throw ApplicationFailure.create({
          type: MigrationFailureType.Timeout,
          message: `timed out waiting for ${what}${limit.deadline !== undefined ? ` (deadline ${limit.deadline})` : ''}`,
          nonRetryable: limit.deadline !== undefined,
        });
      }
      heartbeat({ waitingFor: what });
      await pause(Math.max(1, Math.min(pollMs, until - Date.now())));
    }
  }

  /**
   * Validates the run's writes with the API server itself, before anything changes: a server-side
   * dry run of the template patch (apply "patch") and of every ownership Job exactly as
   * {@link createOwnershipJobs} will create it. A refused field becomes a preflight problem.
   */
  async function dryRunWrites(
    inp: MigrationInput,
    owner: RunRef,
    databases: DatabasePlan[],
  ): Promise<string[]> {
    const problems = new Set<string>();
    if (inp.securityContext.apply === 'patch') {
      const ids = {
        runAsUser: inp.uid,
        runAsGroup: inp.gid,
        fsGroup: inp.gid,
        supplementalGroups: inp.supplementalGroups,
      };
      for (const db of databases) {
        const patch = podIdsPatch(ids);
        try {
          await kube.patchStatefulSet(inp.namespace, db.statefulSet, patch, PatchStrategy.MergePatch, {
            dryRun: true,
          });
        } catch (err) {
          if (!isRefusal(err)) throw err;
          const causes = err.causes.length ? err.causes : [{ field: undefined, message: err.reason }];
          for (const c of causes)
            problems.add(
              `securityContext: StatefulSet ${db.statefulSet} would be refused with the target IDs: ${c.field ? `${c.field}: ` : ''}${c.message}: choose IDs the cluster admits, or use securityContext.apply "external"`,
            );
        }
      }
    }
    for (const db of databases) {
      for (const target of db.jobs) {
        const job = buildOwnershipJob(inp, target, owner);
        const name = job.metadata!.name!;
        try {
          try {
            await kube.createJob(inp.namespace, job, { dryRun: true });
          } catch (err) {
            if (!isKubeError(err, KubeFailureType.Conflict)) throw err;
            // A Job of that name exists (createOwnershipJobs deals with it): validate under another name.
            const { name: _taken, ...metadata } = job.metadata!;
            await kube.createJob(
              inp.namespace,
              { ...job, metadata: { ...metadata, generateName: `${name}-` } },
              { dryRun: true },
            );
          }
        } catch (err) {
          if (!isRefusal(err)) throw err;
          for (const r of refusals(err, `ownership Job ${name}`)) problems.add(`${r}: fix the input`);
        }
      }
    }
    return [...problems];
  }

  /**
   * Discovers what the input names and plans the run; changes nothing. Everything that can be
   * checked before the window is: the target IDs against the policies, and the run's writes
   * (template patch, ownership Jobs) by a server-side dry run, so a bad `job.*` field stops the
   * run before any change rather than after the scale-down.
   *
   * @throws `PlanningFailed` (non-retryable) when the cluster does not hold what the input names.
   */
  async function planMigration(input: { run: MigrationInput; owner: RunRef }): Promise<MigrationPlan> {
    return typed(async () => {
      const { run: inp } = input;
      const profile = inp.profile ? profileOf(inp.profile) : undefined;
      const wanted = inp.databases ?? profile!.databases;
      const policies = await policy.snapshotPolicies({
        namespace: inp.namespace,
        owner: input.owner,
        podSecurity: inp.policies.podSecurity,
        gatekeeper: inp.policies.gatekeeper,
      });
      const claims = await kube.listClaims(inp.namespace);
      const databases: DatabasePlan[] = [];
      const runAsNonRoot: Record<string, boolean> = {};
      try {
        for (const db of wanted) {
          let sts: V1StatefulSet;
          try {
            sts = await kube.readStatefulSet(inp.namespace, db.statefulSet);
          } catch (err) {
            if (isKubeError(err, KubeFailureType.NotFound)) {
              throw new PlanningError(
                `StatefulSet ${db.statefulSet} not found in namespace ${inp.namespace}: fix the profile or databases[].statefulSet`,
              );
            }
            throw err;
          }
          databases.push(
            planDatabase(
              sts,
              db.container,
              'volumes' in db ? (db.volumes as string[] | undefined) : undefined,
              claims,
            ),
          );
          const spec = sts.spec?.template.spec;
          runAsNonRoot[db.statefulSet] =
            spec?.securityContext?.runAsNonRoot === true ||
            (spec?.containers.find((c) => c.name === db.container)?.securityContext?.runAsNonRoot ??
              false) === true;
        }
      } catch (err) {
        if (err instanceof PlanningError)
          throw ApplicationFailure.nonRetryable(err.message, MigrationFailureType.PlanningFailed);
        throw err;
      }
      // Constraints left alone (gatekeeper: false) still judge the restarted pods: read them anyway.
      const enforced = inp.policies.gatekeeper
        ? policies
        : await policy.snapshotPolicies({
            namespace: inp.namespace,
            owner: input.owner,
            podSecurity: inp.policies.podSecurity,
            gatekeeper: true,
          });
      const allowedUsers: { name: string; parameters: AllowedUsersParameters }[] = [];
      for (const c of enforced.snapshot.constraints) {
        if (
          c.ref.kind !== 'K8sPSPAllowedUsers' ||
          c.excludedBy !== null ||
          c.ref.group !== GatekeeperConstraintGroup
        )
          continue;
        const obj = await kube.readClusterObject<{ spec?: { parameters?: AllowedUsersParameters } }>(
          c.ref,
          c.ref.name,
        );
        allowedUsers.push({ name: c.ref.name, parameters: obj.spec?.parameters ?? {} });
      }
      let platform: PlatformPlan | null = null;
      if (profile?.platform) {
        const p = profile.platform;
        let status: string | null = null;
        try {
          const obj = await kube.readNamespacedObject<unknown>(p, inp.namespace, p.name);
          const v = getPath(obj, p.statusPath);
          status = typeof v === 'string' ? v : null;
        } catch (err) {
          if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        }
        platform = { ...p, status };
      }
      const refused = await dryRunWrites(inp, input.owner, databases);
      return {
        namespace: inp.namespace,
        uid: inp.uid,
        gid: inp.gid,
        supplementalGroups: inp.supplementalGroups,
        databases,
        platform,
        policies,
        preflight: [...preflight(inp, policies, allowedUsers, databases, runAsNonRoot), ...refused],
      };
    });
  }

  /** Reads the pod-level IDs of a StatefulSet's template. */
  async function readPodIds(input: { namespace: string; statefulSet: string }): Promise<PodIds> {
    return typed(async () => {
      const sc: V1PodSecurityContext =
        (await kube.readStatefulSet(input.namespace, input.statefulSet)).spec?.template.spec
          ?.securityContext ?? {};
      return {
        runAsUser: sc.runAsUser ?? null,
        runAsGroup: sc.runAsGroup ?? null,
        fsGroup: sc.fsGroup ?? null,
        supplementalGroups: sc.supplementalGroups ?? null,
      };
    });
  }

  /** Sets the pod-level IDs of a StatefulSet's template (null removes a field). */
  async function patchPodIds(input: { namespace: string; statefulSet: string; ids: PodIds }): Promise<void> {
    return typed(async () => {
      await kube.patchStatefulSet(
        input.namespace,
        input.statefulSet,
        podIdsPatch(input.ids),
        PatchStrategy.MergePatch,
      );
      log(`StatefulSet ${input.statefulSet}: securityContext set to ${JSON.stringify(input.ids)}`);
    });
  }

  /** Runs `helm upgrade --reuse-values` with the new IDs (securityContext.apply = helm). */
  async function helmUpgrade(input: {
    namespace: string;
    release: string;
    chart: string;
    valuesFile?: string;
    extraArgs: string[];
    uid: number;
    gid: number;
    supplementalGroups: number[];
  }): Promise<string> {
    const args = [
      'upgrade',
      input.release,
      input.chart,
      '--namespace',
      input.namespace,
      '--reuse-values',
      ...(input.valuesFile ? ['--values', input.valuesFile] : []),
      '--set',
      `securityContext.pod.runAsUser=${input.uid},securityContext.pod.runAsGroup=${input.gid},securityContext.pod.fsGroup=${input.gid}`,
      '--set',
      `securityContext.pod.supplementalGroups={${input.supplementalGroups.join(',')}}`,
      ...input.extraArgs,
    ];
    try {
      const { stdout } = await run(deps.helm ?? 'helm', args, { timeout: 10 * 60_000 });
      return stdout;
    } catch (err) {
      const e = err as { code?: string; stderr?: string; message: string };
      throw ApplicationFailure.create({
        type: MigrationFailureType.HelmFailed,
        message:
          e.code === 'ENOENT'
            ? 'helm is not installed on the worker: install it or use securityContext.apply "patch" or "external"'
            : `helm upgrade failed: ${e.stderr ?? e.message}`,
        nonRetryable: e.code === 'ENOENT',
      });
    }
  }

  /** Checks that every StatefulSet's template carries the target IDs; returns the mismatches. */
  async function verifySecurityContext(input: IdsCheck): Promise<string[]> {
    return typed(async () => {
      const problems: string[] = [];
      for (const name of input.statefulSets) {
        const ids = await readPodIds({ namespace: input.namespace, statefulSet: name });
        if (ids.runAsUser !== input.uid)
          problems.push(`${name}: runAsUser is ${ids.runAsUser ?? 'unset'}, not ${input.uid}`);
        if (ids.runAsGroup !== input.gid)
          problems.push(`${name}: runAsGroup is ${ids.runAsGroup ?? 'unset'}, not ${input.gid}`);
        if (ids.fsGroup !== input.gid)
          problems.push(`${name}: fsGroup is ${ids.fsGroup ?? 'unset'}, not ${input.gid}`);
      }
      return problems;
    });
  }

  /** Scales a StatefulSet to 0 (recording its replicas on it) and waits until its pods are gone. */
  async function scaleDown(
    input: { namespace: string; statefulSet: string; replicas: number } & WaitLimit,
  ): Promise<void> {
    return typed(async () => {
      const sts = await kube.patchStatefulSet(
        input.namespace,
        input.statefulSet,
        {
          metadata: { annotations: { [OriginalReplicasAnnotation]: String(input.replicas) } },
          spec: { replicas: 0 },
        },
        PatchStrategy.MergePatch,
      );
      const selector = selectorOf(sts);
      await poll(`pods of ${input.statefulSet} gone`, input, async () =>
        (await kube.listPods(input.namespace, selector)).length === 0 ? true : undefined,
      );
      log(`StatefulSet ${input.statefulSet} scaled to 0; its pods are gone`);
    });
  }

  /** Scales a StatefulSet back and waits until every replica is Ready. */
  async function scaleUp(
    input: { namespace: string; statefulSet: string; replicas: number } & WaitLimit,
  ): Promise<void> {
    return typed(async () => {
      await kube.patchStatefulSet(
        input.namespace,
        input.statefulSet,
        {
          metadata: { annotations: { [OriginalReplicasAnnotation]: null } },
          spec: { replicas: input.replicas },
        },
        PatchStrategy.MergePatch,
      );
      await poll(`${input.replicas} ready replicas of ${input.statefulSet}`, input, async () => {
        const s = await kube.readStatefulSet(input.namespace, input.statefulSet);
        const ready = s.status?.readyReplicas ?? 0;
        const current = s.status?.updatedReplicas ?? ready;
        return ready === input.replicas && current === input.replicas ? true : undefined;
      });
      log(`StatefulSet ${input.statefulSet} back at ${input.replicas} ready replicas`);
    });
  }

  /** Waits for the platform resource's status to say ready. */
  async function waitForPlatform(
    input: { namespace: string; platform: PlatformPlan } & WaitLimit,
  ): Promise<string> {
    return typed(() =>
      poll(
        `${input.platform.plural}/${input.platform.name} ${input.platform.statusPath}=${input.platform.ready}`,
        input,
        async () => {
          const obj = await kube.readNamespacedObject<unknown>(
            input.platform,
            input.namespace,
            input.platform.name,
          );
          const v = getPath(obj, input.platform.statusPath);
          return v === input.platform.ready ? v : undefined;
        },
      ),
    );
  }

  /** Whether a Job (by uid) and every pod it started are gone. */
  async function jobAndPodsGone(namespace: string, job: V1Job): Promise<boolean> {
    const name = job.metadata!.name!;
    try {
      if ((await kube.readJob(namespace, name)).metadata?.uid === job.metadata!.uid) return false;
    } catch (err) {
      if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
    }
    return (await kube.listPods(namespace, podSelectorOf(job))).length === 0;
  }

  /** Deletes a Job in the foreground (only that one, by uid), unless it is already being deleted. */
  async function deleteInForeground(namespace: string, job: V1Job): Promise<void> {
    if (job.metadata?.deletionTimestamp) return;
    try {
      await kube.deleteJob(namespace, job.metadata!.name!, { uid: job.metadata!.uid! });
    } catch (err) {
      // Gone already, or replaced by a newer Job of the same name: this one is gone either way.
      if (!isKubeError(err, KubeFailureType.NotFound) && !isKubeError(err, KubeFailureType.Conflict))
        throw err;
    }
  }

  /**
   * Creates the ownership Jobs for `owner`. Idempotent for the same run: its own Job for the same
   * IDs is adopted (a retried step), unless it failed (the run's next attempt), which is deleted
   * and created again. A finished Job of another run, or for other IDs, is deleted (its pods
   * gone first) and never counted as this run's work.
   *
   * @throws `JobOfAnotherRun` (non-retryable) when such a Job still runs, naming it, its run and
   * IDs; `JobNameTaken` (non-retryable) when a Job of that name is not runas-migrate's.
   */
  async function createOwnershipJobs(
    input: {
      run: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>;
      targets: JobTarget[];
      owner: RunRef;
    } & Partial<WaitLimit>,
  ): Promise<JobRef[]> {
    return typed(async () => {
      const { namespace } = input.run;
      const refs: JobRef[] = [];
      for (const target of input.targets) {
        const job = buildOwnershipJob(input.run, target, input.owner);
        const name = job.metadata!.name!;
        let existing: V1Job | undefined;
        try {
          existing = await kube.readJob(namespace, name);
        } catch (err) {
          if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        }
        if (existing) {
          if (existing.metadata?.labels?.[JobLabel.ManagedBy] !== ManagedBy) {
            throw ApplicationFailure.nonRetryable(
              `Job ${name} exists and was not created by runas-migrate: delete or rename it`,
              MigrationFailureType.JobNameTaken,
            );
          }
          const o = jobOwnership(existing);
          const ours = o.runId === input.owner.runId && o.uid === input.run.uid && o.gid === input.run.gid;
          const finished = finishedCondition(existing);
          const deleting = existing.metadata?.deletionTimestamp !== undefined;
          if (ours && finished?.type !== 'Failed' && !deleting) {
            refs.push({ name, uid: existing.metadata.uid! });
            log(`adopted this run's Job ${name}`);
            continue;
          }
          if (!ours && !finished && !deleting) {
            throw ApplicationFailure.nonRetryable(
              `Job ${namespace}/${name} of ${describeOwner(existing)} is still running: wait for it to finish or delete it (kubectl delete job -n ${namespace} ${name} --cascade=foreground), then run again`,
              MigrationFailureType.JobOfAnotherRun,
            );
          }
          await deleteInForeground(namespace, existing);
          await poll(
            `Job ${name} of ${describeOwner(existing)} and its pods gone`,
            input,
            async () => ((await jobAndPodsGone(namespace, existing)) ? true : undefined),
            DefaultJobDeletionSeconds,
          );
          log(`deleted the ${finished ? 'finished ' : ''}Job ${name} of ${describeOwner(existing)}`);
        }
        const created = await kube.createJob(namespace, job);
        refs.push({ name, uid: created.metadata!.uid! });
        log(`created Job ${name}`);
      }
      return refs;
    });
  }

  /**
   * Waits until every Job completed or failed; returns each outcome with the Job's summary. A Job
   * succeeded only when it completed and its summary proves uid:gid (no summary, no success).
   */
  async function waitForJobs(
    input: { namespace: string; jobs: JobRef[]; uid: number; gid: number } & WaitLimit,
  ): Promise<JobOutcome[]> {
    return typed(async () => {
      const outcomes = new Map<string, JobOutcome>();
      await poll('ownership Jobs to finish', input, async () => {
        for (const ref of input.jobs) {
          if (outcomes.has(ref.name)) continue;
          let job: V1Job | undefined;
          try {
            job = await kube.readJob(input.namespace, ref.name);
          } catch (err) {
            if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
          }
          if (job?.metadata?.uid !== ref.uid) {
            outcomes.set(ref.name, {
              name: ref.name,
              succeeded: false,
              summary: null,
              message: job ? 'replaced by another Job of the same name' : 'deleted before it finished',
            });
            continue;
          }
          const done = finishedCondition(job);
          if (!done) continue;
          const pods = await kube.listPods(input.namespace, `job-name=${ref.name}`);
          const terminated = pods
            .filter((p) => p.metadata?.ownerReferences?.some((o) => o.uid === ref.uid))
            .map((p) => p.status?.containerStatuses?.[0]?.state?.terminated)
            .find((t) => t !== undefined);
          const summary = parseJobSummary(terminated?.message);
          const verdict = judgeJob(done, summary, terminated?.exitCode, input);
          outcomes.set(ref.name, { name: ref.name, summary: summary ?? null, ...verdict });
        }
        heartbeat({ finished: outcomes.size, of: input.jobs.length });
        return outcomes.size === input.jobs.length ? true : undefined;
      });
      return input.jobs.map((j) => outcomes.get(j.name)!);
    });
  }

  /**
   * Deletes ownership Jobs in the foreground and waits until each Job and every pod it started
   * are gone, so no chown runs on when this returns. All runas-migrate Jobs of the namespace by
   * default (the compensations); only `owner`'s, or only the named ones, when given.
   *
   * @returns the names of the Jobs deleted.
   */
  /**
   * The ownership Jobs `owner` created in the namespace, whatever their IDs: what settling works
   * from when the run's creation step was interrupted before it could say which it created.
   */
  async function findOwnershipJobs(input: { namespace: string; owner: RunRef }): Promise<JobRef[]> {
    return typed(async () =>
      (
        await kube.listJobs(
          input.namespace,
          `${JobLabel.ManagedBy}=${ManagedBy},${JobLabel.Run}=${input.owner.runId}`,
        )
      )
        .filter((j) => j.metadata?.deletionTimestamp === undefined)
        .map((j) => ({ name: j.metadata!.name!, uid: j.metadata!.uid! })),
    );
  }

  async function deleteOwnershipJobs(
    input: { namespace: string; owner?: RunRef; names?: string[] } & Partial<WaitLimit>,
  ): Promise<string[]> {
    return typed(async () => {
      const selector = `${JobLabel.ManagedBy}=${ManagedBy}${input.owner ? `,${JobLabel.Run}=${input.owner.runId}` : ''}`;
      const doomed = (await kube.listJobs(input.namespace, selector)).filter(
        (j) => !input.names || input.names.includes(j.metadata!.name!),
      );
      for (const job of doomed) await deleteInForeground(input.namespace, job);
      const left = new Set(doomed);
      if (left.size) {
        await poll(
          `${left.size} ownership Jobs and their pods gone`,
          input,
          async () => {
            for (const job of [...left]) if (await jobAndPodsGone(input.namespace, job)) left.delete(job);
            heartbeat({ deleting: [...left].map((j) => j.metadata!.name!) });
            return left.size === 0 ? true : undefined;
          },
          DefaultJobDeletionSeconds,
        );
      }
      const names = doomed.map((j) => j.metadata!.name!);
      if (names.length) log(`deleted Jobs ${names.join(', ')}; their pods are gone`);
      return names;
    });
  }

  /**
   * Checks the databases after scale-up: every replica Ready and running as uid:gid (pod
   * securityContext as admitted). Returns one line per problem.
   */
  async function verifyDatabases(input: IdsCheck): Promise<string[]> {
    return typed(async () => {
      const problems: string[] = [];
      for (const name of input.statefulSets) {
        const sts = await kube.readStatefulSet(input.namespace, name);
        const pods = await kube.listPods(input.namespace, selectorOf(sts));
        if (pods.length !== (sts.spec?.replicas ?? 0))
          problems.push(`${name}: ${pods.length} pods for ${sts.spec?.replicas} replicas`);
        for (const p of pods) {
          const sc = p.spec?.securityContext ?? {};
          if (sc.runAsUser !== input.uid || sc.runAsGroup !== input.gid) {
            problems.push(
              `${p.metadata?.name}: runs as ${sc.runAsUser}:${sc.runAsGroup}, not ${input.uid}:${input.gid}`,
            );
          }
          if (!p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
            problems.push(`${p.metadata?.name}: not Ready`);
        }
      }
      return problems;
    });
  }

  return {
    planMigration,
    readPodIds,
    patchPodIds,
    helmUpgrade,
    verifySecurityContext,
    scaleDown,
    scaleUp,
    waitForPlatform,
    createOwnershipJobs,
    waitForJobs,
    deleteOwnershipJobs,
    findOwnershipJobs,
    verifyDatabases,
  };
}

/** The migration activities, as registered on the worker. */
export type MigrationActivities = ReturnType<typeof createMigrationActivities>;
