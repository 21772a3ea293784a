/**
 * The policy guard's activities: snapshot, relax, restore (exact, idempotent, never removing
 * what others added), the admission-window wait, and the sweeper's search for relaxations.
 * Every side effect goes through the injected {@link Kube}.
 *
 * A relaxation is recorded with authority in a ConfigMap of the worker's own namespace before
 * it is applied (src/records.ts); a restore follows the run's own copy or that record, never
 * the namespace annotation, which anyone allowed to patch the namespace can write. An
 * annotation that is missing, changed or unbacked is an alarm: in the report and as a Warning
 * Event on the Namespace.
 */
import { createHash } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { PatchStrategy, type V1ConfigMap, type V1Namespace } from '@kubernetes/client-node';
import { isKubeError, KubeFailureType, type CustomResourceKind, type Kube } from '../src/kube.js';
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
  parseRunCopy,
  planRelaxation,
  PodSecurityLabel,
  podSecurityLabelsOf,
  RelaxationAnnotation,
  RelaxationRecordError,
  RelaxationRecordVersion,
  relaxNamespacePatch,
  restorePodSecurityPatch,
  sameRecord,
  type ConstraintRef,
  type JsonPatchOp,
  type PolicySnapshot,
  type RelaxationRecord,
  type RelaxedPodSecurityLevel,
  type RunRef,
} from '../src/policy.js';
import {
  parseRecordConfigMap,
  RecordAlarm,
  recordConfigMap,
  recordConfigMapName,
  RecordLabel,
  RecordSelector,
  RecordsNamespaceEnv,
  recordsNamespaceOf,
  targetOfConfigMap,
  type ProtectedRecord,
} from '../src/records.js';
import {
  activityContext,
  deadlineOf,
  heartbeat,
  pause,
  PolicyFailureType,
  throwIfCancelled,
  typed,
  unlessCancelled,
  type WaitLimit,
} from './failures.js';

/** Dependencies of the policy activities. */
export interface PolicyActivityDeps {
  kube: Kube;
  /** Where the activities say what they did. */
  log?: (message: string) => void;
  /** API group of the constraints to consider. @default "constraints.gatekeeper.sh" */
  constraintGroup?: string;
  /** Pause between polls while waiting for pods. @default 200 */
  pollMs?: number;
  /**
   * Namespace of the protected records: the worker's own, which tenants cannot write.
   * @default $RUNAS_MIGRATE_RECORDS_NAMESPACE, else "runas-migrate"
   */
  recordsNamespace?: string;
  /**
   * Temporal namespace written into records when called outside an activity (an activity
   * knows its own). @default $TEMPORAL_NAMESPACE, else "default"
   */
  temporalNamespace?: string;
}

/** Input of {@link snapshotPolicies} and {@link relaxPolicies}. */
export interface RelaxInput {
  namespace: string;
  owner: RunRef;
  /** Level `enforce` is relaxed to. @default "baseline" */
  podSecurity?: RelaxedPodSecurityLevel;
  /** Whether Gatekeeper constraints are relaxed. @default true */
  gatekeeper?: boolean;
  /**
   * Seconds after which the window may be closed by the sweeper whatever the run's state
   * (window.max + window.grace); written into the record as `notAfter`. None: no limit.
   */
  closeWithinSeconds?: number;
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
  /**
   * The run's own copy of the record: whenever given, the authority (the protected record
   * replaces it only when it records a later relaxation of the same run).
   */
  record?: RelaxationRecord;
}

/** What happened to one constraint on restore. */
export type ConstraintRestore =
  | 'entry-removed'
  | 'list-removed'
  | 'already-restored'
  | 'constraint-deleted'
  /** Its kind is no longer served by the constraint group (its template was removed). */
  | 'kind-not-served';

/** What {@link restorePolicies} did. */
export interface RestoreReport {
  namespace: string;
  /** False when there was nothing to restore (none recorded, already restored, or refused). */
  restored: boolean;
  owner: RunRef | null;
  /** The record the restore followed. */
  source: 'run-copy' | 'protected-record' | null;
  podSecurity: 'restored' | 'unchanged' | 'already-restored' | 'kept-foreign-change';
  constraints: { constraint: string; result: ConstraintRestore }[];
  /** Changes made by others during the window, kept as they are. */
  keptForeignChanges: string[];
  /**
   * Tampering found: the annotation missing, changed or not backed by a protected record, the
   * protected record missing, corrupt or different from the run's copy. Each restore that
   * finds any also raises a Warning Event `RelaxationRecordTampered` on the Namespace.
   */
  alarms: string[];
  /** Why nothing was restored although the namespace shows a relaxation; null otherwise. */
  refused: string | null;
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
  /**
   * Each Job's pod, and the node it is bound to (null while unscheduled: such a pod has not run
   * and, deleted now, never will).
   */
  admitted: { job: string; pod: string; createdAt: string; node?: string | null }[];
  refused: { job: string; message: string }[];
  timedOut: boolean;
}

/** A namespace with a relaxation recorded (protected record) or shown (annotation). */
export interface RecordedRelaxation {
  namespace: string;
  /** The owner run from the protected record; null when there is none that can be used. */
  owner: RunRef | null;
  /** Temporal namespace of the owner run; null with `owner`. */
  temporalNamespace: string | null;
  /** When the sweeper may close the window whatever the run's state; null: not recorded. */
  notAfter?: string | null;
  /** `snapshot.takenAt` of the record: which window of its run it is. */
  takenAt?: string;
  /** Why nothing may be done from what was found (then `owner` is null). */
  refused?: string;
}

const refName = (r: Pick<ConstraintRef, 'kind' | 'name'>) => `${r.kind}/${r.name}`;
const sameRun = (a: RunRef, b: RunRef) => a.workflowId === b.workflowId && a.runId === b.runId;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Guarded patches of one constraint in one activity attempt before backing off to Temporal's retry. */
const ConstraintPatchAttempts = 20;
const labelsOf = (ns: V1Namespace) => ns.metadata?.labels ?? {};
const runName = (r: RunRef) => `${r.workflowId}/${r.runId}`;
/** How much of a tampered annotation an alarm quotes. */
const QuotedAnnotationChars = 200;

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
  const recordsNamespace = recordsNamespaceOf(deps.recordsNamespace);
  const temporalNamespace = () =>
    activityContext()?.info.namespace ??
    deps.temporalNamespace ??
    process.env.TEMPORAL_NAMESPACE ??
    'default';
  const expectation = (namespace: string) => ({ namespace, constraintGroup: group });
  const protectedName = (namespace: string) => `${recordsNamespace}/${recordConfigMapName(namespace)}`;
  const unbacked = (namespace: string) =>
    `namespace ${namespace} carries the ${RelaxationAnnotation} annotation but no protected record ` +
    `(ConfigMap ${protectedName(namespace)}) backs it: not acted upon, and the annotation is left as evidence`;

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
      version: RelaxationRecordVersion,
      temporalNamespace: temporalNamespace(),
      owner: input.owner,
      ...(input.closeWithinSeconds !== undefined
        ? { notAfter: new Date(Date.parse(snapshot.takenAt) + input.closeWithinSeconds * 1000).toISOString() }
        : {}),
      snapshot,
      plan: planRelaxation(snapshot, input.podSecurity ?? 'baseline'),
    };
  }

  /** The protected record of a namespace: found, absent (both null), or why it cannot be used. */
  async function readProtected(
    namespace: string,
  ): Promise<{ found: ProtectedRecord | null; problem: string | null }> {
    let cm: V1ConfigMap;
    try {
      cm = await kube.readConfigMap(recordsNamespace, recordConfigMapName(namespace));
    } catch (err) {
      if (isKubeError(err, KubeFailureType.NotFound)) return { found: null, problem: null };
      throw err;
    }
    try {
      return { found: parseRecordConfigMap(cm, expectation(namespace)), problem: null };
    } catch (err) {
      if (err instanceof RelaxationRecordError) return { found: null, problem: err.message };
      throw err;
    }
  }

  /** Writes the protected record: creates it, or replaces the one this call wrote before. */
  async function writeProtected(record: RelaxationRecord, previous?: V1ConfigMap): Promise<V1ConfigMap> {
    try {
      return previous
        ? await kube.replaceConfigMap(
            recordsNamespace,
            previous.metadata!.name!,
            recordConfigMap(record, recordsNamespace, previous.metadata!.resourceVersion),
          )
        : await kube.createConfigMap(recordsNamespace, recordConfigMap(record, recordsNamespace));
    } catch (err) {
      if (isKubeError(err, KubeFailureType.NotFound)) {
        throw ApplicationFailure.nonRetryable(
          `the records namespace ${recordsNamespace} does not exist, so the relaxation cannot be recorded: ` +
            `create it (deploy/worker.yaml does), or point ${RecordsNamespaceEnv} / --records-namespace at the worker's namespace`,
          PolicyFailureType.RecordsNamespaceMissing,
        );
      }
      throw err;
    }
  }

  /** Deletes a protected record once its relaxation is restored and verified; only that very object. */
  async function deleteProtected(p: ProtectedRecord): Promise<void> {
    try {
      await kube.deleteConfigMap(recordsNamespace, p.configMap.name, {
        uid: p.configMap.uid,
        resourceVersion: p.configMap.resourceVersion,
      });
    } catch (err) {
      if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
    }
  }

  /**
   * Raises alarms as one Warning Event on the Namespace (in `default`, where Events about
   * cluster-scoped objects live, out of the tenant's reach). The same alarms again count up
   * the same Event rather than adding one per sweep. Returns why the Event could not be
   * recorded, if it could not: an alarm is never lost for that, it stays in the report.
   */
  async function raiseAlarm(
    namespace: string,
    alarms: readonly string[],
    uid?: string,
  ): Promise<string | null> {
    if (alarms.length === 0) return null;
    for (const a of alarms) log(`ALARM ${namespace}: ${a}`);
    const message = alarms.join(' | ').slice(0, 1024);
    const digest = createHash('sha256').update(`${namespace}\n${message}`).digest('hex').slice(0, 16);
    const name = `runas-migrate.${namespace}.${digest}`;
    const where = RecordAlarm.EventNamespace;
    const now = new Date();
    try {
      await kube.createEvent(where, {
        metadata: { name, namespace: where, labels: { [RecordLabel.ManagedBy]: 'runas-migrate' } },
        involvedObject: { apiVersion: 'v1', kind: 'Namespace', name: namespace, ...(uid ? { uid } : {}) },
        type: 'Warning',
        reason: RecordAlarm.Reason,
        message,
        source: { component: 'runas-migrate' },
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      });
      return null;
    } catch (err) {
      try {
        if (!isKubeError(err, KubeFailureType.Conflict)) throw err;
        const [existing] = await kube.listEvents(where, `metadata.name=${name}`);
        await kube.patchEvent(where, name, {
          count: (existing?.count ?? 1) + 1,
          lastTimestamp: now.toISOString(),
        });
        return null;
      } catch (e) {
        const why = `the Warning Event about ${namespace} could not be recorded: ${(e as Error).message}`;
        log(why);
        return why;
      }
    }
  }

  /** The served kind of a recorded constraint reference; null when its kind is no longer served. */
  function servedRef(ref: ConstraintRef, served: readonly CustomResourceKind[]): ConstraintRef | null {
    const kind = served.find((k) => k.group === ref.group && k.kind === ref.kind && k.plural === ref.plural);
    return kind ? { ...kind, name: ref.name } : null;
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

  /** Shows a resumed relaxation on the namespace again: the annotation and the `enforce` label. */
  async function showRelaxation(ns: V1Namespace, record: RelaxationRecord): Promise<void> {
    const namespace = record.snapshot.namespace;
    const shown = JSON.stringify(record);
    const annotation = ns.metadata?.annotations?.[RelaxationAnnotation];
    const enforce = record.plan.podSecurityEnforce;
    if (annotation === shown && (!enforce || ns.metadata?.labels?.[PodSecurityLabel.Enforce] === enforce))
      return;
    if (annotation !== undefined && annotation !== shown) {
      await raiseAlarm(
        namespace,
        [
          `the ${RelaxationAnnotation} annotation was changed during the window; it is written again from the protected record`,
        ],
        ns.metadata?.uid,
      );
    }
    await kube.patchNamespace(
      namespace,
      {
        metadata: {
          annotations: { [RelaxationAnnotation]: shown },
          ...(enforce ? { labels: { [PodSecurityLabel.Enforce]: enforce } } : {}),
        },
      },
      PatchStrategy.MergePatch,
    );
  }

  /**
   * Records the relaxation in the protected ConfigMap, then records it on the namespace and
   * relaxes PSA in one write (only if the namespace did not change since the snapshot), then
   * excludes the namespace from each blocking constraint. Idempotent: a retry of the same run
   * resumes from its protected record.
   *
   * @throws `RelaxedByAnotherRun` when another run's record is there; `UnverifiedRelaxationRecord`
   * when the namespace shows a relaxation no protected record backs; `MalformedRelaxationRecord`
   * when the protected record cannot be used; `RecordsNamespaceMissing`. Nothing is changed then.
   */
  async function relaxPolicies(input: RelaxInput): Promise<RelaxResult> {
    return typed(async () => {
      const before = kube.counts.reads + kube.counts.writes;
      let record: RelaxationRecord | undefined;
      let resumed = false;
      // The protected record this call wrote and has not yet applied: replaced, not resumed.
      let written: V1ConfigMap | undefined;
      for (let attempt = 0; !record; attempt++) {
        const ns = await kube.readNamespace(input.namespace);
        if (!written) {
          const { found, problem } = await readProtected(input.namespace);
          if (problem) {
            await raiseAlarm(input.namespace, [problem], ns.metadata?.uid);
            throw ApplicationFailure.nonRetryable(
              `${problem}: nothing was changed. Check it (kubectl get configmap -n ${recordsNamespace} ` +
                `${recordConfigMapName(input.namespace)} -o yaml), restore what it shows if that relaxation is real, then delete it`,
              PolicyFailureType.MalformedRecord,
            );
          }
          if (found && !sameRun(found.record.owner, input.owner)) {
            throw ApplicationFailure.nonRetryable(
              `namespace ${input.namespace} is already relaxed by run ${runName(found.record.owner)}: ` +
                `wait for it, or run "runas-migrate restore --namespace ${input.namespace}" if that run is gone`,
              PolicyFailureType.RelaxedByAnotherRun,
            );
          }
          if (found) {
            record = found.record;
            resumed = true;
            await showRelaxation(ns, record);
            break;
          }
          if (ns.metadata?.annotations?.[RelaxationAnnotation] !== undefined) {
            const why = unbacked(input.namespace);
            await raiseAlarm(input.namespace, [why], ns.metadata?.uid);
            throw ApplicationFailure.nonRetryable(
              `${why}. It may be forged, or left by a version that kept records only there: check it, ` +
                `put back by hand what it shows if it is real, remove the annotation, then start again`,
              PolicyFailureType.UnverifiedRecord,
            );
          }
        }
        const candidate = await takeSnapshot(input, ns);
        // Refuse before any change rather than record what could not be read back.
        parseRelaxationRecord(JSON.stringify(candidate), expectation(input.namespace));
        try {
          written = await writeProtected(candidate, written);
        } catch (err) {
          // Someone created or changed the protected record meanwhile: look at it again.
          if (!isKubeError(err, KubeFailureType.Conflict) || attempt >= 5) throw err;
          written = undefined;
          continue;
        }
        try {
          await kube.patchNamespace(
            input.namespace,
            relaxNamespacePatch(candidate),
            PatchStrategy.MergePatch,
          );
          record = candidate;
        } catch (err) {
          // The namespace changed between snapshot and write: snapshot again, replace the record.
          if (isKubeError(err, KubeFailureType.Conflict) && attempt < 5) continue;
          if (isKubeError(err) && err.status !== undefined && !err.retryable) {
            // Refused for good, so nothing was applied: the record must not outlive the attempt.
            await kube
              .deleteConfigMap(recordsNamespace, written.metadata!.name!, { uid: written.metadata!.uid! })
              .catch(() => undefined);
          }
          throw err;
        }
      }
      log(
        `recorded relaxation of ${input.namespace} in ${protectedName(input.namespace)} and set enforce=${record.plan.podSecurityEnforce ?? '(unchanged)'}`,
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

  /** Why the annotation differs from the authoritative record; null when it shows the same. */
  function annotationDiffers(annotation: string, authority: RelaxationRecord): string | null {
    if (annotation === JSON.stringify(authority)) return null;
    let why: string;
    try {
      const shown = parseRelaxationRecord(annotation, {
        ...expectation(authority.snapshot.namespace),
        source: 'the annotation',
      });
      if (sameRecord(shown, authority)) return null;
      why = `it describes another relaxation (run ${runName(shown.owner)}, taken ${shown.snapshot.takenAt})`;
    } catch (err) {
      if (!(err instanceof RelaxationRecordError)) throw err;
      why = err.message;
    }
    const quoted =
      annotation.length > QuotedAnnotationChars
        ? `${annotation.slice(0, QuotedAnnotationChars)}…`
        : annotation;
    return `the ${RelaxationAnnotation} annotation was changed during the window (${why}); it read: ${quoted}`;
  }

  /**
   * Puts the namespace's policies back exactly as recorded, keeping what others changed
   * meanwhile, verifies the result, then drops the annotation and the protected record.
   *
   * The record followed is the run's copy when given, else the protected record (only a
   * relaxation recorded by `owner`, when given); never the annotation. A missing, changed or
   * corrupt record is an alarm (report and Warning Event), not a reason to do nothing; an
   * annotation no protected record backs is refused and left in place as evidence.
   */
  async function restorePolicies(input: RestoreInput): Promise<RestoreReport> {
    return typed(async () => {
      const before = kube.counts.reads + kube.counts.writes;
      const report: RestoreReport = {
        namespace: input.namespace,
        restored: false,
        owner: null,
        source: null,
        podSecurity: 'unchanged',
        constraints: [],
        keptForeignChanges: [],
        alarms: [],
        refused: null,
        restoredAt: new Date().toISOString(),
        apiCalls: 0,
      };
      const done = async (uid?: string): Promise<RestoreReport> => {
        const notRecorded = await raiseAlarm(input.namespace, report.alarms, uid);
        if (notRecorded) report.alarms.push(notRecorded);
        return { ...report, apiCalls: kube.counts.reads + kube.counts.writes - before };
      };

      const copy = input.record
        ? parseRunCopy(input.record, expectation(input.namespace), temporalNamespace())
        : null;
      if (copy && input.owner && !sameRun(copy.owner, input.owner)) {
        throw ApplicationFailure.nonRetryable(
          `the run's copy of its record names run ${runName(copy.owner)}, not ${runName(input.owner)}`,
          PolicyFailureType.MalformedRecord,
        );
      }
      const owner = input.owner ?? copy?.owner;
      const prot = await readProtected(input.namespace);
      if (prot.problem) report.alarms.push(prot.problem);
      let ns: V1Namespace | undefined;
      try {
        ns = await kube.readNamespace(input.namespace);
      } catch (err) {
        if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
      }
      const annotation = ns?.metadata?.annotations?.[RelaxationAnnotation];
      const uid = ns?.metadata?.uid;

      if (prot.found && owner && !sameRun(prot.found.record.owner, owner)) {
        // Another run holds the namespace now: this run's relaxation was restored before.
        report.owner = prot.found.record.owner;
        return done(uid);
      }
      let authority: RelaxationRecord | null = null;
      if (copy) {
        authority = copy;
        report.source = 'run-copy';
        const found = prot.found?.record;
        if (found && Date.parse(found.snapshot.takenAt) > Date.parse(copy.snapshot.takenAt)) {
          // The run relaxed again and its copy of that relaxation has not reached it yet.
          authority = found;
          report.source = 'protected-record';
        } else if (found && !sameRecord(found, copy)) {
          report.alarms.push(
            `the protected record ${protectedName(input.namespace)} differs from the run's copy: restored from the run's copy`,
          );
        }
      } else if (prot.found) {
        authority = prot.found.record;
        report.source = 'protected-record';
      }
      if (!authority) {
        if (prot.problem) report.refused = `${prot.problem}: nothing restored`;
        else if (annotation !== undefined) {
          report.refused = unbacked(input.namespace);
          report.alarms.push(report.refused);
        }
        return done(uid);
      }
      report.owner = authority.owner;
      const served = await kube.kindsOfGroup(group);

      if (!ns) {
        // The namespace went away during the window: the record still says which exclusions
        // to take back, so a namesake is not born exempt.
        await restoreConstraints(authority, report, served);
        if (prot.found) await deleteProtected(prot.found);
        report.restored = true;
        report.restoredAt = new Date().toISOString();
        return done();
      }

      const changed = annotation === undefined ? null : annotationDiffers(annotation, authority);
      if (changed) report.alarms.push(changed);

      const ours = authority.plan.podSecurityEnforce;
      const original = authority.snapshot.podSecurity[PodSecurityLabel.Enforce];
      const live = ns.metadata?.labels?.[PodSecurityLabel.Enforce] ?? null;
      const psaPatch = restorePodSecurityPatch(authority);
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

      await restoreConstraints(authority, report, served);

      const undid =
        report.podSecurity === 'restored' ||
        report.constraints.some((c) => c.result === 'entry-removed' || c.result === 'list-removed');
      const source = report.source === 'run-copy' ? "the run's copy" : 'the protected record';
      if (annotation === undefined && undid) {
        report.alarms.push(
          `the ${RelaxationAnnotation} annotation was removed while the policies were relaxed: restored from ${source}`,
        );
      }
      if (copy && !prot.found && !prot.problem && (undid || annotation !== undefined)) {
        report.alarms.push(
          `the protected record ${protectedName(input.namespace)} was removed while the policies were relaxed: restored from the run's copy`,
        );
      }

      await verifyRestored(authority, report, served);

      if (annotation !== undefined) {
        try {
          await kube.patchNamespace(input.namespace, dropRecordOps(annotation), PatchStrategy.JsonPatch);
        } catch (err) {
          // Already dropped (or changed again) by someone else: the next sweep looks again.
          if (!isKubeError(err, KubeFailureType.Invalid)) throw err;
        }
      }
      if (prot.found) await deleteProtected(prot.found);
      report.restored = undid || annotation !== undefined || prot.found !== null;
      report.restoredAt = new Date().toISOString();
      if (report.restored) log(`policies of ${input.namespace} restored and verified`);
      return done(uid);
    });
  }

  /** Removes from each constraint what the relaxation added. */
  async function restoreConstraints(
    record: RelaxationRecord,
    report: RestoreReport,
    served: readonly CustomResourceKind[],
  ): Promise<void> {
    const { namespace } = record.snapshot;
    for (const planned of record.plan.constraints) {
      const ref = servedRef(planned.ref, served);
      if (!ref) {
        report.constraints.push({ constraint: refName(planned.ref), result: 'kind-not-served' });
        log(`${refName(planned.ref)}: its kind is no longer served; nothing to restore there`);
        continue;
      }
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
  async function verifyRestored(
    record: RelaxationRecord,
    report: RestoreReport,
    served: readonly CustomResourceKind[],
  ): Promise<void> {
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
      const ref = servedRef(c.ref, served);
      if (!ref) continue;
      let liveList: string[] | null;
      try {
        const obj = await kube.readClusterObject<ConstraintLike>(ref, ref.name);
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
  async function waitForPodsAdmitted(
    input: { namespace: string; jobs: JobRef[] } & WaitLimit,
  ): Promise<AdmissionEvidence> {
    return typed(async () => {
      const until = deadlineOf(input);
      const names = input.jobs.map((j) => j.name);
      for (;;) {
        throwIfCancelled();
        const pods = await unlessCancelled(
          kube.listPods(input.namespace, `job-name in (${names.join(',')})`),
        );
        const admitted = input.jobs.flatMap((j) => {
          const pod = pods.find((p) => p.metadata?.ownerReferences?.some((o) => o.uid === j.uid));
          return pod
            ? [
                {
                  job: j.name,
                  pod: pod.metadata!.name!,
                  createdAt: new Date(pod.metadata!.creationTimestamp!).toISOString(),
                  node: pod.spec?.nodeName ?? null,
                },
              ]
            : [];
        });
        const events = await unlessCancelled(
          kube.listEvents(input.namespace, 'involvedObject.kind=Job,reason=FailedCreate'),
        );
        const refused = input.jobs.flatMap((j) => {
          if (admitted.some((a) => a.job === j.name)) return [];
          const e = events.find((ev) => ev.involvedObject.uid === j.uid);
          return e ? [{ job: j.name, message: e.message ?? 'pod creation refused' }] : [];
        });
        heartbeat({ admitted: admitted.length, refused: refused.length, of: input.jobs.length });
        if (admitted.length + refused.length === input.jobs.length)
          return { admitted, refused, timedOut: false };
        if (Date.now() >= until) return { admitted, refused, timedOut: true };
        await pause(Math.max(1, Math.min(pollMs, until - Date.now())));
      }
    });
  }

  /**
   * Every namespace with a relaxation: each protected record (validated: one that cannot be
   * used is refused, naming why) and each annotation no protected record backs (refused, left
   * in place). Every refusal is also a Warning Event on the Namespace.
   */
  async function findRelaxations(): Promise<RecordedRelaxation[]> {
    return typed(async () => {
      const found = new Map<string, RecordedRelaxation>();
      for (const cm of await kube.listConfigMaps(recordsNamespace, RecordSelector)) {
        const target =
          targetOfConfigMap(cm) ??
          cm.metadata?.labels?.[RecordLabel.TargetNamespace] ??
          cm.metadata?.name ??
          '?';
        try {
          const { record } = parseRecordConfigMap(cm, { constraintGroup: group });
          found.set(target, {
            namespace: target,
            owner: record.owner,
            temporalNamespace: record.temporalNamespace,
            notAfter: record.notAfter ?? null,
            takenAt: record.snapshot.takenAt,
          });
        } catch (err) {
          if (!(err instanceof RelaxationRecordError)) throw err;
          found.set(target, {
            namespace: target,
            owner: null,
            temporalNamespace: null,
            refused: `${err.message}: nothing restored`,
          });
        }
      }
      const uids = new Map<string, string | undefined>();
      for (const ns of await kube.listNamespaces()) {
        const name = ns.metadata!.name!;
        uids.set(name, ns.metadata?.uid);
        if (ns.metadata?.annotations?.[RelaxationAnnotation] === undefined || found.has(name)) continue;
        found.set(name, { namespace: name, owner: null, temporalNamespace: null, refused: unbacked(name) });
      }
      const all = [...found.values()].sort((a, b) => a.namespace.localeCompare(b.namespace));
      for (const r of all) {
        if (r.refused) await raiseAlarm(r.namespace, [r.refused], uids.get(r.namespace));
      }
      return all;
    });
  }

  /** What is recorded for one namespace (for `runas-migrate restore`); null when nothing is. */
  async function describeRelaxation(input: { namespace: string }): Promise<RecordedRelaxation | null> {
    return typed(async () => {
      const { found, problem } = await readProtected(input.namespace);
      const base = { namespace: input.namespace, owner: null, temporalNamespace: null };
      if (found) {
        return {
          namespace: input.namespace,
          owner: found.record.owner,
          temporalNamespace: found.record.temporalNamespace,
        };
      }
      if (problem) return { ...base, refused: `${problem}: nothing restored` };
      let ns: V1Namespace;
      try {
        ns = await kube.readNamespace(input.namespace);
      } catch (err) {
        if (isKubeError(err, KubeFailureType.NotFound)) return null;
        throw err;
      }
      return ns.metadata?.annotations?.[RelaxationAnnotation] === undefined
        ? null
        : { ...base, refused: unbacked(input.namespace) };
    });
  }

  return {
    snapshotPolicies,
    relaxPolicies,
    restorePolicies,
    waitForPodsAdmitted,
    findRelaxations,
    describeRelaxation,
  };
}

/** The policy activities, as registered on the worker. */
export type PolicyActivities = ReturnType<typeof createPolicyActivities>;
