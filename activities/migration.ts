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
import { isKubeError, KubeFailureType, type Kube } from '../src/kube.js';
import type { MigrationInput } from '../src/input.js';
import {
  buildOwnershipJob,
  JobLabel,
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
import { heartbeat, typed } from './failures.js';
import { createPolicyActivities, type JobRef } from './policy.js';

/** Failure types raised by the migration activities. */
export const MigrationFailureType = {
  PlanningFailed: 'PlanningFailed',
  SecurityContextNotApplied: 'SecurityContextNotApplied',
  HelmFailed: 'HelmFailed',
  Timeout: 'WaitTimedOut',
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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const run = promisify(execFile);

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

  async function poll<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline)
        throw ApplicationFailure.retryable(`timed out waiting for ${what}`, MigrationFailureType.Timeout);
      heartbeat({ waitingFor: what });
      await sleep(pollMs);
    }
  }

  /**
   * Discovers what the input names and plans the run; changes nothing.
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
      return {
        namespace: inp.namespace,
        uid: inp.uid,
        gid: inp.gid,
        supplementalGroups: inp.supplementalGroups,
        databases,
        platform,
        policies,
        preflight: preflight(inp, policies, allowedUsers, databases, runAsNonRoot),
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
        { spec: { template: { spec: { securityContext: { ...input.ids } } } } },
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
  async function scaleDown(input: {
    namespace: string;
    statefulSet: string;
    replicas: number;
    timeoutSeconds: number;
  }): Promise<void> {
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
      await poll(`pods of ${input.statefulSet} gone`, input.timeoutSeconds * 1000, async () =>
        (await kube.listPods(input.namespace, selector)).length === 0 ? true : undefined,
      );
      log(`StatefulSet ${input.statefulSet} scaled to 0; its pods are gone`);
    });
  }

  /** Scales a StatefulSet back and waits until every replica is Ready. */
  async function scaleUp(input: {
    namespace: string;
    statefulSet: string;
    replicas: number;
    timeoutSeconds: number;
  }): Promise<void> {
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
      await poll(
        `${input.replicas} ready replicas of ${input.statefulSet}`,
        input.timeoutSeconds * 1000,
        async () => {
          const s = await kube.readStatefulSet(input.namespace, input.statefulSet);
          const ready = s.status?.readyReplicas ?? 0;
          const current = s.status?.updatedReplicas ?? ready;
          return ready === input.replicas && current === input.replicas ? true : undefined;
        },
      );
      log(`StatefulSet ${input.statefulSet} back at ${input.replicas} ready replicas`);
    });
  }

  /** Waits for the platform resource's status to say ready. */
  async function waitForPlatform(input: {
    namespace: string;
    platform: PlatformPlan;
    timeoutSeconds: number;
  }): Promise<string> {
    return typed(() =>
      poll(
        `${input.platform.plural}/${input.platform.name} ${input.platform.statusPath}=${input.platform.ready}`,
        input.timeoutSeconds * 1000,
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

  /**
   * Creates the ownership Jobs. Idempotent: a Job of the same name that runas-migrate created and
   * that has not failed is adopted; a failed one is deleted and created again.
   */
  async function createOwnershipJobs(input: {
    run: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>;
    targets: JobTarget[];
  }): Promise<JobRef[]> {
    return typed(async () => {
      const refs: JobRef[] = [];
      for (const target of input.targets) {
        const job = buildOwnershipJob(input.run, target);
        const name = job.metadata!.name!;
        let existing: V1Job | undefined;
        try {
          existing = await kube.readJob(input.run.namespace, name);
        } catch (err) {
          if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        }
        if (existing && existing.metadata?.labels?.[JobLabel.ManagedBy] !== ManagedBy) {
          throw ApplicationFailure.nonRetryable(
            `Job ${name} exists and was not created by runas-migrate: delete or rename it`,
            'JobNameTaken',
          );
        }
        const failed = existing?.status?.conditions?.some((c) => c.type === 'Failed' && c.status === 'True');
        if (existing && !failed && !existing.metadata?.deletionTimestamp) {
          refs.push({ name, uid: existing.metadata!.uid! });
          continue;
        }
        if (existing) {
          await kube.deleteJob(input.run.namespace, name);
          await poll(`old Job ${name} deleted`, 60_000, async () => {
            try {
              await kube.readJob(input.run.namespace, name);
              return undefined;
            } catch (err) {
              if (isKubeError(err, KubeFailureType.NotFound)) return true;
              throw err;
            }
          });
        }
        const created = await kube.createJob(input.run.namespace, job);
        refs.push({ name, uid: created.metadata!.uid! });
        log(`created Job ${name}`);
      }
      return refs;
    });
  }

  /** Waits until every Job completed or failed; returns each outcome with the Job's summary. */
  async function waitForJobs(input: {
    namespace: string;
    jobs: JobRef[];
    timeoutSeconds: number;
  }): Promise<JobOutcome[]> {
    return typed(async () => {
      const outcomes = new Map<string, JobOutcome>();
      await poll('ownership Jobs to finish', input.timeoutSeconds * 1000, async () => {
        for (const ref of input.jobs) {
          if (outcomes.has(ref.name)) continue;
          const job = await kube.readJob(input.namespace, ref.name);
          const done = job.status?.conditions?.find(
            (c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True',
          );
          if (!done) continue;
          const pods = await kube.listPods(input.namespace, `job-name=${ref.name}`);
          const terminated = pods
            .filter((p) => p.metadata?.ownerReferences?.some((o) => o.uid === ref.uid))
            .map((p) => p.status?.containerStatuses?.[0]?.state?.terminated)
            .find((t) => t !== undefined);
          const summary = parseJobSummary(terminated?.message) ?? null;
          outcomes.set(ref.name, {
            name: ref.name,
            succeeded: done.type === 'Complete' && (summary?.ok ?? true),
            summary,
            message:
              done.type === 'Complete'
                ? 'completed'
                : `${done.reason ?? 'failed'}: ${done.message ?? ''} ${terminated ? `(exit ${terminated.exitCode})` : ''}`.trim(),
          });
        }
        heartbeat({ finished: outcomes.size, of: input.jobs.length });
        return outcomes.size === input.jobs.length ? true : undefined;
      });
      return input.jobs.map((j) => outcomes.get(j.name)!);
    });
  }

  /** Deletes the ownership Jobs of the namespace (all runas-migrate Jobs, or the named ones). */
  async function deleteOwnershipJobs(input: { namespace: string; names?: string[] }): Promise<string[]> {
    return typed(async () => {
      const jobs = await kube.listJobs(input.namespace, `${JobLabel.ManagedBy}=${ManagedBy}`);
      const doomed = jobs
        .map((j) => j.metadata!.name!)
        .filter((n) => !input.names || input.names.includes(n));
      for (const name of doomed) {
        try {
          await kube.deleteJob(input.namespace, name);
        } catch (err) {
          if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        }
      }
      if (doomed.length) log(`deleted Jobs ${doomed.join(', ')}`);
      return doomed;
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
    verifyDatabases,
  };
}

/** The migration activities, as registered on the worker. */
export type MigrationActivities = ReturnType<typeof createMigrationActivities>;
