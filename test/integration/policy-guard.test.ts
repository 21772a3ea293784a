/**
 * The policy guard against the test bed's real API server: relax then restore leaves the
 * namespace's labels and every constraint's spec exactly as they were, in every starting
 * situation; the relaxed window admits the migration pod and the restored one refuses it;
 * others' changes survive; an interrupted restore finishes on the next try; bad input changes
 * nothing; and nothing a tenant can write to its namespace (the relaxation annotation) makes
 * the guard change anything but what the run's own or the protected record says.
 */
import { typedFailureOf } from '../support/failures.js';
import {
  ApiextensionsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  Watch,
} from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kube } from '../../src/cluster/kube.js';
import { PodSecurityLabel, RelaxationAnnotation, type RunRef } from '../../src/core/policy.js';
import { recordConfigMapName } from '../../src/core/records.js';
import { connectClient } from '../../src/app/worker.js';
import { PolicyGuard } from '../../src/services/policy-guard.js';
import { Gatekeeper } from '../../testbed/fixture.js';
import { waitFor } from '../../testbed/process.js';
import { bed, createNamespace, kubeConfig, uniqueName } from '../support/bed.js';
import { rootPod } from '../support/pods.js';
import { policyState } from '../support/policy-state.js';
import {
  aliveRun,
  deleteProtectedRecord,
  forgedRecord,
  protectedRecord,
  setRelaxationAnnotation,
  tamperEvents,
} from '../support/records.js';
import { namespaceSnapshot, readyFixture, removeFixtures } from '../support/snapshot.js';

const kc = kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
const custom = kc.makeApiClient(CustomObjectsApi);
const cleanups: (() => Promise<void>)[] = [];
const guard = (kube = new Kube(kc), constraintGroup?: string, recordsNamespace?: string) =>
  new PolicyGuard({
    kube,
    ...(constraintGroup ? { constraintGroup } : {}),
    ...(recordsNamespace ? { recordsNamespace } : {}),
  });

// Runs that stay open, so that no sweeper on the shared bed takes these relaxations for orphans.
let owner: RunRef;
let otherOwner: RunRef;

beforeAll(async () => {
  const client = await connectClient({ address: bed().temporal.address });
  cleanups.push(() => client.connection.close());
  for (const set of [(r: RunRef) => (owner = r), (r: RunRef) => (otherOwner = r)]) {
    const run = await aliveRun(client);
    cleanups.push(run.end);
    set(run.owner);
  }
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

async function namespace(labels: Record<string, string> = {}): Promise<string> {
  const name = uniqueName('guard');
  const remove = await createNamespace(kc, name, labels);
  // A failed test must not leave the shared constraints excluding a deleted namespace.
  cleanups.push(async () => {
    await guard().restorePolicies({ namespace: name });
    await remove();
  });
  return name;
}

async function constraint(kind: 'K8sPSPCapabilities' | 'K8sPSPAllowedUsers', match: object): Promise<string> {
  const plural = Gatekeeper.kinds.find((k) => k.kind === kind)!.plural;
  const name = uniqueName('c');
  await custom.createClusterCustomObject({
    group: Gatekeeper.group,
    version: Gatekeeper.version,
    plural,
    body: {
      apiVersion: `${Gatekeeper.group}/${Gatekeeper.version}`,
      kind,
      metadata: { name },
      spec: { match },
    },
  });
  cleanups.push(async () => {
    await custom.deleteClusterCustomObject({
      group: Gatekeeper.group,
      version: Gatekeeper.version,
      plural,
      name,
    });
  });
  return name;
}

async function excludedNamespaces(plural: string, name: string): Promise<string[] | undefined> {
  const c = (await custom.getClusterCustomObject({
    group: Gatekeeper.group,
    version: Gatekeeper.version,
    plural,
    name,
  })) as {
    spec: { match: { excludedNamespaces?: string[] } };
  };
  return c.spec.match.excludedNamespaces;
}

describe('relax then restore leaves everything as it was', () => {
  const cases: [string, () => Promise<{ ns: string; expectEnforce: string | null }>][] = [
    ['PSA label absent', async () => ({ ns: await namespace(), expectEnforce: null })],
    [
      'label restricted with enforce-version, warn and audit',
      async () => ({
        ns: await namespace({
          [PodSecurityLabel.Enforce]: 'restricted',
          [PodSecurityLabel.EnforceVersion]: 'v1.30',
          [PodSecurityLabel.Warn]: 'restricted',
          [PodSecurityLabel.Audit]: 'restricted',
        }),
        expectEnforce: 'restricted',
      }),
    ],
  ];

  for (const [title, setup] of cases) {
    it(`${title}; drop-all (list with others) and allowed-user-ranges (no list)`, async () => {
      const { ns, expectEnforce } = await setup();
      const before = await policyState(kc, ns);
      const g = guard();

      const relaxed = await g.relaxPolicies({ namespace: ns, owner });
      const during = await policyState(kc, ns);
      expect(during.labels[PodSecurityLabel.Enforce]).toBe('baseline');
      expect(during.annotations[RelaxationAnnotation]).toBe(JSON.stringify(relaxed.record));
      expect(await protectedRecord(kc, ns)).toEqual(relaxed.record);
      expect(relaxed.record).toMatchObject({ version: 2, temporalNamespace: 'default', owner });
      expect(await excludedNamespaces('k8spspcapabilities', 'drop-all')).toContain(ns);
      expect(await excludedNamespaces('k8spspallowedusers', 'allowed-user-ranges')).toContain(ns);
      const action = (kind: string, name: string) =>
        (before.constraints[`${kind}/${name}`] as { match: object }).match;
      expect('excludedNamespaces' in action('K8sPSPCapabilities', 'drop-all')).toBe(true);
      expect('excludedNamespaces' in action('K8sPSPAllowedUsers', 'allowed-user-ranges')).toBe(false);
      expect(relaxed.record.plan.constraints.map((c) => `${c.ref.name}:${c.action}`)).toEqual(
        expect.arrayContaining(['drop-all:append', 'allowed-user-ranges:create']),
      );

      const report = await g.restorePolicies({ namespace: ns, owner });
      expect(report).toMatchObject({ restored: true, source: 'protected-record', alarms: [], refused: null });
      expect(report.keptForeignChanges).toEqual([]);
      const after = await policyState(kc, ns);
      expect(after).toEqual(before);
      expect(after.labels[PodSecurityLabel.Enforce] ?? null).toBe(expectEnforce);
      expect(await protectedRecord(kc, ns)).toBeUndefined();

      // reads the protected record, the namespace and the constraint kinds served (two discovery
      // calls, side by side with the reads), finds neither showing a relaxation
      const again = await g.restorePolicies({ namespace: ns, owner });
      expect(again).toMatchObject({ restored: false, alarms: [], refused: null, apiCalls: 4 });
      expect(await policyState(kc, ns)).toEqual(before);
    });
  }

  it('touches neither a constraint that already lists the namespace nor one whose glob excludes it', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const listed = await constraint('K8sPSPCapabilities', {
      namespaces: [ns],
      excludedNamespaces: ['kube-system', ns],
    });
    const globbed = await constraint('K8sPSPAllowedUsers', {
      namespaces: [ns],
      excludedNamespaces: [`${ns.split('-')[0]}-*`],
    });
    const before = await policyState(kc, ns);
    const g = guard();

    const relaxed = await g.relaxPolicies({ namespace: ns, owner });
    const planned = relaxed.record.plan.constraints.map((c) => c.ref.name);
    expect(planned).not.toContain(listed);
    expect(planned).not.toContain(globbed);
    expect(relaxed.record.snapshot.constraints.find((c) => c.ref.name === globbed)?.excludedBy).toBe(
      'guard-*',
    );
    const during = await policyState(kc, ns);
    expect(during.constraints[`K8sPSPCapabilities/${listed}`]).toEqual(
      before.constraints[`K8sPSPCapabilities/${listed}`],
    );
    expect(during.constraints[`K8sPSPAllowedUsers/${globbed}`]).toEqual(
      before.constraints[`K8sPSPAllowedUsers/${globbed}`],
    );

    await g.restorePolicies({ namespace: ns, owner });
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('relaxes PSA alone when Gatekeeper is not installed', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = await policyState(kc, ns);
    const g = guard(new Kube(kc), 'constraints.gatekeeper.absent.example');

    const relaxed = await g.relaxPolicies({ namespace: ns, owner });
    expect(relaxed.record.snapshot.constraints).toEqual([]);
    expect(relaxed.record.plan).toEqual({ podSecurityEnforce: 'baseline', constraints: [] });
    await g.restorePolicies({ namespace: ns, owner });
    expect(await policyState(kc, ns)).toEqual(before);
  });
});

describe('two runs interleaving', () => {
  it('leaves no empty list behind when the run that created it restores first', async () => {
    const first = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const second = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = (await policyState(kc, first)).constraints;
    const g = guard();
    await g.relaxPolicies({ namespace: first, owner });
    await g.relaxPolicies({ namespace: second, owner: otherOwner });
    expect(await excludedNamespaces('k8spspallowedusers', 'allowed-user-ranges')).toEqual([first, second]);

    await g.restorePolicies({ namespace: first, owner });
    expect(await excludedNamespaces('k8spspallowedusers', 'allowed-user-ranges')).toEqual([second]);
    const last = await g.restorePolicies({ namespace: second });
    expect(last.constraints).toContainEqual({
      constraint: 'K8sPSPAllowedUsers/allowed-user-ranges',
      result: 'list-removed',
    });
    expect((await policyState(kc, first)).constraints).toEqual(before);
  });
});

/**
 * One Kube per run, whose first patch of each constraint waits until every run has reached its
 * own: all read the same version and patch at once, so the API server refuses all but one
 * guarded patch (a failed JSON-Patch `test`) and the others read again. Counts the patches sent.
 */
function runsPatchingTogether(runs: number): { kubes: Kube[]; patches: () => number } {
  const arrived = new Map<string, { count: number; all: Promise<void>; open: () => void }>();
  let patches = 0;
  const kubes = Array.from({ length: runs }, () => {
    const gated = new Set<string>();
    return new (class extends Kube {
      override async jsonPatchClusterObject<T>(
        ...args: Parameters<Kube['jsonPatchClusterObject']>
      ): Promise<T> {
        const name = args[1];
        if (!gated.has(name)) {
          gated.add(name);
          let gate = arrived.get(name);
          if (!gate) {
            let open!: () => void;
            const all = new Promise<void>((r) => (open = r));
            arrived.set(name, (gate = { count: 0, all, open }));
          }
          if (++gate.count === runs) gate.open();
          await gate.all;
        }
        patches++;
        return super.jsonPatchClusterObject<T>(...args);
      }
    })(kc);
  });
  return { kubes, patches: () => patches };
}

describe('many runs at once', () => {
  it('six runs relaxing and restoring the same constraints in the same instant leave them exactly as they were, none reporting the others as foreign', async () => {
    const runs = 6;
    const names = await Promise.all(
      Array.from({ length: runs }, () => namespace({ [PodSecurityLabel.Enforce]: 'restricted' })),
    );
    const before = await Promise.all(names.map((ns) => policyState(kc, ns)));
    const ownerOf = (i: number) => (i % 2 ? owner : otherOwner);
    const sorted = (a: string[] | undefined) => [...(a ?? [])].sort();

    const relaxing = runsPatchingTogether(runs);
    await Promise.all(
      names.map((ns, i) => guard(relaxing.kubes[i]).relaxPolicies({ namespace: ns, owner: ownerOf(i) })),
    );
    expect(sorted(await excludedNamespaces('k8spspallowedusers', 'allowed-user-ranges'))).toEqual(
      sorted(names),
    );
    expect(sorted(await excludedNamespaces('k8spspcapabilities', 'drop-all'))).toEqual(
      expect.arrayContaining(sorted(names)),
    );
    // Two constraints, each patched once by every run and again by every run but the first.
    expect(relaxing.patches()).toBeGreaterThanOrEqual(2 * (2 * runs - 1));

    const restoring = runsPatchingTogether(runs);
    const reports = await Promise.all(
      names.map((ns, i) => guard(restoring.kubes[i]).restorePolicies({ namespace: ns, owner: ownerOf(i) })),
    );
    expect(reports.map((r) => [r.restored, r.alarms])).toEqual(names.map(() => [true, []]));
    // The other runs' exclusions are accounted for by their records: nothing is foreign.
    expect(reports.map((r) => r.keptForeignChanges)).toEqual(names.map(() => []));
    for (const [i, r] of reports.entries())
      for (const window of r.otherRuns ?? [])
        expect(
          names.filter((ns, k) => k !== i && window.endsWith(`: ${ns}`)),
          window,
        ).toHaveLength(1);
    expect(reports.some((r) => (r.otherRuns ?? []).length > 0)).toBe(true);
    expect(restoring.patches()).toBeGreaterThanOrEqual(2 * (2 * runs - 1));
    expect(await Promise.all(names.map((ns) => policyState(kc, ns)))).toEqual(before);
  });
});

describe('the window', () => {
  it('opens no later than its first relaxing write is seen, not after the last one', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    let listed = false;
    let relaxedSeenAt: number | undefined;
    const watching = await new Watch(kc).watch(
      '/api/v1/namespaces',
      { fieldSelector: `metadata.name=${ns}` },
      (type, n: { metadata?: { labels?: Record<string, string> } }) => {
        if (type === 'ADDED') listed = true;
        if (relaxedSeenAt === undefined && n.metadata?.labels?.[PodSecurityLabel.Enforce] === 'baseline')
          relaxedSeenAt = Date.now();
      },
      () => undefined,
    );
    try {
      await waitFor('the namespace watched', () => listed, 10_000, 10);
      const relaxed = await guard().relaxPolicies({ namespace: ns, owner });
      // Both constraints were excluded after the namespace's PSA label was relaxed.
      expect(relaxed.record.plan.constraints.length).toBeGreaterThan(0);
      const seenAt = await waitFor('the relaxed label seen', () => relaxedSeenAt, 10_000, 10);
      expect(Date.parse(relaxed.relaxedAt)).toBeLessThanOrEqual(seenAt);
    } finally {
      watching.abort();
      // The constraints are shared: later tests count the entries in them.
      await guard().restorePolicies({ namespace: ns, owner });
    }
  });

  it('admits the migration pod while relaxed; afterwards refuses a new one while the admitted one keeps running', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const g = guard();
    await expect(core.createNamespacedPod({ namespace: ns, body: rootPod('before') })).rejects.toMatchObject({
      code: 403,
    });

    await g.relaxPolicies({ namespace: ns, owner });
    await core.createNamespacedPod({ namespace: ns, body: rootPod('during') });
    await g.restorePolicies({ namespace: ns, owner });

    await expect(core.createNamespacedPod({ namespace: ns, body: rootPod('after') })).rejects.toMatchObject({
      code: 403,
    });
    const running = await waitFor(
      'admitted pod Running',
      async () => {
        const p = await core.readNamespacedPod({ name: 'during', namespace: ns });
        return p.status?.phase === 'Running' ? p : undefined;
      },
      30_000,
    );
    expect(running.metadata?.deletionTimestamp).toBeUndefined();
  });

  it('keeps a namespace someone else added to a constraint meanwhile, and reports it', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const other = uniqueName('someone-else');
    const before = await policyState(kc, ns);
    const g = guard();
    await g.relaxPolicies({ namespace: ns, owner });
    await custom.patchClusterCustomObject(
      {
        group: Gatekeeper.group,
        version: Gatekeeper.version,
        plural: 'k8spspcapabilities',
        name: 'drop-all',
        body: [{ op: 'add', path: '/spec/match/excludedNamespaces/-', value: other }],
      },
      setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
    );

    const report = await g.restorePolicies({ namespace: ns, owner });
    const list = await excludedNamespaces('k8spspcapabilities', 'drop-all');
    expect(list).toContain(other);
    expect(list).not.toContain(ns);
    expect(report.keptForeignChanges).toEqual([
      `K8sPSPCapabilities/drop-all: ${other} was added to excludedNamespaces by someone else`,
    ]);
    expect(report.otherRuns).toEqual([]);

    await custom.patchClusterCustomObject(
      {
        group: Gatekeeper.group,
        version: Gatekeeper.version,
        plural: 'k8spspcapabilities',
        name: 'drop-all',
        body: [
          { op: 'test', path: `/spec/match/excludedNamespaces/${list!.indexOf(other)}`, value: other },
          { op: 'remove', path: `/spec/match/excludedNamespaces/${list!.indexOf(other)}` },
        ],
      },
      setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
    );
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('finishes an interrupted restore on the next try', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = await policyState(kc, ns);
    await guard().relaxPolicies({ namespace: ns, owner });

    class InterruptedKube extends Kube {
      override async call<T>(
        verb: string,
        object: string,
        mutating: boolean,
        fn: () => Promise<T>,
      ): Promise<T> {
        if (mutating && this.counts.writes >= 1) throw new Error(`worker killed before ${verb} ${object}`);
        return super.call(verb, object, mutating, fn);
      }
    }
    const interrupted = new InterruptedKube(kc);
    await expect(guard(interrupted).restorePolicies({ namespace: ns, owner })).rejects.toThrow(
      /worker killed/,
    );
    expect(interrupted.counts.writes).toBe(1);
    const half = await policyState(kc, ns);
    expect(half.labels[PodSecurityLabel.Enforce]).toBe('restricted');
    expect(half.annotations[RelaxationAnnotation]).toBeDefined();
    expect(await protectedRecord(kc, ns)).toBeDefined();

    const report = await guard().restorePolicies({ namespace: ns, owner });
    expect(report.podSecurity).toBe('already-restored');
    expect(report.alarms).toEqual([]);
    expect(await policyState(kc, ns)).toEqual(before);
    expect(await protectedRecord(kc, ns)).toBeUndefined();
  });

  it('records the relaxation durably before applying it: killed at the first namespace write, the retry resumes', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = await policyState(kc, ns);
    class KilledAtNamespaceWrite extends Kube {
      override async call<T>(
        verb: string,
        object: string,
        mutating: boolean,
        fn: () => Promise<T>,
      ): Promise<T> {
        if (mutating && object.startsWith('namespace '))
          throw new Error(`worker killed before ${verb} ${object}`);
        return super.call(verb, object, mutating, fn);
      }
    }
    await expect(
      guard(new KilledAtNamespaceWrite(kc)).relaxPolicies({ namespace: ns, owner }),
    ).rejects.toThrow(/worker killed before patch namespace/);
    const recorded = await protectedRecord(kc, ns);
    expect(recorded).toMatchObject({ owner, snapshot: { namespace: ns } });
    expect(await policyState(kc, ns)).toEqual(before);

    const resumed = await guard().relaxPolicies({ namespace: ns, owner });
    expect(resumed.resumed).toBe(true);
    expect(resumed.record).toEqual(recorded);
    expect((await policyState(kc, ns)).annotations[RelaxationAnnotation]).toBe(JSON.stringify(recorded));
    await guard().restorePolicies({ namespace: ns, owner, record: resumed.record });
    expect(await policyState(kc, ns)).toEqual(before);
  });
});

describe('a namespace deleted during the window', () => {
  async function relaxedThenDeleted() {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = (await policyState(kc, ns)).constraints;
    const { record } = await guard().relaxPolicies({ namespace: ns, owner });
    await core.deleteNamespace({ name: ns });
    await waitFor(
      'namespace gone',
      () =>
        core.readNamespace({ name: ns }).then(
          () => false,
          () => true,
        ),
      60_000,
    );
    return { ns, before, record };
  }

  it('takes back its exclusions from the protected record, so a namesake is not exempt', async () => {
    const { ns, before } = await relaxedThenDeleted();
    const report = await guard().restorePolicies({ namespace: ns, owner });
    expect(report).toMatchObject({ restored: true, source: 'protected-record' });
    expect(await protectedRecord(kc, ns)).toBeUndefined();
    const after = (await policyState(kc, 'default')).constraints;
    expect(after).toEqual(before);
  });

  it("takes back its exclusions from the run's own copy when nothing else is left", async () => {
    const { ns, before, record } = await relaxedThenDeleted();
    await deleteProtectedRecord(kc, ns);
    const g = guard();
    expect((await g.restorePolicies({ namespace: ns, owner })).restored).toBe(false);
    const report = await g.restorePolicies({ namespace: ns, owner, record });
    expect(report).toMatchObject({ restored: true, source: 'run-copy' });
    // (in the order API discovery lists the kinds, which is not fixed)
    expect(Object.fromEntries(report.constraints.map((c) => [c.constraint, c.result]))).toEqual({
      'K8sPSPCapabilities/drop-all': 'entry-removed',
      'K8sPSPAllowedUsers/allowed-user-ranges': 'list-removed',
    });
    expect((await policyState(kc, 'default')).constraints).toEqual(before);
  });
});

describe('bad input changes nothing', () => {
  it('an unknown namespace: KubeNotFound, not retryable, naming it', async () => {
    const f = await typedFailureOf(guard().relaxPolicies({ namespace: 'no-such-namespace', owner }));
    expect(f.type).toBe('KubeNotFound');
    expect(f.retryable).toBe(false);
    expect(f.message).toContain('namespace "no-such-namespace" not found');
  });

  it('a constraint whose match is malformed: MalformedConstraint naming the field', async () => {
    const group = 'constraints.malformed.example';
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    await ext.createCustomResourceDefinition({
      body: {
        metadata: { name: `k8slooses.${group}` },
        spec: {
          group,
          scope: 'Cluster',
          names: { kind: 'K8sLoose', plural: 'k8slooses', singular: 'k8sloose', listKind: 'K8sLooseList' },
          versions: [
            {
              name: 'v1beta1',
              served: true,
              storage: true,
              schema: { openAPIV3Schema: { type: 'object', x_kubernetes_preserve_unknown_fields: true } },
            },
          ],
        },
      },
    });
    cleanups.push(async () => {
      await ext.deleteCustomResourceDefinition({ name: `k8slooses.${group}` });
    });
    await waitFor(
      'CRD established',
      async () =>
        (await ext.readCustomResourceDefinition({ name: `k8slooses.${group}` })).status?.conditions?.some(
          (c) => c.type === 'Established',
        ),
      30_000,
    );
    await waitFor(
      'constraint created',
      () =>
        custom.createClusterCustomObject({
          group,
          version: 'v1beta1',
          plural: 'k8slooses',
          body: {
            apiVersion: `${group}/v1beta1`,
            kind: 'K8sLoose',
            metadata: { name: 'broken' },
            spec: { match: { excludedNamespaces: 'itrs' } },
          },
        }),
      30_000,
    );
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = await policyState(kc, ns);

    const f = await typedFailureOf(guard(new Kube(kc), group).relaxPolicies({ namespace: ns, owner }));
    expect(f.type).toBe('MalformedConstraint');
    expect(f.retryable).toBe(false);
    expect(f.message).toMatch(
      /K8sLoose\/broken is malformed \(spec\.match\.excludedNamespaces: .*expected array/,
    );
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('a kubeconfig without the right to patch: KubeForbidden, nothing half-changed', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const sa = 'read-only';
    await core.createNamespacedServiceAccount({ namespace: ns, body: { metadata: { name: sa } } });
    const rbac = kc.makeApiClient(RbacAuthorizationV1Api);
    const roleName = `${ns}-read-only`;
    await rbac.createClusterRole({
      body: {
        metadata: { name: roleName },
        rules: [
          { apiGroups: [''], resources: ['namespaces'], verbs: ['get', 'list'] },
          { apiGroups: [Gatekeeper.group], resources: ['*'], verbs: ['get', 'list'] },
        ],
      },
    });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: roleName },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: roleName },
        subjects: [{ kind: 'ServiceAccount', name: sa, namespace: ns }],
      },
    });
    cleanups.push(async () => {
      await rbac.deleteClusterRoleBinding({ name: roleName });
      await rbac.deleteClusterRole({ name: roleName });
    });
    const token = await core.createNamespacedServiceAccountToken({
      name: sa,
      namespace: ns,
      body: { spec: { audiences: [], expirationSeconds: 600 } },
    });
    const limited = new KubeConfig();
    const cluster = kc.getCurrentCluster()!;
    limited.loadFromOptions({
      clusters: [cluster],
      users: [{ name: sa, token: token.status!.token }],
      contexts: [{ name: sa, cluster: cluster.name, user: sa }],
      currentContext: sa,
    });
    const before = await policyState(kc, ns);

    const f = await typedFailureOf(guard(new Kube(limited)).relaxPolicies({ namespace: ns, owner }));
    expect(f.type).toBe('KubeForbidden');
    expect(f.retryable).toBe(false);
    // the protected record is read first: without rights on it, nothing is even looked at
    expect(f.message).toContain(`forbidden to get ConfigMap "runas-migrate/${recordConfigMapName(ns)}"`);
    expect(await policyState(kc, ns)).toEqual(before);

    // Allowed to record but not to relax: the record does not outlive the refused attempt.
    const recordsRole = `${ns}-records`;
    await rbac.createNamespacedRole({
      namespace: 'runas-migrate',
      body: {
        metadata: { name: recordsRole },
        rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'create', 'update', 'delete'] }],
      },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: 'runas-migrate',
      body: {
        metadata: { name: recordsRole },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: recordsRole },
        subjects: [{ kind: 'ServiceAccount', name: sa, namespace: ns }],
      },
    });
    cleanups.push(async () => {
      await rbac.deleteNamespacedRoleBinding({ namespace: 'runas-migrate', name: recordsRole });
      await rbac.deleteNamespacedRole({ namespace: 'runas-migrate', name: recordsRole });
    });
    const g = await waitFor(
      'records Role in force',
      async () => {
        const again = await typedFailureOf(guard(new Kube(limited)).relaxPolicies({ namespace: ns, owner }));
        return again.message.includes('ConfigMap') ? undefined : again;
      },
      30_000,
    );
    expect(g.type).toBe('KubeForbidden');
    expect(g.message).toMatch(new RegExp(`forbidden to patch namespace "${ns}"`));
    expect(await protectedRecord(kc, ns)).toBeUndefined();
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('a records namespace that does not exist: RecordsNamespaceMissing, nothing changed', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const before = await policyState(kc, ns);
    const f = await typedFailureOf(
      guard(new Kube(kc), undefined, 'no-such-records').relaxPolicies({ namespace: ns, owner }),
    );
    expect(f.type).toBe('RecordsNamespaceMissing');
    expect(f.retryable).toBe(false);
    expect(f.message).toContain('RUNAS_MIGRATE_RECORDS_NAMESPACE');
    expect(await policyState(kc, ns)).toEqual(before);
  });

  it('a namespace already relaxed by another run: RelaxedByAnotherRun', async () => {
    const ns = await namespace({ [PodSecurityLabel.Enforce]: 'restricted' });
    const g = guard();
    await g.relaxPolicies({ namespace: ns, owner });
    const during = await policyState(kc, ns);
    const f = await typedFailureOf(g.relaxPolicies({ namespace: ns, owner: otherOwner }));
    expect(f.type).toBe('RelaxedByAnotherRun');
    expect(f.message).toContain(`runas-migrate restore --namespace ${ns}`);
    expect(await policyState(kc, ns)).toEqual(during);
    expect((await g.restorePolicies({ namespace: ns, owner: otherOwner })).restored).toBe(false);
    expect((await g.restorePolicies({ namespace: ns, owner })).restored).toBe(true);
  });
});

describe('trust nothing a tenant can write: the annotation is a beacon, not an authority', () => {
  // The tenant's "kube-system": a namespace with every PSA label set, that a constraint of its
  // own excludes. A forged record aims at both.
  let victim: string;
  let victimConstraint: string;
  // A full fixture namespace, relaxed and restored by each case in turn.
  let fixture: string;

  beforeAll(async () => {
    victim = await namespace({
      [PodSecurityLabel.Enforce]: 'baseline',
      [PodSecurityLabel.EnforceVersion]: 'v1.30',
      [PodSecurityLabel.Warn]: 'restricted',
      [PodSecurityLabel.WarnVersion]: 'latest',
      [PodSecurityLabel.Audit]: 'restricted',
      [PodSecurityLabel.AuditVersion]: 'latest',
    });
    // (matching only these tests' namespaces, so other runs on the bed do not plan it)
    victimConstraint = await constraint('K8sPSPCapabilities', {
      namespaces: [victim, 'tamper-*'],
      excludedNamespaces: [victim],
    });
    fixture = uniqueName('tamper');
    cleanups.push(() => removeFixtures(kc, [fixture]));
    await readyFixture(kc, fixture, bed().pvRoot);
  }, 300_000);

  const forgedAtVictim = (version: 1 | 2 = 1) =>
    JSON.stringify(
      forgedRecord(
        victim,
        [
          { kind: 'K8sPSPCapabilities', plural: 'k8spspcapabilities', name: victimConstraint },
          { kind: 'K8sPSPCapabilities', plural: 'k8spspcapabilities', name: 'drop-all' },
          { kind: 'K8sPSPAllowedUsers', plural: 'k8spspallowedusers', name: 'allowed-user-ranges' },
        ],
        undefined,
        version,
      ),
    );

  const cases: [string, (ns: string) => Promise<void>, RegExp[]][] = [
    [
      'the annotation is deleted',
      (ns) => setRelaxationAnnotation(kc, ns, null),
      [/annotation was removed while the policies were relaxed: restored from the run's copy/],
    ],
    [
      'the annotation is corrupted',
      (ns) => setRelaxationAnnotation(kc, ns, '{"version":2,"owner":'),
      [
        /annotation was changed during the window \(the annotation is not JSON\); it read: \{"version":2,"owner":/,
      ],
    ],
    [
      "the annotation is replaced by a forged record aimed at another namespace's exclusions",
      (ns) => setRelaxationAnnotation(kc, ns, forgedAtVictim()),
      [
        /annotation was changed during the window \(the annotation has format version 1; .*"namespace":"guard-\w+"/,
      ],
    ],
    [
      'the annotation is replaced by a forged record of the current format',
      (ns) => setRelaxationAnnotation(kc, ns, forgedAtVictim(2)),
      [
        /annotation was changed during the window \(the annotation is about namespace guard-\w+, not tamper-\w+\)/,
      ],
    ],
    [
      'the protected record is removed by someone else',
      (ns) => deleteProtectedRecord(kc, ns),
      [
        /the protected record runas-migrate\/relaxation-tamper-\w+ was removed while the policies were relaxed/,
      ],
    ],
    [
      'both the annotation and the protected record are removed',
      async (ns) => {
        await setRelaxationAnnotation(kc, ns, null);
        await deleteProtectedRecord(kc, ns);
      },
      [/annotation was removed while the policies were relaxed/, /protected record .* was removed/],
    ],
  ];

  for (const [title, tamper, alarms] of cases) {
    it(`${title} during the window: the run's copy restores everything, with an alarm`, async () => {
      const before = await namespaceSnapshot(kc, fixture, bed().pvRoot);
      const victimBefore = await policyState(kc, victim);
      const g = guard();
      const { record } = await g.relaxPolicies({ namespace: fixture, owner });
      expect(await protectedRecord(kc, fixture)).toEqual(record);

      await tamper(fixture);
      const report = await g.restorePolicies({ namespace: fixture, owner, record });

      expect(report).toMatchObject({
        restored: true,
        source: 'run-copy',
        refused: null,
        podSecurity: 'restored',
      });
      expect(report.alarms).toHaveLength(alarms.length);
      alarms.forEach((a, i) => expect(report.alarms[i]).toMatch(a));
      expect(await namespaceSnapshot(kc, fixture, bed().pvRoot)).toEqual(before);
      expect(await policyState(kc, victim)).toEqual(victimBefore);
      expect(await protectedRecord(kc, fixture)).toBeUndefined();
      const events = await tamperEvents(kc, fixture);
      expect(events.find((e) => alarms.every((a) => a.test(e.message ?? '')))).toMatchObject({
        type: 'Warning',
        reason: 'RelaxationRecordTampered',
        involvedObject: { kind: 'Namespace', name: fixture },
      });
    });
  }

  it('a forged annotation alone is refused, reported and left: nothing it names is touched', async () => {
    const tenant = await namespace({ [PodSecurityLabel.Enforce]: 'baseline' });
    const forged = forgedAtVictim(2).replace(`"namespace":"${victim}"`, `"namespace":"${tenant}"`);
    for (const value of [forgedAtVictim(), forged]) {
      await setRelaxationAnnotation(kc, tenant, value);
      const tenantBefore = await policyState(kc, tenant);
      const victimBefore = await policyState(kc, victim);
      const g = guard();

      const report = await g.restorePolicies({ namespace: tenant });
      expect(report).toMatchObject({
        restored: false,
        source: null,
        podSecurity: 'unchanged',
        constraints: [],
      });
      expect(report.refused).toMatch(
        /carries the runas-migrate.dev\/relaxation annotation but no protected record/,
      );
      expect(report.alarms).toEqual([report.refused]);

      const f = await typedFailureOf(g.relaxPolicies({ namespace: tenant, owner }));
      expect(f.type).toBe('UnverifiedRelaxationRecord');
      expect(f.retryable).toBe(false);

      expect(await policyState(kc, tenant)).toEqual(tenantBefore);
      expect(await policyState(kc, victim)).toEqual(victimBefore);
      expect(await protectedRecord(kc, tenant)).toBeUndefined();
    }
    expect((await tamperEvents(kc, tenant)).map((e) => e.type)).toContain('Warning');
  });
});
