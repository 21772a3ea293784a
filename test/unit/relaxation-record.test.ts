/**
 * A relaxation record is used only once it is valid for where it was found: its shape, its
 * namespace, its constraint references, its PSA values, its owner, and a plan that follows from
 * its snapshot. The protected ConfigMap must name the same namespace in its name, label and data.
 */
import { describe, expect, it } from 'vitest';
import {
  parseRelaxationRecord,
  parseRunCopy,
  PodSecurityLabel,
  RecordProblem,
  RelaxationRecordError,
  sameRecord,
  type RelaxationRecord,
} from '../../src/core/policy.js';
import {
  DefaultRecordsNamespace,
  parseRecordConfigMap,
  recordConfigMap,
  RecordLabel,
  recordsNamespaceOf,
  RecordsNamespaceEnv,
} from '../../src/core/records.js';

const ref = (kind: string, plural: string, name: string) => ({
  group: 'constraints.gatekeeper.sh',
  version: 'v1beta1',
  plural,
  kind,
  name,
});

/** A valid record of tenant-a: enforce restricted → baseline, one list appended, one created. */
function record(): RelaxationRecord {
  const capabilities = ref('K8sPSPCapabilities', 'k8spspcapabilities', 'drop-all');
  const users = ref('K8sPSPAllowedUsers', 'k8spspallowedusers', 'allowed-user-ranges');
  return {
    version: 2,
    temporalNamespace: 'default',
    owner: { workflowId: 'runas-migrate-tenant-a', runId: '7b0c3c64-5f1e-4b8e-9a4f-3d2b1c0e9f8a' },
    snapshot: {
      namespace: 'tenant-a',
      namespaceResourceVersion: '4711',
      takenAt: '2026-01-01T00:00:00.000Z',
      podSecurity: {
        [PodSecurityLabel.Enforce]: 'restricted',
        [PodSecurityLabel.EnforceVersion]: 'v1.30',
        [PodSecurityLabel.Warn]: 'restricted',
        [PodSecurityLabel.WarnVersion]: 'latest',
        [PodSecurityLabel.Audit]: null,
        [PodSecurityLabel.AuditVersion]: null,
      },
      constraints: [
        { ref: capabilities, resourceVersion: '12', excludedNamespaces: ['kube-system'], excludedBy: null },
        { ref: users, resourceVersion: '13', excludedNamespaces: null, excludedBy: null },
      ],
      skipped: [{ ref: ref('K8sPSPCapabilities', 'k8spspcapabilities', 'audit-only'), reason: 'dryrun' }],
    },
    plan: {
      podSecurityEnforce: 'baseline',
      constraints: [
        { ref: capabilities, action: 'append' },
        { ref: users, action: 'create' },
      ],
    },
  };
}

const at = { namespace: 'tenant-a' };

/** The problem a record (changed by `edit`) is refused for. */
function refusal(
  edit: (r: RelaxationRecord & Record<string, unknown>) => void,
  expected = at,
): RecordProblem {
  const r = record() as RelaxationRecord & Record<string, unknown>;
  edit(r);
  try {
    parseRelaxationRecord(JSON.stringify(r), expected);
  } catch (err) {
    expect(err).toBeInstanceOf(RelaxationRecordError);
    return (err as RelaxationRecordError).problem;
  }
  throw new Error('the record was accepted');
}

describe('parseRelaxationRecord', () => {
  it('accepts a valid record, as text or parsed', () => {
    expect(parseRelaxationRecord(JSON.stringify(record()), at)).toEqual(record());
    expect(parseRelaxationRecord(record(), at)).toEqual(record());
  });

  it('carries notAfter only as an ISO time', () => {
    const r = { ...record(), notAfter: '2026-12-01T10:00:00.000Z' };
    expect(parseRelaxationRecord(JSON.stringify(r), at).notAfter).toBe(r.notAfter);
    expect(
      refusal((x) => {
        x.notAfter = 'never';
      }),
    ).toBe(RecordProblem.Invalid);
  });

  it('refuses a record about another namespace than where it was found (the forged kube-system record)', () => {
    expect(
      refusal((r) => {
        r.snapshot.namespace = 'kube-system';
      }),
    ).toBe(RecordProblem.WrongNamespace);
    expect(() => parseRelaxationRecord(record(), { namespace: 'kube-system' })).toThrow(
      /is about namespace tenant-a, not kube-system/,
    );
  });

  it('refuses constraint references outside constraints.gatekeeper.sh, or malformed', () => {
    const problem = refusal((r) => {
      r.snapshot.constraints[0]!.ref.group = 'rbac.authorization.k8s.io';
      r.plan.constraints[0]!.ref.group = 'rbac.authorization.k8s.io';
    });
    expect(problem).toBe(RecordProblem.Invalid);
    expect(() =>
      parseRelaxationRecord(
        { ...record(), plan: { ...record().plan, constraints: [{ ref: { group: 'x' }, action: 'append' }] } },
        at,
      ),
    ).toThrow(/plan\.constraints\.0\.ref/);
    expect(
      refusal((r) => {
        r.snapshot.constraints[0]!.ref.kind = 'k8s psp';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.snapshot.constraints[0]!.ref.name = '../secrets';
      }),
    ).toBe(RecordProblem.Invalid);
    // the constraint group is what the guard is configured with, exactly
    expect(() =>
      parseRelaxationRecord(record(), { ...at, constraintGroup: 'constraints.example.com' }),
    ).toThrow(/must be exactly constraints\.example\.com/);
  });

  it('refuses PSA values other than privileged/baseline/restricted or absent, and malformed versions', () => {
    expect(
      refusal((r) => {
        r.snapshot.podSecurity[PodSecurityLabel.Enforce] = 'root';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.snapshot.podSecurity[PodSecurityLabel.EnforceVersion] = '1.30';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        (r.snapshot.podSecurity as Record<string, string | null>)['pod-security.kubernetes.io/exempt'] = 'x';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        delete (r.snapshot.podSecurity as Partial<Record<string, string | null>>)[PodSecurityLabel.Audit];
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        (r.plan as { podSecurityEnforce: string }).podSecurityEnforce = 'restricted';
      }),
    ).toBe(RecordProblem.Invalid);
  });

  it('refuses an owner that is not a bounded workflow ID and a UUID run ID', () => {
    expect(
      refusal((r) => {
        r.owner.runId = 'run-1';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.owner.workflowId = '';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.owner.workflowId = 'w'.repeat(1001);
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.owner.workflowId = 'a\nb';
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        r.temporalNamespace = '';
      }),
    ).toBe(RecordProblem.Invalid);
  });

  it('refuses unknown fields and other versions, naming the version', () => {
    expect(
      refusal((r) => {
        r.extra = true;
      }),
    ).toBe(RecordProblem.Invalid);
    expect(
      refusal((r) => {
        (r as { version: number }).version = 1;
      }),
    ).toBe(RecordProblem.UnsupportedVersion);
    expect(() => parseRelaxationRecord({ ...record(), version: 3 }, at)).toThrow(
      /format version 3; this version of runas-migrate acts only on version 2/,
    );
  });

  it('refuses a plan that does not follow from the snapshot', () => {
    // a constraint planned that the snapshot does not have
    expect(
      refusal((r) => {
        r.plan.constraints.push({
          ref: ref('K8sPSPCapabilities', 'k8spspcapabilities', 'other'),
          action: 'append',
        });
      }),
    ).toBe(RecordProblem.Inconsistent);
    // "create" for a list that existed
    expect(
      refusal((r) => {
        r.plan.constraints[0]!.action = 'create';
      }),
    ).toBe(RecordProblem.Inconsistent);
    // relaxing enforce that already admitted the pods
    expect(
      refusal((r) => {
        r.snapshot.podSecurity[PodSecurityLabel.Enforce] = 'baseline';
      }),
    ).toBe(RecordProblem.Inconsistent);
    // an exclusion the list does not contain
    expect(
      refusal((r) => {
        r.snapshot.constraints[0]!.excludedBy = 'tenant-*';
      }),
    ).toBe(RecordProblem.Inconsistent);
  });

  it('accepts a plan narrowed to the constraints that refused, in snapshot order, and nothing else', () => {
    for (const keep of [[0], [1], []]) {
      const r = record();
      r.plan.constraints = keep.map((i) => r.plan.constraints[i]!);
      expect(parseRelaxationRecord(r, at).plan.constraints).toHaveLength(keep.length);
    }
    // the same constraint twice
    expect(
      refusal((r) => {
        r.plan.constraints = [r.plan.constraints[0]!, r.plan.constraints[0]!];
      }),
    ).toBe(RecordProblem.Inconsistent);
    // out of snapshot order
    expect(
      refusal((r) => {
        r.plan.constraints.reverse();
      }),
    ).toBe(RecordProblem.Inconsistent);
  });

  it("upgrades a run's version 1 copy with the run's Temporal namespace, and compares records by content", () => {
    const { temporalNamespace: _, ...v1 } = { ...record(), version: 1 };
    expect(parseRunCopy(v1, at, 'payments')).toEqual({ ...record(), temporalNamespace: 'payments' });
    expect(() => parseRelaxationRecord(v1, at)).toThrow(RelaxationRecordError);
    const reverse = <T extends object>(o: T): T => Object.fromEntries(Object.entries(o).reverse()) as T;
    const r = record();
    const reordered = reverse({ ...r, snapshot: reverse(r.snapshot), plan: reverse(r.plan) });
    expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(r));
    expect(sameRecord(r, reordered)).toBe(true);
    expect(sameRecord(record(), { ...record(), temporalNamespace: 'other' })).toBe(false);
  });
});

describe('the protected record ConfigMap', () => {
  it('is named and labelled after its namespace and reads back', () => {
    const cm = recordConfigMap(record(), 'runas-migrate');
    expect(cm.metadata).toMatchObject({
      name: 'relaxation-tenant-a',
      namespace: 'runas-migrate',
      labels: { [RecordLabel.TargetNamespace]: 'tenant-a' },
    });
    const read = parseRecordConfigMap({
      ...cm,
      metadata: { ...cm.metadata, uid: 'u', resourceVersion: '9' },
    });
    expect(read.record).toEqual(record());
    expect(read.configMap).toEqual({ name: 'relaxation-tenant-a', uid: 'u', resourceVersion: '9' });
  });

  it('is refused when its name, label, data key and record do not all name the same namespace', () => {
    const cm = recordConfigMap(record(), 'runas-migrate');
    const renamed = { ...cm, metadata: { ...cm.metadata, name: 'relaxation-kube-system' } };
    expect(() => parseRecordConfigMap(renamed)).toThrow(
      /label runas-migrate\.dev\/target-namespace names tenant-a, not kube-system/,
    );
    const relabelled = {
      ...cm,
      metadata: { ...cm.metadata, labels: { ...cm.metadata!.labels, [RecordLabel.TargetNamespace]: 'x' } },
    };
    expect(() => parseRecordConfigMap(relabelled)).toThrow(RelaxationRecordError);
    const other = recordConfigMap(
      { ...record(), snapshot: { ...record().snapshot, namespace: 'kube-system' } },
      'r',
    );
    const swapped = { ...cm, data: { ...cm.data, 'record.json': other.data!['record.json']! } };
    expect(() => parseRecordConfigMap(swapped)).toThrow(/is about namespace kube-system, not tenant-a/);
    expect(() => parseRecordConfigMap(cm, { namespace: 'tenant-b' })).toThrow(/names tenant-a, not tenant-b/);
    expect(() => parseRecordConfigMap({ ...cm, data: { namespace: 'tenant-a' } })).toThrow(
      /has no record\.json/,
    );
  });

  it('lives in the records namespace: option, else the environment, else runas-migrate', () => {
    const saved = process.env[RecordsNamespaceEnv];
    try {
      delete process.env[RecordsNamespaceEnv];
      expect(recordsNamespaceOf()).toBe(DefaultRecordsNamespace);
      process.env[RecordsNamespaceEnv] = 'platform-ops';
      expect(recordsNamespaceOf()).toBe('platform-ops');
      expect(recordsNamespaceOf('mine')).toBe('mine');
    } finally {
      if (saved === undefined) delete process.env[RecordsNamespaceEnv];
      else process.env[RecordsNamespaceEnv] = saved;
    }
  });
});
