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
  type WorkflowExecutionDescription,
  type WorkflowHandle,
} from '@temporalio/client';
import type { SignalDefinition } from '@temporalio/common';
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
  if (legacy?.description.status.name === 'RUNNING')
    throw new RunInProgressError(
      `fleet ${fleet.name} is already running (workflow ${legacy.handle.workflowId}, started before fleet IDs took a colon): follow it with "runas-migrate status --fleet ${fleet.name} --watch", or give this one another name`,
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

/** A fleet's workflow and what the server says of it. */
export interface FoundFleet {
  handle: WorkflowHandle;
  description: WorkflowExecutionDescription;
}

/** The workflow's description, or undefined when there is no such workflow. */
async function describeIfAny(handle: WorkflowHandle): Promise<WorkflowExecutionDescription | undefined> {
  try {
    return await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}

/** The fleet started under {@link legacyFleetWorkflowId}, when that workflow is a fleet. */
async function legacyFleet(client: Client, name: string): Promise<FoundFleet | undefined> {
  const handle = client.workflow.getHandle(legacyFleetWorkflowId(name));
  const description = await describeIfAny(handle);
  return description?.type === WorkflowType.MigrateFleet ? { handle, description } : undefined;
}

/**
 * The fleet `name` with its description, found with one call: under its workflow ID, or, when
 * nothing is there, under the ID fleets had before (so a fleet started by an older release is
 * still followed, approved, aborted). Undefined when there is neither.
 */
export async function findFleet(client: Client, name: string): Promise<FoundFleet | undefined> {
  const handle = client.workflow.getHandle(fleetWorkflowId(name));
  const description = await describeIfAny(handle);
  if (description?.status.name === 'RUNNING') return { handle, description };
  // An older release's CLI may have started one under the old ID after this one closed.
  const legacy = await legacyFleet(client, name);
  if (legacy && (!description || legacy.description.status.name === 'RUNNING')) return legacy;
  return description ? { handle, description } : undefined;
}

/**
 * The running fleet `name`, failing with a {@link NoRunError} that says so when it has ended
 * (`what`: the command, as "approve").
 */
export async function requireRunningFleet(client: Client, name: string, what: string): Promise<FoundFleet> {
  const found = await requireFleet(client, name);
  if (found.description.status.name !== 'RUNNING')
    throw new NoRunError(
      `fleet ${name} is not running (${found.description.status.name}): there is nothing to ${what}; see how it ended with "runas-migrate status --fleet ${name}"`,
    );
  return found;
}

/**
 * Signals the running fleet; a fleet that closed since it was found is reported as such, not as
 * Temporal's "workflow not found".
 */
export async function signalFleet<Args extends unknown[]>(
  found: FoundFleet,
  name: string,
  signal: SignalDefinition<Args>,
  ...args: Args
): Promise<void> {
  try {
    await found.handle.signal(signal, ...args);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError)
      throw new NoRunError(
        `fleet ${name} ended meanwhile: see how with "runas-migrate status --fleet ${name}"`,
      );
    throw err;
  }
}

/** {@link findFleet}, failing with a {@link NoRunError} that says how to start it when there is none. */
export async function requireFleet(client: Client, name: string): Promise<FoundFleet> {
  const found = await findFleet(client, name);
  if (!found)
    throw new NoRunError(
      `there is no fleet ${name} (no workflow ${fleetWorkflowId(name)}): check the name, or start it with "runas-migrate start --fleet <file>"`,
    );
  return found;
}

/** The handle of the fleet `name` ({@link findFleet}); its current ID's when there is none yet. */
export async function fleetHandle(client: Client, name: string): Promise<WorkflowHandle> {
  return (await findFleet(client, name))?.handle ?? client.workflow.getHandle(fleetWorkflowId(name));
}

/** The status of the fleet `name` (its current or last run). */
export async function queryFleet(client: Client, name: string): Promise<FleetStatus> {
  return (await requireFleet(client, name)).handle.query(fleetStatusQuery);
}
