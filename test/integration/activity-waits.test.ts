/**
 * The waiting steps against the test bed's API server. Run as activities (through the adapter
 * that makes them of the service), a cancellation ends a wait at once (mid-sleep, with the
 * activity's CancelledFailure); and an absolute deadline wins over `timeoutSeconds`, so a retried
 * step does not restart its own clock.
 */
import { typedFailureOf } from '../support/failures.js';
import { BatchV1Api } from '@kubernetes/client-node';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { activitiesOf } from '../../src/activities/adapter.js';
import { Kube } from '../../src/cluster/kube.js';
import { OwnershipJobs, type JobRef } from '../../src/services/ownership-jobs.js';
import { createNamespace, kubeConfig, uniqueName } from '../support/bed.js';

const kc = kubeConfig();
const batch = kc.makeApiClient(BatchV1Api);
// Polls far apart: only a prompt reaction to cancellation ends these waits quickly.
const ownershipJobs = new OwnershipJobs({ kube: new Kube(kc), pollMs: 10_000 });
// The same service as the worker registers it (createActivities), with those far-apart polls.
const activities = activitiesOf(ownershipJobs, ['waitForJobs', 'waitForPodsAdmitted']);
const namespace = uniqueName('waits');
let cleanup: () => Promise<void>;
let job: JobRef;

/** Runs `fn` as an activity, cancels it after `afterMs`; returns its error and how long it took to end. */
async function cancelled(fn: () => Promise<unknown>, afterMs = 300): Promise<{ error: unknown; ms: number }> {
  const env = new MockActivityEnvironment({ heartbeatTimeoutMs: 1000 });
  const started = Date.now();
  const timer = setTimeout(() => env.cancel(), afterMs);
  try {
    await env.run(fn);
    return { error: undefined, ms: Date.now() - started };
  } catch (error) {
    return { error, ms: Date.now() - started };
  } finally {
    clearTimeout(timer);
  }
}

beforeAll(async () => {
  cleanup = await createNamespace(kc, namespace);
  // suspended: no pod is ever created, so nothing it waits for ever happens
  const created = await batch.createNamespacedJob({
    namespace,
    body: {
      metadata: { name: 'never' },
      spec: {
        suspend: true,
        template: {
          spec: { restartPolicy: 'Never', containers: [{ name: 'c', image: 'busybox', command: ['true'] }] },
        },
      },
    },
  });
  job = { name: 'never', uid: created.metadata!.uid! };
});

afterAll(async () => {
  await cleanup();
});

describe('a cancelled wait ends at once with the CancelledFailure', () => {
  it('waitForJobs', async () => {
    const r = await cancelled(() =>
      activities.waitForJobs({ namespace, jobs: [job], uid: 5000, gid: 5000, timeoutSeconds: 30 }),
    );
    expect(r.error).toBeInstanceOf(CancelledFailure);
    expect(r.ms).toBeLessThan(2000);
  });

  it('waitForPodsAdmitted', async () => {
    const r = await cancelled(() =>
      activities.waitForPodsAdmitted({ namespace, jobs: [job], timeoutSeconds: 30 }),
    );
    expect(r.error).toBeInstanceOf(CancelledFailure);
    expect(r.ms).toBeLessThan(2000);
  });
});

describe('an absolute deadline wins over timeoutSeconds', () => {
  const past = new Date(Date.now() - 1000).toISOString();

  it('waitForJobs past its deadline fails at once, not retryable', async () => {
    const started = Date.now();
    const f = await typedFailureOf(
      ownershipJobs.waitForJobs({
        namespace,
        jobs: [job],
        uid: 5000,
        gid: 5000,
        timeoutSeconds: 30,
        deadline: past,
      }),
    );
    expect(Date.now() - started).toBeLessThan(2000);
    expect(f.type).toBe('WaitTimedOut');
    expect(f.retryable).toBe(false);
    expect(f.message).toBe(`timed out waiting for ownership Jobs to finish (deadline ${past})`);
  });

  it('waitForPodsAdmitted past its deadline reports timedOut at once', async () => {
    const started = Date.now();
    const evidence = await ownershipJobs.waitForPodsAdmitted({
      namespace,
      jobs: [job],
      timeoutSeconds: 30,
      deadline: past,
    });
    expect(Date.now() - started).toBeLessThan(2000);
    expect(evidence).toEqual({ admitted: [], refused: [], timedOut: true });
  });

  it('a deadline that is not a time is refused, not retryable', async () => {
    const f = await typedFailureOf(
      ownershipJobs.waitForJobs({ namespace, jobs: [job], uid: 5000, gid: 5000, deadline: 'tomorrow' }),
    );
    expect(f.type).toBe('InvalidWaitLimit');
    expect(f.retryable).toBe(false);
  });
});
