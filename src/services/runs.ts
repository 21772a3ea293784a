/**
 * What Temporal knows about runs: whether the run that recorded a relaxation or holds a lock is
 * still alive (the sweeper restores only what a closed run left behind).
 */
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { RunRef } from '../core/policy.js';

/** Dependencies of the {@link RunRegistry}. */
export interface RunRegistryDeps {
  client: Client;
}

/** Asks Temporal about runs. */
export class RunRegistry {
  private readonly client: Client;

  constructor(deps: RunRegistryDeps) {
    this.client = deps.client;
  }

  /** Whether the run is still open; false when it closed or its history is gone. */
  async isRunOpen(owner: RunRef): Promise<boolean> {
    try {
      const d = await this.client.workflow.getHandle(owner.workflowId, owner.runId).describe();
      return d.status.name === 'RUNNING';
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return false;
      throw err;
    }
  }
}
