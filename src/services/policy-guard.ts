/**
 * The policy guard: snapshot, relax, restore (exact, idempotent, never removing what others
 * added), and the sweeper's search for relaxations. Every side effect goes through the injected
 * {@link Kube}.
 *
 * A relaxation is recorded with authority in a ConfigMap of the worker's own namespace before
 * it is applied (src/core/records.ts); a restore follows the run's own copy or that record,
 * never the namespace annotation, which anyone allowed to patch the namespace can write. An
 * annotation that is missing, changed or unbacked is an alarm: in the report and as a Warning
 * Event on the Namespace.
 */
import { createHash } from 'node:crypto';
import { PatchStrategy, type V1ConfigMap, type V1Namespace, type V1Pod } from '@kubernetes/client-node';
import { isKubeError, type CustomResourceKind, type Kube } from '../cluster/kube.js';
import { FailureType, TypedFailure } from '../core/failures.js';
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
  sameRelaxation,
  type ConstraintRef,
  type JsonPatchOp,
  type PolicySnapshot,
  type RelaxationPlan,
  type RelaxationRecord,
  type RelaxedPodSecurityLevel,
  type RunRef,
} from '../core/policy.js';
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
} from '../core/records.js';
import { allSettledInOrder, currentStep, progress } from './step.js';
import { cadenceOf, withCadence, type WaitMode } from './workloads.js';
import { byName, Collections } from '../cluster/changes.js';
import { enforcementOf, type EnforcementView } from '../core/enforcement.js';
import { refusalOf, type AdmissionRefusal } from '../core/admission.js';
import type { MigrationInput } from '../core/input.js';
import type { JobTarget } from '../core/job.js';
import { ownershipJobPods } from './ownership-script.js';

/** Dependencies of the {@link PolicyGuard}. */
export interface PolicyGuardDeps {
  kube: Kube;
  /** Where the guard says what it did. */
  log?: (message: string) => void;
  /** API group of the constraints to consider. @default "constraints.gatekeeper.sh" */
  constraintGroup?: string;
  /**
   * Namespace of the protected records: the worker's own, which tenants cannot write.
   * @default $RUNAS_MIGRATE_RECORDS_NAMESPACE, else "runas-migrate"
   */
  recordsNamespace?: string;
  /**
   * Temporal namespace written into records when called outside a step (a step knows its
   * run's own). @default $TEMPORAL_NAMESPACE, else "default"
   */
  temporalNamespace?: string;
  /**
   * How long to wait for Gatekeeper to take in a patched constraint (each webhook pod's entry in
   * its `status.byPod` at the patched generation). @default 60 000
   */
  enforcementTimeoutMs?: number;
  /**
   * Whether the wait for Gatekeeper watches the written constraints (it looks again as soon as
   * their status changes) or polls them. @default "watch"
   */
  waits?: WaitMode;
}

/** Where Gatekeeper stood on one patched constraint when the guard stopped waiting. */
export interface ConstraintEnforcement {
  constraint: string;
  /** The generation the guard wrote (or found already in place). */
  generation: number;
  /**
   * `enforced`: every Gatekeeper webhook pod enforces it; `no-webhook`: no Gatekeeper pod reports
   * on it, nothing to wait for; `unconfirmed`: not taken in by the deadline; `deleted`.
   */
  state: 'enforced' | 'no-webhook' | 'unconfirmed' | 'deleted';
  /** Milliseconds from the end of the write to this state. */
  ms: number;
  /** The pods not yet at the generation, when unconfirmed. */
  waitingFor?: string[];
}

/** Input of {@link PolicyGuard.snapshotPolicies} and {@link PolicyGuard.relaxPolicies}. */
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
  /**
   * The ownership Jobs the window is for. Given, the guard asks the admission chain about their
   * pods (server-side dry runs) once PSA is relaxed, relaxes only the constraints Gatekeeper
   * names, and returns only once every pod is admitted. Absent: every blocking constraint.
   */
  jobs?: { run: Pick<MigrationInput, 'namespace' | 'uid' | 'gid' | 'job'>; targets: JobTarget[] };
}

/** What the admission chain said about the ownership Jobs' pods while the guard relaxed. */
export interface JobPodsAdmission {
  /** Each distinct refusal met, in order: who refused and what it said. */
  refusals: string[];
  /** The constraints relaxed because Gatekeeper named them in a refusal. */
  relaxed: string[];
  /** Blocking constraints of the namespace that refused none of the pods: left enforced. */
  leftEnforced: string[];
  /** Server-side dry runs made. */
  dryRuns: number;
  /** When every pod was admitted; null when the worker may not ask (then every constraint is relaxed). */
  admittedAt: string | null;
}

/** What {@link PolicyGuard.planForPods} found: the chain's answer and the relaxation it leads to. */
export interface PodsAdmissionPlan {
  /** `admitted`, `refused`, or why the chain was not asked. */
  state: string;
  /** Each distinct refusal: who refused and what it said. */
  refusals: string[];
  plan: RelaxationPlan;
  /** Why the run cannot relax what refuses the pods; null when it can. */
  unrelaxable: string | null;
}

/** What {@link PolicyGuard.relaxPolicies} did. */
export interface RelaxResult {
  record: RelaxationRecord;
  /**
   * When the relaxation began: just before its first write to the namespace (PSA and the
   * annotation), which precedes every constraint it excludes from; for a resumed relaxation, when
   * its snapshot was taken. The security window is counted from here, not from the last write.
   */
  relaxedAt: string;
  /** Constraints that vanished between the snapshot and the relaxation. */
  deletedConstraints: string[];
  /** Whether this call found its own record already there (a retry after a crash). */
  resumed: boolean;
  /** Gatekeeper's take on each relaxed constraint; all `enforced` or `no-webhook`, or the call fails. */
  enforcement: ConstraintEnforcement[];
  /** When Gatekeeper had taken in every relaxed constraint (the relaxation in effect). */
  enforcedAt: string;
  /** What the admission chain said about the Job pods; absent when no Jobs were given. */
  admission?: JobPodsAdmission;
  apiCalls: number;
}

/** Input of {@link PolicyGuard.restorePolicies}. */
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

/** What {@link PolicyGuard.restorePolicies} did. */
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
   * Namespaces other runas-migrate runs excluded from a constraint during the window, each
   * backed by that run's protected record: kept as they are, and not counted as foreign, so a
   * change no run made stands out in a fleet. Absent in reports from before it.
   */
  otherRuns?: string[];
  /**
   * Tampering found: the annotation missing, changed or not backed by a protected record, the
   * protected record missing, corrupt or different from the run's copy. Each restore that
   * finds any also raises a Warning Event `RelaxationRecordTampered` on the Namespace.
   */
  alarms: string[];
  /** Why nothing was restored although the namespace shows a relaxation; null otherwise. */
  refused: string | null;
  /** When the policies were written back (and verified). */
  restoredAt: string;
  /** Gatekeeper's take on each restored constraint. */
  enforcement: ConstraintEnforcement[];
  /**
   * When Gatekeeper enforced every restored constraint again: the end of the window. An
   * unconfirmed constraint leaves it at `restoredAt` and raises an alarm.
   */
  enforcedAt: string;
  apiCalls: number;
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
/** Guarded patches of one constraint in one attempt of a step before backing off to the step's retry. */
const ConstraintPatchAttempts = 20;
const labelsOf = (ns: V1Namespace) => ns.metadata?.labels ?? {};
const runName = (r: RunRef) => `${r.workflowId}/${r.runId}`;
/** How much of a tampered annotation an alarm quotes. */
const QuotedAnnotationChars = 200;

interface ConstraintLike extends EnforcementView {
  metadata: { resourceVersion: string; generation?: number; annotations?: Record<string, string> };
  spec?: { match?: { excludedNamespaces?: string[] } };
}

/** What a guarded constraint patch came to, and the generation then in place. */
type PatchOutcome =
  { result: 'patched' | 'nothing-to-do'; generation: number } | { result: 'deleted'; generation?: undefined };

/** A constraint the guard wrote, at the generation it wrote. */
interface WrittenConstraint {
  ref: ConstraintRef;
  generation: number;
}

/** How often the guard reads a constraint's status while Gatekeeper takes it in. */
const EnforcementPollMs = 200;
/** With a watch on the constraints, how often the wait for Gatekeeper looks anyway. */
const EnforcementFallbackMs = 1_000;
/** How long a PSA refusal may outlive the label change before it counts (PSA's namespace cache). */
const PodSecurityCacheMs = 5_000;
/** How many distinct refusals a relaxation reports. */
const QuotedRefusals = 20;
/** A refusal as reports quote it: who, and what it said (without the generated pod name). */
const refusalText = (r: AdmissionRefusal) => `${r.by}: ${r.message.replace(/pods "[^"]*"/g, 'pods')}`;

/** The protected record of a namespace: found, absent (both null), or why it cannot be used. */
interface ProtectedLookup {
  found: ProtectedRecord | null;
  problem: string | null;
}

/** What a restore found before changing anything. */
interface RestoreState {
  namespace: string;
  /** The run's copy of its record, validated; null when none was given. */
  copy: RelaxationRecord | null;
  /** The run whose relaxation may be restored; any when undefined. */
  owner: RunRef | undefined;
  prot: ProtectedLookup;
  /** The namespace; undefined when it was deleted. */
  ns: V1Namespace | undefined;
  /** The relaxation annotation on the namespace, as it reads. */
  annotation: string | undefined;
  /** The constraint kinds the cluster serves now. */
  served: readonly CustomResourceKind[];
}

const emptyReport = (namespace: string): RestoreReport => ({
  namespace,
  restored: false,
  owner: null,
  source: null,
  podSecurity: 'unchanged',
  constraints: [],
  keptForeignChanges: [],
  otherRuns: [],
  alarms: [],
  refused: null,
  restoredAt: new Date().toISOString(),
  enforcement: [],
  enforcedAt: new Date().toISOString(),
  apiCalls: 0,
});

/**
 * Relaxes a namespace's policies (Pod Security Admission and Gatekeeper constraints) for a
 * migration window and puts them back exactly, with a protected record as the authority.
 */
export class PolicyGuard {
  private readonly kube: Kube;
  private readonly log: (message: string) => void;
  private readonly group: string;
  private readonly recordsNamespace: string;
  private readonly defaultTemporalNamespace: string | undefined;
  private readonly enforcementTimeoutMs: number;
  private readonly waits: WaitMode;

  constructor(deps: PolicyGuardDeps) {
    this.enforcementTimeoutMs = deps.enforcementTimeoutMs ?? 60_000;
    this.waits = deps.waits ?? 'watch';
    this.kube = deps.kube;
    this.log = deps.log ?? (() => undefined);
    this.group = deps.constraintGroup ?? GatekeeperConstraintGroup;
    this.recordsNamespace = recordsNamespaceOf(deps.recordsNamespace);
    this.defaultTemporalNamespace = deps.temporalNamespace;
  }

  /**
   * Reads the namespace's policies and plans the least relaxation; changes nothing.
   *
   * @throws `KubeNotFound` when the namespace does not exist; `MalformedConstraint` when a
   * constraint cannot be understood.
   */
  async snapshotPolicies(input: RelaxInput): Promise<RelaxationRecord> {
    return this.takeSnapshot(input);
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
  async relaxPolicies(input: RelaxInput): Promise<RelaxResult> {
    const before = this.apiCalls();
    const pods = input.jobs && ownershipJobPods(input.jobs.run, input.jobs.targets, input.owner);
    let record: RelaxationRecord | undefined;
    let resumed = false;
    // What the admission chain said before anything changed.
    let askedFirst = { refusals: [] as string[], dryRuns: 0 };
    // The protected record this call wrote and has not yet applied: replaced, not resumed.
    let written: V1ConfigMap | undefined;
    let relaxedAt = '';
    for (let attempt = 0; !record; attempt++) {
      const ns = await this.kube.readNamespace(input.namespace);
      if (!written) {
        const found = await this.resumableRelaxation(input, ns);
        if (found) {
          record = found;
          resumed = true;
          relaxedAt = found.snapshot.takenAt;
          break;
        }
      }
      const candidate = await this.takeSnapshot(input, ns);
      if (pods?.length) {
        const asked = await this.planForPods(candidate, pods);
        if (asked.unrelaxable)
          throw TypedFailure.nonRetryable(
            `${asked.unrelaxable}: nothing was changed`,
            FailureType.AdmissionRefused,
          );
        candidate.plan = asked.plan;
        askedFirst = { refusals: asked.refusals, dryRuns: pods.length };
      }
      // Refuse before any change rather than record what could not be read back.
      parseRelaxationRecord(JSON.stringify(candidate), this.expectation(input.namespace));
      try {
        written = await this.writeProtected(candidate, written);
      } catch (err) {
        // Someone created or changed the protected record meanwhile: look at it again.
        if (!isKubeError(err, FailureType.KubeConflict) || attempt >= 5) throw err;
        written = undefined;
        continue;
      }
      try {
        relaxedAt = new Date().toISOString();
        await this.kube.patchNamespace(
          input.namespace,
          relaxNamespacePatch(candidate),
          PatchStrategy.MergePatch,
        );
        record = candidate;
      } catch (err) {
        // The namespace changed between snapshot and write: snapshot again, replace the record.
        if (isKubeError(err, FailureType.KubeConflict) && attempt < 5) continue;
        if (isKubeError(err) && err.status !== undefined && !err.retryable) {
          // Refused for good, so nothing was applied: the record must not outlive the attempt.
          await this.kube
            .deleteConfigMap(this.recordsNamespace, written.metadata!.name!, { uid: written.metadata!.uid! })
            .catch(() => undefined);
        }
        throw err;
      }
    }
    this.log(
      `recorded relaxation of ${input.namespace} in ${this.protectedName(input.namespace)} and set enforce=${record.plan.podSecurityEnforce ?? '(unchanged)'}`,
    );
    const asked = pods?.length
      ? await this.relaxForPods(input.namespace, record, resumed, pods, askedFirst)
      : null;
    if (asked) record = asked.record;
    const excluded = asked ?? (await this.excludeFromConstraints(input.namespace, record.plan.constraints));
    const enforcement =
      asked?.enforcement ?? this.confirmRelaxed(await this.awaitEnforcement(excluded.written));
    return {
      record,
      relaxedAt,
      deletedConstraints: excluded.deleted,
      resumed,
      enforcement,
      enforcedAt: new Date().toISOString(),
      ...(asked ? { admission: asked.admission } : {}),
      apiCalls: this.apiCalls() - before,
    };
  }

  /**
   * Asks the admission chain about `pods` under the policies as they are (server-side dry runs,
   * nothing changed) and narrows `record`'s plan to what refuses them: PSA only when PSA refuses;
   * exactly the constraints Gatekeeper names when PSA admits the pods; every candidate while
   * PSA's refusal hides Gatekeeper's verdict (the chain stops at the first refusal).
   */
  async planForPods(record: RelaxationRecord, pods: V1Pod[]): Promise<PodsAdmissionPlan> {
    const namespace = record.snapshot.namespace;
    const answers = await Promise.all(pods.map((p) => this.admissionOf(namespace, p)));
    if (answers.includes('not-asked'))
      return {
        state: 'not-asked: the worker may not create pods (dry run); every blocking constraint is relaxed',
        refusals: [],
        plan: record.plan,
        unrelaxable: null,
      };
    const refused = answers.filter((a): a is AdmissionRefusal => a !== null && a !== 'not-asked');
    const refusals = [...new Set(refused.map(refusalText))].slice(0, QuotedRefusals);
    const candidates = record.snapshot.constraints.filter((c) => c.excludedBy === null);
    const byPsa = refused.some((r) => r.by === 'pod-security');
    const hidden = byPsa || refused.some((r) => r.by === 'unavailable' || r.by === 'invalid');
    const blocking = byPsa
      ? null
      : refused.map((r) => this.unrelaxable(r, record, candidates, Infinity)).find((why) => why !== null);
    const named = new Set(refused.flatMap((r) => (r.by === 'gatekeeper' ? r.constraints : [])));
    return {
      state: refused.length === 0 ? 'admitted' : 'refused',
      refusals,
      plan: {
        podSecurityEnforce: byPsa ? record.plan.podSecurityEnforce : null,
        constraints: hidden
          ? record.plan.constraints
          : record.plan.constraints.filter((c) => named.has(c.ref.name)),
      },
      unrelaxable: blocking ?? null,
    };
  }

  /** Fails the relaxation when Gatekeeper has not taken in every relaxed constraint. */
  private confirmRelaxed(enforcement: ConstraintEnforcement[]): ConstraintEnforcement[] {
    const unconfirmed = enforcement.filter((e) => e.state === 'unconfirmed');
    if (unconfirmed.length > 0) {
      throw TypedFailure.nonRetryable(
        `Gatekeeper has not taken in the relaxed ${unconfirmed.map((e) => e.constraint).join(', ')} within ` +
          `${this.enforcementTimeoutMs / 1000} s (${unconfirmed.flatMap((e) => e.waitingFor ?? []).join('; ')}): ` +
          `its webhook would still refuse the Jobs. Check Gatekeeper's pods and logs; the policies are put back`,
        FailureType.EnforcementNotConfirmed,
      );
    }
    return enforcement;
  }

  /**
   * Relaxes, after PSA, only what refuses the Job pods: asks the admission chain by server-side
   * dry run, excludes the namespace from each constraint Gatekeeper names, and asks again until
   * every pod is admitted. The record is narrowed to those constraints before any is patched, so
   * it always covers what was changed. A refusal the guard cannot relax fails at once, naming it.
   *
   * @returns null when the worker may not create pods, not even as a dry run: relax everything.
   */
  private async relaxForPods(
    namespace: string,
    recorded: RelaxationRecord,
    resumed: boolean,
    pods: V1Pod[],
    asked: { refusals: string[]; dryRuns: number },
  ): Promise<
    | (Awaited<ReturnType<PolicyGuard['excludeFromConstraints']>> & {
        record: RelaxationRecord;
        enforcement: ConstraintEnforcement[];
        admission: JobPodsAdmission;
      })
    | null
  > {
    let record = recorded;
    const candidates = record.snapshot.constraints.filter((c) => c.excludedBy === null);
    const planOf = (keys: Set<string>) =>
      planRelaxation(record.snapshot, 'baseline').constraints.filter((c) => keys.has(refName(c.ref)));
    // On a retry, the constraints this relaxation already excluded the namespace from stay in it.
    const relaxed = new Set<string>();
    if (resumed)
      for (const { ref } of record.plan.constraints) {
        const live = await this.kube.readClusterObject<ConstraintLike>(ref, ref.name).catch(() => undefined);
        if (live?.spec?.match?.excludedNamespaces?.includes(namespace)) relaxed.add(refName(ref));
      }
    const admission: JobPodsAdmission = {
      refusals: [...asked.refusals],
      relaxed: [],
      leftEnforced: [],
      dryRuns: asked.dryRuns,
      admittedAt: null,
    };
    const result = {
      deleted: [] as string[],
      written: [] as WrittenConstraint[],
      enforcement: [] as ConstraintEnforcement[],
    };
    const started = Date.now();
    for (;;) {
      const answers = await Promise.all(pods.map((p) => this.admissionOf(namespace, p)));
      admission.dryRuns += pods.length;
      if (answers.includes('not-asked')) {
        this.log(`the worker may not dry-run pods in ${namespace}: every blocking constraint is relaxed`);
        return null;
      }
      const refused = answers.filter((a): a is AdmissionRefusal => a !== null && a !== 'not-asked');
      for (const text of refused.map(refusalText))
        if (!admission.refusals.includes(text) && admission.refusals.length < QuotedRefusals)
          admission.refusals.push(text);
      if (refused.length === 0) break;
      const named = new Set<string>();
      for (const r of refused) {
        const blocking = this.unrelaxable(r, record, candidates, Date.now() - started);
        if (blocking) throw TypedFailure.nonRetryable(blocking, FailureType.AdmissionRefused);
        if (r.by !== 'gatekeeper') continue;
        for (const name of r.constraints)
          for (const c of candidates)
            if (c.ref.name === name && !relaxed.has(refName(c.ref))) named.add(refName(c.ref));
      }
      if (named.size === 0) {
        if (Date.now() - started > this.enforcementTimeoutMs)
          throw TypedFailure.nonRetryable(
            `the ownership Jobs' pods are still refused ${this.enforcementTimeoutMs / 1000} s after the relaxation: ${refused[0]!.message}`,
            FailureType.AdmissionRefused,
          );
        progress({ awaitingAdmission: refused[0]!.message.slice(0, 200) });
        await sleep(EnforcementPollMs);
        continue;
      }
      record = await this.replan(record, planOf(new Set([...relaxed, ...named])));
      const refs = record.plan.constraints.map((c) => c.ref).filter((ref) => named.has(refName(ref)));
      const excluded = await this.excludeFromConstraints(namespace, refs);
      for (const key of named) relaxed.add(key);
      result.deleted.push(...excluded.deleted);
      result.written.push(...excluded.written);
      result.enforcement.push(...this.confirmRelaxed(await this.awaitEnforcement(excluded.written)));
    }
    admission.admittedAt = new Date().toISOString();
    record = await this.replan(record, planOf(relaxed));
    admission.relaxed = candidates.map((c) => refName(c.ref)).filter((k) => relaxed.has(k));
    admission.leftEnforced = candidates.map((c) => refName(c.ref)).filter((k) => !relaxed.has(k));
    this.log(
      `the Job pods are admitted in ${namespace} after ${admission.dryRuns} dry runs; relaxed ${admission.relaxed.join(', ') || 'no constraint'}, left enforced ${admission.leftEnforced.join(', ') || 'none'}`,
    );
    return { ...result, record, admission };
  }

  /** Why a refusal cannot be relaxed by this run; null when it can (or may pass by itself). */
  private unrelaxable(
    r: AdmissionRefusal,
    record: RelaxationRecord,
    candidates: readonly { ref: ConstraintRef }[],
    elapsedMs: number,
  ): string | null {
    const level =
      record.plan.podSecurityEnforce ??
      record.snapshot.podSecurity[PodSecurityLabel.Enforce] ??
      'the default';
    switch (r.by) {
      case 'other':
        return `the ownership Jobs' pods are refused by something runas-migrate does not relax: ${r.message}. Exempt the namespace there, or ask its owner; the policies are put back`;
      case 'pod-security':
        // PSA reads namespaces from a cache: give a just-written label a moment.
        return elapsedMs > PodSecurityCacheMs
          ? `Pod Security Admission still refuses the ownership Jobs' pods at ${level}: ${r.message}. Set policies.podSecurity to privileged if your images need it; the policies are put back`
          : null;
      case 'unavailable':
        return null;
      case 'invalid':
        // Planning's dry run of the Jobs names the input field; here it only stops the run.
        return elapsedMs === Infinity ? null : `the ownership Jobs' pods are invalid: ${r.message}`;
      case 'gatekeeper': {
        const unknown = r.constraints.filter((n) => !candidates.some((c) => c.ref.name === n));
        return unknown.length === 0
          ? null
          : `Gatekeeper constraint ${unknown.join(', ')} refuses the ownership Jobs' pods, but the run may not relax it ` +
              `(policies.gatekeeper is false, or it is not a ${this.group} constraint that blocks the namespace): ${r.message}. The policies are put back`;
      }
    }
  }

  /** One pod put to the admission chain: null when admitted, who refused it, or 'not-asked'. */
  private async admissionOf(namespace: string, pod: V1Pod): Promise<AdmissionRefusal | null | 'not-asked'> {
    try {
      await this.kube.dryRunPod(namespace, pod);
      return null;
    } catch (err) {
      if (isKubeError(err, FailureType.KubeForbidden) && /cannot create resource "pods"/.test(err.reason))
        return 'not-asked';
      if (!isKubeError(err) || err.status === undefined) throw err;
      const refusal = refusalOf(err.reason);
      // A pod the API server finds invalid (422, 400) was judged by no policy; a
      // ValidatingAdmissionPolicy refuses with 422 too, but says so.
      const invalid =
        (err.type === FailureType.KubeInvalid || err.type === FailureType.KubeBadRequest) &&
        refusal.by === 'other' &&
        !/ValidatingAdmissionPolicy|admission webhook|denied/.test(err.reason);
      return invalid ? { by: 'invalid', message: err.reason } : refusal;
    }
  }

  /**
   * Writes the record with `constraints` as its plan, protected copy first, then the annotation;
   * returns it unchanged when the plan already is that.
   */
  private async replan(
    record: RelaxationRecord,
    constraints: RelaxationRecord['plan']['constraints'],
  ): Promise<RelaxationRecord> {
    const key = (cs: typeof constraints) => cs.map((c) => refName(c.ref)).join(',');
    if (key(constraints) === key(record.plan.constraints)) return record;
    const namespace = record.snapshot.namespace;
    const next: RelaxationRecord = { ...record, plan: { ...record.plan, constraints } };
    parseRelaxationRecord(JSON.stringify(next), this.expectation(namespace));
    const { found, problem } = await this.readProtected(namespace);
    if (problem || !found || !sameRecord(found.record, record))
      throw TypedFailure.nonRetryable(
        `the protected record of ${namespace} changed during the relaxation (${problem ?? 'it is not the one written'}): nothing more is relaxed`,
        FailureType.MalformedRecord,
      );
    await this.writeProtected(next, {
      metadata: { name: found.configMap.name, resourceVersion: found.configMap.resourceVersion },
    });
    await this.kube.patchNamespace(
      namespace,
      { metadata: { annotations: { [RelaxationAnnotation]: JSON.stringify(next) } } },
      PatchStrategy.MergePatch,
    );
    this.log(`narrowed the relaxation of ${namespace} to ${key(constraints) || 'no constraint'}`);
    return next;
  }

  /**
   * Puts the namespace's policies back exactly as recorded, keeping what others changed
   * meanwhile, verifies the result, then drops the annotation and the protected record.
   *
   * The record followed is the run's copy when given, else the protected record (only a
   * relaxation recorded by `owner`, when given); never the annotation. A missing, changed or
   * corrupt record is an alarm (report and Warning Event), not a reason to do nothing; an
   * annotation no protected record backs is refused and left in place as evidence.
   *
   * @throws `MalformedRelaxationRecord` when the run's copy cannot be used or names another run;
   * `RestoreNotVerified` (retryable) when the live state still shows the relaxation afterwards.
   */
  async restorePolicies(input: RestoreInput): Promise<RestoreReport> {
    const before = this.apiCalls();
    const report = emptyReport(input.namespace);
    const state = await this.readRestoreState(input, report);
    await this.restoreFrom(state, report);
    const notRecorded = await this.raiseAlarm(input.namespace, report.alarms, state.ns?.metadata?.uid);
    if (notRecorded) report.alarms.push(notRecorded);
    return { ...report, apiCalls: this.apiCalls() - before };
  }

  /**
   * Every namespace with a relaxation: each protected record (validated: one that cannot be
   * used is refused, naming why) and each annotation no protected record backs (refused, left
   * in place). Every refusal is also a Warning Event on the Namespace.
   */
  async findRelaxations(): Promise<RecordedRelaxation[]> {
    const found = new Map<string, RecordedRelaxation>();
    for (const cm of await this.kube.listConfigMaps(this.recordsNamespace, RecordSelector)) {
      const target =
        targetOfConfigMap(cm) ??
        cm.metadata?.labels?.[RecordLabel.TargetNamespace] ??
        cm.metadata?.name ??
        '?';
      try {
        const { record } = parseRecordConfigMap(cm, { constraintGroup: this.group });
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
    for (const ns of await this.kube.listNamespaces()) {
      const name = ns.metadata!.name!;
      uids.set(name, ns.metadata?.uid);
      if (ns.metadata?.annotations?.[RelaxationAnnotation] === undefined || found.has(name)) continue;
      found.set(name, {
        namespace: name,
        owner: null,
        temporalNamespace: null,
        refused: this.unbacked(name),
      });
    }
    const all = [...found.values()].sort((a, b) => a.namespace.localeCompare(b.namespace));
    for (const r of all) {
      if (r.refused) await this.raiseAlarm(r.namespace, [r.refused], uids.get(r.namespace));
    }
    return all;
  }

  /** What is recorded for one namespace (for `runas-migrate restore`); null when nothing is. */
  async describeRelaxation(input: { namespace: string }): Promise<RecordedRelaxation | null> {
    const { found, problem } = await this.readProtected(input.namespace);
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
      ns = await this.kube.readNamespace(input.namespace);
    } catch (err) {
      if (isKubeError(err, FailureType.KubeNotFound)) return null;
      throw err;
    }
    return ns.metadata?.annotations?.[RelaxationAnnotation] === undefined
      ? null
      : { ...base, refused: this.unbacked(input.namespace) };
  }

  private apiCalls(): number {
    return this.kube.counts.reads + this.kube.counts.writes;
  }

  /** The Temporal namespace of the run: the step's, else the configured one. */
  private temporalNamespace(): string {
    return (
      currentStep()?.temporalNamespace ??
      this.defaultTemporalNamespace ??
      process.env.TEMPORAL_NAMESPACE ??
      'default'
    );
  }

  private expectation(namespace: string) {
    return { namespace, constraintGroup: this.group };
  }

  private protectedName(namespace: string): string {
    return `${this.recordsNamespace}/${recordConfigMapName(namespace)}`;
  }

  private unbacked(namespace: string): string {
    return (
      `namespace ${namespace} carries the ${RelaxationAnnotation} annotation but no protected record ` +
      `(ConfigMap ${this.protectedName(namespace)}) backs it: not acted upon, and the annotation is left as evidence`
    );
  }

  private async takeSnapshot(input: RelaxInput, read?: V1Namespace): Promise<RelaxationRecord> {
    const ns = read ?? (await this.kube.readNamespace(input.namespace));
    const snapshot: PolicySnapshot = {
      namespace: input.namespace,
      namespaceResourceVersion: ns.metadata!.resourceVersion!,
      takenAt: new Date().toISOString(),
      podSecurity: podSecurityLabelsOf(ns.metadata?.labels),
      constraints: [],
      skipped: [],
    };
    if (input.gatekeeper !== false) {
      for (const kind of await this.kube.kindsOfGroup(this.group)) {
        for (const raw of await this.kube.listClusterObjects<unknown>(kind)) {
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
      temporalNamespace: this.temporalNamespace(),
      owner: input.owner,
      ...(input.closeWithinSeconds !== undefined
        ? { notAfter: new Date(Date.parse(snapshot.takenAt) + input.closeWithinSeconds * 1000).toISOString() }
        : {}),
      snapshot,
      plan: planRelaxation(snapshot, input.podSecurity ?? 'baseline'),
    };
  }

  /** The protected record of a namespace: found, absent (both null), or why it cannot be used. */
  private async readProtected(namespace: string): Promise<ProtectedLookup> {
    let cm: V1ConfigMap;
    try {
      cm = await this.kube.readConfigMap(this.recordsNamespace, recordConfigMapName(namespace));
    } catch (err) {
      if (isKubeError(err, FailureType.KubeNotFound)) return { found: null, problem: null };
      throw err;
    }
    try {
      return { found: parseRecordConfigMap(cm, this.expectation(namespace)), problem: null };
    } catch (err) {
      if (err instanceof RelaxationRecordError) return { found: null, problem: err.message };
      throw err;
    }
  }

  /** Writes the protected record: creates it, or replaces the one this call wrote before. */
  private async writeProtected(record: RelaxationRecord, previous?: V1ConfigMap): Promise<V1ConfigMap> {
    const where = this.recordsNamespace;
    try {
      return previous
        ? await this.kube.replaceConfigMap(
            where,
            previous.metadata!.name!,
            recordConfigMap(record, where, previous.metadata!.resourceVersion),
          )
        : await this.kube.createConfigMap(where, recordConfigMap(record, where));
    } catch (err) {
      if (isKubeError(err, FailureType.KubeNotFound)) {
        throw TypedFailure.nonRetryable(
          `the records namespace ${where} does not exist, so the relaxation cannot be recorded: ` +
            `create it (deploy/worker.yaml does), or point ${RecordsNamespaceEnv} / --records-namespace at the worker's namespace`,
          FailureType.RecordsNamespaceMissing,
        );
      }
      throw err;
    }
  }

  /** Deletes a protected record once its relaxation is restored and verified; only that very object. */
  private async deleteProtected(p: ProtectedRecord): Promise<void> {
    try {
      await this.kube.deleteConfigMap(this.recordsNamespace, p.configMap.name, {
        uid: p.configMap.uid,
        resourceVersion: p.configMap.resourceVersion,
      });
    } catch (err) {
      if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
    }
  }

  /**
   * Raises alarms as one Warning Event on the Namespace (in `default`, where Events about
   * cluster-scoped objects live, out of the tenant's reach). The same alarms again count up
   * the same Event rather than adding one per sweep. Returns why the Event could not be
   * recorded, if it could not: an alarm is never lost for that, it stays in the report.
   */
  private async raiseAlarm(
    namespace: string,
    alarms: readonly string[],
    uid?: string,
  ): Promise<string | null> {
    if (alarms.length === 0) return null;
    for (const a of alarms) this.log(`ALARM ${namespace}: ${a}`);
    const message = alarms.join(' | ').slice(0, 1024);
    const digest = createHash('sha256').update(`${namespace}\n${message}`).digest('hex').slice(0, 16);
    const name = `runas-migrate.${namespace}.${digest}`;
    const where = RecordAlarm.EventNamespace;
    const now = new Date();
    try {
      await this.kube.createEvent(where, {
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
        if (!isKubeError(err, FailureType.KubeConflict)) throw err;
        const [existing] = await this.kube.listEvents(where, `metadata.name=${name}`);
        await this.kube.patchEvent(where, name, {
          count: (existing?.count ?? 1) + 1,
          lastTimestamp: now.toISOString(),
        });
        return null;
      } catch (e) {
        const why = `the Warning Event about ${namespace} could not be recorded: ${(e as Error).message}`;
        this.log(why);
        return why;
      }
    }
  }

  /** The served kind of a recorded constraint reference; null when its kind is no longer served. */
  private servedRef(ref: ConstraintRef, served: readonly CustomResourceKind[]): ConstraintRef | null {
    const kind = served.find((k) => k.group === ref.group && k.kind === ref.kind && k.plural === ref.plural);
    return kind ? { ...kind, name: ref.name } : null;
  }

  /** Applies a constraint JSON Patch computed from a fresh read; recomputes when the object moved meanwhile. */
  private async patchConstraint(
    ref: ConstraintRef,
    compute: (c: ConstraintLike) => JsonPatchOp[] | null,
  ): Promise<PatchOutcome> {
    for (let attempt = 1; ; attempt++) {
      let current: ConstraintLike;
      try {
        current = await this.kube.readClusterObject<ConstraintLike>(ref, ref.name);
      } catch (err) {
        if (isKubeError(err, FailureType.KubeNotFound)) return { result: 'deleted' };
        throw err;
      }
      const ops = compute(current);
      if (!ops) return { result: 'nothing-to-do', generation: current.metadata.generation ?? 0 };
      try {
        const patched = await this.kube.jsonPatchClusterObject<ConstraintLike>(ref, ref.name, ops);
        return { result: 'patched', generation: patched.metadata.generation ?? 0 };
      } catch (err) {
        // A failed `test` means someone changed the constraint since we read it: read again.
        const moved = isKubeError(err, FailureType.KubeInvalid) || isKubeError(err, FailureType.KubeConflict);
        if (!moved) throw err;
        const again = await this.kube.readClusterObject<ConstraintLike>(ref, ref.name).catch(() => undefined);
        if (again && again.metadata.resourceVersion === current.metadata.resourceVersion) throw err;
        // Many runs share the cluster-wide constraints: back off with jitter, and leave it to
        // the step's retries (not a failure of the run) if the constraint never settles.
        if (attempt >= ConstraintPatchAttempts) {
          throw TypedFailure.retryable(
            `${refName(ref)} changed under every one of ${attempt} guarded patches; trying again later`,
            FailureType.ConstraintContention,
          );
        }
        await sleep(Math.random() * Math.min(2000, 50 * 2 ** attempt));
      }
    }
  }

  /**
   * The relaxation this run recorded before (a retry), shown on the namespace again; null when
   * there is none and the namespace may be relaxed.
   *
   * @throws `MalformedRelaxationRecord`, `RelaxedByAnotherRun`, `UnverifiedRelaxationRecord`
   * (each non-retryable) when the namespace may not be relaxed; nothing is changed then.
   */
  private async resumableRelaxation(input: RelaxInput, ns: V1Namespace): Promise<RelaxationRecord | null> {
    const { found, problem } = await this.readProtected(input.namespace);
    if (problem) {
      await this.raiseAlarm(input.namespace, [problem], ns.metadata?.uid);
      throw TypedFailure.nonRetryable(
        `${problem}: nothing was changed. Check it (kubectl get configmap -n ${this.recordsNamespace} ` +
          `${recordConfigMapName(input.namespace)} -o yaml), restore what it shows if that relaxation is real, then delete it`,
        FailureType.MalformedRecord,
      );
    }
    if (found && !sameRun(found.record.owner, input.owner)) {
      throw TypedFailure.nonRetryable(
        `namespace ${input.namespace} is already relaxed by run ${runName(found.record.owner)}: ` +
          `wait for it, or run "runas-migrate restore --namespace ${input.namespace}" if that run is gone`,
        FailureType.RelaxedByAnotherRun,
      );
    }
    if (found) {
      await this.showRelaxation(ns, found.record);
      return found.record;
    }
    if (ns.metadata?.annotations?.[RelaxationAnnotation] !== undefined) {
      const why = this.unbacked(input.namespace);
      await this.raiseAlarm(input.namespace, [why], ns.metadata?.uid);
      throw TypedFailure.nonRetryable(
        `${why}. It may be forged, or left by a version that kept records only there: check it, ` +
          `put back by hand what it shows if it is real, remove the annotation, then start again`,
        FailureType.UnverifiedRecord,
      );
    }
    return null;
  }

  /** Shows a resumed relaxation on the namespace again: the annotation and the `enforce` label. */
  private async showRelaxation(ns: V1Namespace, record: RelaxationRecord): Promise<void> {
    const namespace = record.snapshot.namespace;
    const shown = JSON.stringify(record);
    const annotation = ns.metadata?.annotations?.[RelaxationAnnotation];
    const enforce = record.plan.podSecurityEnforce;
    if (annotation === shown && (!enforce || ns.metadata?.labels?.[PodSecurityLabel.Enforce] === enforce))
      return;
    if (annotation !== undefined && this.annotationDiffers(annotation, record)) {
      await this.raiseAlarm(
        namespace,
        [
          `the ${RelaxationAnnotation} annotation was changed during the window; it is written again from the protected record`,
        ],
        ns.metadata?.uid,
      );
    }
    await this.kube.patchNamespace(
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
   * Excludes the namespace from each planned constraint; returns those that were deleted
   * meanwhile and the generation written to each of the others.
   */
  private async excludeFromConstraints(
    namespace: string,
    constraints: readonly ({ ref: ConstraintRef } | ConstraintRef)[],
  ): Promise<{ deleted: string[]; written: WrittenConstraint[] }> {
    const refs = constraints.map((c) => ('ref' in c ? c.ref : c));
    const outcomes = await allSettledInOrder(
      refs.map(async (ref) => {
        const outcome = await this.patchConstraint(ref, (c) =>
          excludeNamespaceOps(namespace, constraintView(c)),
        );
        if (outcome.result !== 'deleted') this.log(`excluded ${namespace} from ${refName(ref)}`);
        progress({ relaxed: refName(ref) });
        return outcome;
      }),
    );
    const deleted: string[] = [];
    const written: WrittenConstraint[] = [];
    for (const [i, outcome] of outcomes.entries()) {
      if (outcome.result === 'deleted') deleted.push(refName(refs[i]!));
      else written.push({ ref: refs[i]!, generation: outcome.generation });
    }
    return { deleted, written };
  }

  /**
   * Waits until Gatekeeper has taken in each written constraint: every webhook pod's entry in
   * `status.byPod` enforces the written generation or a later one. A constraint no Gatekeeper
   * pod reports on has nothing to wait for; one still behind at the deadline is `unconfirmed`.
   */
  private async awaitEnforcement(written: readonly WrittenConstraint[]): Promise<ConstraintEnforcement[]> {
    if (written.length === 0) return [];
    // Gatekeeper writes each pod's verdict into the constraint's status: a watch on the written
    // constraints wakes the wait at that write instead of at the next poll.
    const collections = written.map(({ ref }) => ({
      path: Collections.clusterCustom(ref),
      fieldSelector: byName(ref.name),
    }));
    return withCadence(
      cadenceOf(this.kube, this.waits, EnforcementPollMs, collections, EnforcementFallbackMs),
      (sleep, everyMs) => this.enforcementOf(written, sleep, everyMs),
    );
  }

  /** The wait of {@link awaitEnforcement}, looking again after `sleep(everyMs)`. */
  private async enforcementOf(
    written: readonly WrittenConstraint[],
    sleep: (ms: number) => Promise<void>,
    everyMs: number,
  ): Promise<ConstraintEnforcement[]> {
    const started = Date.now();
    const deadline = started + this.enforcementTimeoutMs;
    const done = new Map<string, ConstraintEnforcement>();
    let waitingFor = new Map<string, string[]>();
    for (;;) {
      waitingFor = new Map();
      const pending = written.filter(({ ref }) => !done.has(refName(ref)));
      const lives = await allSettledInOrder(
        pending.map(({ ref }) =>
          this.kube.readClusterObject<ConstraintLike>(ref, ref.name).catch((err: unknown) => {
            if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
            return undefined;
          }),
        ),
      );
      for (const [i, { ref, generation }] of pending.entries()) {
        const name = refName(ref);
        const live = lives[i];
        if (!live) {
          done.set(name, { constraint: name, generation, state: 'deleted', ms: Date.now() - started });
          continue;
        }
        const e = enforcementOf(live, generation);
        if (e.state === 'pending') waitingFor.set(name, e.waitingFor);
        else done.set(name, { constraint: name, generation, state: e.state, ms: Date.now() - started });
      }
      if (waitingFor.size === 0) break;
      if (Date.now() >= deadline) {
        for (const { ref, generation } of written) {
          const name = refName(ref);
          const pods = waitingFor.get(name);
          if (pods)
            done.set(name, {
              constraint: name,
              generation,
              state: 'unconfirmed',
              ms: Date.now() - started,
              waitingFor: pods,
            });
        }
        break;
      }
      progress({ awaitingEnforcement: [...waitingFor.keys()].join(', ') });
      await sleep(Math.min(everyMs, Math.max(1, deadline - Date.now())));
    }
    const result = written.map(({ ref }) => done.get(refName(ref))!);
    for (const e of result)
      this.log(`${e.constraint} generation ${e.generation}: ${e.state} after ${e.ms} ms`);
    return result;
  }

  /** Why the annotation differs from the authoritative record; null when it shows the same. */
  private annotationDiffers(annotation: string, authority: RelaxationRecord): string | null {
    if (annotation === JSON.stringify(authority)) return null;
    let why: string;
    try {
      const shown = parseRelaxationRecord(annotation, {
        ...this.expectation(authority.snapshot.namespace),
        source: 'the annotation',
      });
      // Same relaxation, plan narrowed or not yet: a stop between the two writes of a narrowing.
      if (sameRelaxation(shown, authority)) return null;
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
   * Reads what a restore goes by — the run's copy (validated), the protected record, the
   * namespace — changing nothing; a protected record that cannot be used is an alarm.
   */
  private async readRestoreState(input: RestoreInput, report: RestoreReport): Promise<RestoreState> {
    const copy = input.record
      ? parseRunCopy(input.record, this.expectation(input.namespace), this.temporalNamespace())
      : null;
    if (copy && input.owner && !sameRun(copy.owner, input.owner)) {
      throw TypedFailure.nonRetryable(
        `the run's copy of its record names run ${runName(copy.owner)}, not ${runName(input.owner)}`,
        FailureType.MalformedRecord,
      );
    }
    // Independent reads, side by side: each round trip here is time the namespace stays open.
    const [prot, ns, served] = await allSettledInOrder([
      this.readProtected(input.namespace),
      this.kube.readNamespace(input.namespace).catch((err: unknown) => {
        if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
        return undefined;
      }),
      this.kube.kindsOfGroup(this.group),
    ]);
    if (prot.problem) report.alarms.push(prot.problem);
    return {
      namespace: input.namespace,
      copy,
      owner: input.owner ?? copy?.owner,
      prot,
      ns,
      annotation: ns?.metadata?.annotations?.[RelaxationAnnotation],
      served,
    };
  }

  /** Restores what the state's authoritative record says, or reports why nothing may be restored. */
  private async restoreFrom(state: RestoreState, report: RestoreReport): Promise<void> {
    const { prot, owner } = state;
    if (prot.found && owner && !sameRun(prot.found.record.owner, owner)) {
      // Another run holds the namespace now: this run's relaxation was restored before.
      report.owner = prot.found.record.owner;
      return;
    }
    const authority = this.authorityOf(state, report);
    if (!authority) {
      if (prot.problem) report.refused = `${prot.problem}: nothing restored`;
      else if (state.annotation !== undefined) {
        report.refused = this.unbacked(state.namespace);
        report.alarms.push(report.refused);
      }
      return;
    }
    report.owner = authority.owner;
    const { served } = state;
    if (!state.ns) {
      // The namespace went away during the window: the record still says which exclusions
      // to take back, so a namesake is not born exempt.
      const written = await this.restoreConstraints(authority, report, served);
      report.restoredAt = new Date().toISOString();
      await this.confirmRestored(written, report);
      if (prot.found) await this.deleteProtected(prot.found);
      report.restored = true;
      return;
    }
    await this.restoreNamespace({ ...state, ns: state.ns }, authority, served, report);
  }

  /**
   * The record to restore from: the run's copy, unless the protected record shows a later
   * relaxation of the same run; else the protected record; null when there is neither.
   */
  private authorityOf(state: RestoreState, report: RestoreReport): RelaxationRecord | null {
    const { copy } = state;
    const found = state.prot.found?.record;
    if (!copy) {
      if (!found) return null;
      report.source = 'protected-record';
      return found;
    }
    if (found && Date.parse(found.snapshot.takenAt) > Date.parse(copy.snapshot.takenAt)) {
      // The run relaxed again and its copy of that relaxation has not reached it yet.
      report.source = 'protected-record';
      return found;
    }
    if (found && !sameRecord(found, copy)) {
      report.alarms.push(
        `the protected record ${this.protectedName(state.namespace)} differs from the run's copy: restored from the run's copy`,
      );
    }
    report.source = 'run-copy';
    return copy;
  }

  /**
   * Restores an existing namespace: PSA and the constraints, raises alarms for evidence
   * removed meanwhile, verifies, then drops the annotation and the protected record.
   */
  private async restoreNamespace(
    state: RestoreState & { ns: V1Namespace },
    authority: RelaxationRecord,
    served: readonly CustomResourceKind[],
    report: RestoreReport,
  ): Promise<void> {
    const { namespace, annotation, prot } = state;
    const changed = annotation === undefined ? null : this.annotationDiffers(annotation, authority);
    if (changed) report.alarms.push(changed);

    // PSA and each constraint are separate objects: written side by side.
    const [, written] = await allSettledInOrder([
      this.restorePodSecurity(namespace, state.ns, authority, report),
      this.restoreConstraints(authority, report, served),
    ]);

    const undid =
      report.podSecurity === 'restored' ||
      report.constraints.some((c) => c.result === 'entry-removed' || c.result === 'list-removed');
    this.alarmOnRemovedEvidence(state, report, undid);

    await this.verifyRestored(authority, report, served);
    report.restoredAt = new Date().toISOString();
    await this.confirmRestored(written, report);

    if (annotation !== undefined) await this.dropAnnotation(namespace, annotation);
    if (prot.found) await this.deleteProtected(prot.found);
    report.restored = undid || annotation !== undefined || prot.found !== null;
    if (report.restored) this.log(`policies of ${namespace} restored and verified`);
  }

  /** Puts `enforce` back unless someone else changed it meanwhile (then it is kept and reported). */
  private async restorePodSecurity(
    namespace: string,
    ns: V1Namespace,
    authority: RelaxationRecord,
    report: RestoreReport,
  ): Promise<void> {
    const ours = authority.plan.podSecurityEnforce;
    const original = authority.snapshot.podSecurity[PodSecurityLabel.Enforce];
    const live = ns.metadata?.labels?.[PodSecurityLabel.Enforce] ?? null;
    const psaPatch = restorePodSecurityPatch(authority);
    if (psaPatch && live === ours) {
      await this.kube.patchNamespace(namespace, psaPatch, PatchStrategy.MergePatch);
      report.podSecurity = 'restored';
    } else if (psaPatch && live === original) {
      report.podSecurity = 'already-restored';
    } else if (psaPatch) {
      report.podSecurity = 'kept-foreign-change';
      report.keptForeignChanges.push(
        `${PodSecurityLabel.Enforce} was changed to ${live ?? '(removed)'} by someone else`,
      );
    }
  }

  /** Alarms for a relaxation that was undone although its annotation or protected record had been removed. */
  private alarmOnRemovedEvidence(state: RestoreState, report: RestoreReport, undid: boolean): void {
    const { annotation, prot } = state;
    const source = report.source === 'run-copy' ? "the run's copy" : 'the protected record';
    if (annotation === undefined && undid) {
      report.alarms.push(
        `the ${RelaxationAnnotation} annotation was removed while the policies were relaxed: restored from ${source}`,
      );
    }
    if (state.copy && !prot.found && !prot.problem && (undid || annotation !== undefined)) {
      report.alarms.push(
        `the protected record ${this.protectedName(state.namespace)} was removed while the policies were relaxed: restored from the run's copy`,
      );
    }
  }

  /** Drops the relaxation annotation, only as it was read. */
  private async dropAnnotation(namespace: string, annotation: string): Promise<void> {
    try {
      await this.kube.patchNamespace(namespace, dropRecordOps(annotation), PatchStrategy.JsonPatch);
    } catch (err) {
      // Already dropped (or changed again) by someone else: the next sweep looks again.
      if (!isKubeError(err, FailureType.KubeInvalid)) throw err;
    }
  }

  /** Removes from each constraint what the relaxation added, all side by side; reported in the plan's order. */
  private async restoreConstraints(
    record: RelaxationRecord,
    report: RestoreReport,
    served: readonly CustomResourceKind[],
  ): Promise<WrittenConstraint[]> {
    const { namespace } = record.snapshot;
    const outcomes = await allSettledInOrder(
      record.plan.constraints.map(async (planned) => {
        const ref = this.servedRef(planned.ref, served);
        if (!ref) {
          this.log(`${refName(planned.ref)}: its kind is no longer served; nothing to restore there`);
          return { entry: { constraint: refName(planned.ref), result: 'kind-not-served' as const } };
        }
        let listRemoved = false;
        const outcome = await this.patchConstraint(ref, (c) => {
          const ops = includeNamespaceOps(namespace, constraintView(c));
          listRemoved = ops?.some((o) => o.op === 'remove' && o.path === ExcludedNamespacesPath) ?? false;
          return ops;
        });
        const { result } = outcome;
        const entry = {
          constraint: refName(ref),
          result:
            result === 'deleted'
              ? ('constraint-deleted' as const)
              : result === 'nothing-to-do'
                ? ('already-restored' as const)
                : listRemoved
                  ? ('list-removed' as const)
                  : ('entry-removed' as const),
        };
        this.log(`restored ${refName(ref)} for ${namespace}: ${entry.result}`);
        progress({ restored: refName(ref) });
        return {
          entry,
          written: outcome.result === 'deleted' ? undefined : { ref, generation: outcome.generation },
        };
      }),
    );
    report.constraints.push(...outcomes.map((o) => o.entry));
    return outcomes.flatMap((o) => ('written' in o && o.written ? [o.written] : []));
  }

  /**
   * Waits for Gatekeeper to enforce the restored constraints again and says when it did. Not
   * confirmed in time is an alarm, not a failure: what was written is exactly the snapshot, and
   * only Gatekeeper's own health can make it take effect.
   */
  private async confirmRestored(written: readonly WrittenConstraint[], report: RestoreReport): Promise<void> {
    report.enforcement = await this.awaitEnforcement(written);
    report.enforcedAt = new Date().toISOString();
    const late = report.enforcement.filter((e) => e.state === 'unconfirmed');
    if (late.length === 0) return;
    report.enforcedAt = report.restoredAt;
    report.alarms.push(
      `Gatekeeper has not enforced the restored ${late.map((e) => e.constraint).join(', ')} within ` +
        `${this.enforcementTimeoutMs / 1000} s (${late.flatMap((e) => e.waitingFor ?? []).join('; ')}): ` +
        `the constraints are written back as they were, but check Gatekeeper's pods`,
    );
  }

  /** Compares the live state with the snapshot; what differs and is not ours is kept and reported. */
  private async verifyRestored(
    record: RelaxationRecord,
    report: RestoreReport,
    served: readonly CustomResourceKind[],
  ): Promise<void> {
    const { namespace } = record.snapshot;
    const readList = async (ref: ConstraintRef): Promise<string[] | null | 'gone'> => {
      try {
        const obj = await this.kube.readClusterObject<ConstraintLike>(ref, ref.name);
        return obj.spec?.match?.excludedNamespaces ?? null;
      } catch (err) {
        if (isKubeError(err, FailureType.KubeNotFound)) return 'gone';
        throw err;
      }
    };
    const readable = record.snapshot.constraints.map((c) => ({ c, ref: this.servedRef(c.ref, served) }));
    const [ns, lists] = await allSettledInOrder([
      this.kube.readNamespace(namespace),
      allSettledInOrder(readable.map(({ ref }) => (ref ? readList(ref) : Promise.resolve('gone' as const)))),
    ]);
    const live = ns.metadata?.labels?.[PodSecurityLabel.Enforce] ?? null;
    if (
      record.plan.podSecurityEnforce &&
      live === record.plan.podSecurityEnforce &&
      live !== record.snapshot.podSecurity[PodSecurityLabel.Enforce]
    ) {
      throw TypedFailure.retryable(
        `${PodSecurityLabel.Enforce} of ${namespace} is still ${live}`,
        FailureType.RestoreNotVerified,
      );
    }
    for (const key of Object.values(PodSecurityLabel)) {
      if (key === PodSecurityLabel.Enforce) continue;
      const now = ns.metadata?.labels?.[key] ?? null;
      if (now !== record.snapshot.podSecurity[key])
        report.keptForeignChanges.push(`${key} changed to ${now ?? '(removed)'} by someone else`);
    }
    const added: { constraint: string; namespaces: string[] }[] = [];
    for (const [i, { c }] of readable.entries()) {
      const liveList = lists[i]!;
      if (liveList === 'gone') continue;
      const was = c.excludedNamespaces ?? [];
      const now = liveList ?? [];
      const wePlanned = record.plan.constraints.some((p) => refName(p.ref) === refName(c.ref));
      const oursLeft =
        wePlanned && now.filter((x) => x === namespace).length > was.filter((x) => x === namespace).length;
      const othersAdded = now.filter((x) => x !== namespace && !was.includes(x));
      if (oursLeft) {
        throw TypedFailure.retryable(
          `${refName(c.ref)} still excludes ${namespace}`,
          FailureType.RestoreNotVerified,
        );
      }
      if (othersAdded.length > 0) added.push({ constraint: refName(c.ref), namespaces: othersAdded });
      for (const x of was.filter((y) => !now.includes(y))) {
        report.keptForeignChanges.push(
          `${refName(c.ref)}: ${x} was removed from excludedNamespaces by someone else`,
        );
      }
    }
    if (added.length === 0) return;
    const windows = await this.otherRunsWindows();
    for (const { constraint, namespaces } of added) {
      for (const x of namespaces) {
        if (windows.get(x)?.has(constraint)) (report.otherRuns ??= []).push(`${constraint}: ${x}`);
        else
          report.keptForeignChanges.push(
            `${constraint}: ${x} was added to excludedNamespaces by someone else`,
          );
      }
    }
  }

  /**
   * The constraints each relaxed namespace's protected record plans to exclude it from: what
   * other runs' windows account for. A record that cannot be used accounts for nothing. An
   * exclusion a run makes is always backed so: its record is written before it and deleted after
   * it is taken back.
   */
  private async otherRunsWindows(): Promise<Map<string, Set<string>>> {
    const windows = new Map<string, Set<string>>();
    for (const cm of await this.kube.listConfigMaps(this.recordsNamespace, RecordSelector)) {
      try {
        const { record } = parseRecordConfigMap(cm, { constraintGroup: this.group });
        windows.set(record.snapshot.namespace, new Set(record.plan.constraints.map((p) => refName(p.ref))));
      } catch (err) {
        if (!(err instanceof RelaxationRecordError)) throw err;
      }
    }
    return windows;
  }
}
