/**
 * Helpers for the tests of the policy guard's trust model: the protected record of a namespace,
 * the tamper alarms raised about it, what a tenant can do to a namespace's annotation, a forged
 * record, and a run that stays alive (so no sweeper takes its relaxation for an orphan).
 */
import { randomUUID } from 'node:crypto';
import {
  CoreV1Api,
  PatchStrategy,
  setHeaderOptions,
  type CoreV1Event,
  type KubeConfig,
} from '@kubernetes/client-node';
import type { Client } from '@temporalio/client';
import {
  PodSecurityLabel,
  RelaxationAnnotation,
  type RelaxationRecord,
  type RunRef,
} from '../../src/core/policy.js';
import {
  DefaultRecordsNamespace,
  RecordAlarm,
  recordConfigMapName,
  RecordDataKey,
} from '../../src/core/records.js';
import { Gatekeeper } from '../../testbed/fixture.js';
import { uniqueName } from './bed.js';

/** The record in the namespace's protected ConfigMap; undefined when there is none. */
export async function protectedRecord(
  kc: KubeConfig,
  namespace: string,
  recordsNamespace = DefaultRecordsNamespace,
): Promise<RelaxationRecord | undefined> {
  const core = kc.makeApiClient(CoreV1Api);
  try {
    const cm = await core.readNamespacedConfigMap({
      namespace: recordsNamespace,
      name: recordConfigMapName(namespace),
    });
    return JSON.parse(cm.data![RecordDataKey.Record]!) as RelaxationRecord;
  } catch (err) {
    if ((err as { code?: number }).code === 404) return undefined;
    throw err;
  }
}

/** Deletes the namespace's protected ConfigMap, as someone with rights on the records namespace could. */
export async function deleteProtectedRecord(
  kc: KubeConfig,
  namespace: string,
  recordsNamespace = DefaultRecordsNamespace,
): Promise<void> {
  await kc
    .makeApiClient(CoreV1Api)
    .deleteNamespacedConfigMap({ namespace: recordsNamespace, name: recordConfigMapName(namespace) });
}

/** The `RelaxationRecordTampered` Warning Events about a Namespace. */
export async function tamperEvents(kc: KubeConfig, namespace: string): Promise<CoreV1Event[]> {
  const list = await kc.makeApiClient(CoreV1Api).listNamespacedEvent({
    namespace: RecordAlarm.EventNamespace,
    fieldSelector: `involvedObject.kind=Namespace,involvedObject.name=${namespace},reason=${RecordAlarm.Reason}`,
  });
  return list.items;
}

/** Sets (or, with null, removes) the relaxation annotation, as a tenant allowed to patch its namespace can. */
export async function setRelaxationAnnotation(
  kc: KubeConfig,
  namespace: string,
  value: string | null,
): Promise<void> {
  await kc
    .makeApiClient(CoreV1Api)
    .patchNamespace(
      { name: namespace, body: { metadata: { annotations: { [RelaxationAnnotation]: value } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
}

/**
 * A record as a tenant would forge it: about `namespace` (not where it is put), claiming every
 * constraint in `constraints` excluded it, and that `enforce` was `privileged` before a
 * relaxation to baseline — restoring it would drop the exclusions and grant `privileged`. In
 * the format the annotation had before protected records (version 1) unless told otherwise.
 */
export function forgedRecord(
  namespace: string,
  constraints: { kind: string; plural: string; name: string }[],
  owner: RunRef = { workflowId: 'runas-migrate-forged', runId: randomUUID() },
  version: 1 | 2 = 1,
): object {
  const refs = constraints.map((c) => ({ group: Gatekeeper.group, version: Gatekeeper.version, ...c }));
  return {
    version,
    ...(version === 2 ? { temporalNamespace: 'default' } : {}),
    owner,
    snapshot: {
      namespace,
      namespaceResourceVersion: '1',
      takenAt: new Date().toISOString(),
      podSecurity: {
        [PodSecurityLabel.Enforce]: 'privileged',
        [PodSecurityLabel.EnforceVersion]: null,
        [PodSecurityLabel.Warn]: null,
        [PodSecurityLabel.WarnVersion]: null,
        [PodSecurityLabel.Audit]: null,
        [PodSecurityLabel.AuditVersion]: null,
      },
      constraints: refs.map((ref) => ({
        ref,
        resourceVersion: '1',
        excludedNamespaces: [],
        excludedBy: null,
      })),
      skipped: [],
    },
    plan: {
      podSecurityEnforce: 'baseline',
      constraints: refs.map((ref) => ({ ref, action: 'append' })),
    },
  };
}

/** A run that stays open (started on a task queue nobody polls) until `end()`. */
export async function aliveRun(client: Client): Promise<{ owner: RunRef; end: () => Promise<void> }> {
  const handle = await client.workflow.start('probeApproval', {
    taskQueue: uniqueName('nobody-polls'),
    workflowId: uniqueName('alive'),
    args: [{ gate: 'x' }],
  });
  return {
    owner: { workflowId: handle.workflowId, runId: handle.firstExecutionRunId },
    end: () => handle.terminate('test over').then(() => undefined),
  };
}
