/**
 * The policy guard's activities: snapshot, relax, restore (exact, idempotent, never removing
 * what others added), the admission-window wait, and the sweeper's search for relaxations.
 * Every side effect goes through the injected {@link Kube}.
 */
import { ApplicationFailure } from '@temporalio/common';
import { PatchStrategy, type V1Namespace } from '@kubernetes/client-node';
import { isKubeError, KubeFailureType, type Kube } from '../src/kube.js';
import {
  assessConstraint,
  constraintView,
  dropRecordOps,
  excludeNamespaceOps,
  ExcludedNamespacesPath,
  GatekeeperConstraintGroup,
  includeNamespaceOps,
  parseConstraint,
  parseRelaxationRecord,
  planRelaxation,
  PodSecurityLabel,
  podSecurityLabelsOf,
  RelaxationAnnotation,
  relaxNamespacePatch,
  restorePodSecurityPatch,
  type ConstraintRef,
  type JsonPatchOp,
  type PolicySnapshot,
  type RelaxationRecord,
  type RelaxedPodSecurityLevel,
  type RunRef,
} from '../src/policy.js';
import { heartbeat, PolicyFailureType, typed } from './failures.js';

/** Dependencies of the policy activities. */
export interface PolicyActivityDeps {
  kube: Kube;
  /** Where the activities say what they did. */
  log?: (message: string) => void;
  /** API group of the constraints to consider. @default "constraints.gatekeeper.sh" */
  constraintGroup?: string;
  /** Pause between polls while waiting for pods. @default 200 */
  pollMs?: number;
}

/** Input of {@link snapshotPolicies} and {@link relaxPolicies}. */
export interface RelaxInput {
  namespace: string;
  owner: RunRef;
  /** Level `enforce` is relaxed to. @default "baseline" */
  podSecurity?: RelaxedPodSecurityLevel;
  /** Whether Gatekeeper constraints are relaxed. @default true */
  gatekeeper?: boolean;
}

/** What {@link relaxPolicies} did. */
export interface RelaxResult {
  record: RelaxationRecord;
  relaxedAt: string;
  /** Constraints that vanished between the snapshot and the relaxation. */
  deletedConstraints: string[];
  /** Whether this call found its own record already there (a retry after a crash). */
  resumed: boolean;
  apiCalls: number;
}

/** Input of {@link restorePolicies}. */
export interface RestoreInput {
  namespace: string;
  /** Restore only a relaxation recorded by this run. */
  owner?: RunRef;
  /** The run's own copy of the record, used when the namespace itself is gone. */
  record?: RelaxationRecord;
}

/** What happened to one constraint on restore. */
export type ConstraintRestore = 'entry-removed' | 'list-removed' | 'already-restored' | 'constraint-deleted';

/** What {@link restorePolicies} did. */
export interface RestoreReport {
  namespace: string;
  /** False when no relaxation was recorded (nothing to do, or already restored). */
  restored: boolean;
  owner: RunRef | null;
  podSecurity: 'restored' | 'unchanged' | 'already-restored' | 'kept-foreign-change';
  constraints: { constraint: string; result: ConstraintRestore }[];
  /** Changes made by others during the window, kept as they are. */
  keptForeignChanges: string[];
  restoredAt: string;
  apiCalls: number;
}

/** One migration Job, by name and uid. */
export interface JobRef {
  name: string;
  uid: string;
}

/** Evidence that the Jobs' pods passed admission (or were refused). */
export interface AdmissionEvidence {
  admitted: { job: string; pod: string; createdAt: string }[];
  refused: { job: string; message: string }[];
  timedOut: boolean;
}

/** A namespace that carries a relaxation record. */
export interface RecordedRelaxation {
  namespace: string;
  owner: RunRef | null;
  /** Why the record could not be read, when it could not. */
  error?: string;
}

const refName = (r: ConstraintRef) => `${r.kind}/${r.name}`;
const sameRun = (a: RunRef, b: RunRef) => a.workflowId === b.workflowId && a.runId === b.runId;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Guarded patches of one constraint in one activity attempt before backing off to Temporal's retry. */
const ConstraintPatchAttempts = 20;
const labelsOf = (ns: V1Namespace) => ns.metadata?.labels ?? {};

interface ConstraintLike {
  metadata: { resourceVersion: string; annotations?: Record<string, string> };
  spec?: { match?: { excludedNamespaces?: string[] } };
}

/** Builds the policy activities around their dependencies. */
export function createPolicyActivities(deps: PolicyActivityDeps) {
  const { kube } = deps;
  const log = deps.log ?? (() => undefined);
  const group = deps.constraintGroup ?? GatekeeperConstraintGroup;
  const pollMs = deps.pollMs ?? 200;

  async function takeSnapshot(input: RelaxInput, read?: V1Namespace): Promise<RelaxationRecord> {
    const ns = read ?? (await kube.readNamespace(input.namespace));
    const snapshot: PolicySnapshot = {
      namespace: input.namespace,
      namespaceResourceVersion: ns.metadata!.resourceVersion!,
      takenAt: new Date().toISOString(),
      podSecurity: podSecurityLabelsOf(ns.metadata?.labels),
      constraints: [],
      skipped: [],
    };
    if (input.gatekeeper !== false) {
      for (const kind of await kube.kindsOfGroup(group)) {
        for (const raw of await kube.listClusterObjects<unknown>(kind)) {
          const constraint = parseConstraint(kind.kind, raw);
          const ref: ConstraintRef = { ...kind, name: constraint.metadata.name };
          const assessed = assessConstraint(ref, constraint, input.namespace, labelsOf(ns));
          if ('skipped' in assessed) snapshot.skipped.push(assessed.skipped);
          else snapshot.constraints.push(assessed.snapshot);
        }
      }
    }
    return {
      version: 1,
      owner: input.owner,
      snapshot,
      plan: planRelaxation(snapshot, input.podSecurity ?? 'baseline'),
    };
  }

  /** Applies a constraint JSON Patch computed from a fresh read; recomputes when the object moved meanwhile. */
  async function patchConstraint(
    ref: ConstraintRef,
    compute: (c: ConstraintLike) => JsonPatchOp[] | null,
  ): Promise<'patched' | 'nothing-to-do' | 'deleted'> {
    for (let attempt = 1; ; attempt++) {
      let current: ConstraintLike;
      try {
        current = await kube.readClusterObject<ConstraintLike>(ref, ref.name);
      } catch (err) {
        if (isKubeError(err, KubeFailureType.NotFound)) return 'deleted';
        throw err;
      }
      const ops = compute(current);
      if (!ops) return 'nothing-to-do';
      try {
        await kube.jsonPatchClusterObject(ref, ref.name, ops);
        return 'patched';
      } catch (err) {
        // A failed `test` means someone changed the constraint since we read it: read again.
        const moved = isKubeError(err, KubeFailureType.Invalid) || isKubeError(err, KubeFailureType.Conflict);
        if (!moved) throw err;
        const again = await kube.readClusterObject<ConstraintLike>(ref, ref.name).catch(() => undefined);
        if (again && again.metadata.resourceVersion === current.metadata.resourceVersion) throw err;
        // Many runs share the cluster-wide constraints: back off with jitter, and leave it to
        // the activity's retries (not a failure of the run) if the constraint never settles.
        if (attempt >= ConstraintPatchAttempts) {
          throw ApplicationFailure.retryable(
            `${refName(ref)} changed under every one of ${attempt} guarded patches; trying again later`,
            PolicyFailureType.ConstraintContention,
          );
        }
        await sleep(Math.random() * Math.min(2000, 50 * 2 ** attempt));
      }
    }
  }

  /**
   * Reads the namespace's policies and plans the least relaxation; changes nothing.
   *
   * @throws `KubeNotFound` when the namespace does not exist; `MalformedConstraint` when a
   * constraint cannot be understood.
   */
  async function snapshotPolicies(input: RelaxInput): Promise<RelaxationRecord> {
    return typed(() => takeSnapshot(input));
  }

  /**
   * Records the snapshot on the namespace and relaxes PSA in one write (only if the namespace
   * did not change since the snapshot), then excludes the namespace from each blocking
   * constraint. Idempotent: a retry of the same run resumes from its record.
   */
  async function relaxPolicies(input: RelaxInput): Promise<RelaxResult> {
    return typed(async () => {
      const before = kube.counts.reads + kube.counts.writes;
      let record: RelaxationRecord | undefined;
      let resumed = false;
      for (let attempt = 0; !record; attempt++) {
        const ns = await kube.readNamespace(input.namespace);
        const existing = ns.metadata?.annotations?.[RelaxationAnnotation];
        if (existing) {
          const found = parseRelaxationRecord(existing);
          if (!sameRun(found.owner, input.owner)) {
            throw ApplicationFailure.nonRetryable(
              `namespace ${input.namespace} is already relaxed by run ${found.owner.workflowId}/${found.owner.runId}: ` +
                `wait for it, or run "runas-migrate restore --namespace ${input.namespace}" if that run is gone`,
              PolicyFailureType.RelaxedByAnotherRun,
            );
          }
          record = found;
          resumed = true;
          const enforce = record.plan.podSecurityEnforce;
          if (enforce && ns.metadata?.labels?.[PodSecurityLabel.Enforce] !== enforce) {
            await kube.patchNamespace(
              input.namespace,
              { metadata: { labels: { [PodSecurityLabel.Enforce]: enforce } } },
              PatchStrategy.MergePatch,
            );
          }
          break;
        }
        const candidate = await takeSnapshot(input, ns);
        try {
          await kube.patchNamespace(
            input.namespace,
            relaxNamespacePatch(candidate),
            PatchStrategy.MergePatch,
          );
          record = candidate;
        } catch (err) {
          // The namespace changed between snapshot and write: snapshot again.
          if (!isKubeError(err, KubeFailureType.Conflict) || attempt >= 5) throw err;
        }
      }
      log(
        `recorded relaxation of ${input.namespace} and set enforce=${record.plan.podSecurityEnforce ?? '(unchanged)'}`,
      );
      const deletedConstraints: string[] = [];
      for (const { ref } of record.plan.constraints) {
        const result = await patchConstraint(ref, (c) =>
          excludeNamespaceOps(input.namespace, constraintView(c)),
        );
        if (result === 'deleted') deletedConstraints.push(refName(ref));
        else log(`excluded ${input.namespace} from ${refName(ref)}`);
        heartbeat({ relaxed: refName(ref) });
      }
      return {
        record,
        relaxedAt: new Date().toISOString(),
        deletedConstraints,
        resumed,
        apiCalls: kube.counts.reads + kube.counts.writes - before,
      };
    });
  }

  /**
   * Puts the namespace's policies back exactly as recorded in its annotation, keeping what
   * others changed meanwhile, verifies the result, and drops the annotation. A no-op when no
   * relaxation is recorded (or it belongs to another run than `owner`, when given).
   */
  async function restorePolicies(input: RestoreInput): Promise<RestoreReport> {
    return typed(async () => {
      const before = kube.counts.reads + kube.counts.writes;
      const report: RestoreReport = {
        namespace: input.namespace,
        restored: false,
        owner: null,
        podSecurity: 'unchanged',
        constraints: [],
        keptForeignChanges: [],
        restoredAt: new Date().toISOString(),
        apiCalls: 0,
      };
      const done = () => ({ ...report, apiCalls: kube.counts.reads + kube.counts.writes - before });
      let ns: V1Namespace;
      try {
        ns = await kube.readNamespace(input.namespace);
      } catch (err) {
        if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        // The namespace (and its annotation) went away during the window: the run's own copy of
        // the record still says which exclusions to take back, so a namesake is not left exempt.
        if (input.record) {
          report.owner = input.record.owner;
          await restoreConstraints(input.record, report);
          report.restored = true;
        }
        return done();
      }
      const annotation = ns.metadata?.annotations?.[RelaxationAnnotation];
      if (!annotation) return done();
      let record: RelaxationRecord;
      try {
        record = parseRelaxationRecord(annotation);
      } catch (err) {
        throw ApplicationFailure.nonRetryable((err as Error).message, PolicyFailureType.MalformedRecord);
      }
      report.owner = record.owner;
      if (input.owner && !sameRun(record.owner, input.owner)) return done();

      const ours = record.plan.podSecurityEnforce;
      const original = record.snapshot.podSecurity[PodSecurityLabel.Enforce];
      const live = ns.metadata?.labels?.[PodSecurityLabel.Enforce] ?? null;
      const psaPatch = restorePodSecurityPatch(record);
      if (psaPatch && live === ours) {
        await kube.patchNamespace(input.namespace, psaPatch, PatchStrategy.MergePatch);
        report.podSecurity = 'restored';
      } else if (psaPatch && live === original) {
        report.podSecurity = 'already-restored';
      } else if (psaPatch) {
        report.podSecurity = 'kept-foreign-change';
        report.keptForeignChanges.push(
          `${PodSecurityLabel.Enforce} was changed to ${live ?? '(removed)'} by someone else`,
        );
      }

      await restoreConstraints(record, report);

      await verifyRestored(record, report);

      try {
        await kube.patchNamespace(input.namespace, dropRecordOps(annotation), PatchStrategy.JsonPatch);
      } catch (err) {
        // Already dropped by a concurrent restore of the same record.
        if (!isKubeError(err, KubeFailureType.Invalid)) throw err;
      }
      report.restored = true;
      report.restoredAt = new Date().toISOString();
      log(`policies of ${input.namespace} restored and verified`);
      return done();
    });
  }

  /** Removes from each constraint what the relaxation added. */
  async function restoreConstraints(record: RelaxationRecord, report: RestoreReport): Promise<void> {
    const { namespace } = record.snapshot;
    for (const { ref } of record.plan.constraints) {
      let listRemoved = false;
      const result = await patchConstraint(ref, (c) => {
        const ops = includeNamespaceOps(namespace, constraintView(c));
        listRemoved = ops?.some((o) => o.op === 'remove' && o.path === ExcludedNamespacesPath) ?? false;
        return ops;
      });
      report.constraints.push({
        constraint: refName(ref),
        result:
          result === 'deleted'
            ? 'constraint-deleted'
            : result === 'nothing-to-do'
              ? 'already-restored'
              : listRemoved
                ? 'list-removed'
                : 'entry-removed',
      });
      log(`restored ${refName(ref)} for ${namespace}: ${report.constraints.at(-1)!.result}`);
      heartbeat({ restored: refName(ref) });
    }
  }

  /** Compares the live state with the snapshot; what differs and is not ours is kept and reported. */
  async function verifyRestored(record: RelaxationRecord, report: RestoreReport): Promise<void> {
    const { namespace } = record.snapshot;
    const ns = await kube.readNamespace(namespace);
    const live = ns.metadata?.labels?.[PodSecurityLabel.Enforce] ?? null;
    if (
      record.plan.podSecurityEnforce &&
      live === record.plan.podSecurityEnforce &&
      live !== record.snapshot.podSecurity[PodSecurityLabel.Enforce]
    ) {
      throw ApplicationFailure.retryable(
        `${PodSecurityLabel.Enforce} of ${namespace} is still ${live}`,
        PolicyFailureType.RestoreNotVerified,
      );
    }
    for (const key of Object.values(PodSecurityLabel)) {
      if (key === PodSecurityLabel.Enforce) continue;
      const now = ns.metadata?.labels?.[key] ?? null;
      if (now !== record.snapshot.podSecurity[key])
        report.keptForeignChanges.push(`${key} changed to ${now ?? '(removed)'} by someone else`);
    }
    for (const c of record.snapshot.constraints) {
      let liveList: string[] | null;
      try {
        const obj = await kube.readClusterObject<ConstraintLike>(c.ref, c.ref.name);
        liveList = obj.spec?.match?.excludedNamespaces ?? null;
      } catch (err) {
        if (isKubeError(err, KubeFailureType.NotFound)) continue;
        throw err;
      }
      const was = c.excludedNamespaces ?? [];
      const now = liveList ?? [];
      const wePlanned = record.plan.constraints.some((p) => refName(p.ref) === refName(c.ref));
      const oursLeft =
        wePlanned && now.filter((x) => x === namespace).length > was.filter((x) => x === namespace).length;
      const othersAdded = now.filter((x) => x !== namespace && !was.includes(x));
      if (oursLeft) {
        throw ApplicationFailure.retryable(
          `${refName(c.ref)} still excludes ${namespace}`,
          PolicyFailureType.RestoreNotVerified,
        );
      }
      for (const x of othersAdded)
        report.keptForeignChanges.push(
          `${refName(c.ref)}: ${x} was added to excludedNamespaces by someone else`,
        );
      for (const x of was.filter((y) => !now.includes(y))) {
        report.keptForeignChanges.push(
          `${refName(c.ref)}: ${x} was removed from excludedNamespaces by someone else`,
        );
      }
    }
  }

  /**
   * Waits until every Job has a pod (admitted by PSA and the API server) or a creation was
   * refused; the workflow can then re-enforce the policies while the Jobs run.
   */
  async function waitForPodsAdmitted(input: {
    namespace: string;
    jobs: JobRef[];
    timeoutSeconds: number;
  }): Promise<AdmissionEvidence> {
    return typed(async () => {
      const deadline = Date.now() + input.timeoutSeconds * 1000;
      const names = input.jobs.map((j) => j.name);
      for (;;) {
        const pods = await kube.listPods(input.namespace, `job-name in (${names.join(',')})`);
        const admitted = input.jobs.flatMap((j) => {
          const pod = pods.find((p) => p.metadata?.ownerReferences?.some((o) => o.uid === j.uid));
          return pod
            ? [
                {
                  job: j.name,
                  pod: pod.metadata!.name!,
                  createdAt: new Date(pod.metadata!.creationTimestamp!).toISOString(),
                },
              ]
            : [];
        });
        const events = await kube.listEvents(input.namespace, 'involvedObject.kind=Job,reason=FailedCreate');
        const refused = input.jobs.flatMap((j) => {
          if (admitted.some((a) => a.job === j.name)) return [];
          const e = events.find((ev) => ev.involvedObject.uid === j.uid);
          return e ? [{ job: j.name, message: e.message ?? 'pod creation refused' }] : [];
        });
        heartbeat({ admitted: admitted.length, refused: refused.length, of: input.jobs.length });
        if (admitted.length + refused.length === input.jobs.length)
          return { admitted, refused, timedOut: false };
        if (Date.now() > deadline) return { admitted, refused, timedOut: true };
        await sleep(pollMs);
      }
    });
  }

  /** Every namespace that carries a relaxation record, with the run that wrote it. */
  async function findRelaxations(): Promise<RecordedRelaxation[]> {
    return typed(async () => {
      const namespaces = await kube.listNamespaces();
      return namespaces.flatMap((ns): RecordedRelaxation[] => {
        const value = ns.metadata?.annotations?.[RelaxationAnnotation];
        if (!value) return [];
        try {
          return [{ namespace: ns.metadata!.name!, owner: parseRelaxationRecord(value).owner }];
        } catch (err) {
          return [{ namespace: ns.metadata!.name!, owner: null, error: (err as Error).message }];
        }
      });
    });
  }

  return { snapshotPolicies, relaxPolicies, restorePolicies, waitForPodsAdmitted, findRelaxations };
}

/** The policy activities, as registered on the worker. */
export type PolicyActivities = ReturnType<typeof createPolicyActivities>;
