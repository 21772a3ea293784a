/**
 * One run per namespace, held in the cluster: a Lease in the target namespace names the run
 * that migrates it. The workflow ID keeps one run per namespace only for runs started through
 * `runas-migrate start`; a run started with another ID would otherwise patch the template and
 * scale down before noticing the other run, and its compensation would undo the other's work.
 */
import type { V1Lease } from '@kubernetes/client-node';
import { isKubeError, type Kube } from '../cluster/kube.js';
import { FailureType, TypedFailure } from '../core/failures.js';
import type { RunRef } from '../core/policy.js';
import type { RunRegistry } from './runs.js';

/** Name of the Lease that holds a namespace for one run. */
export const NamespaceLockName = 'runas-migrate';

/** Annotations on the Lease naming the run that holds it. */
export const LockAnnotation = {
  WorkflowId: 'runas-migrate.dev/workflow-id',
  RunId: 'runas-migrate.dev/run-id',
} as const;

/** Dependencies of the {@link NamespaceLock}. */
export interface NamespaceLockDeps {
  kube: Kube;
  /** Tells whether the run holding a lock is still open. */
  runs: RunRegistry;
  log?: (message: string) => void;
}

/** What {@link NamespaceLock.acquireNamespaceLock} found. */
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

const same = (a: RunRef | null, b: RunRef) => a?.workflowId === b.workflowId && a.runId === b.runId;

/** The namespace's lock: a Lease naming the one run that may change the namespace. */
export class NamespaceLock {
  private readonly kube: Kube;
  private readonly runs: RunRegistry;
  private readonly log: (message: string) => void;

  constructor(deps: NamespaceLockDeps) {
    this.kube = deps.kube;
    this.runs = deps.runs;
    this.log = deps.log ?? (() => undefined);
  }

  /**
   * Takes the namespace for this run before its first change. Idempotent for the same run; a
   * lock left by a run that has ended is taken over.
   *
   * @throws `NamespaceLocked` (non-retryable) while another open run holds it.
   */
  async acquireNamespaceLock(input: { namespace: string; owner: RunRef }): Promise<LockResult> {
    for (;;) {
      let lease: V1Lease | undefined;
      try {
        lease = await this.kube.readLease(input.namespace, NamespaceLockName);
      } catch (err) {
        if (!isKubeError(err, FailureType.KubeNotFound)) throw err;
      }
      if (!lease) {
        try {
          await this.kube.createLease(input.namespace, leaseFor(input.namespace, input.owner));
          this.log(`namespace ${input.namespace} locked for run ${input.owner.workflowId}`);
          return { tookOverFrom: null };
        } catch (err) {
          if (isKubeError(err, FailureType.KubeConflict)) continue; // created meanwhile: read it
          throw err;
        }
      }
      const holder = holderOf(lease);
      if (same(holder, input.owner)) return { tookOverFrom: null };
      if (holder && (await this.runs.isRunOpen(holder))) {
        throw TypedFailure.nonRetryable(
          `namespace ${input.namespace} is being migrated by run ${holder.workflowId} (run ID ${holder.runId}), ` +
            `which is still open: wait for it to end, or abort it (runas-migrate abort -n ${input.namespace}); nothing was changed`,
          FailureType.NamespaceLocked,
        );
      }
      try {
        await this.kube.replaceLease(
          input.namespace,
          NamespaceLockName,
          leaseFor(input.namespace, input.owner, lease.metadata?.resourceVersion),
        );
      } catch (err) {
        if (isKubeError(err, FailureType.KubeConflict)) continue;
        throw err;
      }
      this.log(
        `namespace ${input.namespace}: took over the lock of ended run ${holder?.workflowId ?? '(unnamed)'}`,
      );
      return { tookOverFrom: holder };
    }
  }

  /** Gives the namespace back; a lock held by another run is left alone. */
  async releaseNamespaceLock(input: { namespace: string; owner: RunRef }): Promise<boolean> {
    let lease: V1Lease;
    try {
      lease = await this.kube.readLease(input.namespace, NamespaceLockName);
    } catch (err) {
      if (isKubeError(err, FailureType.KubeNotFound)) return false;
      throw err;
    }
    if (!same(holderOf(lease), input.owner)) return false;
    try {
      await this.kube.deleteLease(input.namespace, NamespaceLockName, lease.metadata?.resourceVersion);
    } catch (err) {
      if (isKubeError(err, FailureType.KubeNotFound)) return false;
      throw err;
    }
    this.log(`namespace ${input.namespace} unlocked`);
    return true;
  }
}
