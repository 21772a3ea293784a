/**
 * Every activity of runas-migrate: the services' steps, adapted in one place
 * ({@link activitiesOf}). Built from its dependencies (`createActivities({ kube, client, log })`),
 * so tests can hand it a client pointed at the test bed. The workflows call them by these names.
 */
import type { Client } from '@temporalio/client';
import type { Kube } from '../cluster/kube.js';
import { defaultsInForce, type GuardrailsInForce } from '../core/guardrails.js';
import { recordsNamespaceOf } from '../core/records.js';
import { DatabaseChecks } from '../services/database-checks.js';
import { GatekeeperAudit } from '../services/gatekeeper-audit.js';
import { GuardrailCheck } from '../services/guardrails.js';
import { HelmReleases } from '../services/helm.js';
import type { WaitMode } from '../services/workloads.js';
import { NamespaceLock } from '../services/namespace-lock.js';
import { OwnershipJobs } from '../services/ownership-jobs.js';
import { Planner } from '../services/planner.js';
import { PolicyGuard } from '../services/policy-guard.js';
import { RunRegistry } from '../services/runs.js';
import { StatefulSets } from '../services/statefulsets.js';
import { activitiesOf } from './adapter.js';

/** What the activities need. */
export interface ActivityDeps {
  kube: Kube;
  client: Client;
  log?: (message: string) => void;
  /** Namespace of the protected relaxation records: the worker's own. */
  recordsNamespace?: string;
  /** Temporal namespace the worker serves. */
  temporalNamespace?: string;
  /** The guardrails the worker loaded. @default the defaults, the records namespace denied */
  guardrails?: GuardrailsInForce;
  /** The `helm` binary, for securityContext.apply = helm. @default "helm" */
  helm?: string;
  /** The worker's kubeconfig, which helm uses too; helm's own loading rules when absent. */
  kubeconfig?: string;
  /** Whether the waits watch or only poll. @default "watch" */
  waits?: WaitMode;
}

/** The services behind the activities, built once per worker. */
export function createServices(deps: ActivityDeps) {
  const { kube, log, waits } = deps;
  const policyGuard = new PolicyGuard({
    kube,
    log,
    waits,
    recordsNamespace: deps.recordsNamespace,
    temporalNamespace: deps.temporalNamespace,
  });
  const runs = new RunRegistry({ client: deps.client });
  const inForce = deps.guardrails ?? defaultsInForce(recordsNamespaceOf(deps.recordsNamespace));
  return {
    policyGuard,
    runs,
    lock: new NamespaceLock({ kube, runs, log }),
    guardrails: new GuardrailCheck({ kube, inForce }),
    planner: new Planner({ kube, policyGuard, log }),
    statefulSets: new StatefulSets({ kube, log, waits }),
    helm: new HelmReleases({ helm: deps.helm, kubeconfig: deps.kubeconfig, log }),
    ownershipJobs: new OwnershipJobs({ kube, log, waits }),
    databaseChecks: new DatabaseChecks({ kube, log }),
    gatekeeperAudit: new GatekeeperAudit({ kube, log, waits }),
  };
}

/** Builds every activity the worker registers. */
export function createActivities(deps: ActivityDeps) {
  const s = createServices(deps);
  return {
    ...activitiesOf(s.policyGuard, [
      'snapshotPolicies',
      'relaxPolicies',
      'restorePolicies',
      'findRelaxations',
      'describeRelaxation',
    ]),
    ...activitiesOf(s.runs, ['isRunOpen']),
    ...activitiesOf(s.guardrails, ['checkGuardrails']),
    ...activitiesOf(s.lock, ['acquireNamespaceLock', 'releaseNamespaceLock']),
    ...activitiesOf(s.planner, ['planMigration']),
    ...activitiesOf(s.statefulSets, [
      'readPodIds',
      'patchPodIds',
      'verifySecurityContext',
      'scaleDown',
      'scaleUp',
      'waitForPlatform',
      'verifyDatabases',
    ]),
    ...activitiesOf(s.helm, ['readHelmRelease', 'helmUpgrade', 'helmRollback']),
    ...activitiesOf(s.databaseChecks, ['checkDatabases']),
    ...activitiesOf(s.gatekeeperAudit, ['auditNamespace']),
    ...activitiesOf(s.ownershipJobs, [
      'createOwnershipJobs',
      'waitForPodsAdmitted',
      'waitForJobs',
      'findOwnershipJobs',
      'deleteOwnershipJobs',
    ]),
  };
}

/** All activities, for `proxyActivities<Activities>()` in workflows. */
export type Activities = ReturnType<typeof createActivities>;
