/**
 * Starting and steering runs from a client: the workflow ID rule (one run per namespace), start
 * with a clear refusal when a run is already in progress, and following a run's status.
 */
import { readFileSync } from 'node:fs';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { parse as parseYaml } from 'yaml';
import { statusQuery, type MigrationReport, type MigrationStatus } from '../workflows/messages.js';
import { parseMigrationInput, type MigrationInput } from './input.js';
import { TaskQueue, WorkflowType } from './names.js';

/** Workflow ID of the run of a namespace: at most one at a time (invariant 5). */
export function workflowIdOf(namespace: string): string {
  return `runas-migrate-${namespace}`;
}

/** Thrown when a run of the namespace is already in progress. */
export class RunInProgressError extends Error {
  override readonly name = 'RunInProgressError';
}

/** Reads an input file (JSON or YAML). */
export function readInputFile(path: string): unknown {
  const text = readFileSync(path, 'utf8');
  return path.endsWith('.json') ? (JSON.parse(text) as unknown) : (parseYaml(text) as unknown);
}

/** Validates the input and starts the run; refuses a second run on the same namespace. */
export async function startRun(
  client: Client,
  raw: unknown,
  opts: { taskQueue?: string } = {},
): Promise<{ input: MigrationInput; handle: WorkflowHandle }> {
  const input = parseMigrationInput(raw);
  const workflowId = workflowIdOf(input.namespace);
  try {
    const handle = await client.workflow.start(WorkflowType.MigrateOwnership, {
      taskQueue: opts.taskQueue ?? TaskQueue,
      workflowId,
      args: [raw],
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.FAIL,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      staticSummary: `migrate ${input.namespace} to ${input.uid}:${input.gid}${input.dryRun ? ' (dry run)' : ''}`,
    });
    return { input, handle };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new RunInProgressError(
        `a run is already in progress for namespace ${input.namespace} (workflow ${workflowId}): ` +
          `follow it with "runas-migrate status -n ${input.namespace} --watch" or stop it with "runas-migrate abort -n ${input.namespace}"`,
      );
    }
    throw err;
  }
}

/** Queries the status of the namespace's current run. */
export async function queryStatus(client: Client, namespace: string): Promise<MigrationStatus> {
  return client.workflow.getHandle(workflowIdOf(namespace)).query(statusQuery);
}

/**
 * Calls `onStatus` every `intervalMs` until the run closes; returns its result or throws its
 * failure.
 */
export async function followRun(
  handle: WorkflowHandle,
  onStatus: (s: MigrationStatus) => void | Promise<void>,
  intervalMs = 1000,
): Promise<MigrationReport> {
  let done = false;
  const result = (handle.result() as Promise<MigrationReport>).finally(() => {
    done = true;
  });
  result.catch(() => undefined);
  while (!done) {
    try {
      await onStatus(await handle.query(statusQuery));
    } catch {
      // the run may be closing; its result says how it ended
    }
    await Promise.race([result.catch(() => undefined), new Promise((r) => setTimeout(r, intervalMs))]);
  }
  try {
    await onStatus(await handle.query(statusQuery));
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
