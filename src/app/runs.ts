/**
 * Starting and steering runs from a client: the workflow ID rule (one run per namespace), start
 * with a clear refusal when a run is already in progress, and following a run's status.
 */
import { readFileSync } from 'node:fs';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { parse as parseYaml } from 'yaml';
import { Phase, statusQuery, type MigrationReport, type MigrationStatus } from '../workflows/messages.js';
import { InvalidInputError, parseMigrationInput, type MigrationInput } from '../core/input.js';
import { clusterTaskQueue, runWorkflowId, TaskQueue, WorkflowType } from '../core/names.js';
import type { JobProgress } from '../core/job.js';
import { targetId } from '../core/fleet.js';

/**
 * Workflow ID of the run of a namespace (of a cluster, when named, as a fleet names it): at most
 * one at a time (docs/architecture.md, invariant 5).
 */
export function workflowIdOf(namespace: string, cluster?: string): string {
  return runWorkflowId(namespace, cluster);
}

/** The CLI flags that name a run, for the commands a message suggests. */
export function runFlags(namespace: string, cluster?: string): string {
  return cluster ? `-n ${namespace} --cluster ${cluster}` : `-n ${namespace}`;
}

/** The run's name in messages: the namespace, with its cluster when named (as a fleet's rows). */
const runName = (namespace: string, cluster?: string) => targetId({ namespace, cluster });

/** Thrown when a run of the namespace is already in progress. */
export class RunInProgressError extends Error {
  override readonly name = 'RunInProgressError';
}

/** Thrown when the namespace has no run, or none that is still going, for what was asked. */
export class NoRunError extends Error {
  override readonly name = 'NoRunError';
}

/** Reads an input file (JSON or YAML); the error names the file and what is wrong with it. */
export function readInputFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidInputError(
      `cannot read the input file ${path}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`,
    );
  }
  try {
    return path.endsWith('.json') ? (JSON.parse(text) as unknown) : (parseYaml(text) as unknown);
  } catch (err) {
    throw new InvalidInputError(
      `the input file ${path} is not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message}`,
    );
  }
}

/**
 * Validates the input and starts the run; refuses a second run on the same namespace. With a
 * `cluster`, the run has that cluster's workflow ID and goes to its workers' task queue, as a
 * fleet's run of the same namespace would.
 */
export async function startRun(
  client: Client,
  raw: unknown,
  opts: { taskQueue?: string; cluster?: string } = {},
): Promise<{ input: MigrationInput; handle: WorkflowHandle }> {
  const input = parseMigrationInput(raw);
  const { cluster } = opts;
  const workflowId = workflowIdOf(input.namespace, cluster);
  const flags = runFlags(input.namespace, cluster);
  try {
    const handle = await client.workflow.start(WorkflowType.MigrateOwnership, {
      taskQueue: clusterTaskQueue(cluster, opts.taskQueue ?? TaskQueue),
      workflowId,
      // With every default filled in, so the run's history holds them: a later change of a
      // default does not change what an open run does when it is replayed.
      args: [input],
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.FAIL,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      staticSummary: `migrate ${input.namespace} to ${input.uid}:${input.gid}${input.dryRun ? ' (dry run)' : ''}`,
    });
    return { input, handle };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new RunInProgressError(
        `a run is already in progress for namespace ${runName(input.namespace, cluster)} (workflow ${workflowId}): ` +
          `follow it with "runas-migrate status ${flags} --watch" or stop it with "runas-migrate abort ${flags} --reason <why>"`,
      );
    }
    throw err;
  }
}

const noRun = (namespace: string, cluster?: string) =>
  new NoRunError(
    `namespace ${runName(namespace, cluster)} has no run (no workflow ${workflowIdOf(namespace, cluster)}): check the namespace${cluster ? ' and the cluster' : " (a fleet's run on a cluster is named with --cluster <cluster>)"}, or start one with "runas-migrate start ${runFlags(namespace, cluster)}"`,
  );

/** Queries the status of the namespace's current (or last) run (on `cluster`, when named). */
export async function queryStatus(
  client: Client,
  namespace: string,
  cluster?: string,
): Promise<MigrationStatus> {
  try {
    return await client.workflow.getHandle(workflowIdOf(namespace, cluster)).query(statusQuery);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw noRun(namespace, cluster);
    throw err;
  }
}

/** How a run is moving, from Temporal's own view of it (answers even when the run cannot). */
export interface RunProgress {
  /** RUNNING, COMPLETED, FAILED, …. */
  status: string;
  taskQueue: string;
  /** The run's current workflow task, if one is pending. */
  workflowTask: {
    /** SCHEDULED (no worker has picked it up) or STARTED. */
    state: string;
    /** Above 1: the workflow code keeps failing (a non-determinism after a deploy, a bug). */
    attempt: number;
    scheduledAt: string | null;
    /** Why the last attempt failed, when one did. */
    lastFailure: string | null;
  } | null;
  /** Steps retrying or waiting, with their attempt and last failure. */
  steps: { activity: string; attempt: number; lastFailure: string | null; lastHeartbeatAt: string | null }[];
  /** Plain-words reasons the run looks stuck; empty when it does not. */
  stuck: string[];
  /** Where each running ownership Job is, from the Job wait's last heartbeat. */
  jobs: Record<string, JobProgress>;
}

// A proto Timestamp's seconds is a Long, which Number() does not convert.
const isoOf = (
  t: { seconds?: { toString(): string } | null; nanos?: number | null } | null | undefined,
): string | null =>
  t?.seconds == null
    ? null
    : new Date(Number(t.seconds.toString()) * 1000 + Math.floor((t.nanos ?? 0) / 1e6)).toISOString();

/** temporal.api.enums.v1.PendingWorkflowTaskState, as describe() returns it (a number). */
const PendingWorkflowTaskState: Record<number, string> = { 1: 'SCHEDULED', 2: 'STARTED' };

/** How long a workflow task may wait for a worker before the run counts as stuck. */
const UnpickedWorkflowTaskMs = 30_000;

/**
 * Temporal's view of the namespace's run: whether a worker picks up its workflow tasks, whether
 * they fail, which steps retry. `runas-migrate status` shows it with the run's own status, and
 * alone when the run cannot answer its status query (no worker, a workflow task failing).
 */
export async function runProgress(client: Client, namespace: string, cluster?: string): Promise<RunProgress> {
  const handle = client.workflow.getHandle(workflowIdOf(namespace, cluster));
  let d: Awaited<ReturnType<WorkflowHandle['describe']>>;
  try {
    d = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw noRun(namespace, cluster);
    throw err;
  }
  const pending = d.raw.pendingWorkflowTask;
  const stuck: string[] = [];
  let workflowTask: RunProgress['workflowTask'] = null;
  if (pending) {
    const attempt = pending.attempt ?? 1;
    let lastFailure: string | null = null;
    if (attempt > 1) {
      const history = await handle.fetchHistory();
      const failed = [...(history.events ?? [])]
        .reverse()
        .find((e) => e.workflowTaskFailedEventAttributes)?.workflowTaskFailedEventAttributes;
      lastFailure = failed?.failure?.message ?? null;
      stuck.push(
        `its workflow task failed ${attempt - 1} times${lastFailure ? ` (${lastFailure})` : ''}: the run cannot move until the worker runs code that can replay it`,
      );
    }
    const scheduledAt = isoOf(pending.originalScheduledTime ?? pending.scheduledTime);
    const state = PendingWorkflowTaskState[Number(pending.state)] ?? String(pending.state);
    if (state === 'SCHEDULED' && scheduledAt && Date.now() - Date.parse(scheduledAt) > UnpickedWorkflowTaskMs)
      stuck.push(
        `no worker has picked up its workflow task since ${scheduledAt}: is a worker running on task queue ${d.taskQueue}?`,
      );
    workflowTask = { state, attempt, scheduledAt, lastFailure };
  }
  const steps = (d.raw.pendingActivities ?? []).map((a) => ({
    activity: a.activityType?.name ?? '?',
    attempt: a.attempt ?? 1,
    lastFailure: a.lastFailure?.message ?? null,
    lastHeartbeatAt: isoOf(a.lastHeartbeatTime),
  }));
  for (const s of steps)
    if (s.attempt >= 3)
      stuck.push(`step ${s.activity} is at attempt ${s.attempt}${s.lastFailure ? `: ${s.lastFailure}` : ''}`);
  return {
    status: d.status.name,
    taskQueue: d.taskQueue,
    workflowTask,
    steps,
    stuck,
    jobs: jobsInProgress(client, d),
  };
}

/** Where each running ownership Job is: the Job wait heartbeats it (the run's own status cannot). */
function jobsInProgress(
  client: { options: Pick<Client['options'], 'loadedDataConverter'> },
  d: Awaited<ReturnType<WorkflowHandle['describe']>>,
): Record<string, JobProgress> {
  const converter = client.options.loadedDataConverter.payloadConverter;
  const jobs: Record<string, JobProgress> = {};
  for (const a of d.raw.pendingActivities ?? []) {
    const payload = a.heartbeatDetails?.payloads?.[0];
    if (payload) Object.assign(jobs, converter.fromPayload<{ jobs?: typeof jobs }>(payload)?.jobs ?? {});
  }
  return jobs;
}

/** How long `runas-migrate status` waits for a run to answer its status query. */
export const StatusQueryTimeoutMs = 10_000;

/**
 * The handle of the namespace's run, when it is still going: a signal to a run that has ended
 * would be refused by Temporal with a message that names neither the run nor what to do.
 *
 * @param what what the operator wants to do with it, e.g. "approve".
 * @throws {@link NoRunError} when there is no run or it has ended.
 */
export async function runningRun(
  client: Client,
  namespace: string,
  what: string,
  cluster?: string,
): Promise<WorkflowHandle> {
  const handle = client.workflow.getHandle(workflowIdOf(namespace, cluster));
  let status: string;
  try {
    status = (await handle.describe()).status.name;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw noRun(namespace, cluster);
    throw err;
  }
  if (status !== 'RUNNING') {
    throw new NoRunError(
      `the run of ${runName(namespace, cluster)} (workflow ${handle.workflowId}) has already ended (${status}): there is nothing to ${what}; ` +
        `see how it ended with "runas-migrate status ${runFlags(namespace, cluster)}", or start a new run`,
    );
  }
  return handle;
}

/**
 * Calls `onStatus` every `intervalMs` until the run closes; returns its result or throws its
 * failure.
 */
export async function followRun(
  handle: WorkflowHandle,
  onStatus: (s: MigrationStatus, jobs: Record<string, JobProgress>) => void | Promise<void>,
  intervalMs = 1000,
): Promise<MigrationReport> {
  let done = false;
  const result = (handle.result() as Promise<MigrationReport>).finally(() => {
    done = true;
  });
  result.catch(() => undefined);
  while (!done) {
    try {
      const s = await handle.query(statusQuery);
      // Only while Jobs run is there a Job wait whose heartbeat says where they are.
      const jobs =
        s.phase === Phase.MigratingOwnership ? jobsInProgress(handle.client, await handle.describe()) : {};
      await onStatus(s, jobs);
    } catch {
      // the run may be closing; its result says how it ended
    }
    await Promise.race([result.catch(() => undefined), new Promise((r) => setTimeout(r, intervalMs))]);
  }
  try {
    await onStatus(await handle.query(statusQuery), {});
  } catch {
    // closed runs answer queries only while their worker is up
  }
  return result;
}

/** Link to a run in the Temporal Web UI. */
export function webUiLink(
  uiBase: string,
  temporalNamespace: string,
  workflowId: string,
  runId?: string,
): string {
  return `${uiBase.replace(/\/$/, '')}/namespaces/${encodeURIComponent(temporalNamespace)}/workflows/${encodeURIComponent(workflowId)}${runId ? `/${runId}` : ''}`;
}
