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
import { parseFleetInput, resolvedFleetInput, type FleetInput } from '../core/fleet.js';
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
  const workflowId = fleetWorkflowId(fleet.name);
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

/** The status of the fleet `name` (its current or last run). */
export async function queryFleet(client: Client, name: string): Promise<FleetStatus> {
  try {
    return await client.workflow.getHandle(fleetWorkflowId(name)).query(fleetStatusQuery);
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
  return (await client.workflow.getHandle(fleetWorkflowId(name)).describe()).status.name === 'RUNNING';
}
