/**
 * One run per namespace, held in the cluster: a Lease in the target namespace names the run
 * that migrates it. The workflow ID keeps one run per namespace only for runs started through
 * `runas-migrate start`; a run started with another ID would otherwise patch the template and
 * scale down before noticing the other run, and its compensation would undo the other's work.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { Client } from '@temporalio/client';
import type { V1Lease } from '@kubernetes/client-node';
import { isKubeError, KubeFailureType, type Kube } from '../src/kube.js';
import type { RunRef } from '../src/policy.js';
import { typed } from './failures.js';
import { createRunActivities } from './runs.js';

/** Name of the Lease that holds a namespace for one run. */
export const NamespaceLockName = 'runas-migrate';

/** Annotations on the Lease naming the run that holds it. */
export const LockAnnotation = {
  WorkflowId: 'runas-migrate.dev/workflow-id',
  RunId: 'runas-migrate.dev/run-id',
} as const;

/** Failure types of the namespace lock. */
export const LockFailureType = {
  /** Another run that is still open holds the namespace. */
  NamespaceLocked: 'NamespaceLocked',
} as const;

/** Dependencies of the lock activities. */
export interface LockActivityDeps {
  kube: Kube;
  client: Client;
  log?: (message: string) => void;
}

/** What {@link acquireNamespaceLock} found. */
export interface LockResult {
  /** A closed run whose stale lock this run took over, if any. */
  tookOverFrom: RunRef | null;
}

const holderOf = (lease: V1Lease): RunRef | null => {
  const a = lease.metadata?.annotations ?? {};
  const workflowId = a[LockAnnotation.WorkflowId];
  const runId = a[LockAnnotation.RunId];
  return workflowId && runId ? { workflowId, runId } : null;
};

const leaseFor = (namespace: string, owner: RunRef, resourceVersion?: string): V1Lease => ({
  apiVersion: 'coordination.k8s.io/v1',
  kind: 'Lease',
  metadata: {
    name: NamespaceLockName,
    namespace,
    ...(resourceVersion ? { resourceVersion } : {}),
    labels: { 'app.kubernetes.io/managed-by': 'runas-migrate' },
    annotations: { [LockAnnotation.WorkflowId]: owner.workflowId, [LockAnnotation.RunId]: owner.runId },
  },
  spec: { holderIdentity: `${owner.workflowId}/${owner.runId}`.slice(0, 253) },
});

/** Builds the lock activities. */
export function createLockActivities(deps: LockActivityDeps) {
  const { kube } = deps;
  const log = deps.log ?? (() => undefined);
  const runs = createRunActivities({ client: deps.client });
  const same = (a: RunRef | null, b: RunRef) => a?.workflowId === b.workflowId && a.runId === b.runId;

  /**
   * Takes the namespace for this run before its first change. Idempotent for the same run; a
   * lock left by a run that has ended is taken over.
   *
   * @throws `NamespaceLocked` (non-retryable) while another open run holds it.
   */
  async function acquireNamespaceLock(input: { namespace: string; owner: RunRef }): Promise<LockResult> {
    return typed(async () => {
      for (;;) {
        let lease: V1Lease | undefined;
        try {
          lease = await kube.readLease(input.namespace, NamespaceLockName);
        } catch (err) {
          if (!isKubeError(err, KubeFailureType.NotFound)) throw err;
        }
        if (!lease) {
          try {
            await kube.createLease(input.namespace, leaseFor(input.namespace, input.owner));
            log(`namespace ${input.namespace} locked for run ${input.owner.workflowId}`);
            return { tookOverFrom: null };
          } catch (err) {
            if (isKubeError(err, KubeFailureType.Conflict)) continue; // created meanwhile: read it
            throw err;
          }
        }
        const holder = holderOf(lease);
        if (same(holder, input.owner)) return { tookOverFrom: null };
        if (holder && (await runs.isRunOpen(holder))) {
          throw ApplicationFailure.nonRetryable(
            `namespace ${input.namespace} is being migrated by run ${holder.workflowId} (run ID ${holder.runId}), ` +
              `which is still open: wait for it to end, or abort it (runas-migrate abort -n ${input.namespace}); nothing was changed`,
            LockFailureType.NamespaceLocked,
          );
        }
        try {
          await kube.replaceLease(
            input.namespace,
            NamespaceLockName,
            leaseFor(input.namespace, input.owner, lease.metadata?.resourceVersion),
          );
        } catch (err) {
          if (isKubeError(err, KubeFailureType.Conflict)) continue;
          throw err;
        }
        log(
          `namespace ${input.namespace}: took over the lock of ended run ${holder?.workflowId ?? '(unnamed)'}`,
        );
        return { tookOverFrom: holder };
      }
    });
  }

  /** Gives the namespace back; a lock held by another run is left alone. */
  async function releaseNamespaceLock(input: { namespace: string; owner: RunRef }): Promise<boolean> {
    return typed(async () => {
      let lease: V1Lease;
      try {
        lease = await kube.readLease(input.namespace, NamespaceLockName);
      } catch (err) {
        if (isKubeError(err, KubeFailureType.NotFound)) return false;
        throw err;
      }
      if (!same(holderOf(lease), input.owner)) return false;
      try {
        await kube.deleteLease(input.namespace, NamespaceLockName, lease.metadata?.resourceVersion);
      } catch (err) {
        if (isKubeError(err, KubeFailureType.NotFound)) return false;
        throw err;
      }
      log(`namespace ${input.namespace} unlocked`);
      return true;
    });
  }

  return { acquireNamespaceLock, releaseNamespaceLock };
}

/** The lock activities, as registered on the worker. */
export type LockActivities = ReturnType<typeof createLockActivities>;
