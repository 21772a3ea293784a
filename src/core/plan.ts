/**
 * The migration plan, pure: from what discovery read (StatefulSets, claims, constraints), which
 * volumes of which replicas each Job migrates, and whether the target IDs will be admitted once
 * the policies are back (preflight).
 */
import { FailureType, TypedFailure } from './failures.js';
import type { V1PersistentVolumeClaim, V1StatefulSet } from '@kubernetes/client-node';
import { ownershipJobName, type JobTarget, type VolumeMountPlan } from './job.js';
import type { MigrationInput } from './input.js';
import type { RelaxationRecord } from './policy.js';
import type { PlatformResource } from './profiles.js';
import { PodSecurityLabel } from './policy.js';

/** Annotation on a StatefulSet scaled down by a run: the replicas to scale back to. */
export const OriginalReplicasAnnotation = 'runas-migrate.dev/original-replicas';

/** One database, planned. */
export interface DatabasePlan {
  statefulSet: string;
  container: string;
  image: string;
  /** Replicas to scale back to. */
  replicas: number;
  /** An earlier run scaled it to 0 and left it there (its files may be partly changed). */
  leftScaledDown?: boolean;
  /** Pod-level IDs of the template before the run. */
  currentIds: PodIds & { supplementalGroups: number[] };
  jobs: (JobTarget & { name: string })[];
}

/** The platform resource and its status when planned. */
export interface PlatformPlan extends PlatformResource {
  status: string | null;
}

/** Everything a run will do, shown to the operator before the `plan` gate. */
export interface MigrationPlan {
  namespace: string;
  uid: number;
  gid: number;
  supplementalGroups: number[];
  databases: DatabasePlan[];
  platform: PlatformPlan | null;
  policies: RelaxationRecord;
  /** Problems that would make the databases refused after the run; non-empty stops the run. */
  preflight: string[];
  /**
   * What the admission chain said, by server-side dry run under the policies enforced at
   * planning, about each StatefulSet's pods with the target IDs: `admitted`, `refused` (the
   * refusals are in `preflight`), or why it was not asked. Absent from plans made before.
   */
  databasePodsAdmission?: string;
  /**
   * What the admission chain said about the ownership Jobs' pods under the policies enforced at
   * planning (server-side dry runs), and the relaxation it leads to (`policies.plan`). The run
   * asks again once PSA is relaxed. Absent from plans made before.
   */
  jobPodsAdmission?: {
    /** `admitted`, `refused`, or why the chain was not asked. */
    state: string;
    /** Each distinct refusal: who refused and what it said. */
    refusals: string[];
    /** The relaxation they lead to, one line per policy. */
    relaxation: string[];
  };
}

/** The pod-level IDs of a template, as they were (null: absent). */
export interface PodIds {
  runAsUser: number | null;
  runAsGroup: number | null;
  fsGroup: number | null;
  supplementalGroups: number[] | null;
}

/** Thrown when the cluster does not hold what the input names; nothing is changed. */
export class PlanningError extends TypedFailure {
  override readonly name = 'PlanningError';
  constructor(message: string) {
    super(FailureType.PlanningFailed, message);
  }
}

/**
 * Plans one database from its StatefulSet and the namespace's claims: every claim template the
 * container mounts (or the named ones), for every replica whose claims exist.
 */
export function planDatabase(
  sts: V1StatefulSet,
  container: string,
  volumes: string[] | undefined,
  claims: V1PersistentVolumeClaim[],
): DatabasePlan {
  const name = sts.metadata!.name!;
  const podSpec = sts.spec?.template.spec;
  const c = podSpec?.containers.find((x) => x.name === container);
  if (!c) {
    const names = podSpec?.containers.map((x) => x.name).join(', ') ?? 'none';
    throw new PlanningError(
      `StatefulSet ${name} has no container "${container}" (it has: ${names}): fix databases[].container`,
    );
  }
  const templates = new Set((sts.spec?.volumeClaimTemplates ?? []).map((t) => t.metadata!.name!));
  let mounts = (c.volumeMounts ?? []).filter((m) => templates.has(m.name));
  if (volumes) {
    for (const v of volumes) {
      if (!mounts.some((m) => m.name === v)) {
        throw new PlanningError(
          `StatefulSet ${name}: container "${container}" mounts no claim template "${v}" (it mounts: ${mounts.map((m) => m.name).join(', ') || 'none'}): fix databases[].volumes`,
        );
      }
    }
    mounts = mounts.filter((m) => volumes.includes(m.name));
  }
  if (mounts.length === 0) {
    throw new PlanningError(
      `StatefulSet ${name}: container "${container}" mounts no PersistentVolumeClaim template: nothing to migrate`,
    );
  }
  const expanded = mounts.find((m) => m.subPathExpr);
  if (expanded) {
    throw new PlanningError(
      `StatefulSet ${name}: container "${container}" mounts claim template "${expanded.name}" at ${expanded.mountPath} with subPathExpr "${expanded.subPathExpr}", which runas-migrate cannot resolve: leave it out with databases[].volumes and migrate it by hand`,
    );
  }
  if (sts.spec?.persistentVolumeClaimRetentionPolicy?.whenScaled === 'Delete') {
    throw new PlanningError(
      `StatefulSet ${name} has persistentVolumeClaimRetentionPolicy.whenScaled: Delete: scaling it to 0 for the migration would delete the claims of every replica, and with a Delete reclaim policy their data; set whenScaled to Retain for the migration (kubectl patch statefulset ${name} -p '{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Retain"}}}')`,
    );
  }
  const annotated = Number(sts.metadata?.annotations?.[OriginalReplicasAnnotation]);
  const replicas = Number.isInteger(annotated) && annotated > 0 ? annotated : (sts.spec?.replicas ?? 1);
  // Every replica whose claims exist, including ordinals above the current replica count.
  const ordinals = new Set<number>();
  for (let i = 0; i < replicas; i++) ordinals.add(i);
  const pattern = new RegExp(
    `^(${[...templates].map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})-${name}-(\\d+)$`,
  );
  for (const pvc of claims) {
    const m = pattern.exec(pvc.metadata?.name ?? '');
    if (m) ordinals.add(Number(m[2]));
  }
  const claimNames = new Set(claims.map((p) => p.metadata?.name));
  const jobs = [...ordinals]
    .sort((a, b) => a - b)
    .map((ordinal) => {
      // One entry per mount: a claim mounted twice with subPaths is migrated in those folders only.
      const vols: VolumeMountPlan[] = mounts.map((m) => ({
        volume: m.name,
        claimName: `${m.name}-${name}-${ordinal}`,
        mountPath: m.mountPath,
        ...(m.subPath ? { subPath: m.subPath } : {}),
      }));
      for (const v of vols) {
        if (!claimNames.has(v.claimName)) {
          throw new PlanningError(
            `replica ${ordinal} of StatefulSet ${name} has no PersistentVolumeClaim ${v.claimName}: restore it or scale the StatefulSet first`,
          );
        }
      }
      return {
        name: ownershipJobName(name, ordinal),
        statefulSet: name,
        ordinal,
        image: c.image ?? '',
        pull: {
          imagePullSecrets: (podSpec?.imagePullSecrets ?? []).flatMap((r) => (r.name ? [r.name] : [])),
          ...(podSpec?.serviceAccountName ? { serviceAccountName: podSpec.serviceAccountName } : {}),
        },
        volumes: vols,
      };
    });
  const sc = podSpec?.securityContext ?? {};
  return {
    statefulSet: name,
    container,
    image: c.image ?? '',
    replicas,
    leftScaledDown: Number.isInteger(annotated) && annotated > 0,
    currentIds: {
      runAsUser: sc.runAsUser ?? null,
      runAsGroup: sc.runAsGroup ?? null,
      fsGroup: sc.fsGroup ?? null,
      supplementalGroups: sc.supplementalGroups ?? [],
    },
    jobs,
  };
}

/**
 * Containers (init containers included) of a StatefulSet that set their own `runAsUser` or
 * `runAsGroup`, other than the target's. A container's own value overrides the pod's, and
 * `securityContext.apply: "patch"` changes only the pod's: such a container would go on running
 * as the old IDs on files it no longer owns.
 *
 * @returns one line per container and field, naming the fix.
 */
export function containerIdProblems(sts: V1StatefulSet, uid: number, gid: number): string[] {
  const spec = sts.spec?.template.spec;
  const containers = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])];
  return containers.flatMap((c) =>
    (
      [
        ['runAsUser', c.securityContext?.runAsUser, uid],
        ['runAsGroup', c.securityContext?.runAsGroup, gid],
      ] as const
    ).flatMap(([field, own, target]) =>
      own !== undefined && own !== target
        ? [
            `StatefulSet ${sts.metadata?.name}: container "${c.name}" sets securityContext.${field} ${own} itself, which overrides the pod's, and securityContext.apply "patch" changes only the pod's: it would go on running as ${own}; change it in the chart and use apply "helm" or "external"`,
          ]
        : [],
    ),
  );
}

/** `parameters` of a K8sPSPAllowedUsers constraint (the Gatekeeper library's shape). */
export interface AllowedUsersParameters {
  runAsUser?: { rule?: string; ranges?: { min: number; max: number }[] };
  runAsGroup?: { rule?: string; ranges?: { min: number; max: number }[] };
  fsGroup?: { rule?: string; ranges?: { min: number; max: number }[] };
  supplementalGroups?: { rule?: string; ranges?: { min: number; max: number }[] };
}

const inRanges = (v: number, ranges: { min: number; max: number }[] | undefined) =>
  (ranges ?? []).some((r) => v >= r.min && v <= r.max);
const rangesText = (ranges: { min: number; max: number }[] | undefined) =>
  (ranges ?? []).map((r) => `${r.min}-${r.max}`).join(', ') || 'none';

/**
 * Checks the target IDs against what will be enforced again: PSA `restricted` and each
 * K8sPSPAllowedUsers constraint that applies to the namespace.
 *
 * @returns one line per problem, naming the constraint, the field and the range.
 */
export function preflight(
  input: Pick<MigrationInput, 'uid' | 'gid' | 'supplementalGroups'>,
  policies: RelaxationRecord,
  allowedUsers: { name: string; parameters: AllowedUsersParameters }[],
  databases: DatabasePlan[],
  runAsNonRootByDatabase: Record<string, boolean>,
): string[] {
  const problems: string[] = [];
  if (policies.snapshot.podSecurity[PodSecurityLabel.Enforce] === 'restricted') {
    for (const db of databases) {
      if (!runAsNonRootByDatabase[db.statefulSet]) {
        problems.push(
          `PSA restricted (namespace ${policies.snapshot.namespace}) requires runAsNonRoot: true, which StatefulSet ${db.statefulSet} does not set: its pods would be refused after the run`,
        );
      }
    }
  }
  const check = (
    constraint: string,
    field: keyof AllowedUsersParameters,
    values: number[],
    p: AllowedUsersParameters,
  ) => {
    const rule = p[field];
    if (!rule?.rule || rule.rule === 'RunAsAny') return;
    if (rule.rule === 'MustRunAsNonRoot') {
      if (values.some((v) => v === 0))
        problems.push(`K8sPSPAllowedUsers/${constraint}: ${field} must not be 0`);
      return;
    }
    for (const v of values) {
      if (!inRanges(v, rule.ranges)) {
        problems.push(
          `K8sPSPAllowedUsers/${constraint}: ${field} ${v} is outside the allowed ranges ${rangesText(rule.ranges)}: the databases would be refused at scale-up; choose IDs inside them or change the constraint`,
        );
      }
    }
  };
  for (const c of allowedUsers) {
    check(c.name, 'runAsUser', [input.uid], c.parameters);
    check(c.name, 'runAsGroup', [input.gid], c.parameters);
    check(c.name, 'fsGroup', [input.gid], c.parameters);
    check(c.name, 'supplementalGroups', input.supplementalGroups, c.parameters);
  }
  return problems;
}
