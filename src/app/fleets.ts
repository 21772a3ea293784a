/**
 * Fleets from a client: starting a fleet from its file (validated before the start, so a bad
 * target changes nothing anywhere), asking its status, and the fleet view.
 */
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  WorkflowNotFoundError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import CliTable from 'cli-table3';
import { parseFleetInput, type FleetInput } from '../core/fleet.js';
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
      args: [raw],
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

/** The fleet view: where the fleet is, its gates, and one row per target. */
export function renderFleet(s: FleetStatus): string {
  const counts = new Map<string, number>();
  for (const t of s.targets) counts.set(t.state, (counts.get(t.state) ?? 0) + 1);
  const lines = [
    `fleet ${s.name} — ${s.phase}; wave ${s.wave + 1} of ${s.waves}${s.canary ? ' (wave 1 is the canary)' : ''}; ` +
      `${[...counts].map(([k, v]) => `${v} ${k}`).join(', ')}; failures ${s.failures} (budget ${s.failureBudget})` +
      (s.continuedAsNew ? `; continued as new ${s.continuedAsNew}×` : ''),
  ];
  if (s.reason) lines.push(`reason: ${s.reason}`);
  for (const g of s.gates.filter((x) => x.state === 'waiting'))
    lines.push(`waiting for: runas-migrate approve --fleet ${s.name} --gate ${g.gate}`);
  const table = new CliTable({ head: ['wave', 'target', 'state', 'ended', 'window', 'message'] });
  for (const t of s.targets)
    table.push([
      String(t.wave + 1),
      t.id,
      t.state,
      t.endState ?? '-',
      t.windowSeconds === null ? '-' : `${t.windowSeconds.toFixed(1)} s`,
      (t.message ?? '').slice(0, 80),
    ]);
  lines.push(table.toString());
  return lines.join('\n');
}

/** Whether the fleet's workflow is still running. */
export async function fleetRunning(client: Client, name: string): Promise<boolean> {
  return (await client.workflow.getHandle(fleetWorkflowId(name)).describe()).status.name === 'RUNNING';
}
