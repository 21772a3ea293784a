/**
 * The seed's last check (`kubectl get constraints -A`): once the policies are back, Gatekeeper's
 * audit shows no violation in the namespace. Gatekeeper audits on an interval and writes what
 * it found into each constraint's status; only a pass that started after the new database pods
 * existed (by the cluster's clock) counts.
 */
import { Collections } from '../cluster/changes.js';
import { isKubeError, type CustomResourceKind, type Kube } from '../cluster/kube.js';
import { FailureType } from '../core/failures.js';
import { GatekeeperConstraintGroup } from '../core/policy.js';
import { progress, throwIfCancelled, unlessCancelled } from './step.js';
import { statefulSetPods } from './statefulsets.js';
import { cadenceOf, WatchFallbackMs, withCadence, type WaitMode } from './workloads.js';

/** Dependencies of {@link GatekeeperAudit}. */
export interface GatekeeperAuditDeps {
  kube: Kube;
  log?: (message: string) => void;
  /** API group of the constraints. @default "constraints.gatekeeper.sh" */
  constraintGroup?: string;
  /** How often the constraints' audit status is read while polling. @default 1000 */
  pollMs?: number;
  /**
   * How often it is read anyway while watching: a missed event costs at most this. A pass takes
   * up to an audit interval (60 s by default), so most looks are the watch's.
   * @default WatchFallbackMs (5 s)
   */
  fallbackMs?: number;
  /** Whether the wait watches the constraints or only polls them. @default "watch" */
  waits?: WaitMode;
}

/** Input of {@link GatekeeperAudit.auditNamespace}. */
export interface AuditInput {
  namespace: string;
  /**
   * Only an audit pass that started at or after this instant counts (ISO 8601), by the run's
   * clock; used when `databases` have no pods to go by.
   */
  since: string;
  /**
   * The StatefulSets just scaled up: only a pass that started after their newest pod was
   * created counts, by the cluster's clock (`creationTimestamp`), whatever the run's clock says.
   */
  databases?: string[];
  /** How long to wait for such a pass, in seconds. */
  timeoutSeconds: number;
}

/** One violation Gatekeeper's audit found in the namespace. */
export interface AuditViolation {
  kind: string;
  name: string;
  message: string;
  enforcementAction?: string;
}

/** One constraint's audit, as far as the namespace goes. */
export interface ConstraintAudit {
  constraint: string;
  /** When the counted audit pass started; null when none started after `since` in time. */
  auditTimestamp: string | null;
  /** Violations in the namespace among those the constraint lists. */
  violations: AuditViolation[];
  /** Violations in the whole cluster; more than listed when Gatekeeper's list limit cut it. */
  totalViolations: number;
  /** Whether the constraint lists every violation it counted (so none in the namespace is missed). */
  complete: boolean;
}

/** What {@link GatekeeperAudit.auditNamespace} found. */
export interface NamespaceAudit {
  namespace: string;
  /**
   * `clean`: every constraint audited after `since`, none lists a violation in the namespace;
   * `violations`; `not-audited`: some constraint had no audit pass in time (audit not running);
   * `no-constraints`.
   */
  state: 'clean' | 'violations' | 'not-audited' | 'no-constraints';
  constraints: ConstraintAudit[];
  /**
   * The instant a pass had to start at or after to count (ISO 8601): a second past the newest
   * database pod's creation, or `since` when there was none.
   */
  countedFrom?: string;
  waitedMs: number;
}

interface AuditedConstraint {
  metadata: { name: string };
  status?: {
    auditTimestamp?: string;
    totalViolations?: number;
    violations?: (AuditViolation & { namespace?: string })[];
  };
}

/** Reads Gatekeeper's audit results for one namespace. */
export class GatekeeperAudit {
  private readonly kube: Kube;
  private readonly log: (message: string) => void;
  private readonly group: string;
  private readonly pollMs: number;
  private readonly waits: WaitMode;
  private readonly fallbackMs: number;

  constructor(deps: GatekeeperAuditDeps) {
    this.kube = deps.kube;
    this.log = deps.log ?? (() => undefined);
    this.group = deps.constraintGroup ?? GatekeeperConstraintGroup;
    this.pollMs = deps.pollMs ?? 1000;
    this.waits = deps.waits ?? 'watch';
    this.fallbackMs = deps.fallbackMs ?? WatchFallbackMs;
  }

  /**
   * Waits for an audit pass of every constraint that started at or after `since`, then reports
   * the violations each lists in the namespace. Changes nothing.
   */
  async auditNamespace(input: AuditInput): Promise<NamespaceAudit> {
    const started = Date.now();
    // Gatekeeper writes each pass into every constraint's status: a watch on the constraint
    // kinds wakes the wait at that write instead of at the next poll.
    const [kinds, countedFrom] = await unlessCancelled(
      Promise.all([this.kube.kindsOfGroup(this.group), this.countedFrom(input)]),
    );
    const collections = kinds.map((kind) => ({ path: Collections.clusterCustom(kind) }));
    return withCadence(
      cadenceOf(this.kube, this.waits, this.pollMs, collections, this.fallbackMs),
      (sleep, everyMs) => this.awaitPass({ ...input, since: countedFrom }, started, kinds, sleep, everyMs),
    );
  }

  /**
   * Where counting starts: a second past the newest pod of `databases` by the cluster's clock
   * (Gatekeeper stamps its passes by a clock in the cluster, in whole seconds, so a pass stamped
   * in the pod's own second may have started before it), else the run's `since`. The run's clock
   * is Temporal's: behind the cluster it would count a pass that never saw the new pods, ahead
   * it would wait for a pass the cluster has not reached.
   */
  private async countedFrom(input: AuditInput): Promise<string> {
    const created = (
      await Promise.all(
        (input.databases ?? []).map(async (name) => {
          try {
            return (await statefulSetPods(this.kube, input.namespace, name)).pods;
          } catch (err) {
            // A StatefulSet gone meanwhile has no pods to go by; anything else is retried.
            if (isKubeError(err, FailureType.KubeNotFound)) return [];
            throw err;
          }
        }),
      )
    )
      .flat()
      .flatMap((p) =>
        p.metadata?.creationTimestamp ? [new Date(p.metadata.creationTimestamp).getTime()] : [],
      );
    return created.length > 0 ? new Date(Math.max(...created) + 1000).toISOString() : input.since;
  }

  /**
   * The wait of {@link auditNamespace}, looking again after `sleep(everyMs)`; its first look
   * reads the constraints of the kinds just discovered.
   */
  private async awaitPass(
    input: AuditInput,
    started: number,
    discovered: CustomResourceKind[],
    sleep: (ms: number) => Promise<void>,
    everyMs: number,
  ): Promise<NamespaceAudit> {
    const since = Date.parse(input.since);
    const deadline = started + input.timeoutSeconds * 1000;
    let kinds = discovered;
    for (;;) {
      throwIfCancelled();
      const constraints: ConstraintAudit[] = [];
      for (const kind of kinds) {
        for (const c of await unlessCancelled(this.kube.listClusterObjects<AuditedConstraint>(kind))) {
          const at = c.status?.auditTimestamp;
          const fresh = at !== undefined && Date.parse(at) >= since;
          const listed = c.status?.violations ?? [];
          const total = c.status?.totalViolations ?? listed.length;
          constraints.push({
            constraint: `${kind.kind}/${c.metadata.name}`,
            auditTimestamp: fresh ? at : null,
            violations: fresh
              ? listed
                  .filter((v) => v.namespace === input.namespace)
                  .map(({ kind: k, name, message, enforcementAction }) => ({
                    kind: k,
                    name,
                    message,
                    ...(enforcementAction ? { enforcementAction } : {}),
                  }))
              : [],
            totalViolations: fresh ? total : 0,
            complete: fresh ? listed.length >= total : false,
          });
        }
      }
      const pending = constraints.filter((c) => c.auditTimestamp === null);
      if (pending.length === 0 || Date.now() >= deadline) {
        const result: NamespaceAudit = {
          namespace: input.namespace,
          state:
            constraints.length === 0
              ? 'no-constraints'
              : constraints.some((c) => c.violations.length > 0)
                ? 'violations'
                : pending.length > 0
                  ? 'not-audited'
                  : 'clean',
          constraints,
          countedFrom: input.since,
          waitedMs: Date.now() - started,
        };
        this.log(`Gatekeeper audit of ${input.namespace}: ${result.state} after ${result.waitedMs} ms`);
        return result;
      }
      progress({ awaitingAudit: pending.map((c) => c.constraint).join(', ') });
      await sleep(Math.max(1, Math.min(everyMs, deadline - Date.now())));
      // A constraint template added meanwhile brings a kind of its own.
      kinds = await unlessCancelled(this.kube.kindsOfGroup(this.group));
    }
  }
}
