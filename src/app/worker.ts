/**
 * The runas-migrate worker: registers every workflow and activity on the task queue, and
 * makes sure the sweeper's Schedule exists.
 */
import { GuardrailsFileEnv } from '../core/guardrails.js';
import { loadGuardrails } from '../services/guardrails.js';
import type { Client } from '@temporalio/client';
import { ScheduleAlreadyRunning, ScheduleOverlapPolicy } from '@temporalio/client';
import { NativeConnection, Runtime, Worker, type WorkerInterceptors } from '@temporalio/worker';
import { createActivities } from '../activities/index.js';
import { isKubeError, Kube } from '../cluster/kube.js';
import type { WaitMode } from '../services/workloads.js';
import { KubeConnectionsEnv, kubeConnectionsOf, type KubeConnections } from '../cluster/connections.js';
import { FailureType } from '../core/failures.js';
import { TaskQueue, WorkflowType } from '../core/names.js';
import { RecordSelector, recordsNamespaceOf } from '../core/records.js';
import { ProductMetric } from '../core/metrics.js';
import { startTracing } from './tracing.js';
import { workflowBundlePath } from './workflow-bundle.js';
import { WaitsEnv } from '../core/settings.js';
import { connectClient, temporalTarget } from './temporal-connection.js';

/** Where the worker connects. */
export interface WorkerOptions {
  /** Temporal frontend, `host:port`. @default $TEMPORAL_ADDRESS or localhost:7233 */
  address?: string;
  /** Temporal namespace. @default $TEMPORAL_NAMESPACE or "default" */
  namespace?: string;
  /** @default "runas-migrate" */
  taskQueue?: string;
  /** Path of the kubeconfig; the default loading rules when absent (in-cluster too). */
  kubeconfig?: string;
  /**
   * Namespace of the protected relaxation records: the worker's own, which tenants cannot
   * write. @default $RUNAS_MIGRATE_RECORDS_NAMESPACE, else "runas-migrate"
   */
  recordsNamespace?: string;
  /**
   * A guardrails file (YAML): wins over the ConfigMap `runas-migrate-guardrails` in the worker's
   * namespace. @default $RUNAS_MIGRATE_GUARDRAILS
   */
  guardrailsFile?: string;
  /** Interval of the sweeper Schedule. @default "1 minute" */
  sweepEvery?: string;
  log?: (message: string) => void;
  /**
   * Path of a workflow bundle made with `bundleWorkflowCode`. @default the one `npm run build`
   * made ({@link workflowBundlePath})
   */
  workflowBundlePath?: string;
  /**
   * How long a run's next workflow task waits for this worker (its sticky cache) before any
   * worker may take it: after a crash, the run moves on after this. @default "10s"
   */
  stickyQueueScheduleToStartTimeout?: string;
  /** Temporal worker interceptors (fault tests use them to stop a worker at a chosen step). */
  interceptors?: WorkerInterceptors;
  /**
   * Keep the open-windows gauge ({@link ProductMetric.WindowsOpen}) up to date; the runtime must
   * export metrics (`installRuntime` with a metrics address). @default false
   */
  metrics?: boolean;
  /** Export traces over OTLP/HTTP to this endpoint (`…/v1/traces`). @default none: no tracing */
  tracesEndpoint?: string;
  /** The `helm` binary for securityContext.apply = helm. @default $RUNAS_MIGRATE_HELM, else "helm" on PATH */
  helm?: string;
  /**
   * Whether the waits watch what they wait for (and look at least every few seconds anyway), or
   * only poll; poll where the worker may not watch. @default $RUNAS_MIGRATE_WAITS, else "watch"
   */
  waits?: WaitMode;
  /**
   * Whether the worker's API calls share keep-alive connections (`pooled`) or open one each, as
   * the client library does by itself (`per-request`). @default $RUNAS_MIGRATE_KUBE_CONNECTIONS,
   * else "pooled"
   */
  kubeConnections?: KubeConnections;
}

export { WaitsEnv };

/** The wait mode of `value` (a flag or {@link WaitsEnv}); `watch` when unset. */
export function waitModeOf(value: string | undefined): WaitMode {
  if (value === undefined || value === '' || value === 'watch') return 'watch';
  if (value === 'poll') return 'poll';
  throw new Error(`waits: "${value}" is not a wait mode; use watch or poll (${WaitsEnv})`);
}

/** How often a worker counts the relaxation records for the open-windows gauge. */
export const WindowsGaugeEveryMs = 15_000;

/**
 * Sets the open-windows gauge from the relaxation records every {@link WindowsGaugeEveryMs}: the
 * cluster's truth, which no crash of a worker or a run can leave stale (each worker reports the
 * same count: aggregate with max, not sum).
 *
 * Also recounted as soon as a relax or restore step of this worker ends.
 */
function countOpenWindows(
  kube: Kube,
  recordsNamespace: string,
  log: (m: string) => void,
): { recount(): Promise<void>; stop(): void } {
  const gauge = Runtime.instance().metricMeter.createGauge(
    ProductMetric.WindowsOpen,
    'int',
    '',
    'security windows open now: relaxation records in the records namespace',
  );
  let failing = false;
  const recount = () =>
    kube.listConfigMaps(recordsNamespace, RecordSelector).then(
      (records) => {
        gauge.set(records.length);
        failing = false;
      },
      (err: unknown) => {
        if (!failing)
          log(`cannot count the relaxation records for ${ProductMetric.WindowsOpen}: ${String(err)}`);
        failing = true;
      },
    );
  void recount();
  const timer = setInterval(() => void recount(), WindowsGaugeEveryMs);
  timer.unref();
  return { recount, stop: () => clearInterval(timer) };
}

export { connectClient, temporalTarget };

/** Schedule ID of the sweeper for a task queue. */
export function sweeperScheduleId(taskQueue: string): string {
  return `${taskQueue}-sweeper`;
}

/**
 * Creates the sweeper Schedule when it is missing: `sweepRelaxations` every minute, never
 * two at once.
 *
 * @returns whether it was created now.
 */
export async function ensureSweeperSchedule(
  client: Client,
  taskQueue: string,
  every = '1 minute',
): Promise<boolean> {
  try {
    await client.schedule.create({
      scheduleId: sweeperScheduleId(taskQueue),
      spec: { intervals: [{ every }] },
      action: { type: 'startWorkflow', workflowType: WorkflowType.SweepRelaxations, taskQueue, args: [] },
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 minute' },
      memo: { purpose: 'restores the policies of namespaces whose migration run is gone' },
    });
    return true;
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning) return false;
    throw err;
  }
}

/** Environment variable naming the `helm` binary the worker runs. */
export const HelmEnv = 'RUNAS_MIGRATE_HELM';

/** A created worker and what it holds open. */
export interface RunningWorker {
  worker: Worker;
  client: Client;
  close(): Promise<void>;
}

/** Creates the worker (not yet running) and ensures the sweeper Schedule. */
export async function createWorker(opts: WorkerOptions = {}): Promise<RunningWorker> {
  const target = temporalTarget(opts);
  const taskQueue = opts.taskQueue ?? TaskQueue;
  const log = opts.log ?? ((m: string) => process.stderr.write(`[runas-migrate] ${m}\n`));
  const kube = Kube.fromKubeconfig(
    opts.kubeconfig ?? process.env.KUBECONFIG,
    opts.kubeConnections ?? kubeConnectionsOf(process.env[KubeConnectionsEnv]),
  );
  const recordsNamespace = recordsNamespaceOf(opts.recordsNamespace);
  // Before anything else: a worker that cannot read its guardrails must not run with the defaults.
  const guardrails = await loadGuardrails({
    kube,
    workerNamespace: recordsNamespace,
    file: opts.guardrailsFile ?? process.env[GuardrailsFileEnv],
  });
  log(`guardrails from ${guardrails.source} (${guardrails.version})`);
  const client = await connectClient(target);
  const connection = await NativeConnection.connect({ address: target.address });
  await kube.readNamespace(recordsNamespace).catch((err: unknown) => {
    // Not fatal here: a run says so before it changes anything.
    if (isKubeError(err, FailureType.KubeNotFound))
      log(
        `records namespace ${recordsNamespace} does not exist: every relaxation will be refused until it does`,
      );
  });
  const windows = opts.metrics ? countOpenWindows(kube, recordsNamespace, log) : undefined;
  const activities = createActivities({
    kube,
    client,
    log,
    recordsNamespace,
    temporalNamespace: target.namespace,
    guardrails,
    helm: opts.helm ?? process.env[HelmEnv],
    kubeconfig: opts.kubeconfig ?? process.env.KUBECONFIG,
    waits: opts.waits ?? waitModeOf(process.env[WaitsEnv]),
  });
  if (windows)
    for (const name of ['relaxPolicies', 'restorePolicies'] as const) {
      const step = activities[name] as (...args: unknown[]) => Promise<unknown>;
      (activities as Record<string, unknown>)[name] = (...args: unknown[]) =>
        step(...args).finally(() => void windows.recount());
    }
  const tracing = opts.tracesEndpoint ? startTracing(opts.tracesEndpoint) : undefined;
  const interceptors: WorkerInterceptors = {
    ...opts.interceptors,
    activity: [...(opts.interceptors?.activity ?? []), ...(tracing?.interceptors.activity ?? [])],
  };
  const worker = await Worker.create({
    connection,
    namespace: target.namespace,
    taskQueue,
    workflowBundle: { codePath: opts.workflowBundlePath ?? workflowBundlePath(tracing !== undefined) },
    // A step learns of an abort only from a heartbeat's answer; the SDK holds heartbeats back for
    // up to 0.8 × heartbeatTimeout (24 s by default), and every step now waits for its cancellation.
    maxHeartbeatThrottleInterval: '1 second',
    activities,
    interceptors,
    ...(tracing ? { sinks: tracing.sinks } : {}),
    ...(opts.stickyQueueScheduleToStartTimeout
      ? { stickyQueueScheduleToStartTimeout: opts.stickyQueueScheduleToStartTimeout }
      : {}),
  });
  if (await ensureSweeperSchedule(client, taskQueue, opts.sweepEvery))
    log(`created Schedule ${sweeperScheduleId(taskQueue)}`);
  return {
    worker,
    client,
    async close() {
      windows?.stop();
      await tracing?.shutdown();
      await connection.close();
      await client.connection.close();
      kube.close();
    },
  };
}
