/**
 * Fleets from a client: starting a fleet from its file (validated before the start, so a bad
 * target changes nothing anywhere) and asking its status (its view: `renderFleet` in status-view.ts).
 */
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { MaxFleetTargets, parseFleetInput, resolvedFleetInput, type FleetInput } from '../core/fleet.js';
import { InvalidInputError } from '../core/input.js';
import { fleetWorkflowId, TaskQueue, WorkflowType } from '../core/names.js';
import { fleetStatusQuery, type FleetStatus } from '../workflows/fleet-messages.js';
import { NoRunError, RunInProgressError } from './runs.js';

/** Validates a fleet file and starts the fleet; refuses a second fleet of the same name. */
export async function startFleet(
  client: Client,
  raw: unknown,
  opts: { taskQueue?: string } = {},
): Promise<{ fleet: FleetInput; handle: WorkflowHandle }> {
  const taskQueue = opts.taskQueue ?? TaskQueue;
  const fleet = parseFleetInput(raw, taskQueue);
  // Checked here, not in the workflow: a fleet started before the limit must still replay.
  if (fleet.targets.length > MaxFleetTargets)
    throw new InvalidInputError(
      `invalid fleet: targets: must list at most ${MaxFleetTargets} targets (it lists ${fleet.targets.length}): split it into several fleets (each target's whole input is in the fleet's history, and Temporal refuses payloads over 2 MB)`,
    );
  const workflowId = fleetWorkflowId(fleet.name);
  const legacy = await legacyFleet(client, fleet.name);
  if (legacy && (await legacy.describe()).status.name === 'RUNNING')
    throw new RunInProgressError(
      `fleet ${fleet.name} is already running (workflow ${legacy.workflowId}, started before fleet IDs took a colon): follow it with "runas-migrate status --fleet ${fleet.name} --watch", or give this one another name`,
    );
  try {
    const handle = await client.workflow.start(WorkflowType.MigrateFleet, {
      taskQueue,
      workflowId,
      // Every default written out, as for a run: a later change of one does not change an open fleet.
      args: [resolvedFleetInput(fleet)],
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.FAIL,
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      staticSummary: `fleet ${fleet.name}: ${fleet.targets.length} namespaces${fleet.canary ? ', canary first' : ''}, waves of ${fleet.waveSize}`,
    });
    return { fleet, handle };
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError)
      throw new RunInProgressError(
        `fleet ${fleet.name} is already running (workflow ${workflowId}): follow it with "runas-migrate status --fleet ${fleet.name} --watch", or give this one another name`,
      );
    throw err;
  }
}

/** The workflow ID fleets had before it took a colon, which a run of namespace `fleet-<name>` can have too. */
export const legacyFleetWorkflowId = (name: string): string => `runas-migrate-fleet-${name}`;

/** The fleet started under {@link legacyFleetWorkflowId}, when that workflow is a fleet. */
async function legacyFleet(client: Client, name: string): Promise<WorkflowHandle | undefined> {
  const handle = client.workflow.getHandle(legacyFleetWorkflowId(name));
  try {
    return (await handle.describe()).type === WorkflowType.MigrateFleet ? handle : undefined;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

/**
 * The handle of the fleet `name`: under its workflow ID, or, when nothing is there, under the ID
 * fleets had before (so a fleet started by an older release is still followed, approved, aborted).
 */
export async function fleetHandle(client: Client, name: string): Promise<WorkflowHandle> {
  const current = client.workflow.getHandle(fleetWorkflowId(name));
  try {
    await current.describe();
    return current;
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
  }
  return (await legacyFleet(client, name)) ?? current;
}

/** The status of the fleet `name` (its current or last run). */
export async function queryFleet(client: Client, name: string): Promise<FleetStatus> {
  try {
    return await (await fleetHandle(client, name)).query(fleetStatusQuery);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError)
      throw new NoRunError(
        `there is no fleet ${name} (no workflow ${fleetWorkflowId(name)}): check the name, or start it with "runas-migrate start --fleet <file>"`,
      );
    throw err;
  }
}

/** Whether the fleet's workflow is still running. */
export async function fleetRunning(client: Client, name: string): Promise<boolean> {
  return (await (await fleetHandle(client, name)).describe()).status.name === 'RUNNING';
}
