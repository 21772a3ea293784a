/**
 * The policy guard's domain, pure: what a namespace's security policies were (the snapshot),
 * what relaxing them takes (the plan), and the exact patches that relax and restore them.
 * Everything here is JSON-serialisable so it can live in workflow state and in the protected
 * record that survives the loss of the run; every record read back is validated before use.
 */
import { FailureType, TypedFailure } from './failures.js';
import { z } from 'zod';

/**
 * Annotation on the namespace that shows a relaxation (written with the PSA change): a beacon
 * for people and a tamper check, never a source to act on — anyone who may patch the
 * namespace's metadata can write it.
 */
export const RelaxationAnnotation = 'runas-migrate.dev/relaxation';

/** API group of Gatekeeper constraints. */
export const GatekeeperConstraintGroup = 'constraints.gatekeeper.sh';

/** The Pod Security Admission labels of a namespace. */
export const PodSecurityLabel = {
  Enforce: 'pod-security.kubernetes.io/enforce',
  EnforceVersion: 'pod-security.kubernetes.io/enforce-version',
  Warn: 'pod-security.kubernetes.io/warn',
  WarnVersion: 'pod-security.kubernetes.io/warn-version',
  Audit: 'pod-security.kubernetes.io/audit',
  AuditVersion: 'pod-security.kubernetes.io/audit-version',
} as const;
export type PodSecurityLabel = (typeof PodSecurityLabel)[keyof typeof PodSecurityLabel];

/** Pod Security Standards levels, most permissive first. */
export const PodSecurityLevel = {
  Privileged: 'privileged',
  Baseline: 'baseline',
  Restricted: 'restricted',
} as const;
export type PodSecurityLevel = (typeof PodSecurityLevel)[keyof typeof PodSecurityLevel];

/** The levels a relaxation may set. */
export type RelaxedPodSecurityLevel = typeof PodSecurityLevel.Baseline | typeof PodSecurityLevel.Privileged;

/** The run that owns a relaxation. */
export interface RunRef {
  workflowId: string;
  runId: string;
}

/** One Gatekeeper constraint, by kind and name. */
export interface ConstraintRef {
  group: string;
  version: string;
  plural: string;
  kind: string;
  name: string;
}

/** A constraint as it was, as far as the namespace is concerned. */
export interface ConstraintSnapshot {
  ref: ConstraintRef;
  resourceVersion: string;
  /** `spec.match.excludedNamespaces` as it was; null when the field was absent. */
  excludedNamespaces: string[] | null;
  /** The entry (exact or glob) that already excludes the namespace, if any. */
  excludedBy: string | null;
}

/** A constraint the guard leaves alone, and why. */
export interface SkippedConstraint {
  ref: ConstraintRef;
  reason: string;
}

/** The namespace's policies before the relaxation. */
export interface PolicySnapshot {
  namespace: string;
  namespaceResourceVersion: string;
  takenAt: string;
  /** Every PSA label: its value, or null when absent. */
  podSecurity: Record<PodSecurityLabel, string | null>;
  /** Blocking constraints that apply to the namespace. */
  constraints: ConstraintSnapshot[];
  /** Constraints that do not block pods of the namespace. */
  skipped: SkippedConstraint[];
}

/** What relaxing changes. */
export interface RelaxationPlan {
  /** The `enforce` level to set; null when the current one already admits the migration pods. */
  podSecurityEnforce: RelaxedPodSecurityLevel | null;
  /**
   * Constraints to exclude the namespace from (append to the list, or create it): the blocking
   * constraints of the snapshot, or those of them that refuse the Job pods, in snapshot order.
   */
  constraints: { ref: ConstraintRef; action: 'append' | 'create' }[];
}

/** Version of the {@link RelaxationRecord} format (1: no Temporal namespace, kept on the namespace only). */
export const RelaxationRecordVersion = 2;

/**
 * The durable record of a relaxation. Its authoritative copy is a ConfigMap in the worker's own
 * namespace (see `src/records.ts`), written before anything changes; the run keeps another in
 * its state; the namespace annotation is only a beacon for people and for tamper checks.
 */
export interface RelaxationRecord {
  version: typeof RelaxationRecordVersion;
  /** Temporal namespace of the owner run: only a sweeper of that namespace can judge it. */
  temporalNamespace: string;
  owner: RunRef;
  /**
   * When the window must be closed whatever its run's state (window.max + window.grace after the
   * relaxation): the sweeper restores an expired record even for a run still open. Absent only in
   * records written by versions before it was introduced.
   */
  notAfter?: string;
  snapshot: PolicySnapshot;
  plan: RelaxationPlan;
}

/** Thrown when a constraint cannot be understood; nothing is changed. */
export class MalformedConstraintError extends TypedFailure {
  override readonly name = 'MalformedConstraintError';
  constructor(message: string) {
    super(FailureType.MalformedConstraint, message);
  }
}

const stringList = z.array(z.string());
const labelSelectorSchema = z.object({
  matchLabels: z.record(z.string(), z.string()).optional(),
  matchExpressions: z
    .array(
      z.object({
        key: z.string(),
        operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
        values: stringList.optional(),
      }),
    )
    .optional(),
});
const constraintSchema = z.object({
  metadata: z.object({ name: z.string(), resourceVersion: z.string() }),
  spec: z
    .object({
      enforcementAction: z.string().optional(),
      scopedEnforcementActions: z.array(z.object({ action: z.string() })).optional(),
      match: z
        .object({
          kinds: z
            .array(z.object({ apiGroups: stringList.optional(), kinds: stringList.optional() }))
            .optional(),
          namespaces: stringList.optional(),
          excludedNamespaces: stringList.optional(),
          scope: z.string().optional(),
          namespaceSelector: labelSelectorSchema.optional(),
        })
        .optional(),
    })
    .optional(),
});

/** A constraint object as the API returns it (only what the guard reads). */
export type ConstraintObject = z.infer<typeof constraintSchema>;

/** Whether a Gatekeeper namespace pattern (`name`, `prefix*`, `*suffix`) matches. */
export function namespacePatternMatches(pattern: string, namespace: string): boolean {
  if (pattern.endsWith('*')) return namespace.startsWith(pattern.slice(0, -1));
  if (pattern.startsWith('*')) return namespace.endsWith(pattern.slice(1));
  return pattern === namespace;
}

/** Evaluates a label selector against labels. */
export function selectorMatches(
  selector: z.infer<typeof labelSelectorSchema>,
  labels: Record<string, string>,
): boolean {
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    const value = labels[e.key];
    const ok =
      e.operator === 'In'
        ? has && (e.values ?? []).includes(value!)
        : e.operator === 'NotIn'
          ? !has || !(e.values ?? []).includes(value!)
          : e.operator === 'Exists'
            ? has
            : !has;
    if (!ok) return false;
  }
  return true;
}

/** Validates a constraint's shape; throws {@link MalformedConstraintError} naming the field. */
export function parseConstraint(kind: string, obj: unknown): ConstraintObject {
  const parsed = constraintSchema.safeParse(obj);
  if (parsed.success) return parsed.data;
  const name = (obj as { metadata?: { name?: string } })?.metadata?.name ?? '?';
  const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
  throw new MalformedConstraintError(
    `constraint ${kind}/${name} is malformed (${issues}). Fix the constraint, or run with policies.gatekeeper=false if it does not concern this namespace`,
  );
}

/**
 * Decides how a constraint concerns the namespace: skipped (with the reason), or blocking —
 * and then whether an entry already excludes the namespace.
 */
export function assessConstraint(
  ref: ConstraintRef,
  constraint: ConstraintObject,
  namespace: string,
  namespaceLabels: Record<string, string>,
): { skipped: SkippedConstraint } | { snapshot: ConstraintSnapshot } {
  const spec = constraint.spec ?? {};
  const match = spec.match ?? {};
  const skip = (reason: string) => ({ skipped: { ref, reason } });
  const action = spec.enforcementAction ?? 'deny';
  const blocks =
    action === 'deny' ||
    (action === 'scoped' && (spec.scopedEnforcementActions ?? []).some((s) => s.action === 'deny'));
  if (!blocks) return skip(`enforcementAction is ${action}: it does not refuse pods`);
  if (match.scope === 'Cluster') return skip('scope is Cluster: namespaced pods are not matched');
  if (match.kinds && match.kinds.length > 0) {
    const pods = match.kinds.some(
      (k) =>
        (k.apiGroups ?? ['*']).some((g) => g === '' || g === '*') &&
        (k.kinds ?? ['*']).some((x) => x === 'Pod' || x === '*'),
    );
    if (!pods) return skip('it does not match Pods');
  }
  if (
    match.namespaces &&
    match.namespaces.length > 0 &&
    !match.namespaces.some((p) => namespacePatternMatches(p, namespace))
  ) {
    return skip(`spec.match.namespaces does not include ${namespace}`);
  }
  if (match.namespaceSelector && !selectorMatches(match.namespaceSelector, namespaceLabels)) {
    return skip('spec.match.namespaceSelector does not select the namespace');
  }
  const excluded = match.excludedNamespaces ?? null;
  return {
    snapshot: {
      ref,
      resourceVersion: constraint.metadata.resourceVersion,
      excludedNamespaces: excluded ? [...excluded] : null,
      excludedBy: excluded?.find((p) => namespacePatternMatches(p, namespace)) ?? null,
    },
  };
}

/** The PSA labels of a namespace, each value or null. */
export function podSecurityLabelsOf(
  labels: Record<string, string> | undefined,
): Record<PodSecurityLabel, string | null> {
  const out = {} as Record<PodSecurityLabel, string | null>;
  for (const key of Object.values(PodSecurityLabel)) out[key] = labels?.[key] ?? null;
  return out;
}

const levelRank: Record<string, number> = { privileged: 0, baseline: 1, restricted: 2 };

/**
 * Plans the least relaxation that admits the migration pods, as far as the snapshot tells:
 * every blocking constraint is a candidate. The guard narrows `constraints` to those the
 * admission chain names when it has Job pods to ask about (see `PolicyGuard.relaxPolicies`).
 */
export function planRelaxation(snapshot: PolicySnapshot, level: RelaxedPodSecurityLevel): RelaxationPlan {
  const current = snapshot.podSecurity[PodSecurityLabel.Enforce];
  // An absent label means the cluster default, which may be restricted: set the level explicitly.
  const alreadyEnough = current !== null && current in levelRank && levelRank[current]! <= levelRank[level]!;
  return {
    podSecurityEnforce: alreadyEnough ? null : level,
    constraints: snapshot.constraints
      .filter((c) => c.excludedBy === null)
      .map((c) => ({
        ref: c.ref,
        action: c.excludedNamespaces === null ? ('create' as const) : ('append' as const),
      })),
  };
}

/** Escapes one JSON Pointer token (RFC 6901). */
export function pointerToken(s: string): string {
  return s.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** One JSON Patch (RFC 6902) operation. */
export interface JsonPatchOp {
  op: 'add' | 'remove' | 'replace' | 'test';
  path: string;
  value?: unknown;
}

/** Path of a constraint's excluded namespaces. */
export const ExcludedNamespacesPath = '/spec/match/excludedNamespaces';

/**
 * Annotation on a constraint whose `excludedNamespaces` list a relaxation created: whichever
 * runas-migrate restore empties the list removes it again, even when several runs interleave.
 */
export const CreatedListAnnotation = 'runas-migrate.dev/created-excluded-namespaces';

/** What the exclusion patches need to know of a constraint as it is now. */
export interface ConstraintView {
  resourceVersion: string;
  excludedNamespaces: string[] | null;
  hasMatch: boolean;
  annotations: Record<string, string> | null;
}

/** Reads the {@link ConstraintView} of a constraint object. */
export function constraintView(obj: {
  metadata: { resourceVersion: string; annotations?: Record<string, string> };
  spec?: { match?: { excludedNamespaces?: string[] } };
}): ConstraintView {
  return {
    resourceVersion: obj.metadata.resourceVersion,
    excludedNamespaces: obj.spec?.match?.excludedNamespaces ?? null,
    hasMatch: obj.spec?.match !== undefined,
    annotations: obj.metadata.annotations ?? null,
  };
}

const markerPath = `/metadata/annotations/${pointerToken(CreatedListAnnotation)}`;

/**
 * JSON Patch that excludes the namespace from a constraint, guarded by the resourceVersion it
 * was computed from; null when the namespace is already listed. A list it creates is marked
 * with {@link CreatedListAnnotation}.
 */
export function excludeNamespaceOps(namespace: string, current: ConstraintView): JsonPatchOp[] | null {
  if (current.excludedNamespaces?.includes(namespace)) return null;
  const guard: JsonPatchOp = {
    op: 'test',
    path: '/metadata/resourceVersion',
    value: current.resourceVersion,
  };
  if (current.excludedNamespaces !== null)
    return [guard, { op: 'add', path: `${ExcludedNamespacesPath}/-`, value: namespace }];
  const marker: JsonPatchOp = current.annotations
    ? { op: 'add', path: markerPath, value: 'true' }
    : { op: 'add', path: '/metadata/annotations', value: { [CreatedListAnnotation]: 'true' } };
  return current.hasMatch
    ? [guard, { op: 'add', path: ExcludedNamespacesPath, value: [namespace] }, marker]
    : [guard, { op: 'add', path: '/spec/match', value: { excludedNamespaces: [namespace] } }, marker];
}

/**
 * JSON Patch that removes the namespace from a constraint, located by value and guarded by a
 * `test` of that index; null when it is not listed. When the list holds nothing else and a
 * relaxation created it, the list and its marker go. A list a relaxation created is guarded as a
 * whole: two runs removing their entries at once must not leave it empty instead of absent.
 */
export function includeNamespaceOps(namespace: string, current: ConstraintView): JsonPatchOp[] | null {
  const list = current.excludedNamespaces;
  if (!list) return null;
  const index = list.lastIndexOf(namespace);
  if (index < 0) return null;
  if (list.length === 1 && current.annotations?.[CreatedListAnnotation] !== undefined) {
    return [
      { op: 'test', path: ExcludedNamespacesPath, value: [namespace] },
      { op: 'remove', path: ExcludedNamespacesPath },
      { op: 'remove', path: markerPath },
    ];
  }
  const created = current.annotations?.[CreatedListAnnotation] !== undefined;
  return [
    created
      ? { op: 'test', path: ExcludedNamespacesPath, value: list }
      : { op: 'test', path: `${ExcludedNamespacesPath}/${index}`, value: namespace },
    { op: 'remove', path: `${ExcludedNamespacesPath}/${index}` },
  ];
}

/** Merge patch that records the relaxation and relaxes PSA in one write, only if nothing changed since the snapshot. */
export function relaxNamespacePatch(record: RelaxationRecord): object {
  return {
    metadata: {
      resourceVersion: record.snapshot.namespaceResourceVersion,
      annotations: { [RelaxationAnnotation]: JSON.stringify(record) },
      ...(record.plan.podSecurityEnforce
        ? { labels: { [PodSecurityLabel.Enforce]: record.plan.podSecurityEnforce } }
        : {}),
    },
  };
}

/** Merge patch that puts the `enforce` label back as it was (removed when it was absent). */
export function restorePodSecurityPatch(record: RelaxationRecord): object | null {
  if (!record.plan.podSecurityEnforce) return null;
  return {
    metadata: {
      labels: { [PodSecurityLabel.Enforce]: record.snapshot.podSecurity[PodSecurityLabel.Enforce] },
    },
  };
}

/** JSON Patch that drops the record, only if it is still the one given. */
export function dropRecordOps(annotationValue: string): JsonPatchOp[] {
  const path = `/metadata/annotations/${pointerToken(RelaxationAnnotation)}`;
  return [
    { op: 'test', path, value: annotationValue },
    { op: 'remove', path },
  ];
}

/** Why a relaxation record cannot be used. */
export const RecordProblem = {
  NotJson: 'not-json',
  UnsupportedVersion: 'unsupported-version',
  Invalid: 'invalid',
  WrongNamespace: 'wrong-namespace',
  Inconsistent: 'inconsistent',
} as const;
export type RecordProblem = (typeof RecordProblem)[keyof typeof RecordProblem];

/** A relaxation record that cannot be understood or does not fit where it was found: nothing is done from it. */
export class RelaxationRecordError extends TypedFailure {
  override readonly name = 'RelaxationRecordError';
  constructor(
    readonly problem: RecordProblem,
    message: string,
  ) {
    super(FailureType.MalformedRecord, message, { details: [{ problem }] });
  }
}

const dnsLabel = z
  .string()
  .max(63)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'must be a DNS label');
const dnsSubdomain = z
  .string()
  .max(253)
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, 'must be a DNS subdomain');
/** An `excludedNamespaces` entry: a name or a Gatekeeper glob. */
const namespacePattern = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');
const level = z.enum([PodSecurityLevel.Privileged, PodSecurityLevel.Baseline, PodSecurityLevel.Restricted]);
const levelLabel = level.nullable();
const versionLabel = z
  .string()
  .regex(/^(latest|v[0-9]{1,3}\.[0-9]{1,3})$/, 'must be "latest" or "v<major>.<minor>"')
  .nullable();
const podSecuritySchema = z.strictObject({
  [PodSecurityLabel.Enforce]: levelLabel,
  [PodSecurityLabel.EnforceVersion]: versionLabel,
  [PodSecurityLabel.Warn]: levelLabel,
  [PodSecurityLabel.WarnVersion]: versionLabel,
  [PodSecurityLabel.Audit]: levelLabel,
  [PodSecurityLabel.AuditVersion]: versionLabel,
});

/** Bounds of a workflow ID: Temporal's default limit on ID length. */
const MaxWorkflowIdLength = 1000;

/** A run reference as a record must carry it: a bounded workflow ID and a UUID run ID. */
export const runRefSchema = z.strictObject({
  workflowId: z
    .string()
    .min(1)
    .max(MaxWorkflowIdLength)
    .refine(
      (id) => ![...id].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f),
      'must not contain control characters',
    ),
  runId: z.uuid(),
});

/** A Temporal namespace name. */
export const temporalNamespaceSchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be a Temporal namespace name');

function recordSchemaFor(group: string) {
  const ref = z.strictObject({
    group: z.literal(group, { error: `must be exactly ${group}` }),
    version: z.string().regex(/^v[0-9]+((alpha|beta)[0-9]+)?$/, 'must be an API version such as v1beta1'),
    plural: dnsLabel,
    kind: z
      .string()
      .max(63)
      .regex(/^[A-Z][A-Za-z0-9]*$/, 'must be a kind name'),
    name: dnsSubdomain,
  });
  return z.strictObject({
    version: z.literal(RelaxationRecordVersion),
    temporalNamespace: temporalNamespaceSchema,
    owner: runRefSchema,
    notAfter: z.iso.datetime().optional(),
    snapshot: z.strictObject({
      namespace: dnsLabel,
      namespaceResourceVersion: z.string().min(1).max(64),
      takenAt: z.iso.datetime(),
      podSecurity: podSecuritySchema,
      constraints: z
        .array(
          z.strictObject({
            ref,
            resourceVersion: z.string().min(1).max(64),
            excludedNamespaces: z.array(namespacePattern).max(10_000).nullable(),
            excludedBy: namespacePattern.nullable(),
          }),
        )
        .max(1000),
      skipped: z.array(z.strictObject({ ref, reason: z.string().max(1000) })).max(1000),
    }),
    plan: z.strictObject({
      podSecurityEnforce: z.enum([PodSecurityLevel.Baseline, PodSecurityLevel.Privileged]).nullable(),
      constraints: z.array(z.strictObject({ ref, action: z.enum(['append', 'create']) })).max(1000),
    }),
  });
}

const schemas = new Map<string, ReturnType<typeof recordSchemaFor>>();
const schemaFor = (group: string) => {
  let s = schemas.get(group);
  if (!s) schemas.set(group, (s = recordSchemaFor(group)));
  return s;
};

/** What a record must fit to be used. */
export interface RecordExpectation {
  /** The namespace the record must be about: where it was found, or what its ConfigMap is keyed by. */
  namespace: string;
  /** The only API group its constraint references may name. @default "constraints.gatekeeper.sh" */
  constraintGroup?: string;
  /** Names the record in messages. @default "relaxation record" */
  source?: string;
}

const refKey = (r: ConstraintRef) => `${r.group}/${r.version}/${r.plural}/${r.kind}/${r.name}`;

/** Why a well-formed record contradicts itself; null when it does not. */
function inconsistency(record: RelaxationRecord): string | null {
  const { snapshot, plan } = record;
  const seen = new Set<string>();
  for (const c of snapshot.constraints) {
    const key = refKey(c.ref);
    if (seen.has(key)) return `snapshot.constraints lists ${c.ref.kind}/${c.ref.name} twice`;
    seen.add(key);
    const matching =
      c.excludedNamespaces?.find((p) => namespacePatternMatches(p, snapshot.namespace)) ?? null;
    if (matching !== c.excludedBy)
      return `snapshot of ${c.ref.kind}/${c.ref.name}: excludedBy does not follow from its excludedNamespaces`;
  }
  // The plan must be exactly the one the snapshot leads to.
  const expected = planRelaxation(snapshot, plan.podSecurityEnforce ?? PodSecurityLevel.Baseline);
  // null: PSA admitted the Job pods as it was, so it is left alone.
  if (plan.podSecurityEnforce !== null && expected.podSecurityEnforce !== plan.podSecurityEnforce)
    return `plan.podSecurityEnforce ${plan.podSecurityEnforce ?? 'null'} does not follow from the recorded enforce label ${snapshot.podSecurity[PodSecurityLabel.Enforce] ?? '(absent)'}`;
  // The guard relaxes only the constraints that refuse the Job pods: a subset, in snapshot order.
  const candidates = expected.constraints.map((c) => `${refKey(c.ref)}:${c.action}`);
  let next = 0;
  for (const c of plan.constraints) {
    const at = candidates.indexOf(`${refKey(c.ref)}:${c.action}`, next);
    if (at < 0) return 'plan.constraints do not follow from snapshot.constraints';
    next = at + 1;
  }
  return null;
}

/**
 * Parses and validates a relaxation record (JSON text or a parsed value): its shape (zod),
 * that it is about `expected.namespace`, that its constraint references name only the
 * constraint group, and that its plan follows from its snapshot.
 *
 * @throws {@link RelaxationRecordError} naming the problem; nothing may be done from such a record.
 */
export function parseRelaxationRecord(value: unknown, expected: RecordExpectation): RelaxationRecord {
  const source = expected.source ?? 'relaxation record';
  let raw = value;
  if (typeof value === 'string') {
    try {
      raw = JSON.parse(value) as unknown;
    } catch {
      throw new RelaxationRecordError(RecordProblem.NotJson, `${source} is not JSON`);
    }
  }
  const version = (raw as { version?: unknown } | null)?.version;
  if (typeof raw === 'object' && raw !== null && version !== RelaxationRecordVersion) {
    throw new RelaxationRecordError(
      RecordProblem.UnsupportedVersion,
      `${source} has format version ${JSON.stringify(version ?? null)}; this version of runas-migrate acts only on version ${RelaxationRecordVersion}`,
    );
  }
  const parsed = schemaFor(expected.constraintGroup ?? GatekeeperConstraintGroup).safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues
      .slice(0, 5)
      .map((i) => `${i.path.join('.') || '(record)'}: ${i.message}`)
      .join('; ');
    throw new RelaxationRecordError(
      RecordProblem.Invalid,
      `${source} is not a valid relaxation record (${issues})`,
    );
  }
  const record = parsed.data as RelaxationRecord;
  if (record.snapshot.namespace !== expected.namespace) {
    throw new RelaxationRecordError(
      RecordProblem.WrongNamespace,
      `${source} is about namespace ${record.snapshot.namespace}, not ${expected.namespace}`,
    );
  }
  const why = inconsistency(record);
  if (why)
    throw new RelaxationRecordError(RecordProblem.Inconsistent, `${source} contradicts itself: ${why}`);
  return record;
}

/**
 * Parses a run's own copy of its record, which may predate the current format: a version 1
 * copy (kept in a run's state before an upgrade) gets the Temporal namespace of the run.
 */
export function parseRunCopy(
  value: unknown,
  expected: RecordExpectation,
  temporalNamespace: string,
): RelaxationRecord {
  const raw = value as { version?: unknown } | null;
  const upgraded =
    typeof raw === 'object' && raw !== null && raw.version === 1
      ? { ...raw, version: RelaxationRecordVersion, temporalNamespace }
      : value;
  return parseRelaxationRecord(upgraded, { source: "the run's copy of its record", ...expected });
}

/** Whether two records describe the same relaxation, field for field. */
export function sameRecord(a: RelaxationRecord, b: RelaxationRecord): boolean {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(canonical)
      : v && typeof v === 'object'
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, canonical((v as Record<string, unknown>)[k])]),
          )
        : v;
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

/**
 * Whether two records describe the same relaxation, whatever constraints each plan narrowed to:
 * the guard writes a narrowed plan to the protected record, then to the annotation.
 */
export function sameRelaxation(a: RelaxationRecord, b: RelaxationRecord): boolean {
  const unplanned = (r: RelaxationRecord) => ({ ...r, plan: { ...r.plan, constraints: [] } });
  return sameRecord(unplanned(a), unplanned(b));
}
