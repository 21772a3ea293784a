/**
 * Planning a run: discovery of what the input names, and the preflight of everything that can be
 * checked before the window. Changes nothing; every call goes through the injected {@link Kube}.
 */
import { PatchStrategy, type V1StatefulSet } from '@kubernetes/client-node';
import { isKubeError, type Kube, type KubeError } from '../cluster/kube.js';
import { FailureType } from '../core/failures.js';
import type { MigrationInput } from '../core/input.js';
import { buildOwnershipJob } from '../core/job.js';
import {
  containerIdProblems,
  PlanningError,
  planDatabase,
  preflight,
  type AllowedUsersParameters,
  type DatabasePlan,
  type MigrationPlan,
  type PlatformPlan,
} from '../core/plan.js';
import {
  GatekeeperConstraintGroup,
  PodSecurityLabel,
  type RelaxationRecord,
  type RunRef,
} from '../core/policy.js';
import { profileOf, type PlatformResource, type ProfileDatabase } from '../core/profiles.js';
import { OwnershipScript, ownershipJobPods } from './ownership-script.js';
import type { PodsAdmissionPlan, PolicyGuard } from './policy-guard.js';
import { podIdsPatch } from './statefulsets.js';
import { podOfStatefulSet } from '../core/admission.js';
import { getPath } from './workloads.js';

/** Dependencies of {@link Planner}. */
export interface PlannerDeps {
  kube: Kube;
  /** Reads the namespace's policies (planning never relaxes them). */
  policyGuard: PolicyGuard;
  /** Unused: planning has nothing to report but its plan. Accepted like every service's. */
  log?: (message: string) => void;
}

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
  isKubeError(err, FailureType.KubeInvalid) || isKubeError(err, FailureType.KubeBadRequest);

/** The relaxation the admission chain's answer leads to, one line per policy, for the plan. */
function relaxationOf(policies: RelaxationRecord, asked: PodsAdmissionPlan): string[] {
  const { plan, snapshot } = policies;
  const enforce = snapshot.podSecurity[PodSecurityLabel.Enforce] ?? '(cluster default)';
  const psa = asked.plan.podSecurityEnforce;
  const candidates = snapshot.constraints.filter((c) => c.excludedBy === null).map((c) => refName(c.ref));
  const relaxed = asked.plan.constraints.map((c) => refName(c.ref));
  const left = candidates.filter((c) => !relaxed.includes(c));
  if (asked.state.startsWith('not-asked'))
    return [
      `Pod Security Admission: ${plan.podSecurityEnforce ? `enforce ${enforce} → ${plan.podSecurityEnforce}` : 'unchanged'}`,
      `Gatekeeper: every blocking constraint (${relaxed.join(', ') || 'none'})`,
    ];
  const hidden = asked.refusals.some((r) => /^(pod-security|unavailable):/.test(r));
  return [
    `Pod Security Admission: ${psa ? `enforce ${enforce} → ${psa} (it refuses the Job pods)` : `unchanged (${enforce} admits the Job pods)`}`,
    hidden
      ? `Gatekeeper: asked again once PSA admits the Job pods (the chain stops at PSA's refusal); then only the constraints it names among ${candidates.join(', ') || 'none'}`
      : `Gatekeeper: ${relaxed.length ? `exclude the namespace from ${relaxed.join(', ')} (they refuse the Job pods)` : 'nothing refuses the Job pods'}` +
        (left.length ? `; ${left.join(', ')} left enforced` : ''),
  ];
}

const refName = (r: { kind: string; name: string }) => `${r.kind}/${r.name}`;

/** Plans runs from the cluster as it is. */
export class Planner {
  private readonly kube: Kube;
  private readonly policyGuard: PolicyGuard;

  constructor(deps: PlannerDeps) {
    this.kube = deps.kube;
    this.policyGuard = deps.policyGuard;
  }

  /**
   * Discovers what the input names and plans the run; changes nothing. Everything that can be
   * checked before the window is: the target IDs against the policies, and the run's writes
   * (template patch, ownership Jobs) by a server-side dry run, so a bad `job.*` field stops the
   * run before any change rather than after the scale-down.
   *
   * @throws `PlanningFailed` (non-retryable) when the cluster does not hold what the input names.
   */
  async planMigration(input: { run: MigrationInput; owner: RunRef }): Promise<MigrationPlan> {
    const { run: inp, owner } = input;
    const profile = inp.profile ? profileOf(inp.profile) : undefined;
    const snapshot = (gatekeeper: boolean) =>
      this.policyGuard.snapshotPolicies({
        namespace: inp.namespace,
        owner,
        podSecurity: inp.policies.podSecurity,
        gatekeeper,
      });
    const policies = await snapshot(inp.policies.gatekeeper);
    const { databases, runAsNonRoot, statefulSets } = await this.planDatabases(
      inp,
      inp.databases ?? profile!.databases,
    );
    // Constraints left alone (gatekeeper: false) still judge the restarted pods: read them anyway.
    const enforced = inp.policies.gatekeeper ? policies : await snapshot(true);
    const allowedUsers = await this.allowedUsers(enforced);
    const platform = profile?.platform ? await this.readPlatform(profile.platform, inp.namespace) : null;
    const refused = await this.dryRunWrites(inp, owner, databases);
    const admission = await this.dryRunDatabasePods(inp, statefulSets);
    const jobPods = ownershipJobPods(
      inp,
      databases.flatMap((db) => db.jobs),
      owner,
    );
    const asked = jobPods.length ? await this.policyGuard.planForPods(policies, jobPods) : null;
    return {
      namespace: inp.namespace,
      uid: inp.uid,
      gid: inp.gid,
      supplementalGroups: inp.supplementalGroups,
      databases,
      platform,
      policies: asked ? { ...policies, plan: asked.plan } : policies,
      preflight: [
        ...preflight(inp, policies, allowedUsers, databases, runAsNonRoot),
        ...refused,
        ...admission.refusals,
        ...(asked?.unrelaxable ? [`${asked.unrelaxable}: nothing is changed`] : []),
        ...(inp.securityContext.apply === 'patch'
          ? statefulSets.flatMap((sts) => containerIdProblems(sts, inp.uid, inp.gid))
          : []),
      ],
      databasePodsAdmission: admission.state,
      ...(asked
        ? {
            jobPodsAdmission: {
              state: asked.state,
              refusals: asked.refusals,
              relaxation: relaxationOf(policies, asked),
            },
          }
        : {}),
    };
  }

  /**
   * Asks the admission chain, under the policies as they are enforced now, whether each
   * StatefulSet's pods would be admitted with the target IDs: this catches K8sPSPAllowedUsers
   * ranges and any policy the planner does not model. A worker without `create` on pods cannot
   * ask: the hand-written range check is then all there is, and the plan says so.
   */
  private async dryRunDatabasePods(
    inp: MigrationInput,
    statefulSets: readonly V1StatefulSet[],
  ): Promise<{ refusals: string[]; state: MigrationPlan['databasePodsAdmission'] }> {
    const ids = {
      runAsUser: inp.uid,
      runAsGroup: inp.gid,
      fsGroup: inp.gid,
      supplementalGroups: inp.supplementalGroups,
    };
    const refusals: string[] = [];
    for (const sts of statefulSets) {
      try {
        await this.kube.dryRunPod(inp.namespace, podOfStatefulSet(sts, ids));
      } catch (err) {
        if (isKubeError(err, FailureType.KubeForbidden) && /cannot create resource "pods"/.test(err.reason))
          return {
            refusals: [],
            state: 'not-asked: the worker may not create pods (dry run); ranges checked offline only',
          };
        if (!isKubeError(err) || err.retryable) throw err;
        refusals.push(
          `StatefulSet ${sts.metadata?.name}'s pods would be refused with ${inp.uid}:${inp.gid} under the policies enforced now: ${err.reason}: choose IDs they admit`,
        );
      }
    }
    return { refusals, state: refusals.length ? 'refused' : 'admitted' };
  }

  /**
   * Plans each database from its StatefulSet, and tells whether its pods must run as non-root.
   *
   * @throws `PlanningFailed` when a StatefulSet, container or claim the input names is missing.
   */
  private async planDatabases(
    inp: MigrationInput,
    wanted: NonNullable<MigrationInput['databases']> | ProfileDatabase[],
  ): Promise<{
    databases: DatabasePlan[];
    runAsNonRoot: Record<string, boolean>;
    statefulSets: V1StatefulSet[];
  }> {
    const claims = await this.kube.listClaims(inp.namespace);
    const databases: DatabasePlan[] = [];
    const statefulSets: V1StatefulSet[] = [];
    const runAsNonRoot: Record<string, boolean> = {};
    for (const db of wanted) {
      let sts: V1StatefulSet;
      try {
        sts = await this.kube.readStatefulSet(inp.namespace, db.statefulSet);
      } catch (err) {
        if (isKubeError(err, FailureType.KubeNotFound)) {
          throw new PlanningError(
            `StatefulSet ${db.statefulSet} not found in namespace ${inp.namespace}: fix the profile or databases[].statefulSet`,
          );
        }
        throw err;
      }
      databases.push(planDatabase(sts, db.container, 'volumes' in db ? db.volumes : undefined, claims));
      statefulSets.push(sts);
      const spec = sts.spec?.template.spec;
      runAsNonRoot[db.statefulSet] =
        spec?.securityContext?.runAsNonRoot === true ||
        (spec?.containers.find((c) => c.name === db.container)?.securityContext?.runAsNonRoot ?? false) ===
          true;
    }
    return { databases, runAsNonRoot, statefulSets };
  }

  /** The parameters of every Gatekeeper K8sPSPAllowedUsers constraint that applies to the namespace. */
  private async allowedUsers(
    enforced: RelaxationRecord,
  ): Promise<{ name: string; parameters: AllowedUsersParameters }[]> {
    const allowedUsers: { name: string; parameters: AllowedUsersParameters }[] = [];
    for (const c of enforced.snapshot.constraints) {
      if (
        c.ref.kind !== 'K8sPSPAllowedUsers' ||
        c.excludedBy !== null ||
        c.ref.group !== GatekeeperConstraintGroup
      )
        continue;
      const obj = await this.kube.readClusterObject<{ spec?: { parameters?: AllowedUsersParameters } }>(
        c.ref,
        c.ref.name,
      );
      allowedUsers.push({ name: c.ref.name, parameters: obj.spec?.parameters ?? {} });
    }
    return allowedUsers;
  }

  /** The profile's platform resource and its current status (null when it or its status is absent). */
  private async readPlatform(p: PlatformResource, namespace: string): Promise<PlatformPlan> {
    let status: string | null = null;
    try {
      const obj = await this.kube.readNamespacedObject<unknown>(p, namespace, p.name);
      const v = getPath(obj, p.statusPath);
      status = typeof v === 'string' ? v : null;
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    }
    return { ...p, status };
  }

  /**
   * Validates the run's writes with the API server itself, before anything changes: a server-side
   * dry run of the template patch (apply "patch") and of every ownership Job exactly as
   * `OwnershipJobs.createOwnershipJobs` will create it. A refused field becomes a preflight problem.
   */
  private async dryRunWrites(
    inp: MigrationInput,
    owner: RunRef,
    databases: DatabasePlan[],
  ): Promise<string[]> {
    const problems = new Set<string>();
    if (inp.securityContext.apply === 'patch') {
      const patch = podIdsPatch({
        runAsUser: inp.uid,
        runAsGroup: inp.gid,
        fsGroup: inp.gid,
        supplementalGroups: inp.supplementalGroups,
      });
      for (const db of databases) {
        try {
          await this.kube.patchStatefulSet(inp.namespace, db.statefulSet, patch, PatchStrategy.MergePatch, {
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
        const job = buildOwnershipJob(inp, target, owner, OwnershipScript);
        const name = job.metadata!.name!;
        try {
          await this.dryRunJob(inp.namespace, job);
        } catch (err) {
          if (!isRefusal(err)) throw err;
          for (const r of refusals(err, `ownership Job ${name}`)) problems.add(`${r}: fix the input`);
        }
      }
    }
    return [...problems];
  }

  /** A server-side dry run of creating `job`. */
  private async dryRunJob(namespace: string, job: ReturnType<typeof buildOwnershipJob>): Promise<void> {
    try {
      await this.kube.createJob(namespace, job, { dryRun: true });
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeConflict)) throw err;
      // A Job of that name exists (createOwnershipJobs deals with it): validate under another name.
      const { name, ...metadata } = job.metadata!;
      await this.kube.createJob(
        namespace,
        { ...job, metadata: { ...metadata, generateName: `${name}-` } },
        { dryRun: true },
      );
    }
  }
}
