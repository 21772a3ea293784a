/**
 * The Kubernetes client runas-migrate uses: a thin wrapper over `@kubernetes/client-node` that
 * names every call (verb and object), counts them, and turns every failure into a typed
 * {@link KubeError} — transient ones retryable, 403/404/422 not.
 */
import type { KubeConfig } from '@kubernetes/client-node';
import {
  ApisApi,
  AppsV1Api,
  BatchV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  Exec,
  PatchStrategy,
  setHeaderOptions,
  type V1ConfigMap,
  type V1Job,
  type V1Lease,
  type V1Namespace,
  type V1PersistentVolumeClaim,
  type V1Pod,
  type V1StatefulSet,
  type CoreV1Event,
  type V1Status,
} from '@kubernetes/client-node';
import { Writable } from 'node:stream';
import { FailureType, TypedFailure, type KubeFailureType } from '../core/failures.js';
import { watchChanges, type ChangeFeed, type WatchedCollection } from './changes.js';
import { kubeConfigFor, PooledKubeConfig, type KubeConnections } from './connections.js';

/** One field the API server refused (`details.causes` of its Status). */
export interface KubeCause {
  /** The field's path in the object, e.g. `spec.template.metadata.labels`. */
  field?: string;
  message: string;
}

/** A failed Kubernetes call, typed by what the caller can do about it. */
export class KubeError extends TypedFailure {
  override readonly name = 'KubeError';
  declare readonly type: KubeFailureType;
  constructor(
    type: KubeFailureType,
    /** HTTP status, when the API server answered. */
    readonly status: number | undefined,
    readonly verb: string,
    readonly object: string,
    /** The API server's own message (or the transport error). */
    readonly reason: string,
    /** The refused fields, when the API server named them. */
    readonly causes: readonly KubeCause[] = [],
  ) {
    super(type, KubeError.describe(type, status, verb, object, reason), {
      // Only these can succeed when the same call is tried again.
      retryable: type === FailureType.KubeConflict || type === FailureType.KubeUnavailable,
      details: [{ verb, object, status: status ?? null }],
    });
  }

  private static describe(
    type: KubeFailureType,
    status: number | undefined,
    verb: string,
    object: string,
    reason: string,
  ): string {
    const code = status ? ` (HTTP ${status})` : '';
    switch (type) {
      case FailureType.KubeForbidden:
        return `forbidden to ${verb} ${object}${code}: ${reason}. Fix: grant the identity in the kubeconfig "${verb}" on it (deploy/ has the least-privilege RBAC)`;
      case FailureType.KubeUnauthorized:
        return `not authenticated to ${verb} ${object}${code}: ${reason}. Fix: check the kubeconfig's credentials`;
      case FailureType.KubeNotFound:
        return `${object} not found while trying to ${verb} it${code}. Fix: check its name and namespace`;
      case FailureType.KubeInvalid:
        return `the API server rejected ${verb} ${object} as invalid${code}: ${reason}`;
      case FailureType.KubeConflict:
        return `${object} changed while trying to ${verb} it${code}: ${reason}`;
      case FailureType.KubeBadRequest:
        return `bad request to ${verb} ${object}${code}: ${reason}`;
      default:
        return `could not ${verb} ${object}${code}: ${reason} (the API server may be restarting; retried)`;
    }
  }
}

/** Whether `err` is a {@link KubeError}, optionally of the given type. */
export function isKubeError(err: unknown, type?: KubeFailureType): err is KubeError {
  return err instanceof KubeError && (type === undefined || err.type === type);
}

interface StatusBody {
  message?: string;
  details?: { causes?: { field?: string; message?: string }[] };
}

function statusOf(body: unknown): StatusBody | undefined {
  if (typeof body === 'string') {
    try {
      const parsed = JSON.parse(body) as unknown;
      return parsed && typeof parsed === 'object' ? parsed : { message: body };
    } catch {
      return body ? { message: body } : undefined;
    }
  }
  return body && typeof body === 'object' ? body : undefined;
}

/** Classifies any error thrown by client-node (or the transport) into a {@link KubeError}. */
export function toKubeError(err: unknown, verb: string, object: string): KubeError {
  if (err instanceof KubeError) return err;
  const e = err as { code?: unknown; body?: unknown; message?: string };
  const status = typeof e.code === 'number' ? e.code : undefined;
  const body = statusOf(e.body);
  const reason = (body?.message !== undefined ? String(body.message) : undefined) ?? e.message ?? String(err);
  const causes = (body?.details?.causes ?? []).map((c) => ({
    ...(c.field ? { field: c.field } : {}),
    message: c.message ?? '',
  }));
  const type: KubeFailureType =
    status === 403
      ? FailureType.KubeForbidden
      : status === 401
        ? FailureType.KubeUnauthorized
        : status === 404
          ? FailureType.KubeNotFound
          : status === 422
            ? FailureType.KubeInvalid
            : status === 409
              ? FailureType.KubeConflict
              : status === 400
                ? FailureType.KubeBadRequest
                : FailureType.KubeUnavailable;
  return new KubeError(type, status, verb, object, reason, causes);
}

/** A custom resource kind served by the API server. */
export interface CustomResourceKind {
  group: string;
  version: string;
  plural: string;
  kind: string;
}

/** Counts of the calls a {@link Kube} made, for reports and benchmarks. */
export interface KubeCallCounts {
  reads: number;
  writes: number;
  /** Collections watched by the waits (each watch resumed as needed). */
  watches: number;
}

const header = (strategy: PatchStrategy) => setHeaderOptions('Content-Type', strategy);

/** What a command run in a container through `exec` gave. */
export interface ExecResult {
  /** The command's exit code; null when it did not end by itself (timeout, or the stream broke). */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** Why there is no exit code, when there is none. */
  error?: string;
}

/** Most of a command's output {@link Kube.exec} keeps (its end). */
const ExecOutputLimit = 64 * 1024;

/** What {@link Kube.exec} uses of the exec WebSocket (the `ws` package's types are not installed). */
interface ExecStream {
  close(): void;
  on(event: 'close', listener: () => void): void;
}

/** Collects the end of a stream's output. */
class Tail extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.text = (this.text + chunk.toString()).slice(-ExecOutputLimit);
    done();
  }
}

/** The exit code in an exec stream's final Status (`details.causes` reason ExitCode), if any. */
function exitCodeOf(status: V1Status): number | null {
  if (status.status === 'Success') return 0;
  const cause = status.details?.causes?.find((c) => c.reason === 'ExitCode');
  return cause?.message !== undefined ? Number(cause.message) : null;
}

/** Options of a write that can be a server-side dry run. */
export interface DryRunOption {
  /**
   * Have the API server validate and admit the write (every admission stage) without
   * persisting it. Counted as a read; the object is named `… (dry run)`.
   */
  dryRun?: boolean;
}

/** How a Job's deletion treats its pods. */
export interface DeleteJobOptions {
  /** @default "Foreground": the Job goes only once its pods are gone. */
  propagationPolicy?: 'Foreground' | 'Background';
  /** Delete only the Job with this uid (not a newer one of the same name). */
  uid?: string;
}

const dryRunParam = (o: DryRunOption | undefined) => (o?.dryRun ? { dryRun: 'All' } : {});
const dryRunName = (o: DryRunOption | undefined) => (o?.dryRun ? ' (dry run)' : '');

/** The Kubernetes calls runas-migrate makes, each named, counted and typed on failure. */
export class Kube {
  readonly counts: KubeCallCounts = { reads: 0, writes: 0, watches: 0 };
  protected readonly core: CoreV1Api;
  protected readonly custom: CustomObjectsApi;
  protected readonly apis: ApisApi;
  protected readonly apps: AppsV1Api;
  protected readonly batch: BatchV1Api;
  protected readonly coordination: CoordinationV1Api;

  constructor(readonly kubeConfig: KubeConfig) {
    this.apps = kubeConfig.makeApiClient(AppsV1Api);
    this.batch = kubeConfig.makeApiClient(BatchV1Api);
    this.coordination = kubeConfig.makeApiClient(CoordinationV1Api);
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.custom = kubeConfig.makeApiClient(CustomObjectsApi);
    this.apis = kubeConfig.makeApiClient(ApisApi);
  }

  /**
   * A client for the kubeconfig at `path` (or the default loading rules when absent), its
   * requests sharing keep-alive connections unless `connections` says `per-request`.
   */
  static fromKubeconfig(path?: string, connections: KubeConnections = 'pooled'): Kube {
    const kc = kubeConfigFor(connections);
    if (path) kc.loadFromFile(path);
    else kc.loadFromDefault();
    return new Kube(kc);
  }

  /** Closes the connections it keeps (a pooled kubeconfig's); a no-op otherwise. */
  close(): void {
    if (this.kubeConfig instanceof PooledKubeConfig) this.kubeConfig.close();
  }

  /**
   * Runs one API call; every call of this class goes through here (override it to observe or
   * inject faults).
   */
  async call<T>(verb: string, object: string, mutating: boolean, fn: () => Promise<T>): Promise<T> {
    if (mutating) this.counts.writes++;
    else this.counts.reads++;
    try {
      return await fn();
    } catch (err) {
      const cause = this.kubeConfig instanceof PooledKubeConfig ? this.kubeConfig.explain(err) : err;
      throw toKubeError(cause, verb, object);
    }
  }

  /** Watches `collections` and wakes a wait when one changes (src/cluster/changes.ts). */
  watchChanges(collections: WatchedCollection[]): ChangeFeed {
    this.counts.watches += collections.length;
    return watchChanges(this.kubeConfig, collections);
  }

  /** Reads a namespace. */
  readNamespace(name: string): Promise<V1Namespace> {
    return this.call('get', `namespace "${name}"`, false, () => this.core.readNamespace({ name }));
  }

  /** Lists namespaces (optionally by label selector). */
  async listNamespaces(labelSelector?: string): Promise<V1Namespace[]> {
    const list = await this.call('list', 'namespaces', false, () =>
      this.core.listNamespace(labelSelector ? { labelSelector } : {}),
    );
    return list.items;
  }

  /** Patches a namespace with a merge patch or a JSON Patch. */
  patchNamespace(name: string, body: object, strategy: PatchStrategy): Promise<V1Namespace> {
    return this.call('patch', `namespace "${name}"`, true, () =>
      this.core.patchNamespace({ name, body }, header(strategy)),
    );
  }

  /**
   * The kinds served by an API group at its preferred version; empty when the group is not
   * installed (Gatekeeper absent is not an error).
   */
  async kindsOfGroup(group: string): Promise<CustomResourceKind[]> {
    const groups = await this.call('discover', 'API groups', false, () => this.apis.getAPIVersions());
    const found = groups.groups.find((g) => g.name === group);
    if (!found) return [];
    const version = found.preferredVersion?.version ?? found.versions[0]?.version;
    if (!version) return [];
    const resources = await this.call('discover', `API group ${group}/${version}`, false, () =>
      this.custom.getAPIResources({ group, version }),
    );
    return resources.resources
      .filter((r) => !r.name.includes('/'))
      .map((r) => ({ group, version, plural: r.name, kind: r.kind }));
  }

  /** Lists the cluster-scoped objects of a custom kind. */
  async listClusterObjects<T>(kind: CustomResourceKind): Promise<T[]> {
    const list = (await this.call('list', `${kind.plural}.${kind.group}`, false, () =>
      this.custom.listClusterCustomObject({ group: kind.group, version: kind.version, plural: kind.plural }),
    )) as { items: T[] };
    return list.items;
  }

  /** Reads one cluster-scoped custom object. */
  async readClusterObject<T>(kind: CustomResourceKind, name: string): Promise<T> {
    return (await this.call('get', `${kind.kind} "${name}"`, false, () =>
      this.custom.getClusterCustomObject({
        group: kind.group,
        version: kind.version,
        plural: kind.plural,
        name,
      }),
    )) as T;
  }

  /** Applies a JSON Patch to a cluster-scoped custom object. */
  async jsonPatchClusterObject<T>(
    kind: CustomResourceKind,
    name: string,
    ops: readonly object[],
  ): Promise<T> {
    return (await this.call('patch', `${kind.kind} "${name}"`, true, () =>
      this.custom.patchClusterCustomObject(
        { group: kind.group, version: kind.version, plural: kind.plural, name, body: ops },
        header(PatchStrategy.JsonPatch),
      ),
    )) as T;
  }

  /** Lists pods of a namespace by label selector. */
  async listPods(namespace: string, labelSelector: string): Promise<V1Pod[]> {
    const list = await this.call('list', `pods in namespace "${namespace}"`, false, () =>
      this.core.listNamespacedPod({ namespace, labelSelector }),
    );
    return list.items;
  }

  /**
   * Runs a command in a pod's container (`create pods/exec`, over WebSocket): its exit code and
   * output. A command that does not end within `timeoutMs`, or by the time `signal` aborts, is
   * left (the stream is closed, which ends it on the node) and reported with a null exit code;
   * a refused or broken connection is a {@link KubeError}.
   */
  exec(
    namespace: string,
    pod: string,
    container: string,
    command: string[],
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<ExecResult> {
    return this.call('exec in', `pod "${namespace}/${pod}" container "${container}"`, true, async () => {
      const stdout = new Tail();
      const stderr = new Tail();
      let status: V1Status | undefined;
      const ws = (await new Exec(this.kubeConfig)
        .exec(namespace, pod, container, command, stdout, stderr, null, false, (s) => (status = s))
        .catch((err: unknown) => {
          // The WebSocket handshake's refusal carries the API server's HTTP status only in its text.
          const code = /Unexpected server response: (\d+)/.exec(String(err))?.[1];
          throw Object.assign(
            err instanceof Error ? err : new Error(String(err)),
            code ? { code: Number(code) } : {},
          );
        })) as unknown as ExecStream;
      return new Promise<ExecResult>((resolve) => {
        const leave = (error: string) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          ws.close();
          resolve({ exitCode: null, stdout: stdout.text, stderr: stderr.text, error });
        };
        const onAbort = () => leave('stopped: the step was cancelled');
        const timer = setTimeout(() => leave(`no answer within ${timeoutMs / 1000} s`), timeoutMs);
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
        ws.on('close', () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          const exitCode = status ? exitCodeOf(status) : null;
          resolve({
            exitCode,
            stdout: stdout.text,
            stderr: stderr.text,
            ...(exitCode === null
              ? { error: status?.message ?? 'the exec stream closed without an exit status' }
              : {}),
          });
        });
      });
    });
  }

  /** Reads a container's log (the Log API), since a time when given. */
  readPodLog(namespace: string, pod: string, container: string, sinceTime?: Date): Promise<string> {
    // The Log API takes sinceSeconds, not a time: round up so the container's first line is in.
    const sinceSeconds = sinceTime
      ? Math.max(1, Math.ceil((Date.now() - sinceTime.getTime()) / 1000) + 1)
      : undefined;
    return this.call('read the log of', `pod "${namespace}/${pod}" container "${container}"`, false, () =>
      this.core.readNamespacedPodLog({
        namespace,
        name: pod,
        container,
        ...(sinceSeconds ? { sinceSeconds } : {}),
      }),
    );
  }

  /** Lists events of a namespace by field selector. */
  async listEvents(namespace: string, fieldSelector: string): Promise<CoreV1Event[]> {
    const list = await this.call('list', `events in namespace "${namespace}"`, false, () =>
      this.core.listNamespacedEvent({ namespace, fieldSelector }),
    );
    return list.items;
  }

  /** Reads a StatefulSet. */
  readStatefulSet(namespace: string, name: string): Promise<V1StatefulSet> {
    return this.call('get', `StatefulSet "${namespace}/${name}"`, false, () =>
      this.apps.readNamespacedStatefulSet({ namespace, name }),
    );
  }

  /** Patches a StatefulSet (strategic merge, merge or JSON Patch), or only tries it (`dryRun`). */
  patchStatefulSet(
    namespace: string,
    name: string,
    body: object,
    strategy: PatchStrategy,
    options?: DryRunOption,
  ): Promise<V1StatefulSet> {
    return this.call(
      'patch',
      `StatefulSet "${namespace}/${name}"${dryRunName(options)}`,
      !options?.dryRun,
      () =>
        this.apps.patchNamespacedStatefulSet(
          { namespace, name, body, ...dryRunParam(options) },
          header(strategy),
        ),
    );
  }

  /** Lists the PersistentVolumeClaims of a namespace. */
  async listClaims(namespace: string): Promise<V1PersistentVolumeClaim[]> {
    const list = await this.call('list', `PersistentVolumeClaims in namespace "${namespace}"`, false, () =>
      this.core.listNamespacedPersistentVolumeClaim({ namespace }),
    );
    return list.items;
  }

  /**
   * Asks the whole admission chain (Pod Security Admission, every webhook, Gatekeeper included)
   * whether it would admit `pod`, without creating it: a server-side dry run.
   */
  dryRunPod(namespace: string, pod: V1Pod): Promise<V1Pod> {
    const name = pod.metadata?.name ?? `${pod.metadata?.generateName ?? ''}…`;
    return this.call('create', `Pod "${namespace}/${name}" (dry run)`, false, () =>
      this.core.createNamespacedPod({ namespace, body: pod, dryRun: 'All' }),
    );
  }

  /** Creates a Job, or only tries it (`dryRun`). */
  createJob(namespace: string, job: V1Job, options?: DryRunOption): Promise<V1Job> {
    const name = job.metadata?.name ?? `${job.metadata?.generateName ?? ''}…`;
    return this.call('create', `Job "${namespace}/${name}"${dryRunName(options)}`, !options?.dryRun, () =>
      this.batch.createNamespacedJob({ namespace, body: job, ...dryRunParam(options) }),
    );
  }

  /** Reads a Job. */
  readJob(namespace: string, name: string): Promise<V1Job> {
    return this.call('get', `Job "${namespace}/${name}"`, false, () =>
      this.batch.readNamespacedJob({ namespace, name }),
    );
  }

  /** Lists Jobs by label selector. */
  async listJobs(namespace: string, labelSelector: string): Promise<V1Job[]> {
    const list = await this.call('list', `Jobs in namespace "${namespace}"`, false, () =>
      this.batch.listNamespacedJob({ namespace, labelSelector }),
    );
    return list.items;
  }

  /**
   * Deletes a Job and its pods. In the foreground (the default) the Job stays, with a deletion
   * timestamp, until its pods are gone, so its absence means theirs.
   */
  async deleteJob(namespace: string, name: string, options: DeleteJobOptions = {}): Promise<void> {
    await this.call('delete', `Job "${namespace}/${name}"`, true, () =>
      this.batch.deleteNamespacedJob({
        namespace,
        name,
        // In the body too: a body without it would override the query parameter, and a Job's
        // default is to orphan its pods.
        propagationPolicy: options.propagationPolicy ?? 'Foreground',
        body: {
          propagationPolicy: options.propagationPolicy ?? 'Foreground',
          ...(options.uid ? { preconditions: { uid: options.uid } } : {}),
        },
      }),
    );
  }

  /** Reads a Lease (coordination.k8s.io/v1). */
  readLease(namespace: string, name: string): Promise<V1Lease> {
    return this.call('get', `Lease "${namespace}/${name}"`, false, () =>
      this.coordination.readNamespacedLease({ namespace, name }),
    );
  }

  /** Creates a Lease; a Lease of the same name fails with a (retryable) `KubeConflict`. */
  createLease(namespace: string, lease: V1Lease): Promise<V1Lease> {
    return this.call('create', `Lease "${namespace}/${lease.metadata?.name}"`, true, () =>
      this.coordination.createNamespacedLease({ namespace, body: lease }),
    );
  }

  /**
   * Replaces a Lease, guarded by its `metadata.resourceVersion` (required): a Lease changed
   * since it was read fails with `KubeConflict`.
   */
  async replaceLease(namespace: string, name: string, lease: V1Lease): Promise<V1Lease> {
    if (!lease.metadata?.resourceVersion)
      throw new Error(`replaceLease ${namespace}/${name}: metadata.resourceVersion is required`);
    return this.call('replace', `Lease "${namespace}/${name}"`, true, () =>
      this.coordination.replaceNamespacedLease({ namespace, name, body: lease }),
    );
  }

  /**
   * Deletes a Lease; with `resourceVersion`, only if it is still that version (else
   * `KubeConflict`).
   */
  async deleteLease(namespace: string, name: string, resourceVersion?: string): Promise<void> {
    await this.call('delete', `Lease "${namespace}/${name}"`, true, () =>
      this.coordination.deleteNamespacedLease({
        namespace,
        name,
        ...(resourceVersion ? { body: { preconditions: { resourceVersion } } } : {}),
      }),
    );
  }

  /** Reads a namespaced custom object. */
  async readNamespacedObject<T>(
    kind: Omit<CustomResourceKind, 'kind'>,
    namespace: string,
    name: string,
  ): Promise<T> {
    return (await this.call('get', `${kind.plural}.${kind.group} "${namespace}/${name}"`, false, () =>
      this.custom.getNamespacedCustomObject({
        group: kind.group,
        version: kind.version,
        plural: kind.plural,
        namespace,
        name,
      }),
    )) as T;
  }

  /** Reads a ConfigMap. */
  readConfigMap(namespace: string, name: string): Promise<V1ConfigMap> {
    return this.call('get', `ConfigMap "${namespace}/${name}"`, false, () =>
      this.core.readNamespacedConfigMap({ namespace, name }),
    );
  }

  /** Lists the ConfigMaps of a namespace by label selector. */
  async listConfigMaps(namespace: string, labelSelector: string): Promise<V1ConfigMap[]> {
    const list = await this.call('list', `ConfigMaps in namespace "${namespace}"`, false, () =>
      this.core.listNamespacedConfigMap({ namespace, labelSelector }),
    );
    return list.items;
  }

  /** Creates a ConfigMap; one of the same name fails with a (retryable) `KubeConflict`. */
  createConfigMap(namespace: string, configMap: V1ConfigMap): Promise<V1ConfigMap> {
    return this.call('create', `ConfigMap "${namespace}/${configMap.metadata?.name}"`, true, () =>
      this.core.createNamespacedConfigMap({ namespace, body: configMap }),
    );
  }

  /**
   * Replaces a ConfigMap, guarded by its `metadata.resourceVersion` (required): one changed
   * since it was read fails with `KubeConflict`.
   */
  async replaceConfigMap(namespace: string, name: string, configMap: V1ConfigMap): Promise<V1ConfigMap> {
    if (!configMap.metadata?.resourceVersion)
      throw new Error(`replaceConfigMap ${namespace}/${name}: metadata.resourceVersion is required`);
    return this.call('replace', `ConfigMap "${namespace}/${name}"`, true, () =>
      this.core.replaceNamespacedConfigMap({ namespace, name, body: configMap }),
    );
  }

  /** Deletes a ConfigMap; with preconditions, only if it is still that object (else `KubeConflict`). */
  async deleteConfigMap(
    namespace: string,
    name: string,
    preconditions?: { uid?: string; resourceVersion?: string },
  ): Promise<void> {
    await this.call('delete', `ConfigMap "${namespace}/${name}"`, true, () =>
      this.core.deleteNamespacedConfigMap({
        namespace,
        name,
        ...(preconditions ? { body: { preconditions } } : {}),
      }),
    );
  }

  /** Creates an Event (core/v1); one of the same name fails with `KubeConflict`. */
  createEvent(namespace: string, event: CoreV1Event): Promise<CoreV1Event> {
    return this.call('create', `Event "${namespace}/${event.metadata?.name}"`, true, () =>
      this.core.createNamespacedEvent({ namespace, body: event }),
    );
  }

  /** Merge-patches an Event (a repeat: its count and last timestamp). */
  patchEvent(namespace: string, name: string, body: object): Promise<CoreV1Event> {
    return this.call('patch', `Event "${namespace}/${name}"`, true, () =>
      this.core.patchNamespacedEvent({ namespace, name, body }, header(PatchStrategy.MergePatch)),
    );
  }
}
