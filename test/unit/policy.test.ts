import { describe, expect, it } from 'vitest';
import {
  assessConstraint,
  dropRecordOps,
  excludeNamespaceOps,
  includeNamespaceOps,
  MalformedConstraintError,
  namespacePatternMatches,
  parseConstraint,
  parseRelaxationRecord,
  planRelaxation,
  PodSecurityLabel,
  podSecurityLabelsOf,
  relaxNamespacePatch,
  restorePodSecurityPatch,
  selectorMatches,
  CreatedListAnnotation,
  type ConstraintRef,
  type ConstraintView,
  type PolicySnapshot,
  type RelaxationRecord,
} from '../../src/core/policy.js';

const runId = '7b0c3c64-5f1e-4b8e-9a4f-3d2b1c0e9f8a';
const ref: ConstraintRef = {
  group: 'constraints.gatekeeper.sh',
  version: 'v1beta1',
  plural: 'k8spspcapabilities',
  kind: 'K8sPSPCapabilities',
  name: 'drop-all',
};
const constraint = (spec: object) =>
  parseConstraint('K8sPSPCapabilities', { metadata: { name: 'drop-all', resourceVersion: '7' }, spec });
const assess = (spec: object, labels: Record<string, string> = {}) =>
  assessConstraint(ref, constraint(spec), 'itrs', labels);

function snapshot(enforce: string | null, constraints: PolicySnapshot['constraints'] = []): PolicySnapshot {
  return {
    namespace: 'itrs',
    namespaceResourceVersion: '42',
    takenAt: '2026-01-01T00:00:00Z',
    podSecurity: { ...podSecurityLabelsOf({}), [PodSecurityLabel.Enforce]: enforce },
    constraints,
    skipped: [],
  };
}

describe('namespace patterns and selectors', () => {
  it('matches exact names and Gatekeeper prefix/suffix globs', () => {
    expect(namespacePatternMatches('itrs', 'itrs')).toBe(true);
    expect(namespacePatternMatches('it*', 'itrs')).toBe(true);
    expect(namespacePatternMatches('*rs', 'itrs')).toBe(true);
    expect(namespacePatternMatches('kube-*', 'itrs')).toBe(false);
  });

  it('evaluates matchLabels and every operator', () => {
    const labels = { env: 'prod', team: 'db' };
    expect(selectorMatches({ matchLabels: { env: 'prod' } }, labels)).toBe(true);
    expect(
      selectorMatches({ matchExpressions: [{ key: 'env', operator: 'In', values: ['dev'] }] }, labels),
    ).toBe(false);
    expect(
      selectorMatches({ matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['dev'] }] }, labels),
    ).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'team', operator: 'Exists' }] }, labels)).toBe(true);
    expect(selectorMatches({ matchExpressions: [{ key: 'team', operator: 'DoesNotExist' }] }, labels)).toBe(
      false,
    );
  });
});

describe('assessConstraint', () => {
  it('skips what does not refuse pods of the namespace, naming why', () => {
    const dryrun = assess({ enforcementAction: 'dryrun' });
    expect('skipped' in dryrun && dryrun.skipped.reason).toMatch(/dryrun/);
    expect(assess({ match: { kinds: [{ apiGroups: ['apps'], kinds: ['Deployment'] }] } })).toMatchObject({
      skipped: { reason: 'it does not match Pods' },
    });
    expect(assess({ match: { namespaces: ['other'] } })).toMatchObject({ skipped: {} });
    expect(assess({ match: { scope: 'Cluster' } })).toMatchObject({ skipped: {} });
    expect(
      assess({ match: { namespaceSelector: { matchLabels: { env: 'prod' } } } }, { env: 'dev' }),
    ).toMatchObject({ skipped: {} });
  });

  it('records the list as it was and the entry that already excludes the namespace', () => {
    expect(assess({ match: { excludedNamespaces: ['kube-system'] } })).toEqual({
      snapshot: { ref, resourceVersion: '7', excludedNamespaces: ['kube-system'], excludedBy: null },
    });
    expect(assess({ match: {} })).toMatchObject({ snapshot: { excludedNamespaces: null, excludedBy: null } });
    expect(assess({ match: { excludedNamespaces: ['i*'] } })).toMatchObject({
      snapshot: { excludedBy: 'i*' },
    });
    expect(
      assess({ enforcementAction: 'scoped', scopedEnforcementActions: [{ action: 'deny' }] }),
    ).toHaveProperty('snapshot');
  });

  it('refuses a malformed match, naming the constraint and the field', () => {
    expect(() => constraint({ match: { excludedNamespaces: 'itrs' } })).toThrow(MalformedConstraintError);
    expect(() => constraint({ match: { excludedNamespaces: 'itrs' } })).toThrow(
      /K8sPSPCapabilities\/drop-all is malformed \(spec\.match\.excludedNamespaces/,
    );
    expect(() =>
      constraint({ match: { namespaceSelector: { matchExpressions: [{ key: 'a', operator: 'Near' }] } } }),
    ).toThrow(/operator/);
  });
});

describe('planRelaxation', () => {
  it('relaxes enforce only when the current level would refuse the pods', () => {
    expect(planRelaxation(snapshot('restricted'), 'baseline').podSecurityEnforce).toBe('baseline');
    expect(planRelaxation(snapshot(null), 'baseline').podSecurityEnforce).toBe('baseline');
    expect(planRelaxation(snapshot('baseline'), 'baseline').podSecurityEnforce).toBeNull();
    expect(planRelaxation(snapshot('baseline'), 'privileged').podSecurityEnforce).toBe('privileged');
    expect(planRelaxation(snapshot('privileged'), 'baseline').podSecurityEnforce).toBeNull();
  });

  it('appends, creates, or leaves alone', () => {
    const plan = planRelaxation(
      snapshot('restricted', [
        { ref: { ...ref, name: 'a' }, resourceVersion: '1', excludedNamespaces: ['x'], excludedBy: null },
        { ref: { ...ref, name: 'b' }, resourceVersion: '1', excludedNamespaces: null, excludedBy: null },
        { ref: { ...ref, name: 'c' }, resourceVersion: '1', excludedNamespaces: ['i*'], excludedBy: 'i*' },
      ]),
      'baseline',
    );
    expect(plan.constraints.map((c) => [c.ref.name, c.action])).toEqual([
      ['a', 'append'],
      ['b', 'create'],
    ]);
  });
});

describe('patches', () => {
  const path = '/spec/match/excludedNamespaces';

  const view = (excludedNamespaces: string[] | null, more: Partial<ConstraintView> = {}): ConstraintView => ({
    resourceVersion: '5',
    excludedNamespaces,
    hasMatch: true,
    annotations: null,
    ...more,
  });
  const marker = '/metadata/annotations/runas-migrate.dev~1created-excluded-namespaces';

  it('excludes with a resourceVersion guard, creating and marking the list (or the match) when missing', () => {
    expect(excludeNamespaceOps('itrs', view(['a']))).toEqual([
      { op: 'test', path: '/metadata/resourceVersion', value: '5' },
      { op: 'add', path: `${path}/-`, value: 'itrs' },
    ]);
    expect(excludeNamespaceOps('itrs', view(null))).toEqual([
      { op: 'test', path: '/metadata/resourceVersion', value: '5' },
      { op: 'add', path, value: ['itrs'] },
      { op: 'add', path: '/metadata/annotations', value: { [CreatedListAnnotation]: 'true' } },
    ]);
    expect(
      excludeNamespaceOps('itrs', view(null, { hasMatch: false, annotations: { a: 'b' } }))?.slice(1),
    ).toEqual([
      { op: 'add', path: '/spec/match', value: { excludedNamespaces: ['itrs'] } },
      { op: 'add', path: marker, value: 'true' },
    ]);
    expect(excludeNamespaceOps('itrs', view(['itrs']))).toBeNull();
  });

  it('includes again by value with a test of the index; the last one out removes a created list', () => {
    expect(includeNamespaceOps('itrs', view(['a', 'itrs', 'b']))).toEqual([
      { op: 'test', path: `${path}/1`, value: 'itrs' },
      { op: 'remove', path: `${path}/1` },
    ]);
    const created = { annotations: { [CreatedListAnnotation]: 'true' } };
    expect(includeNamespaceOps('itrs', view(['itrs'], created))).toEqual([
      { op: 'test', path, value: ['itrs'] },
      { op: 'remove', path },
      { op: 'remove', path: marker },
    ]);
    // a created list is guarded whole, so concurrent removals cannot leave it empty
    expect(includeNamespaceOps('itrs', view(['itrs', 'other'], created))).toEqual([
      { op: 'test', path, value: ['itrs', 'other'] },
      { op: 'remove', path: `${path}/0` },
    ]);
    expect(includeNamespaceOps('itrs', view(['itrs']))?.[1]).toEqual({ op: 'remove', path: `${path}/0` });
    expect(includeNamespaceOps('itrs', view(['a']))).toBeNull();
    expect(includeNamespaceOps('itrs', view(null))).toBeNull();
  });

  it('records and relaxes in one guarded write, and restores absence as removal', () => {
    const record: RelaxationRecord = {
      version: 2,
      temporalNamespace: 'default',
      owner: { workflowId: 'w', runId: runId },
      snapshot: snapshot(null),
      plan: { podSecurityEnforce: 'baseline', constraints: [] },
    };
    const patch = relaxNamespacePatch(record) as {
      metadata: { resourceVersion: string; labels: object; annotations: Record<string, string> };
    };
    expect(patch.metadata.resourceVersion).toBe('42');
    expect(patch.metadata.labels).toEqual({ [PodSecurityLabel.Enforce]: 'baseline' });
    expect(
      parseRelaxationRecord(patch.metadata.annotations['runas-migrate.dev/relaxation']!, {
        namespace: 'itrs',
      }),
    ).toEqual(record);
    expect(restorePodSecurityPatch(record)).toEqual({
      metadata: { labels: { [PodSecurityLabel.Enforce]: null } },
    });
    expect(dropRecordOps('x')[0]).toEqual({
      op: 'test',
      path: '/metadata/annotations/runas-migrate.dev~1relaxation',
      value: 'x',
    });
  });

  it('refuses an annotation that is not a record', () => {
    expect(() => parseRelaxationRecord('{', { namespace: 'itrs' })).toThrow(/not JSON/);
    expect(() => parseRelaxationRecord('{"version":2}', { namespace: 'itrs' })).toThrow(
      /not a valid relaxation record/,
    );
  });
});
