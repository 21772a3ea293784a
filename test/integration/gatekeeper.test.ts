/**
 * Real Gatekeeper on the test bed, through the real API server: its webhook refuses the
 * migration pod while the constraints hold (naming them), admits it as soon as the guard's
 * relaxation returns (the guard waits until Gatekeeper has taken the patch in), refuses it again
 * as soon as the restore returns, and refuses pods whose new IDs fall outside the allowed ranges.
 * A Gatekeeper replica that never takes a patch in makes the relaxation fail before any Job,
 * and the restore say so; with the webhook down, `failurePolicy` decides: Fail refuses every
 * pod, Ignore admits every pod.
 */
import {
  AdmissionregistrationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type V1Pod,
} from '@kubernetes/client-node';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectClient } from '../../src/app/worker.js';
import { Kube } from '../../src/cluster/kube.js';
import { FailureType } from '../../src/core/failures.js';
import { PodSecurityLabel, RelaxationAnnotation, type RunRef } from '../../src/core/policy.js';
import { podOfJob } from '../../src/core/admission.js';
import { parseMigrationInput } from '../../src/core/input.js';
import { buildOwnershipJob, JobLabel } from '../../src/core/job.js';
import { OwnershipScript } from '../../src/services/ownership-script.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { Gatekeeper } from '../../testbed/fixture.js';
import { GatekeeperPod, webhookConfiguration } from '../../testbed/gatekeeper.js';
import { freePort } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { typedFailureOf } from '../support/failures.js';
import { rootPod } from '../support/pods.js';
import { aliveRun, protectedRecord, tamperEvents } from '../support/records.js';
import { podAdmissionPolicy } from '../support/admission-policy.js';
import { namespacePolicies } from '../support/policy-state.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const custom = kc.makeApiClient(CustomObjectsApi);
const admission = kc.makeApiClient(AdmissionregistrationV1Api);
const cleanups: (() => Promise<void>)[] = [];
const guard = (enforcementTimeoutMs?: number) =>
  new PolicyGuard({ kube: new Kube(kc), ...(enforcementTimeoutMs ? { enforcementTimeoutMs } : {}) });
let owner: RunRef;

beforeAll(async () => {
  const client = await connectClient({ address: bed().temporal.address });
  cleanups.push(() => client.connection.close());
  const run = await aliveRun(client);
  cleanups.push(run.end);
  owner = run.owner;
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

/** A namespace where only Gatekeeper judges pods (PSA privileged). */
async function namespace(labels: Record<string, string> = {}): Promise<string> {
  const name = uniqueName('gk');
  const remove = await createNamespace(kc, name, { [PodSecurityLabel.Enforce]: 'privileged', ...labels });
  cleanups.push(async () => {
    await guard(1000).restorePolicies({ namespace: name });
    await remove();
  });
  return name;
}

/** The Jobs of a window in `ns`: one, for replica 0 of a StatefulSet `pg`, to 5000:5000. */
const job = (ns: string) => ({
  run: {
    namespace: ns,
    uid: 5000,
    gid: 5000,
    job: parseMigrationInput({ namespace: ns, uid: 5000, gid: 5000 }).job,
  },
  targets: [
    {
      statefulSet: 'pg',
      ordinal: 0,
      image: 'postgres',
      volumes: [{ volume: 'data', claimName: 'data-pg-0', mountPath: '/var/lib/postgresql/data' }],
    },
  ],
});
const jobPod = (ns: string) =>
  podOfJob(buildOwnershipJob(job(ns).run, job(ns).targets[0]!, owner, OwnershipScript));

/** A database pod with the given IDs, dropping every capability. */
const databasePod = (name: string, id: number): V1Pod => ({
  metadata: { name },
  spec: {
    securityContext: { runAsUser: id, runAsGroup: id, fsGroup: id, supplementalGroups: [id] },
    containers: [
      {
        name: 'postgres',
        image: 'postgres',
        securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
      },
    ],
  },
});

/** A K8sPSPPrivilegedContainer constraint of its own for namespace `ns`; deleted after the tests. */
async function privilegedConstraint(ns: string, prefix: string): Promise<string> {
  const name = uniqueName(prefix);
  const kind = { group: Gatekeeper.group, version: Gatekeeper.version, plural: 'k8spspprivilegedcontainer' };
  await custom.createClusterCustomObject({
    ...kind,
    body: {
      apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
      kind: 'K8sPSPPrivilegedContainer',
      metadata: { name },
      spec: { match: { kinds: [{ apiGroups: [''], kinds: ['Pod'] }], namespaces: [ns] } },
    },
  });
  cleanups.push(() => custom.deleteClusterCustomObject({ ...kind, name }).then(() => undefined));
  return name;
}

/** Asks the whole admission chain about a pod without creating it; the refusal text, or null. */
async function refusal(ns: string, pod: V1Pod): Promise<string | null> {
  try {
    await core.createNamespacedPod({ namespace: ns, body: pod, dryRun: 'All' });
    return null;
  } catch (err) {
    const e = err as { code?: number; body?: string };
    if (e.code === undefined) throw err;
    return `${e.code}: ${(JSON.parse(e.body ?? '{}') as { message?: string }).message ?? e.body}`;
  }
}

describe('Gatekeeper on the bed', () => {
  it('refuses the migration pod naming each constraint, admits it once relaxPolicies returns, refuses it once restorePolicies returns', async () => {
    const ns = await namespace();
    const before = await refusal(ns, rootPod('before'));
    expect(before).toMatch(/^403: admission webhook "validation.gatekeeper.sh" denied the request/);
    expect(before).toContain(
      '[drop-all] container <fix-ownership> adds capabilities ["CHOWN", "DAC_OVERRIDE", "FOWNER"]',
    );
    expect(before).toContain(
      '[allowed-user-ranges] container <fix-ownership> runs with runAsUser 0, outside the allowed ranges 1000-65535',
    );

    const g = guard();
    const relaxed = await g.relaxPolicies({ namespace: ns, owner });
    // No retry: the guard returned only once Gatekeeper had taken the exclusion in.
    expect(await refusal(ns, rootPod('during'))).toBeNull();
    expect(relaxed.enforcement.map((e) => [e.constraint, e.state])).toEqual(
      expect.arrayContaining([
        ['K8sPSPCapabilities/drop-all', 'enforced'],
        ['K8sPSPAllowedUsers/allowed-user-ranges', 'enforced'],
      ]),
    );

    const report = await g.restorePolicies({ namespace: ns, owner });
    expect(await refusal(ns, rootPod('after'))).toContain('[drop-all]');
    expect(report.enforcement.every((e) => e.state === 'enforced')).toBe(true);
    expect(Date.parse(report.enforcedAt)).toBeGreaterThanOrEqual(Date.parse(report.restoredAt));
    console.log(
      `patch to enforcement: relax ${relaxed.enforcement.map((e) => `${e.constraint} ${e.ms} ms`).join(', ')}; ` +
        `restore ${report.enforcement.map((e) => `${e.constraint} ${e.ms} ms`).join(', ')}`,
    );
  });

  it('a pod admitted during the window can still be cleaned up after the restore: updates are not judged', async () => {
    const ns = await namespace();
    const g = guard();
    await g.relaxPolicies({ namespace: ns, owner });
    const pod = rootPod('admitted');
    // What the Job controller puts on its pods and takes off (a pod UPDATE) before they can go.
    pod.metadata!.finalizers = ['batch.kubernetes.io/job-tracking'];
    pod.spec!.nodeSelector = { 'runas-migrate.dev/no-such-node': 'true' };
    await core.createNamespacedPod({ namespace: ns, body: pod });
    await g.restorePolicies({ namespace: ns, owner });
    expect(await refusal(ns, rootPod('new'))).toContain('[drop-all]');
    await core.patchNamespacedPod(
      {
        name: 'admitted',
        namespace: ns,
        body: { metadata: { finalizers: null, labels: { cleaned: 'up' } } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    await core.deleteNamespacedPod({ name: 'admitted', namespace: ns, gracePeriodSeconds: 0 });
    await expect
      .poll(
        () =>
          core.readNamespacedPod({ name: 'admitted', namespace: ns }).then(
            () => 'there',
            () => 'gone',
          ),
        {
          timeout: 30_000,
        },
      )
      .toBe('gone');
  });

  it('after the restore, refuses a database pod whose new IDs fall outside the allowed ranges', async () => {
    const ns = await namespace();
    const g = guard();
    await g.relaxPolicies({ namespace: ns, owner });
    expect(await refusal(ns, databasePod('relaxed', 500))).toBeNull();
    await g.restorePolicies({ namespace: ns, owner });
    const after = await refusal(ns, databasePod('restored', 500));
    expect(after).toContain('[allowed-user-ranges] container <postgres> runs with runAsUser 500');
    expect(after).toContain('[allowed-user-ranges] the pod runs with fsGroup 500');
    expect(after).toContain('[allowed-user-ranges] the pod runs with supplementalGroups 500');
    expect(await refusal(ns, databasePod('in-range', 65000))).toBeNull();
  });

  it("a third kind from this project's templates: a privileged container is refused", async () => {
    const ns = await namespace();
    const name = await privilegedConstraint(ns, 'no-privileged');
    const pod = databasePod('privileged', 2000);
    pod.spec!.containers[0]!.securityContext = { privileged: true, capabilities: { drop: ['ALL'] } };
    await expect
      .poll(() => refusal(ns, pod), { timeout: 30_000, interval: 200 })
      .toContain(`[${name}] privileged container <postgres> is not allowed`);
    expect(await refusal(ns, databasePod('plain', 2000))).toBeNull();
  });
});

describe('relaxing only what refuses the Job pods', () => {
  const excludedBy = async (plural: string, name: string) =>
    (
      (await custom.getClusterCustomObject({
        group: Gatekeeper.group,
        version: Gatekeeper.version,
        plural,
        name,
      })) as {
        spec?: { match?: { excludedNamespaces?: string[] } };
      }
    ).spec?.match?.excludedNamespaces ?? null;
  const labelsOf = async (ns: string) => (await core.readNamespace({ name: ns })).metadata?.labels ?? {};

  /** A ValidatingAdmissionPolicy refusing runas-migrate's pods in `ns`: something the guard cannot relax. */
  async function refuseOwnershipPods(ns: string): Promise<string> {
    const name = uniqueName('no-root-jobs');
    cleanups.push(
      await podAdmissionPolicy(
        kc,
        name,
        ns,
        `!has(object.metadata.labels) || !('${JobLabel.ManagedBy}' in object.metadata.labels)`,
        'ownership changes go through the platform team here',
      ),
    );
    // The policy is in force once it refuses the Job's pod.
    await expect.poll(() => refusal(ns, jobPod(ns)), { timeout: 30_000, interval: 200 }).toContain(name);
    return name;
  }

  it('PSA refusing first: relaxes PSA, asks again, excludes the namespace from exactly the constraints Gatekeeper names; record and restore follow', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const left = await privilegedConstraint(ns, 'admits-jobs');
    const relaxed = await guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) });
    const a = relaxed.admission!;
    expect(a.refusals[0]).toMatch(
      /^pod-security: pods is forbidden: violates PodSecurity "restricted:latest"/,
    );
    expect(a.refusals[1]).toMatch(
      /^gatekeeper: admission webhook "validation.gatekeeper.sh" denied the request: .*\[drop-all\]/s,
    );
    expect(a.relaxed.sort()).toEqual([
      'K8sPSPAllowedUsers/allowed-user-ranges',
      'K8sPSPCapabilities/drop-all',
    ]);
    expect(a.leftEnforced).toEqual([`K8sPSPPrivilegedContainer/${left}`]);
    expect(a.admittedAt).not.toBeNull();
    // The record covers exactly what was relaxed, in both copies.
    expect(relaxed.record.plan.podSecurityEnforce).toBe('baseline');
    expect(relaxed.record.plan.constraints.map((c) => c.ref.name).sort()).toEqual([
      'allowed-user-ranges',
      'drop-all',
    ]);
    expect(relaxed.record.snapshot.constraints.map((c) => c.ref.name)).toContain(left);
    expect(await protectedRecord(kc, ns)).toEqual(relaxed.record);
    expect((await core.readNamespace({ name: ns })).metadata?.annotations?.[RelaxationAnnotation]).toBe(
      JSON.stringify(relaxed.record),
    );
    expect(await excludedBy('k8spspprivilegedcontainer', left)).toBeNull();
    expect(await refusal(ns, jobPod(ns))).toBeNull();

    const report = await guard().restorePolicies({ namespace: ns, owner, record: relaxed.record });
    expect(report.alarms).toEqual([]);
    expect(report.constraints.map((c) => c.constraint).sort()).toEqual(a.relaxed);
    expect((await labelsOf(ns))[PodSecurityLabel.Enforce]).toBe('restricted');
    expect(await refusal(ns, jobPod(ns))).toMatch(/violates PodSecurity/);
    expect(await protectedRecord(kc, ns)).toBeUndefined();
  });

  it('PSA admitting: Gatekeeper is asked before any change, and PSA is left alone', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'baseline' });
    const relaxed = await guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) });
    expect(relaxed.record.plan.podSecurityEnforce).toBeNull();
    expect(relaxed.admission!.refusals.every((r) => r.startsWith('gatekeeper: '))).toBe(true);
    expect((await labelsOf(ns))[PodSecurityLabel.Enforce]).toBe('baseline');
    expect(await refusal(ns, jobPod(ns))).toBeNull();
    const report = await guard().restorePolicies({ namespace: ns, owner, record: relaxed.record });
    expect(report.podSecurity).toBe('unchanged');
    expect(await refusal(ns, jobPod(ns))).toContain('[drop-all]');
  });

  it('a refusal the guard cannot relax (a ValidatingAdmissionPolicy), PSA admitting: fails before any change, naming it', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'baseline' });
    const policy = await refuseOwnershipPods(ns);
    const before = await core.readNamespace({ name: ns });
    const failure = await typedFailureOf(guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) }));
    expect(failure.type).toBe(FailureType.AdmissionRefused);
    expect(failure.retryable).toBe(false);
    expect(failure.message).toMatch(
      new RegExp(
        `refused by something runas-migrate does not relax: .*ValidatingAdmissionPolicy '${policy}'.*platform team.*nothing was changed`,
      ),
    );
    const after = await core.readNamespace({ name: ns });
    expect(after.metadata?.resourceVersion).toBe(before.metadata?.resourceVersion);
    expect(await protectedRecord(kc, ns)).toBeUndefined();
    expect(await excludedBy('k8spspcapabilities', 'drop-all')).not.toContain(ns);
  });

  it('the same behind PSA: found once PSA is relaxed, the step fails naming it, and the restore puts PSA back', async () => {
    // In force first (asked while PSA admits the pods), then PSA put in front of it.
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'baseline' });
    const policy = await refuseOwnershipPods(ns);
    await core.patchNamespace(
      { name: ns, body: { metadata: { labels: { [PodSecurityLabel.Enforce]: 'restricted' } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    const failure = await typedFailureOf(guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) }));
    expect(failure.type).toBe(FailureType.AdmissionRefused);
    expect(failure.message).toContain(`ValidatingAdmissionPolicy '${policy}'`);
    // Only PSA was relaxed, and the record says no more than that.
    const record = await protectedRecord(kc, ns);
    expect(record?.plan.podSecurityEnforce).toBe('baseline');
    expect(await excludedBy('k8spspcapabilities', 'drop-all')).not.toContain(ns);
    const report = await guard().restorePolicies({ namespace: ns, owner });
    expect(report.restored).toBe(true);
    expect(report.alarms).toEqual([]);
    expect((await labelsOf(ns))[PodSecurityLabel.Enforce]).toBe('restricted');
  });
});

describe('a relaxation stopped half-way resumes from its protected record', () => {
  /**
   * A guard whose step stops (as a killed worker's would) at the first call `stopAt` picks: that
   * call and every one after it, side by side or later, never reach the API server.
   */
  function stoppingGuard(stopAt: (method: string, args: unknown[]) => boolean) {
    const kube = new Kube(kc);
    let stopped = false;
    const proxied = new Proxy(kube, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          if (stopped || stopAt(String(prop), args)) {
            stopped = true;
            return Promise.reject(new Error(`the worker died before ${String(prop)}`));
          }
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    return new PolicyGuard({ kube: proxied });
  }
  it('stopped before its first constraint patch: the retry asks again and relaxes exactly what refuses', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const left = await privilegedConstraint(ns, 'resume-left');
    const before = await namespacePolicies(kc, ns);
    const stopping = stoppingGuard((method) => method === 'jsonPatchClusterObject');
    await expect(stopping.relaxPolicies({ namespace: ns, owner, jobs: job(ns) })).rejects.toThrow(
      /worker died/,
    );
    // PSA relaxed, the record narrowed to the two that refuse, no constraint patched yet.
    const halfway = await protectedRecord(kc, ns);
    expect(halfway?.plan.constraints.map((c) => c.ref.name).sort()).toEqual([
      'allowed-user-ranges',
      'drop-all',
    ]);
    expect((await namespacePolicies(kc, ns)).excludedBy).toEqual([]);

    const resumed = await guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) });
    expect(resumed.resumed).toBe(true);
    expect(resumed.admission?.relaxed.sort()).toEqual([
      'K8sPSPAllowedUsers/allowed-user-ranges',
      'K8sPSPCapabilities/drop-all',
    ]);
    expect(resumed.admission?.leftEnforced).toEqual([`K8sPSPPrivilegedContainer/${left}`]);
    expect(await protectedRecord(kc, ns)).toEqual(resumed.record);
    const report = await guard().restorePolicies({ namespace: ns, owner, record: resumed.record });
    expect(report.alarms).toEqual([]);
    expect(await namespacePolicies(kc, ns)).toEqual(before);
  });

  it('stopped between the two writes of a narrowing: no tamper alarm, the annotation catches up', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    await privilegedConstraint(ns, 'narrowed-away');
    const before = await namespacePolicies(kc, ns);
    // The narrowing writes the protected record, then the annotation alone.
    const stopping = stoppingGuard((method, args) => {
      const m = (
        args[1] as { metadata?: { resourceVersion?: string; labels?: object; annotations?: object } }
      )?.metadata;
      return (
        method === 'patchNamespace' &&
        m?.resourceVersion === undefined &&
        m?.labels === undefined &&
        RelaxationAnnotation in (m?.annotations ?? {})
      );
    });
    await expect(stopping.relaxPolicies({ namespace: ns, owner, jobs: job(ns) })).rejects.toThrow(
      /worker died/,
    );
    const shown = (await core.readNamespace({ name: ns })).metadata?.annotations?.[RelaxationAnnotation];
    expect(shown).not.toBe(JSON.stringify(await protectedRecord(kc, ns)));

    const resumed = await guard().relaxPolicies({ namespace: ns, owner, jobs: job(ns) });
    expect((await core.readNamespace({ name: ns })).metadata?.annotations?.[RelaxationAnnotation]).toBe(
      JSON.stringify(resumed.record),
    );
    const report = await guard().restorePolicies({ namespace: ns, owner, record: resumed.record });
    expect(report.alarms).toEqual([]);
    expect(await tamperEvents(kc, ns)).toEqual([]);
    expect(await namespacePolicies(kc, ns)).toEqual(before);
  });
});

describe('when Gatekeeper does not take a patch in', () => {
  /** A constraint of its own, and a second Gatekeeper replica stuck at its first generation. */
  async function stuckReplica(ns: string): Promise<string> {
    const name = await privilegedConstraint(ns, 'stuck');
    const created = (await custom.getClusterCustomObject({
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural: 'k8spspprivilegedcontainer',
      name,
    })) as { metadata: { uid: string } };
    // What a hung replica leaves behind: its ConstraintPodStatus, which Gatekeeper's status
    // operation folds into the constraint's status.byPod, never moving past generation 1.
    const statusName = `gatekeeper--stuck-k8spspprivilegedcontainer-${name}`;
    await custom.createNamespacedCustomObject({
      group: 'status.gatekeeper.sh',
      version: 'v1beta1',
      namespace: GatekeeperPod.namespace,
      plural: 'constraintpodstatuses',
      body: {
        apiVersion: 'status.gatekeeper.sh/v1beta1',
        kind: 'ConstraintPodStatus',
        metadata: {
          name: statusName,
          labels: {
            'internal.gatekeeper.sh/constraint-name': name,
            'internal.gatekeeper.sh/constraint-kind': 'K8sPSPPrivilegedContainer',
            'internal.gatekeeper.sh/pod': 'gatekeeper-stuck',
            'internal.gatekeeper.sh/constrainttemplate-name': 'k8spspprivilegedcontainer',
          },
        },
        status: {
          id: 'gatekeeper-stuck',
          constraintUID: created.metadata.uid,
          operations: ['webhook'],
          observedGeneration: 1,
          enforced: true,
        },
      },
    });
    cleanups.push(() =>
      custom
        .deleteNamespacedCustomObject({
          group: 'status.gatekeeper.sh',
          version: 'v1beta1',
          namespace: GatekeeperPod.namespace,
          plural: 'constraintpodstatuses',
          name: statusName,
        })
        .then(() => undefined),
    );
    await expect
      .poll(
        async () => {
          const c = (await custom.getClusterCustomObject({
            group: Gatekeeper.group,
            version: Gatekeeper.version,
            plural: 'k8spspprivilegedcontainer',
            name,
          })) as { status?: { byPod?: { id: string }[] } };
          return (c.status?.byPod ?? []).map((p) => p.id).sort();
        },
        { timeout: 30_000, interval: 200 },
      )
      .toEqual([GatekeeperPod.name, 'gatekeeper-stuck']);
    return name;
  }

  it('relaxPolicies fails before any Job, naming the replica; the restore puts everything back and raises an alarm', async () => {
    const ns = await namespace();
    const name = await stuckReplica(ns);
    const g = guard(3000);
    const typed = await typedFailureOf(g.relaxPolicies({ namespace: ns, owner }));
    expect(typed.type).toBe(FailureType.EnforcementNotConfirmed);
    expect(typed.message).toContain(`K8sPSPPrivilegedContainer/${name}`);
    expect(typed.message).toContain('gatekeeper-stuck at generation 1 of 2');

    const report = await g.restorePolicies({ namespace: ns, owner });
    expect(report.restored).toBe(true);
    expect(report.enforcement.find((e) => e.constraint === `K8sPSPPrivilegedContainer/${name}`)?.state).toBe(
      'unconfirmed',
    );
    expect(report.enforcement.find((e) => e.constraint === 'K8sPSPCapabilities/drop-all')?.state).toBe(
      'enforced',
    );
    expect(report.alarms.join('\n')).toContain(
      `Gatekeeper has not enforced the restored K8sPSPPrivilegedContainer/${name}`,
    );
    expect(report.enforcedAt).toBe(report.restoredAt);
    expect(await refusal(ns, rootPod('after'))).toContain('[drop-all]');
  });
});

describe('with the webhook down, failurePolicy decides', () => {
  /** A second webhook for this namespace only, pointing at a port where nothing listens. */
  async function downWebhook(ns: string, failurePolicy: 'Fail' | 'Ignore'): Promise<void> {
    const name = uniqueName(`down-${failurePolicy.toLowerCase()}`);
    const config = webhookConfiguration(
      { port: await freePort(), failurePolicy },
      readFileSync(join(bed().gatekeeper!.dir, 'certs', 'ca.crt'), 'utf8'),
      name,
    );
    config.webhooks![0]!.namespaceSelector = { matchLabels: { 'kubernetes.io/metadata.name': ns } };
    await admission.createValidatingWebhookConfiguration({ body: config });
    cleanups.push(() => admission.deleteValidatingWebhookConfiguration({ name }).then(() => undefined));
  }

  it('Fail: every pod is refused, relaxed or not, naming the webhook; the database pods too', async () => {
    const ns = await namespace();
    await downWebhook(ns, 'Fail');
    await expect
      .poll(() => refusal(ns, databasePod('db', 2000)), { timeout: 30_000, interval: 200 })
      .toMatch(
        /^500: Internal error occurred: failed calling webhook "validation.gatekeeper.sh".*connection refused/,
      );
    const g = guard();
    await g.relaxPolicies({ namespace: ns, owner });
    expect(await refusal(ns, rootPod('during'))).toMatch(/failed calling webhook "validation.gatekeeper.sh"/);
    await g.restorePolicies({ namespace: ns, owner });
  });

  it('Ignore: the down webhook lets every pod through; the running Gatekeeper still judges them', async () => {
    const ns = await namespace();
    await downWebhook(ns, 'Ignore');
    // Both webhooks are asked: the down one is ignored, the real one still refuses.
    expect(await refusal(ns, rootPod('before'))).toContain('[drop-all]');
    expect(await refusal(ns, databasePod('db', 2000))).toBeNull();
  });
});
