/**
 * vitest globalSetup of the `workflow` project: finds (or builds) Temporal's Java time-skipping
 * test server, which the SDK cannot download on these machines.
 */
import type { TestProject } from 'vitest/node';
import { ensureTool, ToolName } from '../../testbed/tools.js';

export default async function setup(project: TestProject): Promise<void> {
  project.provide('timeSkippingServer', await ensureTool(ToolName.TemporalTestServer));
}
