/**
 * When the run that relaxed a namespace is gone (terminated, history lost), its protected
 * record is enough: `runas-migrate restore` and the sweeper Schedule put the policies back.
 * Neither touches a relaxation whose run is alive or that a run of another Temporal namespace
 * recorded, and neither acts on what a tenant can write: an annotation no protected record
 * backs is reported and left as evidence. One bad record never stops the sweep of the others.
 */
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { PodSecurityLabel, RelaxationAnnotation, type RunRef } from '../../src/core/policy.js';
import {
  DefaultRecordsNamespace,
  recordConfigMapName,
  RecordDataKey,
  RecordLabel,
} from '../../src/core/records.js';
import { sweeperScheduleId, type RunningWorker } from '../../src/app/worker.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { Gatekeeper } from '../../testbed/fixture.js';
import type { SweepReport, SweptNamespace } from '../../src/workflows/sweeper.js';
import { startTestWorker, sweepOnce, type TestWorker } from '../support/worker.js';
import { createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { runasMigrate } from '../support/cli.js';
import { policyState, type PolicyState } from '../support/policy-state.js';
import {
  aliveRun,
  forgedRecord,
  protectedRecord,
  setRelaxationAnnotation,
  tamperEvents,
} from '../support/records.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const custom = kc.makeApiClient(CustomObjectsApi);
const guard = new PolicyGuard({ kube: new Kube(kc) });
// Records as a worker of another Temporal namespace writes them.
const elsewhere = new PolicyGuard({ kube: new Kube(kc), temporalNamespace: 'elsewhere' });
const cleanups: (() => Promise<void>)[] = [];
const gone: RunRef = {
  workflowId: 'runas-migrate-terminated-long-ago',
  runId: '00000000-0000-0000-0000-000000000000',
};
const taskQueue = uniqueName('sweeper-test');
let w: RunningWorker;
let worker: TestWorker;
let alive: RunRef;

async function plainNamespace(prefix: string, labels: Record<string, string>): Promise<string> {
  const ns = uniqueName(prefix);
  const remove = await createNamespace(kc, ns, labels);
  cleanups.push(async () => {
    await guard.restorePolicies({ namespace: ns });
    await remove();
  });
  return ns;
}

async function relaxedNamespace(owner: RunRef, g = guard): Promise<{ ns: string; before: PolicyState }> {
  const ns = await plainNamespace('swept', { [PodSecurityLabel.Enforce]: 'restricted' });
  const before = await policyState(kc, ns);
  await g.relaxPolicies({ namespace: ns, owner });
  return { ns, before };
}

const sweep = () => sweepOnce(w, taskQueue);

const outcomeOf = (report: SweepReport, namespace: string): SweptNamespace | undefined =>
  report.namespaces.find((n) => n.namespace === namespace);

beforeAll(async () => {
  worker = await startTestWorker(taskQueue);
  w = worker.w;
  const run = await aliveRun(w.client);
  alive = run.owner;
  cleanups.push(run.end);
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await worker.stop();
});

describe('runas-migrate restore', () => {
  it('restores from the protected record when the run is gone', async () => {
    const { ns, before } = await relaxedNamespace(gone);
    const r = await runasMigrate(['restore', '--namespace', ns]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      `${ns}: policies restored and verified from the protected record (recorded by run ${gone.workflowId}/${gone.runId})`,
    );
    expect(r.stdout).toMatch(/K8sPSPCapabilities\/drop-all: entry-removed/);
    expect(r.stdout).not.toContain('ALARM');
    expect(await policyState(kc, ns)).toEqual(before);
    expect(await protectedRecord(kc, ns)).toBeUndefined();
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

  it('restores from the protected record when the annotation was corrupted, raising an alarm', async () => {
    const { ns, before } = await relaxedNamespace(gone);
    await setRelaxationAnnotation(kc, ns, 'garbage');
    const r = await runasMigrate(['restore', '--namespace', ns]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${ns}: policies restored and verified from the protected record`);
    expect(r.stdout).toMatch(
      /ALARM: the runas-migrate.dev\/relaxation annotation was changed during the window/,
    );
    expect(await policyState(kc, ns)).toEqual(before);
    expect((await tamperEvents(kc, ns)).length).toBeGreaterThan(0);
  });

  it('refuses an annotation no protected record backs, and leaves it as evidence', async () => {
    const ns = await plainNamespace('tenant', { [PodSecurityLabel.Enforce]: 'baseline' });
    await setRelaxationAnnotation(kc, ns, JSON.stringify(forgedRecord(ns, [])));
    const before = await policyState(kc, ns);
    const r = await runasMigrate(['restore', '--namespace', ns]);
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(
      `${ns}: refused: namespace ${ns} carries the runas-migrate.dev/relaxation annotation`,
    );
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('names an unknown namespace and changes nothing', async () => {
    const r = await runasMigrate(['restore', '--namespace', 'no-such-namespace']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('namespace "no-such-namespace" not found');
  });
});

describe('the sweeper', () => {
  it('is scheduled by the worker, and sweeps each namespace on its own, reporting each', async () => {
    const schedule = await w.client.schedule.getHandle(sweeperScheduleId(taskQueue)).describe();
    expect(schedule.action).toMatchObject({ type: 'startWorkflow', workflowType: 'sweepRelaxations' });

    // The live runs' relaxations first, so the orphan's "before" already includes them.
    const owned = await relaxedNamespace(alive);
    const foreign = await relaxedNamespace(gone, elsewhere);
    // A tenant's annotation whose run ID Temporal would refuse to look up (InvalidArgument).
    const bad = await plainNamespace('bad', { [PodSecurityLabel.Enforce]: 'baseline' });
    await setRelaxationAnnotation(
      kc,
      bad,
      JSON.stringify(forgedRecord(bad, [], { workflowId: 'runas-migrate-bad', runId: 'not-a-uuid' })),
    );
    // A protected record that cannot be read (as if someone with rights on it had broken it).
    const broken = await plainNamespace('broken', { [PodSecurityLabel.Enforce]: 'restricted' });
    await core.createNamespacedConfigMap({
      namespace: DefaultRecordsNamespace,
      body: {
        metadata: {
          name: recordConfigMapName(broken),
          labels: {
            [RecordLabel.ManagedBy]: 'runas-migrate',
            [RecordLabel.Record]: 'relaxation',
            [RecordLabel.TargetNamespace]: broken,
          },
        },
        data: { [RecordDataKey.Namespace]: broken, [RecordDataKey.Record]: '{"version":2}' },
      },
    });
    cleanups.push(async () => {
      await core.deleteNamespacedConfigMap({
        namespace: DefaultRecordsNamespace,
        name: recordConfigMapName(broken),
      });
    });
    const orphan = await relaxedNamespace(gone);

    const report = await sweep();

    expect(outcomeOf(report, orphan.ns)).toEqual({
      namespace: orphan.ns,
      outcome: 'restored',
      owner: gone,
      alarms: [],
    });
    expect(outcomeOf(report, owned.ns)).toMatchObject({
      outcome: 'left',
      owner: alive,
      why: /still running/,
    });
    expect(outcomeOf(report, foreign.ns)).toMatchObject({
      outcome: 'left',
      owner: gone,
      why: /recorded by a run of Temporal namespace elsewhere/,
    });
    expect(outcomeOf(report, bad)).toMatchObject({ outcome: 'refused', why: /no protected record/ });
    expect(outcomeOf(report, broken)).toMatchObject({
      outcome: 'refused',
      why: new RegExp(`record ConfigMap runas-migrate/relaxation-${broken} is not a valid relaxation record`),
    });
    expect(report.temporalNamespace).toBe('default');

    expect(await policyState(kc, orphan.ns)).toEqual(orphan.before);
    for (const still of [owned.ns, foreign.ns]) {
      const s = await policyState(kc, still);
      expect(s.labels[PodSecurityLabel.Enforce]).toBe('baseline');
      expect(s.annotations[RelaxationAnnotation]).toBeDefined();
      expect(await protectedRecord(kc, still)).toBeDefined();
    }
    expect((await policyState(kc, bad)).annotations[RelaxationAnnotation]).toContain('not-a-uuid');
  });

  it("leaves another namespace's exclusions and every PSA label alone when a tenant forges a record aimed at them", async () => {
    // The tenant's "kube-system": every PSA label set, excluded by a constraint of its own.
    const victim = await plainNamespace('victim', {
      [PodSecurityLabel.Enforce]: 'baseline',
      [PodSecurityLabel.EnforceVersion]: 'v1.30',
      [PodSecurityLabel.Warn]: 'restricted',
      [PodSecurityLabel.WarnVersion]: 'latest',
      [PodSecurityLabel.Audit]: 'restricted',
      [PodSecurityLabel.AuditVersion]: 'latest',
    });
    const capabilities = {
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural: 'k8spspcapabilities',
    };
    const constraintName = uniqueName('c');
    await custom.createClusterCustomObject({
      ...capabilities,
      body: {
        apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
        kind: 'K8sPSPCapabilities',
        metadata: { name: constraintName },
        spec: { match: { namespaces: [victim], excludedNamespaces: [victim] } },
      },
    });
    cleanups.push(async () => {
      await custom.deleteClusterCustomObject({ ...capabilities, name: constraintName });
    });

    // The tenant may patch its own namespace's metadata, and writes the record that would make
    // the guard drop the victim's exclusions and give the tenant `privileged`.
    const tenant = await plainNamespace('tenant', { [PodSecurityLabel.Enforce]: 'baseline' });
    await setRelaxationAnnotation(
      kc,
      tenant,
      JSON.stringify(
        forgedRecord(victim, [
          { kind: 'K8sPSPCapabilities', plural: capabilities.plural, name: constraintName },
          { kind: 'K8sPSPCapabilities', plural: 'k8spspcapabilities', name: 'drop-all' },
          { kind: 'K8sPSPAllowedUsers', plural: 'k8spspallowedusers', name: 'allowed-user-ranges' },
        ]),
      ),
    );
    const victimBefore = await policyState(kc, victim);
    const tenantBefore = await policyState(kc, tenant);

    const reports = [await sweep(), await sweep()];

    expect(await policyState(kc, victim)).toEqual(victimBefore);
    // the forged annotation stays, as evidence
    expect(await policyState(kc, tenant)).toEqual(tenantBefore);
    for (const report of reports) {
      expect(outcomeOf(report, tenant)).toMatchObject({
        outcome: 'refused',
        why: /carries the runas-migrate.dev\/relaxation annotation but no protected record/,
      });
      expect(outcomeOf(report, victim)).toBeUndefined();
    }
    const [event] = await tamperEvents(kc, tenant);
    expect(event).toMatchObject({ type: 'Warning', reason: 'RelaxationRecordTampered' });
    expect(event!.count).toBeGreaterThanOrEqual(2);
  });
});
