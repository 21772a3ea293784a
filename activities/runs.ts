/**
 * Activities that ask Temporal about runs: whether the run that recorded a relaxation is still
 * alive (the sweeper restores only what a closed run left behind).
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { RunRef } from '../src/policy.js';
import { typed } from './failures.js';

/** Dependencies of the run activities. */
export interface RunActivityDeps {
  client: Client;
}

/** Builds the run activities around a Temporal client. */
export function createRunActivities(deps: RunActivityDeps) {
  /** Whether the run is still open; false when it closed or its history is gone. */
  async function isRunOpen(owner: RunRef): Promise<boolean> {
    return typed(async () => {
      try {
        const d = await deps.client.workflow.getHandle(owner.workflowId, owner.runId).describe();
        return d.status.name === 'RUNNING';
      } catch (err) {
        if (err instanceof WorkflowNotFoundError) return false;
        throw err;
      }
    });
  }
  return { isRunOpen };
}

/** The run activities, as registered on the worker. */
export type RunActivities = ReturnType<typeof createRunActivities>;
