/**
 * When the run that relaxed a namespace is gone (terminated, history lost), the record on the
 * namespace alone is enough: `runas-migrate restore` and the sweeper Schedule put the policies
 * back, and neither touches a relaxation whose run is still alive.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPolicyActivities } from '../../activities/policy.js';
import { Kube } from '../../src/kube.js';
import { PodSecurityLabel, RelaxationAnnotation, type RunRef } from '../../src/policy.js';
import { sweeperScheduleId, type RunningWorker } from '../../src/worker.js';
import { startTestWorker, type TestWorker } from '../support/worker.js';
import { waitFor } from '../../testbed/process.js';
import { createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { policyState } from '../support/policy-state.js';

const kc = kubeConfig();
const guard = createPolicyActivities({ kube: new Kube(kc) });
const cleanups: (() => Promise<void>)[] = [];
const gone: RunRef = {
  workflowId: 'runas-migrate-terminated-long-ago',
  runId: '00000000-0000-0000-0000-000000000000',
};
const taskQueue = uniqueName('sweeper-test');
let w: RunningWorker;
let worker: TestWorker;
let alive: RunRef;

async function relaxedNamespace(
  owner: RunRef,
): Promise<{ ns: string; before: Awaited<ReturnType<typeof policyState>> }> {
  const ns = uniqueName('swept');
  const remove = await createNamespace(kc, ns, { [PodSecurityLabel.Enforce]: 'restricted' });
  cleanups.push(async () => {
    await guard.restorePolicies({ namespace: ns });
    await remove();
  });
  const before = await policyState(kc, ns);
  await guard.relaxPolicies({ namespace: ns, owner });
  return { ns, before };
}

beforeAll(async () => {
  worker = await startTestWorker(taskQueue);
  w = worker.w;
  // A run that is alive: started, never finished (nothing polls its queue).
  const handle = await w.client.workflow.start('probeApproval', {
    taskQueue: uniqueName('nobody-polls'),
    workflowId: uniqueName('alive'),
    args: [{ gate: 'x' }],
  });
  alive = { workflowId: handle.workflowId, runId: handle.firstExecutionRunId };
  cleanups.push(async () => {
    await handle.terminate('test over');
  });
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await worker.stop();
});

describe('runas-migrate restore', () => {
  it('restores from the annotation alone when the run is gone', async () => {
    const { ns, before } = await relaxedNamespace(gone);
    const r = await runasMigrate(['restore', '--namespace', ns]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      `${ns}: policies restored and verified (recorded by run ${gone.workflowId}/${gone.runId})`,
    );
    expect(r.stdout).toMatch(/K8sPSPCapabilities\/drop-all: entry-removed/);
    expect(await policyState(kc, ns)).toEqual(before);
    expect((await runasMigrate(['restore', '--namespace', ns])).stdout).toContain('no relaxation recorded');
  });

  it('refuses while the run is alive, unless forced', async () => {
    const { ns, before } = await relaxedNamespace(alive);
    const refused = await runasMigrate(['restore', '--namespace', ns]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`run ${alive.workflowId}/${alive.runId} is still running`);
    expect((await policyState(kc, ns)).annotations[RelaxationAnnotation]).toBeDefined();

    expect((await runasMigrate(['restore', '--namespace', ns, '--force'])).code).toBe(0);
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('names an unknown namespace and changes nothing', async () => {
    const r = await runasMigrate(['restore', '--namespace', 'no-such-namespace']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('namespace "no-such-namespace" not found');
  });
});

describe('the sweeper', () => {
  it('is scheduled by the worker, and restores what a gone run left while leaving a live run alone', async () => {
    const schedule = await w.client.schedule.getHandle(sweeperScheduleId(taskQueue)).describe();
    expect(schedule.action).toMatchObject({ type: 'startWorkflow', workflowType: 'sweepRelaxations' });

    // The live run's relaxation first, so the orphan's "before" already includes it.
    const owned = await relaxedNamespace(alive);
    const orphan = await relaxedNamespace(gone);
    await w.client.schedule.getHandle(sweeperScheduleId(taskQueue)).trigger();

    await waitFor(
      'orphan restored',
      async () => (await policyState(kc, orphan.ns)).annotations[RelaxationAnnotation] === undefined,
      60_000,
      500,
    );
    expect(await policyState(kc, orphan.ns)).toEqual(orphan.before);
    const stillRelaxed = await policyState(kc, owned.ns);
    expect(stillRelaxed.labels[PodSecurityLabel.Enforce]).toBe('baseline');
    expect(stillRelaxed.annotations[RelaxationAnnotation]).toContain(alive.runId);
  });
});
