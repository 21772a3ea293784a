/**
 * Where relaxation records are kept with authority: one ConfigMap per target namespace in the
 * worker's own namespace, which tenants cannot write (RBAC). Pure: names, labels, the object
 * and its validation; the activities read and write it.
 */
import type { V1ConfigMap } from '@kubernetes/client-node';
import {
  parseRelaxationRecord,
  RecordProblem,
  RelaxationRecordError,
  type RecordExpectation,
  type RelaxationRecord,
} from './policy.js';

/** Environment variable naming the namespace of the protected records. */
export const RecordsNamespaceEnv = 'RUNAS_MIGRATE_RECORDS_NAMESPACE';

/** The protected records' namespace when nothing says otherwise: the worker's own (deploy/worker.yaml). */
export const DefaultRecordsNamespace = 'runas-migrate';

/** The records namespace: the option, else `$RUNAS_MIGRATE_RECORDS_NAMESPACE`, else `runas-migrate`. */
export function recordsNamespaceOf(option?: string): string {
  return option || process.env[RecordsNamespaceEnv] || DefaultRecordsNamespace;
}

/** Prefix of a record ConfigMap's name; the rest is the target namespace. */
export const RecordConfigMapPrefix = 'relaxation-';

/** Labels of a record ConfigMap. */
export const RecordLabel = {
  ManagedBy: 'app.kubernetes.io/managed-by',
  Record: 'runas-migrate.dev/record',
  TargetNamespace: 'runas-migrate.dev/target-namespace',
} as const;

/** Label selector of every record ConfigMap. */
export const RecordSelector = `${RecordLabel.ManagedBy}=runas-migrate,${RecordLabel.Record}=relaxation`;

/** The Warning Event raised on a Namespace whose relaxation record was tampered with. */
export const RecordAlarm = {
  Reason: 'RelaxationRecordTampered',
  /** Events about cluster-scoped objects such as a Namespace live in `default`. */
  EventNamespace: 'default',
} as const;

/** Keys of a record ConfigMap's data. */
export const RecordDataKey = {
  Namespace: 'namespace',
  Record: 'record.json',
} as const;

/** Name of the ConfigMap that holds the record of `namespace`. */
export function recordConfigMapName(namespace: string): string {
  return `${RecordConfigMapPrefix}${namespace}`;
}

/** The ConfigMap that holds a record (to create; `resourceVersion` to replace one). */
export function recordConfigMap(
  record: RelaxationRecord,
  recordsNamespace: string,
  resourceVersion?: string,
): V1ConfigMap {
  const namespace = record.snapshot.namespace;
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: recordConfigMapName(namespace),
      namespace: recordsNamespace,
      labels: {
        [RecordLabel.ManagedBy]: 'runas-migrate',
        [RecordLabel.Record]: 'relaxation',
        [RecordLabel.TargetNamespace]: namespace,
      },
      ...(resourceVersion ? { resourceVersion } : {}),
    },
    data: { [RecordDataKey.Namespace]: namespace, [RecordDataKey.Record]: JSON.stringify(record) },
  };
}

/** A record read from its ConfigMap, with what guards a later delete. */
export interface ProtectedRecord {
  record: RelaxationRecord;
  configMap: { name: string; uid: string; resourceVersion: string };
}

/** The target namespace a record ConfigMap claims by its name; null when the name is not a record's. */
export function targetOfConfigMap(cm: V1ConfigMap): string | null {
  const name = cm.metadata?.name ?? '';
  return name.startsWith(RecordConfigMapPrefix) ? name.slice(RecordConfigMapPrefix.length) : null;
}

/**
 * Validates a record ConfigMap: its name, label and `namespace` key all name the same target
 * namespace (and `expected.namespace`, when given), and its record is valid for it.
 *
 * @throws {@link RelaxationRecordError} naming the ConfigMap and the problem.
 */
export function parseRecordConfigMap(
  cm: V1ConfigMap,
  expected: Partial<RecordExpectation> = {},
): ProtectedRecord {
  const name = cm.metadata?.name ?? '?';
  const source = `record ConfigMap ${cm.metadata?.namespace ?? '?'}/${name}`;
  const target = targetOfConfigMap(cm);
  const claims = [
    ['its name', target],
    [`label ${RecordLabel.TargetNamespace}`, cm.metadata?.labels?.[RecordLabel.TargetNamespace] ?? null],
    [`key ${RecordDataKey.Namespace}`, cm.data?.[RecordDataKey.Namespace] ?? null],
  ] as const;
  const want = expected.namespace ?? target;
  if (!want)
    throw new RelaxationRecordError(
      RecordProblem.WrongNamespace,
      `${source}: its name is not ${RecordConfigMapPrefix}<namespace>`,
    );
  for (const [what, value] of claims) {
    if (value !== want) {
      throw new RelaxationRecordError(
        RecordProblem.WrongNamespace,
        `${source}: ${what} names ${value ?? '(nothing)'}, not ${want}`,
      );
    }
  }
  const text = cm.data?.[RecordDataKey.Record];
  if (text === undefined)
    throw new RelaxationRecordError(RecordProblem.Invalid, `${source} has no ${RecordDataKey.Record}`);
  return {
    record: parseRelaxationRecord(text, { ...expected, namespace: want, source }),
    configMap: {
      name,
      uid: cm.metadata?.uid ?? '',
      resourceVersion: cm.metadata?.resourceVersion ?? '',
    },
  };
}
