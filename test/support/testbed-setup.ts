/**
 * vitest globalSetup of the `bed` project: one test bed (Temporal dev server + simulated
 * cluster + host runner) for the whole run, reused when one is already healthy. A bed this
 * setup started is stopped at the end unless RUNAS_MIGRATE_KEEP_TESTBED=1.
 */
import type { TestProject } from 'vitest/node';
import { down, kubeConfigOf, readState, up, type BedState } from '../../testbed/bed.js';
import { ensureRecordsNamespace } from '../../testbed/fixture.js';
import { ensureTool, ToolName } from '../../testbed/tools.js';

declare module 'vitest' {
  export interface ProvidedContext {
    bed: BedState;
    timeSkippingServer: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const name = process.env.RUNAS_MIGRATE_TESTBED ?? 'default';
  const wasRunning = readState(name) !== undefined;
  const bed = await up({ name });
  // A bed started before the records namespace existed gets it here.
  await ensureRecordsNamespace(kubeConfigOf(bed));
  project.provide('bed', bed);
  project.provide('timeSkippingServer', await ensureTool(ToolName.TemporalTestServer));
  return async () => {
    if (!wasRunning && process.env.RUNAS_MIGRATE_KEEP_TESTBED !== '1') await down({ name });
  };
}
